"""Azure Functions requests and responses <-> api.http, for azure_func/function_app.py.

Two ways a request reaches the function. Classic: the host buffers the body and
hands the worker an azure.functions.HttpRequest holding it all, and takes a whole
HttpResponse back (request_from_functions / response_to_functions). Streaming (the
azurefunctions-extensions-http-fastapi package, with PYTHON_ENABLE_INIT_INDEXING=1):
the host proxies the HTTP request to the worker's own HTTP server and the function
gets a FastAPI Request whose body arrives as a stream and returns a response that
may stream (request_from_stream / response_to_stream), so a layer of up to the
host's limit passes through in bounded memory.
The host refuses request bodies over its limit (100 MB unless the app setting
FUNCTIONS_REQUEST_BODY_SIZE_LIMIT raises it), so the api advertises that as
OCI-Chunk-Max-Length and answers a longer chunk with SIZE_INVALID (the platform
policy: bootstrap.functions_platform).
"""
from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from typing import Any, AsyncIterator, BinaryIO, Iterator, Mapping, Optional, cast
from urllib.parse import unquote, urlsplit

from ..api import Headers, Request, Response
from ..api.http import FileBody, parse_query

log = logging.getLogger("stratus.azurefunctions")


def request_from_functions(req: Any) -> Request:
    """The api Request an azure.functions.HttpRequest describes."""
    url = urlsplit(req.url)
    headers = Headers(list(req.headers.items()))
    body = req.get_body() or b""
    # The front end terminates TLS; X-Forwarded-Proto says what the client used.
    scheme = (headers.get("x-forwarded-proto") or url.scheme or "https").split(",")[0].strip()
    host = url.netloc or headers.get("host", "localhost")
    forwarded_for = headers.get("x-forwarded-for") or ""
    return Request(
        method=req.method.upper(),
        path=unquote(url.path) or "/",
        query=parse_query(url.query),
        headers=headers,
        body=io.BytesIO(body),
        content_length=len(body),
        base_url=f"{scheme}://{host}",
        remote_addr=forwarded_for.split(",")[0].strip(),
    )


def response_to_functions(response: Response, method: str) -> Any:
    """An azure.functions.HttpResponse carrying response's status, headers and body."""
    import azure.functions as func

    body = b"" if method.upper() == "HEAD" else response.body_bytes()
    if method.upper() == "HEAD" and hasattr(response.body, "close"):
        response.body.close()
    merged: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for name, value in response.headers:
        lowered = name.lower()
        names.setdefault(lowered, name)
        merged.setdefault(lowered, []).append(value)
    # The host sets Content-Length from the body; only a HEAD must carry the GET's.
    if method.upper() != "HEAD":
        merged.pop("content-length", None)
    # The worker passes one value per header name; repeated headers join with commas.
    headers = {names[k]: ", ".join(v) for k, v in merged.items()}
    mimetype = headers.get(names.get("content-type", ""), "application/octet-stream")
    return func.HttpResponse(body=body, status_code=response.status, headers=headers, mimetype=mimetype)


class StreamBody(io.RawIOBase):
    """A blocking file over the worker's async request stream, read by the api in a thread.

    Each read waits for the next piece the event loop receives, so a body is never
    held whole: at most one network read (uvicorn pauses the socket at 64 KiB
    buffered) plus what the caller asked for is in memory.
    """

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop):
        self._chunks = chunks.__aiter__()
        self._loop = loop
        self._pending = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def _next_piece(self) -> bool:
        async def next_chunk() -> Optional[bytes]:
            try:
                return await self._chunks.__anext__()
            except StopAsyncIteration:
                return None

        piece = asyncio.run_coroutine_threadsafe(next_chunk(), self._loop).result()
        if piece is None:
            self._ended = True
            return False
        self._pending = memoryview(piece)
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._ended:
            self._next_piece()
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while not self._pending and not self._ended:
            self._next_piece()
        piece = bytes(self._pending[:size])
        self._pending = self._pending[len(piece):]
        return piece


def request_from_stream(req: Any, loop: asyncio.AbstractEventLoop) -> Request:
    """The api Request a FastAPI (starlette) Request from the worker's HTTP server describes.

    The host forwards the request to the worker the way YARP's default transform does:
    Host becomes the worker's own address, the client's Host, scheme and address
    travel in X-Forwarded-Host, -Proto and -For."""
    headers = Headers([(k, v) for k, v in req.headers.items()])
    length_text = headers.get("content-length")
    scheme = (headers.get("x-forwarded-proto") or req.url.scheme or "https").split(",")[0].strip()
    host = (headers.get("x-forwarded-host") or headers.get("host") or req.url.netloc).split(",")[0].strip()
    return Request(
        method=req.method.upper(),
        path=req.scope.get("path") or "/",  # the ASGI server decoded it once already
        query=parse_query(req.url.query),
        headers=headers,
        body=cast(BinaryIO, StreamBody(req.stream(), loop)),  # a RawIOBase: read() and readinto()
        content_length=int(length_text) if length_text and length_text.isdigit() else None,
        base_url=f"{scheme}://{host}",
        remote_addr=(headers.get("x-forwarded-for") or "").split(",")[0].strip(),
    )


def _pieces(body: Any) -> Iterator[bytes]:
    if isinstance(body, FileBody):
        return body.pieces(1 << 20)
    return iter(body)


def response_to_stream(response: Response, method: str) -> Any:
    """A starlette Response for the worker's HTTP server: bytes as they are, anything
    else (a blob served without redirect) streamed piece by piece."""
    from starlette.responses import Response as PlainResponse
    from starlette.responses import StreamingResponse

    head = method.upper() == "HEAD"
    headers = list(response.headers)
    body = response.body
    if head or isinstance(body, (bytes, bytearray)):
        close = getattr(body, "close", None)
        if head and close is not None:
            close()
        content = bytes(body) if isinstance(body, (bytes, bytearray)) and not head else b""
        out = PlainResponse(content=content, status_code=response.status)
        if not head:  # the bytes sent are what counts, whatever the api computed
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(content))))
    else:
        out = StreamingResponse(_pieces(body), status_code=response.status)
    # raw headers keep repeated names (several Link or WWW-Authenticate values)
    out.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return out


class FunctionsRegistry:
    """One Functions worker process's registry: a bootstrap.Stratus on the Functions
    platform, loaded by the first request or timer, and the translation of requests.

    Loading lazily keeps the cold start of the worker's indexing short and lets a
    configuration error surface as a logged 500 on the request instead of a host
    that will not start.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        self._environ = environ
        self._owner: Any = None
        self._lock = threading.Lock()

    @property
    def owner(self) -> Any:
        if self._owner is None:
            with self._lock:
                if self._owner is None:
                    from ..bootstrap import Stratus, functions_platform

                    environ = os.environ if self._environ is None else self._environ
                    self._owner = Stratus.load(platform=functions_platform(environ), environ=environ)
        return self._owner

    @property
    def api(self) -> Any:
        return self.owner.api

    @property
    def config(self) -> Any:
        return self.owner.config

    def handle(self, req: Any) -> Any:
        """Classic: an azure.functions.HttpRequest in, an HttpResponse out."""
        request = request_from_functions(req)
        return response_to_functions(self.api.handle(request), request.method)

    async def handle_stream(self, req: Any) -> Any:
        """Streaming: a FastAPI Request in, a starlette Response out.

        The api is synchronous and blocks on storage, so it runs in a thread while
        the event loop keeps receiving the body it reads."""
        request = request_from_stream(req, asyncio.get_running_loop())
        response = await asyncio.to_thread(lambda: self.api.handle(request))
        return response_to_stream(response, request.method)

    def purge_uploads(self) -> list[str]:
        """The timer's purge (bootstrap.Stratus.purge_uploads): the paths removed."""
        return self.owner.purge_uploads()["purged"]

    def collect_garbage(self) -> dict:
        """The timer's gc invocation: storage.maintenance.gc.budget, else 8 minutes of
        host.json's 10-minute functionTimeout (bootstrap.Stratus.collect_garbage)."""
        return self.owner.collect_garbage()
