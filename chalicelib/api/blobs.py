"""Blob endpoints: GET/HEAD (redirected to storage where it can), DELETE."""
from __future__ import annotations

import re
from typing import Optional

from ..descriptor import BlobDescriptor
from . import proxy_blobs
from .app import Access, Scope
from .errors import HTTPError
from .http import FileBody, Response
from .params import check_deletable, parse_digest, repository

# Blobs are content-addressed: a digest's bytes never change.
IMMUTABLE = "max-age=31536000"
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$", re.IGNORECASE)


def etag_matches(if_none_match: Optional[str], etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or etag in candidates or etag.strip('"') in candidates or f"W/{etag}" in candidates


def parse_range(value: str, size: int) -> tuple[int, int]:
    """(start, end) inclusive of a single `bytes=` range; 416 when malformed or unsatisfiable."""
    m = _RANGE.match(value.strip())
    start_text, end_text = (m.group(1), m.group(2)) if m else ("", "")
    if m and start_text:
        start = int(start_text)
        end = int(end_text) if end_text else size - 1
    elif m and end_text:  # suffix range: the last N bytes
        start, end = max(0, size - int(end_text)), size - 1
        if int(end_text) == 0:
            start = size
    else:
        start, end = size, -1
    if start >= size or end < start:
        raise HTTPError(
            416, "SIZE_INVALID", "requested range not satisfiable",
            {"range": value[:100], "size": size}, headers=[("Content-Range", f"bytes */{size}")],
        )
    return start, min(end, size - 1)


def _headers(descriptor: BlobDescriptor, etag: str) -> list[tuple[str, str]]:
    return [
        ("Docker-Content-Digest", str(descriptor.digest)),
        ("ETag", etag),
        ("Cache-Control", IMMUTABLE),
        ("Accept-Ranges", "bytes"),
    ]


def get(scope: Scope) -> Response:
    return _serve(scope, head=False)


def head(scope: Scope) -> Response:
    return _serve(scope, head=True)


def _serve(scope: Scope, head: bool) -> Response:
    repo = repository(scope)
    digest = parse_digest(scope.params["digest"])
    etag = f'"{digest}"'
    if repo.proxy is not None:
        if etag_matches(scope.request.headers.get("If-None-Match"), etag):
            return Response(304, [("Docker-Content-Digest", str(digest)), ("ETag", etag)])
        uncached = proxy_blobs.serve(scope, repo, digest, head)
        if uncached is not None:  # not in our storage yet (api.proxy_blobs)
            return uncached
    descriptor = repo.blobs.stat(scope.ctx, digest)
    headers = _headers(descriptor, etag)
    if etag_matches(scope.request.headers.get("If-None-Match"), etag):
        return Response(304, headers)
    options = scope.registry.options
    if not head and options.redirect:
        url = repo.blobs.blobs.redirect_url(scope.ctx, digest, options.redirect_expiry)
        if url:
            return Response(307, headers + [("Location", url), ("Content-Length", "0")])
    size = descriptor.size
    range_header = scope.request.headers.get("Range")
    start, end, status = 0, size - 1, 200
    # RFC 9110 14.2: a range unit the server does not know is ignored, not refused
    if range_header and range_header.split("=", 1)[0].strip().lower() == "bytes":
        start, end = parse_range(range_header, size)
        status = 206
        headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    length = end - start + 1 if size else 0
    headers += [("Content-Type", "application/octet-stream"), ("Content-Length", str(length))]
    if head:
        return Response(status, headers)
    return Response(status, headers, FileBody(repo.blobs.open(scope.ctx, digest, start), length))


def delete(scope: Scope) -> Response:
    repo = repository(scope)
    digest = parse_digest(scope.params["digest"])
    check_deletable(scope, "blob")
    repo.blobs.stat(scope.ctx, digest)
    repo.blobs.unlink(scope.ctx, digest)
    return Response(202, [("Content-Length", "0"), ("Docker-Content-Digest", str(digest))])


def access(scope: Scope) -> list[Access]:
    name = scope.params["name"]
    if scope.request.method.upper() == "DELETE":
        return [Access("repository", name, "delete")]
    return [Access("repository", name, "pull")]


HANDLERS = {"GET": get, "HEAD": head, "DELETE": delete}
