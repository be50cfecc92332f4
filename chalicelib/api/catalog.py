"""GET /v2/_catalog, sorted, with n/last pagination capped by catalog.maxentries."""
from __future__ import annotations

from .app import Access, Scope
from .http import Response, json_response
from .pagination import paginate


def get(scope: Scope) -> Response:
    names = scope.registry.catalog(scope.ctx)
    repos, headers = paginate(scope, names, "/v2/_catalog", scope.settings.catalog_max_entries)
    return json_response({"repositories": repos}, headers, head=scope.request.method == "HEAD")


def access(scope: Scope) -> list[Access]:
    return [Access("registry", "catalog", "*")]


HANDLERS = {"GET": get, "HEAD": get}
