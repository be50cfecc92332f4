"""Validation of repository names and tags by the distribution-spec grammar.

Checked before any storage call, so no request can name a path outside the layout.
"""
from __future__ import annotations

import re

from .errors import NameInvalidError

# path-component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# \Z, not $: $ also matches before a trailing newline, which would reach storage
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
# The reference registry caps names at 255 characters (distribution/reference).
NAME_MAX_LENGTH = 255


def validate_name(name: str) -> str:
    if not name:
        raise NameInvalidError("repository name must not be empty")
    if len(name) > NAME_MAX_LENGTH:
        raise NameInvalidError(f"repository name must not be longer than {NAME_MAX_LENGTH} characters")
    if not NAME_RE.match(name):
        raise NameInvalidError(
            f"invalid repository name {name!r}: lowercase alphanumeric components "
            "separated by '/', each joined by '.', '_', '__' or dashes"
        )
    return name


def is_tag(reference: str) -> bool:
    return bool(TAG_RE.match(reference))
