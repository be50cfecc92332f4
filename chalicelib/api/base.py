"""GET /v2/: the API version check clients start with (and where auth is discovered)."""
from __future__ import annotations

from .app import Access, Scope
from .http import Response


def get(scope: Scope) -> Response:
    return Response(200, [("Content-Type", "application/json"), ("Content-Length", "2")], b"{}")


def access(scope: Scope) -> list[Access]:
    return []


HANDLERS = {"GET": get, "HEAD": get}
