"""GET /v2/_catalog, sorted, with n/last pagination capped by catalog.maxentries."""
from __future__ import annotations

import json

from .app import Access, Scope
from .http import Response
from .pagination import paginate


def get(scope: Scope) -> Response:
    names = scope.registry.catalog(scope.ctx)
    repos, headers = paginate(scope, names, "/v2/_catalog", scope.settings.catalog_max_entries)
    body = json.dumps({"repositories": repos}).encode()
    headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return Response(200, headers, b"" if scope.request.method == "HEAD" else body)


def access(scope: Scope) -> list[Access]:
    return [Access("registry", "catalog", "*")]


HANDLERS = {"GET": get, "HEAD": get}
