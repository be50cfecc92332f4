"""Reading the credentials a request carries in its Authorization header."""
from __future__ import annotations

import base64
import binascii
from typing import Optional

from ..api.http import Request

# A Basic header is a few hundred bytes at most; anything larger is not credentials.
_MAX_HEADER = 8192


def basic_credentials(header: Optional[str]) -> Optional[tuple[str, bytes]]:
    """(username, password) of an `Authorization: Basic ...` header; None if absent or malformed."""
    if not header or len(header) > _MAX_HEADER:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def has_credentials(request: Request) -> bool:
    """Whether the request tries to authenticate. Clients that were given no
    credentials may still answer a Basic challenge with an empty user and password
    (skopeo does): that is anonymous too."""
    header = request.headers.get("Authorization")
    if not header or not header.strip():
        return False
    credentials = basic_credentials(header)
    return credentials is None or credentials != ("", b"")
