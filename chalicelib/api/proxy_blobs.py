"""Blob reads in a mirrored repository when the blob is not in our storage yet.

Self-hosted (storage served directly): the upstream's bytes stream to the client while
they are stored. Where blob reads are redirected to storage (S3, Azure: on functions,
whose responses are small and short), no blob byte passes through the function:

* a blob up to `proxy.inlinelimit` is copied upstream -> storage within the request,
  verified, and the client redirected to storage as for any stored blob;
* a larger one is copied by another invocation of this same function, which the
  request starts by calling its own URL with a signed fill token; meanwhile this
  client is redirected to where the upstream's bytes can be read without our
  credentials (its CDN redirect, or its own URL when it is open), else back to this
  URL with `_proxywait=<n>`: each such request waits up to WAIT_SECONDS for the fill,
  then redirects to storage, or to itself again (n+1), until MAX_WAITS.

Across instances one copies (the lease, registry.proxy.lease): a request that finds
another instance copying the blob waits for it up to WAIT_SECONDS and then redirects
to itself with `_proxywait`, as above; a wait that finds the copy's holder gone (its
lease expired) copies the blob itself, or starts another fill.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlencode

from ..digest import Digest, DigestError
from ..registry import Repository
from ..registry.proxy import UpstreamUnavailableError
from .app import Scope
from .errors import error_response
from .http import Response
from .upload_state import InvalidStateError, UploadState

if TYPE_CHECKING:
    from ..registry.proxy.mirror import Fetched, Handoff

log = logging.getLogger("stratus.proxy")

FILL_HEADER = "X-Stratus-Proxy-Fill"
WAIT_PARAM = "_proxywait"
# A wait answers within API Gateway's 30 s; clients follow about 10 redirects (Go's
# net/http, hence docker, podman, skopeo, containerd), so a fill has ~3 minutes.
WAIT_SECONDS = 20.0
MAX_WAITS = 8
FILL_TOKEN_LIFETIME = 300
# How long the request that starts a fill waits for the fill's invocation to take it
# (its answer only comes when the copy is done, and nobody waits for that).
FILL_START_TIMEOUT = 1.0


def serve(scope: Scope, repo: Repository, digest: Digest, head: bool) -> Optional[Response]:
    """The response for a blob not stored here yet; None once it is (serve it as usual)."""
    proxy = repo.proxy
    assert proxy is not None
    options = scope.registry.options
    redirecting = options.redirect and repo.blobs.blobs.redirect_url(scope.ctx, digest, 60) is not None
    if head or not redirecting:
        fetched = proxy.blob(scope.ctx, digest, head)
        return None if fetched is None else _serve_fetched(fetched, digest)
    if FILL_HEADER in scope.request.headers:
        if not fill_token_valid(scope, repo.name, digest):
            # never passed on as a client's GET: one that starts a fill of its own would
            # chain invocations without end (as with no shared http.secret between them)
            return error_response("DENIED", "invalid or expired proxy fill token", status=403)
        proxy.fill(scope.ctx, digest)  # the copy another invocation started: no size limit here
        return Response(204, [("Content-Length", "0")])
    waits = scope.request.arg(WAIT_PARAM)
    count = 0
    if waits is not None:
        count = int(waits) if waits.isascii() and waits.isdigit() else MAX_WAITS
    limit = options.proxy.inlinelimit if options.proxy is not None else 0
    outcome = proxy.fill(scope.ctx, digest, limit, wait=WAIT_SECONDS)
    if outcome is None:
        return None
    if waits is not None and count >= MAX_WAITS:
        raise UpstreamUnavailableError({"digest": str(digest), "reason": "the copy from upstream is not done"})
    wait_url = _own_url(scope, repo.name, digest) + "?" + urlencode({WAIT_PARAM: count + 1})
    from ..registry.proxy.mirror import Busy  # imported already: the registry built its mirrors

    if isinstance(outcome, Busy):  # another instance is copying it
        return _redirect(wait_url)
    handoff: "Handoff" = outcome
    # nobody is copying it (first request, or the copy's holder died): start a copy
    start_fill(scope, repo.name, digest)
    log.info("proxy: %s (%d bytes) is copied by another invocation; client sent to %s", digest, handoff.size,
             "the upstream" if handoff.url else "wait")
    if handoff.url is not None and waits is None:
        return _redirect(handoff.url)
    return _redirect(wait_url)


def _serve_fetched(fetched: "Fetched", digest: Digest) -> Response:
    """A blob as the upstream sends it: whole, since a Range cannot be cut from a
    stream being verified (RFC 9110 lets a server answer a Range with 200)."""
    headers = [("Docker-Content-Digest", str(digest)), ("ETag", f'"{digest}"'),
               ("Cache-Control", "max-age=31536000"), ("Content-Type", "application/octet-stream")]
    if fetched.descriptor.size >= 0:
        headers.append(("Content-Length", str(fetched.descriptor.size)))
    return Response(200, headers, fetched.body if fetched.body is not None else b"")


def _redirect(url: str) -> Response:
    return Response(307, [("Location", url), ("Content-Length", "0")])


def _own_url(scope: Scope, name: str, digest: Digest) -> str:
    """This blob's absolute URL (relative URLs, if configured, are for clients only)."""
    return (scope.settings.base_url or scope.request.base_url).rstrip("/") + f"/v2/{name}/blobs/{digest}"


# -- the fill token: proof that a fill request comes from this registry --------------------------


def _fill_id(digest: Digest) -> str:
    return f"proxy-fill-{digest.algorithm.value}-{digest.hex}"


def fill_token(scope: Scope, name: str, digest: Digest) -> str:
    expires = int(time.time()) + FILL_TOKEN_LIFETIME
    return scope.api.signer.pack(UploadState(name, _fill_id(digest), expires, "proxy-fill"))


def fill_token_valid(scope: Scope, name: str, digest: Digest) -> bool:
    token = scope.request.headers.get(FILL_HEADER)
    if not token:
        return False
    try:
        state = scope.api.signer.unpack(token)
    except InvalidStateError:
        return False
    return (state.name == name and state.upload_id == _fill_id(digest) and state.started_at == "proxy-fill"
            and state.offset >= time.time())


def start_fill(scope: Scope, name: str, digest: Digest) -> None:
    """Ask this registry, at its own URL, to copy the blob: the request lands on another
    invocation, which runs until the copy is done (a function's own timeout, not the
    gateway's 30 s, bounds it). Sent before this response: a function's process is
    frozen once it has answered."""
    import urllib3

    url = _own_url(scope, name, digest)
    try:
        urllib3.PoolManager(retries=False).request(
            "GET", url, headers={FILL_HEADER: fill_token(scope, name, digest)},
            timeout=urllib3.Timeout(connect=3.0, read=FILL_START_TIMEOUT))
    except urllib3.exceptions.ReadTimeoutError:
        pass  # the fill is running
    except urllib3.exceptions.HTTPError as exc:
        log.warning("proxy: could not start the copy of %s at %s: %s", digest, url, exc)


def is_fill_request(scope: Scope) -> bool:
    """A blob GET carrying a valid fill token: this registry asking itself, which needs
    no client credentials (the token is signed with http.secret)."""
    if scope.request.method.upper() != "GET" or FILL_HEADER not in scope.request.headers:
        return False
    try:
        digest = Digest.parse(scope.params.get("digest", ""))
    except (DigestError, TypeError):
        return False
    return fill_token_valid(scope, scope.params.get("name", ""), digest)
