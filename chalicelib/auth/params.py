"""Reading one auth method's raw parameters, with errors that name the key."""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

from ..config import ConfigError

log = logging.getLogger("stratus.auth")

_MISSING = object()


class Parameters:
    """`auth.<method>` parameters; every bad value is a ConfigError naming its key."""

    def __init__(self, method: str, raw: dict[str, Any]):
        self.method = method
        # keys match case-insensitively: REGISTRY_AUTH_* variables arrive lower-cased
        self._raw = {str(k).lower(): v for k, v in (raw or {}).items()}
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"auth.{self.method}.{name}"

    def fail(self, name: str, expected: str, value: Any = _MISSING) -> ConfigError:
        got = "" if value is _MISSING else f", got {value!r}"
        return ConfigError(f"{self.key(name)}: expected {expected}{got}", key=self.key(name))

    def string(self, name: str, default: Any = _MISSING) -> Optional[str]:
        self._read.add(name)
        value = self._raw.get(name, _MISSING)
        if value is _MISSING or value is None or value == "":
            if default is _MISSING:
                raise ConfigError(f"{self.key(name)}: required", key=self.key(name))
            return default
        if isinstance(value, (dict, list, bool)):
            raise self.fail(name, "a string", value)
        return str(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        self._read.add(name)
        value = self._raw.get(name, _MISSING)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.fail(name, "true or false", value)

    def strings(self, name: str, default: Iterable[str] = ()) -> list[str]:
        self._read.add(name)
        value = self._raw.get(name, _MISSING)
        if value is _MISSING or value is None:
            return list(default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(name, "a list of strings", value)
        return value

    def number(self, name: str, default: float, minimum: float = 0) -> float:
        self._read.add(name)
        value = self._raw.get(name, _MISSING)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.fail(name, f"a number of at least {minimum}", value)
        return float(value)

    def warn_unknown(self, ignored: Iterable[str] = ()) -> None:
        for name in sorted(set(self._raw) - self._read):
            if name in ignored:
                log.warning("%s is not supported by Stratus and is ignored", self.key(name))
            else:
                log.warning("%s is not a known parameter and is ignored", self.key(name))
