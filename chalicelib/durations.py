"""Go-style durations and byte sizes, as written in registry configuration files.

Users bring configuration files written for the reference Go registry, whose
durations are Go ``time.Duration`` strings ("20m", "1h30m", "100ms"). This module
parses them without importing anything heavy; both parsers raise ``ValueError``
with a message that reads well after a key path ("expected a duration ...").
"""
from __future__ import annotations

import math
import re

__all__ = ["parse_duration", "parse_size"]

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek mu, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_MAX_NS = 2**63 - 1  # Go durations are int64 nanoseconds (about 292 years)

# One "<number><unit>" element: digits, an optional fraction, then the unit text.
# [0-9], not \d: \d also matches non-ASCII digits, which Go does not.
_ELEMENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")

_DURATION_HINT = "a duration such as '20m', '1h30m' or '100ms' (or a number of seconds)"


def parse_duration(value: object) -> float:
    """Return the duration ``value`` in seconds.

    Strings follow Go's ``time.ParseDuration``: an optional sign, then one or more
    decimal numbers (fraction allowed) each with a unit among ns, us (µs), ms, s,
    m, h, e.g. "1h30m", "1.5s", "-20m"; the bare string "0" is zero. Integers and
    floats are taken as seconds. (The Go registry reads a bare YAML integer as
    nanoseconds; Stratus reads it as seconds, which is what people mean.)
    Negative durations parse; callers that need a positive one check the sign.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {_DURATION_HINT}, got {value!r}")
    return _go_duration_ns(value) / 1e9


def _go_duration_ns(text: str) -> int:
    def invalid(reason: str) -> ValueError:
        return ValueError(f"expected {_DURATION_HINT}, got {text!r} ({reason})")

    rest, sign = text, 1
    if rest[:1] in ("+", "-") and rest:
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid("empty")
    total, pos = 0, 0
    while pos < len(rest):
        match = _ELEMENT.match(rest, pos)
        assert match is not None  # every part of _ELEMENT is optional: it matches anywhere
        whole, fraction, unit = match.groups()
        if not whole and not fraction:
            raise invalid("a number must come before each unit")
        if not unit:
            raise invalid("missing unit")
        scale = _NS_PER_UNIT.get(unit)
        if scale is None:
            raise invalid(f"unknown unit {unit!r}; use ns, us, ms, s, m or h")
        ns = int(whole or "0") * scale
        if fraction:
            ns += int(fraction) * scale // 10 ** len(fraction)
        total += ns
        if total > _MAX_NS:
            raise invalid("too long")
        pos = match.end()
    return sign * total


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_BYTES_PER_UNIT = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE_HINT = "a size in bytes such as 5242880, '5MiB' or '100MB'"


def parse_size(value: object) -> int:
    """Return the byte size ``value`` as a non-negative int.

    Integers are bytes. Strings are a number and an optional unit, case-insensitive:
    B, kB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024); a fractional
    result is rounded down ("4.5MiB" -> 4718592).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {_SIZE_HINT}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {_SIZE_HINT}, got a negative size {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match:
            number, unit = match.groups()
            scale = _BYTES_PER_UNIT.get(unit.lower())
            if scale is not None:
                if "." in number:
                    whole, _, fraction = number.partition(".")
                    return int(whole) * scale + int(fraction) * scale // 10 ** len(fraction)
                return int(number) * scale
            raise ValueError(
                f"expected {_SIZE_HINT}, got {value!r} (unknown unit {unit!r};"
                " use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"
            )
        if value.strip().startswith("-"):
            raise ValueError(f"expected {_SIZE_HINT}, got a negative size {value!r}")
    raise ValueError(f"expected {_SIZE_HINT}, got {value!r}")
