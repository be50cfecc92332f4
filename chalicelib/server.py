"""The self-hosted server: a WSGI adapter over the api, served by gunicorn.

Bodies stream both ways: a PATCH or PUT is read from wsgi.input in 1 MiB pieces
straight into storage, and a blob GET hands the open file to the server's
file_wrapper so gunicorn can sendfile() it.
"""
from __future__ import annotations

import logging
import os
from http import HTTPStatus
from typing import Callable, Iterable, Optional

from .api import FileBody, Headers, RegistryAPI, Request, Response
from .api.http import parse_query

log = logging.getLogger("stratus.server")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SENDFILE_BLOCK = 1 << 20


class _SocketBody:
    """A Content-Length request body read straight from gunicorn's socket.

    gunicorn's own wsgi.input copies every piece of a body through several BytesIO
    buffers; for a blob push that was half of the server's CPU. This reads each
    piece into a fresh buffer with recv_into (the GIL is released while it waits)
    after taking whatever gunicorn already read past the headers, and keeps
    gunicorn's LengthReader count in step so keep-alive finds the next request.
    """

    __slots__ = ("_body", "_reader", "_unreader", "_sock")

    def __init__(self, body, reader, unreader, sock) -> None:
        self._body = body
        self._reader = reader
        self._unreader = unreader
        self._sock = sock

    @classmethod
    def wrap(cls, body):
        """The fast reader when the body is a plain Content-Length one not yet read, else body."""
        reader = getattr(body, "reader", None)
        unreader = getattr(reader, "unreader", None)
        sock = getattr(unreader, "sock", None)
        if (
            type(reader).__name__ != "LengthReader"
            or sock is None
            or not hasattr(unreader, "take_buffered")
            or body.buf.tell()
        ):
            return body
        return cls(body, reader, unreader, sock)

    def read(self, size: int = -1) -> bytes:
        remaining = self._reader.length
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        out = bytearray(size)
        view = memoryview(out)
        got = 0
        try:
            held = self._unreader.take_buffered()
            if held:
                got = min(len(held), size)
                view[:got] = held[:got]
                if len(held) > got:
                    self._unreader.unread(held[got:])
            while got < size:
                n = self._sock.recv_into(view[got:], size - got)
                if not n:
                    break
                got += n
        except BaseException:
            self._body.failed = True  # where the next request starts is unknown now
            raise
        finally:
            view.release()
            self._reader.length -= got
        if got < size:
            return bytes(out[:got])
        return out  # a fresh buffer nobody else holds: safe to keep


def _request_from_environ(environ: dict) -> Request:
    headers = [
        (key[5:].replace("_", "-"), value) for key, value in environ.items() if key.startswith("HTTP_")
    ]
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", environ["CONTENT_TYPE"]))
    length_text = environ.get("CONTENT_LENGTH")
    content_length: Optional[int] = None
    if length_text:
        try:
            content_length = int(length_text)
        except ValueError:
            content_length = None
    if length_text:
        headers.append(("Content-Length", length_text))
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    # PEP 3333 hands the path over as latin-1 decoded bytes
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    return Request(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        path=path,
        query=parse_query(environ.get("QUERY_STRING", "")),
        headers=Headers(headers),
        body=_SocketBody.wrap(environ["wsgi.input"]) if content_length else environ["wsgi.input"],
        content_length=content_length,
        base_url=f"{environ.get('wsgi.url_scheme', 'http')}://{host}",
        remote_addr=environ.get("REMOTE_ADDR", ""),
    )


def wsgi_app(api: RegistryAPI) -> Callable:
    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        response: Response = api.handle(_request_from_environ(environ))
        start_response(f"{response.status} {_REASONS.get(response.status, '')}", response.headers)
        body = response.body
        if environ.get("REQUEST_METHOD", "").upper() == "HEAD":
            # a HEAD keeps the GET's headers (Content-Length) but never a body, even an error's
            if isinstance(body, FileBody):
                body.close()
            return []
        if isinstance(body, FileBody):
            wrapper = environ.get("wsgi.file_wrapper")
            # sendfile sends to the file's end; the server stops at Content-Length
            if wrapper is not None and hasattr(body.file, "fileno"):
                return wrapper(body.file, _SENDFILE_BLOCK)
            return body
        if isinstance(body, (bytes, bytearray)):
            return [bytes(body)]
        return body

    return application


def serve(api: RegistryAPI, addr: str, workers: Optional[int] = None, threads: int = 8) -> None:
    """Run gunicorn in this process with the api already built (preloaded)."""
    from gunicorn.app.base import BaseApplication

    host, _, port = addr.rpartition(":")
    bind = f"{host or '0.0.0.0'}:{port}"
    app = wsgi_app(api)
    options = {
        "bind": bind,
        "workers": workers or int(os.environ.get("STRATUS_WORKERS", "2")),
        "threads": threads,
        "worker_class": "gthread",
        "keepalive": 75,
        # large pushes stream for minutes; a stalled client is cut by the OS, not a timer
        "timeout": 0,
        "accesslog": os.environ.get("STRATUS_ACCESS_LOG") or None,
        "loglevel": "warning",
        "preload_app": True,
    }

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Callable:
            return app

    log.info("stratus listening on %s", bind)
    _Server().run()


def start_upload_purger(driver, age: float, interval: float, dry_run: bool = False) -> None:
    """Purge abandoned uploads in the background, first after a jittered minute or so.

    The jitter keeps several replicas sharing one bucket from purging in lockstep.
    """
    import random
    import threading
    from datetime import timedelta

    from .context import background
    from .registry.maintenance import purge_uploads

    def run() -> None:
        delay = 60 + random.uniform(0, 60)
        while True:
            threading.Event().wait(delay)
            try:
                purge_uploads(background(), driver, timedelta(seconds=age), dry_run=dry_run)
            except Exception:
                log.exception("upload purging failed")
            delay = interval

    threading.Thread(target=run, name="upload-purger", daemon=True).start()
