"""GET /v2/<name>/tags/list, sorted, with n/last pagination."""
from __future__ import annotations

from .app import Access, Scope
from .http import Response, json_response
from .pagination import paginate
from .params import repository


def get(scope: Scope) -> Response:
    repo = repository(scope)
    # a mirror lists the upstream's tags, or the ones it has cached when the upstream cannot say
    upstream = repo.proxy.tags(scope.ctx) if repo.proxy is not None else None
    listed = upstream if upstream is not None else repo.tags.all(scope.ctx)
    tags, headers = paginate(scope, listed, f"/v2/{repo.name}/tags/list")
    return json_response({"name": repo.name, "tags": tags}, headers, head=scope.request.method == "HEAD")


def access(scope: Scope) -> list[Access]:
    return [Access("repository", scope.params["name"], "pull")]


HANDLERS = {"GET": get, "HEAD": get}
