"""Upload endpoints: POST (plain, monolithic, mount), PATCH, PUT, GET status, DELETE."""
from __future__ import annotations

from typing import BinaryIO, Optional, cast

from ..registry import Repository
from ..registry.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    NameInvalidError,
    RangeInvalidError,
)
from ..registry.names import validate_name
from ..registry.uploads import BlobUpload, DirectModeError
from . import direct_uploads
from .app import Access, Scope
from .errors import HTTPError, error_response
from .http import Response
from .params import check_writable, parse_content_range, parse_digest, repository
from .upload_state import InvalidStateError, UploadState


def _chunk_limits(scope: Scope) -> list[tuple[str, str]]:
    settings = scope.settings
    headers = []
    if settings.chunk_min_length:
        headers.append(("OCI-Chunk-Min-Length", str(settings.chunk_min_length)))
    if settings.chunk_max_length:
        headers.append(("OCI-Chunk-Max-Length", str(settings.chunk_max_length)))
    return headers


def _session_headers(scope: Scope, repo: Repository, upload: BlobUpload) -> list[tuple[str, str]]:
    """Where the upload stands and where to send its next chunk."""
    token = scope.api.signer.pack(UploadState(repo.name, upload.id, upload.size, upload.started_at))
    location = scope.url(f"/v2/{repo.name}/blobs/uploads/{upload.id}?_state={token}")
    # registry:2 reports "0-0" for an empty upload; clients expect that form
    end = upload.size - 1 if upload.size > 0 else 0
    return [
        ("Location", location),
        ("Range", f"0-{end}"),
        ("Docker-Upload-UUID", upload.id),
    ] + _chunk_limits(scope) + direct_uploads.discovery_headers(scope)


def _session_response(scope: Scope, repo: Repository, upload: BlobUpload, status: int) -> Response:
    return Response(status, _session_headers(scope, repo, upload) + [("Content-Length", "0")])


def _blob_created(scope: Scope, repo: Repository, digest) -> Response:
    return Response(
        201,
        [
            ("Location", scope.url(f"/v2/{repo.name}/blobs/{digest}")),
            ("Docker-Content-Digest", str(digest)),
            ("Content-Length", "0"),
        ],
    )


def _too_large(length: object, limit: int) -> HTTPError:
    return HTTPError(
        413, "SIZE_INVALID", f"chunk of {length} bytes exceeds the maximum of {limit}",
        {"max": limit}, headers=[("OCI-Chunk-Max-Length", str(limit))],
    )


class _BoundedBody:
    """A body sent without Content-Length (chunked): refused once it passes the limit."""

    def __init__(self, body, limit: int):
        self._body, self._limit, self._read = body, limit, 0

    def read(self, size: int = -1) -> bytes:
        allowed = self._limit + 1 - self._read  # one byte past the limit proves it too large
        piece = self._body.read(allowed if size is None or size < 0 else min(size, allowed))
        self._read += len(piece)
        if self._read > self._limit:
            raise _too_large(f"more than {self._limit}", self._limit)
        return piece


def _check_chunk_size(scope: Scope) -> None:
    limit = scope.settings.chunk_max_length
    length = scope.request.content_length
    if limit and length is not None and length > limit:
        raise _too_large(length, limit)
    if limit and length is None:
        # the handlers only read() the body, which is all _BoundedBody offers
        scope.request.body = cast(BinaryIO, _BoundedBody(scope.request.body, limit))


def start(scope: Scope) -> Response:
    check_writable(scope)
    repo = repository(scope)
    request = scope.request
    mount = request.arg("mount")
    if mount is not None:
        mounted = _mount(scope, repo, mount, request.arg("from"))
        if mounted is not None:
            return mounted
    digest_text = request.arg("digest")
    if digest_text is not None:
        digest = parse_digest(digest_text)
        _check_chunk_size(scope)
        upload = repo.uploads.create(scope.ctx, keep_writer=True)
        try:
            upload.commit(scope.ctx, digest, request.body, request.content_length)
        except BaseException:
            upload.cancel(scope.ctx)
            raise
        return _blob_created(scope, repo, digest)
    upload = repo.uploads.create(scope.ctx)
    return _session_response(scope, repo, upload, 202)


def _mount(scope: Scope, repo: Repository, mount: str, source: Optional[str]) -> Optional[Response]:
    """Link a blob from another repository; None falls back to a plain upload (202)."""
    try:
        digest = parse_digest(mount)
    except DigestInvalidError:
        return None
    ctx = scope.ctx
    try:
        if source:
            if not scope.api.may_mount_from(scope, validate_name(source)):
                return None
            descriptor = scope.registry.repository(source).blobs.stat(ctx, digest)
        else:
            # no `from`: the blob may be anywhere in this registry, so only a caller who
            # may pull every repository ("*": an open registry, any htpasswd user) may
            # mount it; a token scoped to repositories uploads instead
            if not scope.api.may_mount_from(scope, "*"):
                return None
            descriptor = scope.registry.blobs.stat_now(ctx, digest)
    except (BlobUnknownError, NameInvalidError):  # not worth failing the push for
        return None
    repo.blobs.link(ctx, descriptor)
    return _blob_created(scope, repo, digest)


def _resume(scope: Scope, stat: bool = True) -> tuple[Repository, BlobUpload, Optional[UploadState]]:
    """The upload the path and its `_state` name; PATCH and PUT skip the stat
    (stat=False) because opening the upload's writer checks it exists."""
    repo = repository(scope)
    upload_id = scope.params["upload_id"]
    token = scope.request.arg("_state")
    state = None
    if token:
        try:
            state = scope.api.signer.unpack(token)
        except InvalidStateError as exc:
            raise BlobUploadUnknownError(str(exc)) from None
        if state.name != repo.name or state.upload_id != upload_id:
            raise BlobUploadUnknownError("upload state does not belong to this upload")
    upload = repo.uploads.get(scope.ctx, upload_id, state.started_at if state else None, stat=stat)
    return repo, upload, state


def _expected_start(scope: Scope, upload: BlobUpload, state: Optional[UploadState]) -> Optional[int]:
    """Where the client believes the chunk starts; a stale or skipped chunk gets 416."""
    content_range = parse_content_range(scope.request.headers.get("Content-Range"))
    if content_range is not None:
        start, end = content_range
        length = scope.request.content_length
        if length is not None and length != end - start + 1:
            raise RangeInvalidError(f"Content-Range covers {end - start + 1} bytes, body has {length}")
        return start
    return state.offset if state is not None else None


def _range_error(scope: Scope, repo: Repository, upload: BlobUpload, exc: RangeInvalidError) -> Response:
    """416 carrying the upload's real Range and a fresh Location to resume from."""
    return error_response(exc.code, exc.message, exc.detail, status=416, headers=_session_headers(scope, repo, upload))


def patch(scope: Scope) -> Response:
    check_writable(scope)
    _check_chunk_size(scope)
    repo, upload, state = _resume(scope, stat=False)
    try:
        upload.write(scope.ctx, scope.request.body, scope.request.content_length, _expected_start(scope, upload, state))
    except RangeInvalidError as exc:
        return _range_error(scope, repo, upload, exc)
    return _session_response(scope, repo, upload, 202)


def put(scope: Scope) -> Response:
    check_writable(scope)
    _check_chunk_size(scope)
    repo, upload, state = _resume(scope, stat=False)
    digest = parse_digest(scope.request.arg("digest"))
    try:
        upload.commit(
            scope.ctx, digest, scope.request.body, scope.request.content_length,
            _expected_start(scope, upload, state),
        )
    except RangeInvalidError as exc:
        return _range_error(scope, repo, upload, exc)
    except DirectModeError as exc:  # its bytes are in storage already: verify them
        return direct_uploads.complete(scope, repo, upload, digest, exc.info)
    return _blob_created(scope, repo, digest)


def status(scope: Scope) -> Response:
    repo, upload, _ = _resume(scope)
    if scope.api.direct_kind is not None:
        direct = direct_uploads.status(scope, repo, upload)
        if direct is not None:
            return direct
    return _session_response(scope, repo, upload, 204)


def cancel(scope: Scope) -> Response:
    check_writable(scope)
    _, upload, _ = _resume(scope)
    upload.cancel(scope.ctx)
    return Response(204, [("Content-Length", "0")])


def access(scope: Scope) -> list[Access]:
    name = scope.params["name"]
    needed = [Access("repository", name, "pull"), Access("repository", name, "push")]
    request = scope.request
    source = request.arg("from") if request.method.upper() == "POST" and request.arg("mount") else None
    if source:
        # as registry:2 does, the challenge asks for pull on the mount's source too, so a
        # token client requests it; _mount checks it, and without it uploads instead
        try:
            needed.append(Access("repository", validate_name(source), "pull", optional=True))
        except NameInvalidError:
            pass
    return needed


COLLECTION_HANDLERS = {"POST": start}
HANDLERS = {"PATCH": patch, "PUT": put, "GET": status, "DELETE": cancel}
