"""``http.prefix``: the registry answered under a path prefix (``/registry/v2/...``).

The api routes ``/v2/...``; this layer, outermost, takes the prefix off each request's
path and answers a path outside it 404, as the reference's router does. URLs the api
writes (upload and manifest Locations) get the prefix back: absolute ones through the
request's base URL (bootstrap adds it to ``http.host`` too), relative ones
(``http.relativeurls``) here, so a client following them stays under the prefix.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .api.errors import error_response
from .api.http import Request, Response


class PrefixedAPI:
    def __init__(self, api: Any, prefix: str):
        self._api = api
        self.prefix = prefix.rstrip("/")  # "/registry"; config keeps it ending with "/"

    def __getattr__(self, name: str) -> Any:  # registry, metrics, settings ... of the api inside
        return getattr(self._api, name)

    def handle(self, request: Request) -> Response:
        path = request.path
        if not path.startswith(self.prefix + "/"):
            return error_response("UNSUPPORTED", "no such endpoint", {"path": path[:200]}, status=404)
        inner = dataclasses.replace(request, path=path[len(self.prefix):],
                                    base_url=request.base_url.rstrip("/") + self.prefix)
        response = self._api.handle(inner)
        for index, (name, value) in enumerate(response.headers):
            if name.lower() == "location" and value.startswith("/v2/"):  # relative: under the prefix too
                response.headers[index] = (name, self.prefix + value)
        return response


def with_prefix(api: Any, prefix: str) -> Any:
    """api itself at the root path ("/"), else served under prefix."""
    return api if prefix in ("", "/") else PrefixedAPI(api, prefix)
