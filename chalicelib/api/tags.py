"""GET /v2/<name>/tags/list, sorted, with n/last pagination."""
from __future__ import annotations

import json

from .app import Access, Scope
from .http import Response
from .pagination import paginate
from .params import repository


def get(scope: Scope) -> Response:
    repo = repository(scope)
    tags, headers = paginate(scope, repo.tags.all(scope.ctx), f"/v2/{repo.name}/tags/list")
    body = json.dumps({"name": repo.name, "tags": tags}).encode()
    headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return Response(200, headers, b"" if scope.request.method == "HEAD" else body)


def access(scope: Scope) -> list[Access]:
    return [Access("repository", scope.params["name"], "pull")]


HANDLERS = {"GET": get, "HEAD": get}
