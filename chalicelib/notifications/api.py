"""The RegistryAPI wrapped so a handled request and its response become an event.

Built by chalicelib.bootstrap only when an endpoint is enabled. Per request it costs
a route match; a request that yields an event also a uuid, a clock read and a put on
a bounded queue. Which event follows the reference (registry:2's notification bridge):

  GET/HEAD manifest (200, 304)       pull    target: manifest descriptor, url, tag if by tag
  PUT manifest (201)                 push    likewise
  DELETE manifest (202)              delete  by digest: {digest, repository}, then {repository, tag} for
                                             each tag it removed; by tag: {repository, tag}
  GET/HEAD blob (200, 206, 304, 307) pull    target: blob descriptor, url
  PUT upload / POST ?digest= (201)   push    likewise
  POST ?mount=&from= (201)           mount   likewise, with fromRepository
  DELETE blob (202)                  delete  {digest, repository}
"""
from __future__ import annotations

import uuid
from typing import Any, Optional

from ..api.app import match_route
from .delivery import Notifier
from .events import BLOB_MEDIA_TYPE, Pending, Source, actor_name, manifest_media_type, new_event, \
    request_record, target


class NotifyingAPI:
    def __init__(self, api: Any, notifier: Notifier, source: Source):
        self._api = api
        self.notifier = notifier
        self._source = source.record()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def handle(self, request: Any) -> Any:
        route, params = match_route(request.path)
        if route not in ("manifest", "blob", "upload", "uploads"):
            return self._api.handle(request)
        tee, untagged = None, []
        method = request.method.upper()
        if route == "manifest" and method == "PUT":
            tee = request.body = _TeeBody(request.body)  # the handler reads it; we keep a copy
        elif route == "manifest" and method == "DELETE" and ":" in params["reference"]:
            untagged = self._tags_of(params["name"], params["reference"])  # gone once the handler ran
        response = self._api.handle(request)
        if response.status < 400:
            pending = self._observe(route, params, request, response, tee)
            if pending is not None:
                # after a manifest delete, the reference's TagDeleted for each tag it removed
                self.notifier.publish([pending] + [
                    self._pending("delete", request, target(repository=params["name"], tag=tag), params["name"])
                    for tag in untagged])
        return response

    def _tags_of(self, name: str, reference: str) -> list[str]:
        from ..context import Context
        from ..digest import Digest

        try:
            return sorted(self._api.registry.repository(name).tags.lookup(Context(), Digest.parse(reference)))
        except Exception:  # a bad name or digest: the handler answers it, and no tag goes
            return []

    # -- what the request did -------------------------------------------------------

    def _observe(
        self, route: str, params: dict, request: Any, response: Any, tee: Optional["_TeeBody"]
    ) -> Optional[Pending]:
        method, status, name = request.method.upper(), response.status, params.get("name", "")
        if route == "manifest":
            reference = params["reference"]
            tag = "" if ":" in reference else reference  # a digest has a colon, a tag cannot
            if method in ("GET", "HEAD") and status in (200, 304):
                digest = response.header("Docker-Content-Digest") or ""
                body = response.body if method == "GET" and status == 200 and isinstance(response.body, bytes) else None
                size = _int(response.header("Content-Length")) if status == 200 else None
                return self._pending("pull", request, target(response.header("Content-Type") or "", size, digest, name,
                                                            url=self._url(request, name, "manifests", digest), tag=tag),
                                     name, digest, need_size=size is None, manifest=body, references=True)
            if method == "PUT" and status == 201 and tee is not None:
                digest = response.header("Docker-Content-Digest") or ""
                body = tee.data()
                media_type = manifest_media_type(body, request.headers.get("content-type"))
                return self._pending("push", request, target(media_type, len(body), digest, name,
                                                            url=self._url(request, name, "manifests", digest), tag=tag),
                                     name, digest, manifest=body, references=True)
            if method == "DELETE" and status == 202:
                return self._pending("delete", request, target(repository=name, tag=tag) if tag
                                     else _digest_first(reference, name), name)
            return None
        if route == "blob":
            digest = params["digest"]
            if method in ("GET", "HEAD") and status in (200, 206, 304, 307):
                size = _blob_size(response)
                return self._pending("pull", request, target(BLOB_MEDIA_TYPE, size, digest, name,
                                                            url=self._url(request, name, "blobs", digest)),
                                     name, digest, need_size=size is None)
            if method == "DELETE" and status == 202:
                return self._pending("delete", request, _digest_first(digest, name), name)
            return None
        if status != 201:
            return None
        digest = response.header("Docker-Content-Digest") or ""
        mount, source = request.arg("mount"), request.arg("from")
        url = self._url(request, name, "blobs", digest)
        if route == "uploads" and mount == digest and request.arg("digest") is None:
            return self._pending("mount", request, target(BLOB_MEDIA_TYPE, None, digest, name, source or "", url),
                                 name, digest, need_size=True)
        return self._pending("push", request, target(BLOB_MEDIA_TYPE, None, digest, name, url=url),
                             name, digest, need_size=True)

    def _pending(self, action: str, request: Any, event_target: dict, repository: str, digest: str = "",
                 need_size: bool = False, manifest: Optional[bytes] = None, references: bool = False) -> Pending:
        event = new_event(action, event_target, request_record(request, str(uuid.uuid4())),
                          _actor(request, self._api), self._source)
        return Pending(event, repository, digest, need_size, references, manifest)

    def _url(self, request: Any, name: str, kind: str, digest: str) -> str:
        settings = self._api.settings
        path = f"/v2/{name}/{kind}/{digest}"
        if settings.relative_urls:
            return path
        return (settings.base_url or request.base_url).rstrip("/") + path


def _actor(request: Any, api: Any) -> dict:
    name = actor_name(request, getattr(api, "access_controller", None))
    return {"name": name} if name else {}


def _digest_first(digest: str, repository: str) -> dict:
    """A delete's target, in the reference's key order (digest, then repository)."""
    return {"digest": digest, "repository": repository}


def _blob_size(response: Any) -> Optional[int]:
    if response.status == 200:
        return _int(response.header("Content-Length"))
    if response.status == 206:  # bytes a-b/size
        total = (response.header("Content-Range") or "").rpartition("/")[2]
        return _int(total)
    return None  # 304, 307: the response does not say


def _int(text: Optional[str]) -> Optional[int]:
    return int(text) if text is not None and text.isdigit() else None


class _TeeBody:
    """A manifest PUT's body as the handler reads it, kept (manifests are ≤ 4 MiB)."""

    def __init__(self, body: Any):
        self._body = body
        self._pieces: list[bytes] = []

    def read(self, size: int = -1) -> bytes:
        piece = self._body.read(size)
        if piece:
            self._pieces.append(piece)
        return piece

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)

    def data(self) -> bytes:
        return b"".join(self._pieces)
