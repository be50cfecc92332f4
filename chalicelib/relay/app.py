"""The relay's request handling: validate, forward, and carry blob uploads.

`Relay.handle` has the api's shape (Request in, Response out), so the self-hosted
server's WSGI adapter and servers (chalicelib/adapters/server.py) serve it unchanged.

Every request goes to the upstream with the client's credentials; what comes back
goes to the client with Locations into the upstream pointed at the relay. Upload
requests are carried by uploads.py instead of being forwarded byte for byte.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, BinaryIO, Iterator, Optional
from urllib.parse import urlencode

from ..api.app import API_VERSION_HEADER, match_route, status_of
from ..api.errors import HTTPError, error_response, from_registry_error
from ..api.http import JSON, Request, Response
from ..api.params import parse_content_range, parse_digest
from ..registry.errors import BlobUploadUnknownError, RangeInvalidError, RegistryError
from ..registry.names import validate_name
from .senders import DIRECT_HEADER, Target, UpstreamAnswer, answer
from .upstream import REQUEST_DROP, Answer, Body, Upstream, UpstreamError, response_headers
from .uploads import Session, Uploads

if TYPE_CHECKING:
    import urllib3

log = logging.getLogger("stratus.relay")

STREAM_PIECE = 256 << 10
# What only the relay and the upstream talk about: a client sends any chunk size to the
# relay, and knows nothing of direct uploads.
_LINK_TARGET = re.compile(r"<([^>]*)>")
SESSION_ONLY = frozenset({DIRECT_HEADER.lower(), "oci-chunk-max-length", "oci-chunk-min-length"})


class Relay:
    def __init__(self, upstream: Upstream, uploads: Uploads):
        self.upstream = upstream
        self.uploads = uploads

    def handle(self, request: Request) -> Response:
        try:
            response = self._dispatch(request)
        except HTTPError as exc:
            response = exc.response
        except RegistryError as exc:
            response = from_registry_error(exc, status_of(exc))
        except UpstreamError as exc:
            log.warning("%s %s: %s", request.method, request.path, exc)
            response = error_response(
                "UNAVAILABLE", exc.message, {"upstream": self.upstream.display, "reason": str(exc.cause)[:300]},
                status=exc.status,
            )
        except UpstreamAnswer as exc:
            response = self._answer(request, exc)
        except Exception:
            log.exception("relay error on %s %s", request.method, request.path)
            response = error_response("UNKNOWN", "relay error", status=500)
        if not any(k.lower() == "docker-distribution-api-version" for k, _ in response.headers):
            response.headers.append(API_VERSION_HEADER)
        return response

    # -- routing -------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Response:
        route, params = match_route(request.path)
        # the registry's own checks, so bad input gets its errors without a round trip
        if "name" in params:
            validate_name(params["name"])
        if route in ("blob", "referrers"):
            parse_digest(params["digest"])
        method = request.method.upper()
        if route == "uploads" and method == "POST":
            return self._start(request, params["name"])
        if route == "upload" and method in ("PATCH", "PUT", "GET", "DELETE"):
            return self._upload(request, method, params["name"], params["upload_id"])
        return self.forward(request)

    # -- plain forwarding -----------------------------------------------------------

    def _url(self, request: Request, query: Optional[dict] = None) -> str:
        query = request.query if query is None else query
        text = urlencode([(k, v) for k, values in query.items() for v in values])
        return self.upstream.url(request.path + (f"?{text}" if text else ""))

    def _headers(self, request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k not in REQUEST_DROP}

    def forward(self, request: Request, query: Optional[dict] = None) -> Response:
        headers = self._headers(request)
        body: Body = None
        chunked = False
        if request.content_length:
            headers["Content-Length"] = str(request.content_length)
            body = request.body
        elif request.content_length is None and (
                request.method.upper() in ("POST", "PUT", "PATCH")
                or "chunked" in (request.headers.get("Transfer-Encoding") or "").lower()):
            body, chunked = _pieces(request.body), True  # a body of unknown length, streamed on
        elif request.method.upper() in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        response = self.upstream.request(request.method, self._url(request, query), headers, body,
                                         stream=True, chunked=chunked)
        client_headers = self._client_headers(request, response)
        if request.method.upper() == "HEAD" or response.status in (204, 304):
            response.drain_conn()  # no body: the connection goes back to the pool now
            response.release_conn()
            return Response(response.status, client_headers, b"")
        return Response(response.status, client_headers, _stream(response))

    def _client_headers(
        self, request: Request, response: Answer, drop: frozenset = frozenset()
    ) -> list[tuple[str, str]]:
        headers = response_headers(response, drop)
        return [(k, self._rewrite(request, k, v)) for k, v in headers]

    def _rewrite(self, request: Request, name: str, value: str) -> str:
        lowered = name.lower()
        if lowered == "location":
            return self._location(request, value)
        if lowered == "link":  # pagination of tags and the catalog: <url>; rel="next"
            return _LINK_TARGET.sub(lambda m: f"<{self._location(request, m.group(1))}>", value)
        return value

    def _location(self, request: Request, location: str) -> str:
        """A Location into the upstream, pointed at the relay; any other (a presigned
        storage URL a blob GET redirects to) is left for the client to follow."""
        path = self.upstream.relay_path(location)
        return location if path is None else request.base_url.rstrip("/") + path

    def _answer(self, request: Request, exc: UpstreamAnswer) -> Response:
        headers = [(k, self._rewrite(request, k, v))
                   for k, v in exc.headers if k.lower() not in ("content-length", "content-type")]
        body = exc.body or b""
        content_type = next((v for k, v in exc.headers if k.lower() == "content-type"), JSON if body else None)
        if content_type:
            headers.append(("Content-Type", content_type))
        return Response(exc.status, headers + [("Content-Length", str(len(body)))], body)

    # -- uploads -------------------------------------------------------------------

    def _auth(self, request: Request) -> dict[str, str]:
        value = request.headers.get("Authorization")
        return {"Authorization": value} if value else {}

    def _start(self, request: Request, name: str) -> Response:
        """POST: open an upstream upload; a `digest` (a blob in one request) is carried
        like a PATCH and a PUT, a mount goes as is."""
        digest = request.arg("digest")
        if digest is not None:
            parse_digest(digest)
        if request.arg("mount") is None and digest is None:
            query = request.query
        else:
            query = {k: v for k, v in request.query.items() if k != "digest"}
        response = self.upstream.request(
            "POST", self._url(request, query), {**self._headers(request), "Content-Length": "0"}, b"",
        )
        if response.status != 202 or "Location" not in response.headers:
            return Response(response.status, self._client_headers(request, response), response.data or b"")
        session = self._open(request, name, response)
        if digest is None:
            return self._session_response(request, session, 202)
        return self._carry(request, session, digest)

    def _open(self, request: Request, name: str, response: Answer) -> Session:
        location = response.headers["Location"]
        client_path = self.upstream.relay_path(location)
        route, params = match_route((client_path or "").split("?", 1)[0])
        if client_path is None or route != "upload":
            raise UpstreamAnswer(502, [], _bad_upstream(f"upload Location {location[:200]!r} is not an upload"))
        target = Target.from_session(self.upstream, name, params["upload_id"], response)
        return self.uploads.open(name, client_path, target)

    def _session_response(self, request: Request, session: Session, status: int) -> Response:
        end = session.received - 1 if session.received else 0
        return Response(status, [
            ("Location", request.base_url.rstrip("/") + session.client_path),
            ("Range", f"0-{end}"),
            ("Docker-Upload-UUID", session.id),
            ("Content-Length", "0"),
        ])

    def _upload(self, request: Request, method: str, name: str, upload_id: str) -> Response:
        session = self.uploads.get(name, upload_id, request.arg("_state"))
        if session is None:
            if method in ("GET", "DELETE"):
                return self.forward(request)
            session = self._adopt(request, name, upload_id)
        if not session.lock.acquire(blocking=False):
            return error_response("UNAVAILABLE", "another request is writing to this upload", status=503)
        try:
            return self._in_session(request, method, session)
        except BaseException:
            # what the upstream holds is no longer what the session thinks: a client that
            # goes on is answered from the upstream's side (_adopt), one that starts again
            # resumes from the journal
            self.uploads.close(session)
            raise
        finally:
            session.lock.release()

    def _in_session(self, request: Request, method: str, session: Session) -> Response:
        auth = self._auth(request)
        if method == "GET":
            return self._session_response(request, session, 204)
        if method == "DELETE":
            self.uploads.close(session)
            response = self.upstream.request("DELETE", session.target.location, headers=auth)
            if session.entry is not None and response.status in (202, 204, 404):
                session.entry.remove()
            return Response(response.status, self._client_headers(request, response), response.data or b"")
        content_range = parse_content_range(request.headers.get("Content-Range"))
        if method == "PATCH":
            try:
                session.check_start(content_range, request.content_length)
            except RangeInvalidError as exc:
                refusal = from_registry_error(exc, 416)
                refusal.headers += [h for h in self._session_response(request, session, 416).headers
                                    if h[0] != "Content-Length"]
                return refusal
            session.absorb(request.body, request.content_length, auth)
            session.end_of_chunk(auth)
            return self._session_response(request, session, 202)
        digest = str(parse_digest(request.arg("digest")))  # the same text, known to be there
        if content_range is not None:
            session.check_start(content_range, request.content_length)
        return self._carry(request, session, digest)

    def _carry(self, request: Request, session: Session, digest: str) -> Response:
        """The request's body is the rest of the blob: send it, then complete upstream."""
        auth = self._auth(request)
        try:
            session.absorb(request.body, request.content_length, auth)
            response = session.finish(digest, auth)
        finally:
            self.uploads.close(session)
        return Response(response.status, self._client_headers(request, response, SESSION_ONLY), response.data or b"")

    def _adopt(self, request: Request, name: str, upload_id: str) -> Session:
        """An upload this relay did not open (it was restarted between the client's
        POST and PATCH): carried on if the upstream's side of it is plain to see."""
        response = self.upstream.request("GET", self._url(request), headers=self._auth(request))
        if response.status != 204 or "Location" not in response.headers:
            raise answer(response)
        target = Target.from_session(self.upstream, name, upload_id, response)
        if target.direct_kind and target.offset:
            raise BlobUploadUnknownError(
                "the relay restarted during this upload; start the blob again (what the upstream holds is reused)")
        client_path = request.path + ("?" + urlencode([("_state", request.arg("_state"))]) if request.arg("_state") else "")
        return self.uploads.open(name, client_path, target, hashing=target.offset == 0)


def _pieces(body: BinaryIO) -> Iterator[bytes]:
    while True:
        piece = body.read(STREAM_PIECE)
        if not piece:
            return
        yield piece


def _stream(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    complete = False
    try:
        for piece in response.stream(STREAM_PIECE, decode_content=False):
            yield piece
        complete = True
    finally:
        if not complete:  # the client went away mid-body: this connection cannot be reused
            response.close()
        response.release_conn()


def _bad_upstream(message: str) -> bytes:
    from ..api.errors import error_body

    return error_body("UNAVAILABLE", message)
