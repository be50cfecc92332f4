"""Reading a storage driver's raw parameters: what every driver parses alike."""
from __future__ import annotations

from typing import Any, Mapping

# The spellings the reference's Go drivers take (strconv.ParseBool and friends),
# in any case, so a config written for registry:2 loads unchanged.
_TRUE = ("1", "t", "true", "yes", "on")
_FALSE = ("0", "f", "false", "no", "off")


def boolean(params: Mapping[str, Any], driver: str, key: str, default: bool) -> bool:
    """`params[key]` as a bool; unset or "" is `default`. ValueError names the key."""
    value = params.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"storage.{driver}.{key}: expected a boolean, got {value!r}")
