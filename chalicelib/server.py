"""The self-hosted server: a WSGI adapter over the api, served by granian or gunicorn.

granian (the default) parses HTTP in Rust and runs the app on a pool of threads;
measured on 2 cores against gunicorn's gthread workers (bench.compare_servers) it
spent 2-3x less CPU per manifest GET or blob HEAD at equal push and pull rates,
streaming request bodies either way. STRATUS_SERVER=gunicorn selects gunicorn,
where bodies are read straight from the socket and blob GETs are sendfile()d
through wsgi.file_wrapper; under granian a blob is sent in 1 MiB pieces.
"""
from __future__ import annotations

import logging
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from .api import FileBody, Headers, RegistryAPI, Request, Response
from .api.http import parse_query

if TYPE_CHECKING:
    from .config import HTTPConfig

log = logging.getLogger("stratus.server")

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SENDFILE_BLOCK = 1 << 20
# Without sendfile (granian), a blob goes out in pieces the server queues a few of
# per connection: smaller pieces keep a slow reader from holding ~10 MiB each.
_STREAM_PIECE = 256 << 10


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
        headers.append(("Content-Length", length_text))
        try:
            content_length = int(length_text)
        except ValueError:
            pass  # not a number: no known length
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


# What is left of a request body the handler did not read (an upload refused before
# its chunk was read, a manifest over 4 MiB) is read and dropped up to this much, so
# the client, still sending, gets to read the error instead of a reset connection;
# beyond it the server may close the connection.
_DRAIN_LIMIT = 8 << 20


def _drain(environ: dict) -> None:
    length = environ.get("CONTENT_LENGTH")
    if not (length and length != "0") and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    stream = environ["wsgi.input"]
    left = _DRAIN_LIMIT
    try:
        while left > 0:
            piece = stream.read(min(left, 64 << 10))
            if not piece:
                return
            left -= len(piece)
    except Exception:  # the client went away: nothing to keep alive
        return


def _has_fd(file) -> bool:
    """Whether file is backed by a descriptor sendfile can read. Every io stream has a
    fileno attribute; a driver's stream over the network (S3, Azure, RADOS) raises
    from it, and handing such a stream to the file wrapper made gunicorn read the
    object to its end whatever the Range asked for."""
    try:
        file.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return False
    return True


def wsgi_app(api: RegistryAPI) -> Callable:
    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        response: Response = api.handle(_request_from_environ(environ))
        _drain(environ)
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
            if wrapper is not None and _has_fd(body.file):
                return wrapper(body.file, _SENDFILE_BLOCK)
            return body.pieces(_STREAM_PIECE)
        if isinstance(body, (bytes, bytearray)):
            return [bytes(body)]
        return body

    return application


SERVERS = ("uvicorn", "granian", "gunicorn")
# Measured on 2 cores: one granian worker (its HTTP work runs on Rust threads) stays
# far under 150 MB during a 1 GiB push; two reached ~140 MB for a small gain.
DEFAULT_WORKERS = {"uvicorn": 1, "granian": 1, "gunicorn": 2}


def serve(
    api: RegistryAPI, addr: str, workers: Optional[int] = None, threads: int = 8, http: Optional[HTTPConfig] = None,
) -> None:
    """Serve the api (already built) on addr with the server STRATUS_SERVER names.

    `http` brings http.timeout and http.maxconcurrentuploads (read from the
    environment's configuration when not given)."""
    name = (os.environ.get("STRATUS_SERVER") or SERVERS[0]).strip().lower()
    if name not in SERVERS:
        raise SystemExit(f"STRATUS_SERVER: expected one of {', '.join(SERVERS)}, got {name!r}")
    workers = workers or int(os.environ.get("STRATUS_WORKERS") or DEFAULT_WORKERS[name])
    http = http or _http_config()
    if name == "uvicorn":
        _serve_uvicorn(api, addr, workers, threads, http)
    elif name == "granian":
        _serve_granian(api, addr, workers, threads, http)
    else:
        _serve_gunicorn(api, addr, workers, threads, http)


def _http_config() -> HTTPConfig:
    from .config import load_config

    return load_config().http


def _serve_uvicorn(api: RegistryAPI, addr: str, workers: int, threads: int, http: HTTPConfig) -> None:
    """The api as an ASGI app (asgi.py) on uvicorn with timeouts (server_uvicorn.py):
    no thread waits on a client's socket, see docs/benchmarks.md for the measurements."""
    from . import server_uvicorn
    from .asgi import ASGIApp, Limits

    host, port = _split_addr(addr)
    timeouts = http.timeouts
    app = ASGIApp(api, Limits(read_timeout=timeouts.read, max_uploads=http.max_concurrent_uploads, threads=threads))
    sock = server_uvicorn.listen(host, port)
    log.info("stratus listening on %s:%d (uvicorn, %d worker(s) x %d threads, %d uploads)",
             host, port, workers, threads, http.max_concurrent_uploads)
    server_uvicorn.run(app, sock, workers, timeouts, _access_log())


def _access_log() -> Optional[str]:
    """STRATUS_ACCESS_LOG: unset or 0 is off, 1 logs to stderr, else gunicorn's log file."""
    value = os.environ.get("STRATUS_ACCESS_LOG", "").strip()
    if value in ("", "0"):
        return None
    return "-" if value == "1" else value


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


_APP: Optional[Callable] = None


def _granian_app(target: str) -> Callable:
    """granian's loader, called in each worker: the app built before forking, or
    (where workers are spawned rather than forked) one built from the same config."""
    if _APP is not None:
        return _APP
    from .bootstrap import build_api

    return _without_process_headers(wsgi_app(build_api()))


def _without_process_headers(app: Callable) -> Callable:
    """granian starts every environ from os.environ, so a variable such as HTTP_PROXY
    in the server's environment would read as a request header; drop those."""
    inherited = {k: v for k, v in os.environ.items() if k.startswith("HTTP_")}
    if not inherited:
        return app

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        for key, value in inherited.items():
            if environ.get(key) == value:
                del environ[key]
        return app(environ, start_response)

    return application


def _serve_granian(api: RegistryAPI, addr: str, workers: int, threads: int, http: HTTPConfig) -> None:
    global _APP
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    host, port = _split_addr(addr)
    _APP = _without_process_headers(wsgi_app(api))
    access_log = _access_log()
    server = Granian(
        "stratus",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=int(http.timeouts.readheader * 1000)),
        workers=workers,
        blocking_threads=threads,
        log_level=LogLevels.warning,
        log_access=bool(access_log),
    )
    log.info("stratus listening on %s:%d (granian, %d worker(s) x %d threads)", host, port, workers, threads)
    server.serve(target_loader=_granian_app)


def _serve_gunicorn(api: RegistryAPI, addr: str, workers: int, threads: int, http: HTTPConfig) -> None:
    """Run gunicorn in this process with the api already built (preloaded)."""
    from gunicorn.app.base import BaseApplication

    host, port = _split_addr(addr)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    app = wsgi_app(api)
    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "keepalive": max(1, round(http.timeouts.idle)),
        # large pushes stream for minutes; a stalled client is cut by the OS, not a timer
        "timeout": 0,
        "accesslog": _access_log(),
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
