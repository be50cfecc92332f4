"""HTTP of direct-to-storage uploads (docs/direct-uploads.md): the discovery header,
`POST <upload>?parts=a-b` for part URLs, and the completion PUT's answers.

A parts request is routed and authorised as a PATCH to the same upload would be
(the upload route's access: pull and push on the repository) and needs that
upload's `_state`, so the URLs go only to whoever may write the upload.
"""
from __future__ import annotations

import re
from typing import Optional

from ..digest import Digest
from ..registry import Repository
from ..registry.direct_uploads import DirectUpload, DirectUploadOptions, Verification
from ..registry.errors import (
    BlobUploadInvalidError,
    BlobUploadUnknownError,
    RangeInvalidError,
    SizeInvalidError,
)
from ..registry.uploads import BlobUpload
from ..storage.base import DirectFile
from .app import Scope
from .errors import HTTPError
from .http import Response, json_response
from .params import check_writable

HEADER = "Stratus-Direct-Upload"
VERIFY_OFFSET_HEADER = "Stratus-Verify-Offset"
_PARTS = re.compile(r"([0-9]{1,5})-([0-9]{1,5})\Z")
_SIZE = re.compile(r"[0-9]{1,12}\Z")


def discovery_headers(scope: Scope) -> list[tuple[str, str]]:
    kind = scope.api.direct_kind
    return [(HEADER, kind)] if kind else []


def options(scope: Scope) -> DirectUploadOptions:
    # an upload put in direct mode before the extension was turned off is still finished
    return scope.settings.direct_upload or DirectUploadOptions()


def parse_parts(value: str) -> tuple[int, int]:
    m = _PARTS.match(value)
    if not m or int(m.group(1)) > int(m.group(2)):
        raise BlobUploadInvalidError(
            {"parts": value[:40]}, message="parts must be <first>-<last>, part numbers from 1, first <= last"
        )
    return int(m.group(1)), int(m.group(2))


def parse_part_size(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    if not _SIZE.match(value):
        raise SizeInvalidError({"partsize": value[:40]}, message="partsize must be a number of bytes")
    return int(value)


def request_parts(scope: Scope) -> Response:
    """POST to an upload's Location with parts=<first>-<last>[&partsize=<bytes>]."""
    from .uploads import _range_error, _resume

    request = scope.request
    parts = request.arg("parts")
    offered = scope.api.direct_kind is not None
    if parts is None or not offered:
        allow = "DELETE, GET, PATCH, POST, PUT" if offered else "DELETE, GET, PATCH, PUT"
        message = ("POST to an upload session asks for part URLs: add parts=<first>-<last>" if offered
                   else "direct-to-storage uploads are not offered by this registry")
        raise HTTPError(405, "UNSUPPORTED", message, headers=[("Allow", allow)])
    check_writable(scope)
    first, last = parse_parts(parts)
    part_size = parse_part_size(request.arg("partsize"))
    if not request.arg("_state"):
        raise BlobUploadUnknownError("a parts request needs the upload's _state")
    repo, upload, _ = _resume(scope, stat=False)
    try:
        grant = DirectUpload(upload, options(scope)).grant(scope.ctx, first, last, part_size)
    except RangeInvalidError as exc:
        return _range_error(scope, repo, upload, exc)
    doc = {
        "kind": grant.kind,
        "partSize": grant.part_size,
        "maxParts": grant.max_parts,
        "expires": grant.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uploaded": [{"number": p.number, "size": p.size} for p in grant.uploaded],
        "parts": [
            {"number": p.number, "method": p.method, "url": p.url, "headers": dict(p.headers)}
            for p in grant.parts
        ],
    }
    return json_response(doc, [(HEADER, grant.kind), ("Cache-Control", "no-store")])


def _has_body(scope: Scope) -> bool:
    request = scope.request
    if request.content_length is not None:
        return request.content_length > 0
    return bool(request.body.read(1))  # chunked: one byte tells


def complete(scope: Scope, repo: Repository, upload: BlobUpload, digest: Digest, info: DirectFile) -> Response:
    """The PUT ?digest= of a direct-mode upload: 201 once in place, 202 while verifying."""
    from .uploads import _blob_created

    if _has_body(scope):
        raise BlobUploadInvalidError(message="upload is in direct mode: complete it with an empty PUT")
    result = DirectUpload(upload, options(scope)).complete(scope.ctx, digest, info)
    if result.done:
        return _blob_created(scope, repo, digest)
    return verifying(scope, repo, upload, result)


def verifying(scope: Scope, repo: Repository, upload: BlobUpload, result: Verification) -> Response:
    """202: the same PUT, sent to the new Location, continues where this one stopped."""
    from .uploads import _session_headers

    upload.size = result.verified
    headers = _session_headers(scope, repo, upload) + [(VERIFY_OFFSET_HEADER, str(result.verified))]
    return Response(202, headers + [("Content-Length", "0")])


def status(scope: Scope, repo: Repository, upload: BlobUpload) -> Optional[Response]:
    """204 of a direct-mode upload (Range: what its parts hold from part 1); None otherwise."""
    from .uploads import _session_response

    direct = DirectUpload(upload, options(scope))
    info = direct.state(scope.ctx)
    if info is None:
        return None
    upload.size = direct.progress(scope.ctx, info)
    return _session_response(scope, repo, upload, 204)
