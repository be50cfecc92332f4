"""Parsing of path and query parameters into domain values, with OCI errors."""
from __future__ import annotations

import re
from typing import Optional

from ..digest import Digest, DigestError
from ..registry import Repository
from ..registry.errors import (
    DigestInvalidError,
    PaginationNumberInvalidError,
    RangeInvalidError,
    ReadOnlyError,
    UnsupportedError,
)
from .app import Scope

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?$")


def repository(scope: Scope) -> Repository:
    return scope.registry.repository(scope.params["name"])


def parse_digest(value: Optional[str]) -> Digest:
    if not value:
        raise DigestInvalidError("digest is required")
    try:
        return Digest.parse(value)
    except DigestError as exc:
        raise DigestInvalidError(str(exc), message="invalid digest") from None


def parse_n(value: Optional[str], maximum: Optional[int] = None) -> Optional[int]:
    """The `n` of tag and catalog pagination; None when absent."""
    if value is None or value == "":
        return maximum
    # isascii: str.isdigit() also accepts "²" and other digits int() refuses
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise PaginationNumberInvalidError(f"n must be a non-negative integer, got {value[:20]!r}")
    n = int(value)
    return min(n, maximum) if maximum is not None else n


def parse_content_range(value: Optional[str]) -> Optional[tuple[int, int]]:
    """(start, end) of a chunk's Content-Range, inclusive; None when absent.

    The spec's form is `<start>-<end>`; `bytes start-end/total` is accepted too
    because some clients send the RFC 9110 form.
    """
    if value is None:
        return None
    m = _CONTENT_RANGE.match(value.strip())
    if not m:
        raise RangeInvalidError(f"malformed Content-Range {value[:100]!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RangeInvalidError(f"Content-Range end {end} before start {start}")
    return start, end


def check_writable(scope: Scope) -> None:
    if scope.registry.options.read_only:
        raise ReadOnlyError()


def check_deletable(scope: Scope, what: str) -> None:
    check_writable(scope)
    if not scope.registry.options.delete_enabled:
        raise UnsupportedError(f"{what} deletion is disabled (storage.delete.enabled)")
