"""Reading one auth method's raw parameters, with errors that name the key."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, overload

from ..config import _MISSING, ConfigError, _Section

log = logging.getLogger("stratus.auth")


class Parameters(_Section):
    """`auth.<method>` parameters; every bad value is a ConfigError naming its key.

    Key paths, read tracking, `fail` and `boolean` are the configuration's own
    (config._Section); what differs is auth's: keys fold case, "" counts as an unset
    string, and a string with no default is required.
    """

    def __init__(self, method: str, raw: dict[str, Any]):
        # keys match case-insensitively: REGISTRY_AUTH_* variables arrive lower-cased
        super().__init__({str(k).lower(): v for k, v in (raw or {}).items()}, f"auth.{method}", {})
        self.method = method

    @overload
    def string(self, name: str) -> str: ...  # required
    @overload
    def string(self, name: str, default: str) -> str: ...
    @overload
    def string(self, name: str, default: None) -> Optional[str]: ...

    def string(self, name: str, default: Any = _MISSING) -> Optional[str]:
        value = self.value(name)
        if value is _MISSING or value == "":
            if default is _MISSING:
                raise ConfigError(f"{self.key_path(name)}: required", key=self.key_path(name))
            return default
        if isinstance(value, (dict, list, bool)):
            raise self.fail(name, "a string", value)
        return str(value)

    def strings(self, name: str, default: Iterable[str] = ()) -> list[str]:
        value = self.value(name)
        if value is _MISSING:
            return list(default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(name, "a list of strings", value)
        return value

    def number(self, name: str, default: float, minimum: float = 0) -> float:
        value = self.value(name)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.fail(name, f"a number of at least {minimum}", value)
        return float(value)

    def warn_unknown(self, ignored: Iterable[str] = ()) -> None:
        for name in sorted(set(self.mapping) - self.read):
            if name in ignored:
                log.warning("%s is not supported by Stratus and is ignored", self.key_path(name))
            else:
                log.warning("%s is not a known parameter and is ignored", self.key_path(name))
