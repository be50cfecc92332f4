"""Manifest endpoints: GET/HEAD/PUT/DELETE by tag or by digest."""
from __future__ import annotations

from ..digest import CANONICAL, Digest
from ..registry import Repository
from ..registry.errors import ManifestUnknownError, TagInvalidError
from ..registry.manifest_types import MAX_MANIFEST_SIZE
from ..registry.names import is_tag
from ..registry.uploads import read_body
from .app import Access, Scope
from .blobs import IMMUTABLE, etag_matches
from .errors import HTTPError
from .http import Response
from .params import check_deletable, check_writable, parse_digest, repository


def _reference(scope: Scope) -> str | Digest:
    """The path's reference: a tag (str) or a digest."""
    reference = scope.params["reference"]
    if ":" in reference:
        return parse_digest(reference)
    if not is_tag(reference):
        raise TagInvalidError(f"invalid tag {reference[:200]!r}")
    return reference


def _resolve(scope: Scope, repo: Repository) -> tuple[Digest, bool]:
    reference = _reference(scope)
    if repo.proxy is not None:  # a mirrored repository: filled from its upstream first
        if isinstance(reference, str):
            return repo.proxy.resolve_tag(scope.ctx, reference), False
        repo.proxy.ensure_manifest(scope.ctx, reference)
        return reference, True
    if isinstance(reference, str):
        return repo.tags.get(scope.ctx, reference), False
    return reference, True


def get(scope: Scope) -> Response:
    return _serve(scope, head=False)


def head(scope: Scope) -> Response:
    return _serve(scope, head=True)


def _serve(scope: Scope, head: bool) -> Response:
    repo = repository(scope)
    try:
        digest, by_digest = _resolve(scope, repo)
    except TagInvalidError:
        raise ManifestUnknownError(scope.params["reference"][:200]) from None
    manifest = repo.manifests.get(scope.ctx, digest)
    etag = f'"{digest}"'
    headers = [
        ("Docker-Content-Digest", str(digest)),
        ("Content-Type", manifest.media_type),
        ("ETag", etag),
    ]
    if by_digest:
        headers.append(("Cache-Control", IMMUTABLE))
    if etag_matches(scope.request.headers.get("If-None-Match"), etag):
        return Response(304, headers)
    headers.append(("Content-Length", str(len(manifest.body))))
    return Response(200, headers, b"" if head else manifest.body)


def _too_large() -> HTTPError:
    return HTTPError(413, "SIZE_INVALID", f"manifest exceeds {MAX_MANIFEST_SIZE} bytes", {"max": MAX_MANIFEST_SIZE})


def put(scope: Scope) -> Response:
    check_writable(scope)
    repo = repository(scope)
    reference = _reference(scope)
    tag, digest = (reference, None) if isinstance(reference, str) else (None, reference)
    request = scope.request
    length = request.content_length
    if length is not None and length > MAX_MANIFEST_SIZE:
        raise _too_large()
    pieces: list[bytes] = []
    received = 0

    def collect(piece: bytes) -> None:
        nonlocal received
        received += len(piece)
        if received > MAX_MANIFEST_SIZE:  # a body sent without Content-Length
            raise _too_large()
        pieces.append(piece)

    read_body(request.body, length, collect)
    body = b"".join(pieces)
    if tag is not None:  # storage.tag.immutable: refused before anything is written
        repo.tags.check_move(scope.ctx, tag, CANONICAL.from_bytes(body))
    stored_digest, manifest = repo.manifests.put(
        scope.ctx, body, request.headers.get("Content-Type"), digest=digest, tag=tag
    )
    headers = [
        ("Location", scope.url(f"/v2/{repo.name}/manifests/{stored_digest}")),
        ("Docker-Content-Digest", str(stored_digest)),
        ("Content-Length", "0"),
    ]
    if manifest.subject is not None:
        headers.append(("OCI-Subject", str(manifest.subject.digest)))
    return Response(201, headers)


def delete(scope: Scope) -> Response:
    check_deletable(scope, "manifest")
    repo = repository(scope)
    reference = _reference(scope)
    if isinstance(reference, str):
        repo.tags.check_untag(scope.ctx, reference)
        repo.tags.untag(scope.ctx, reference)
    else:
        repo.tags.check_delete_manifest(scope.ctx, reference)
        repo.manifests.delete(scope.ctx, reference)
    return Response(202, [("Content-Length", "0")])


def access(scope: Scope) -> list[Access]:
    name = scope.params["name"]
    method = scope.request.method.upper()
    if method == "PUT":
        return [Access("repository", name, "pull"), Access("repository", name, "push")]
    if method == "DELETE":
        return [Access("repository", name, "delete")]
    return [Access("repository", name, "pull")]


HANDLERS = {"GET": get, "HEAD": head, "PUT": put, "DELETE": delete}
