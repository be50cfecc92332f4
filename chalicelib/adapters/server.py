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
import math
import os
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from ..api import FileBody, Headers, RegistryAPI, Request, Response
from ..api.http import parse_query

if TYPE_CHECKING:
    from ..config import HTTPConfig

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

    def read(self, size: int = -1) -> Union[bytes, bytearray]:
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


def wsgi_app(api: RegistryAPI, access_log: Any = None) -> Callable:
    """The api as a WSGI app; with access_log (logs.AccessLog), one line per request
    once its response body is done (the server closes the iterable)."""

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        response: Response = api.handle(_request_from_environ(environ))
        _drain(environ)
        start_response(f"{response.status} {_REASONS.get(response.status, '')}", response.headers)
        return _body(environ, response)

    if access_log is None:
        return application

    def logged(environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        answer: list = []

        def watched(status: str, headers: list, exc_info: Any = None) -> Any:
            answer.append((status, headers))
            return start_response(status, headers, exc_info)

        def done() -> None:
            if answer:
                _log_access(access_log, environ, answer[0], time.perf_counter() - started)

        body = application(environ, watched)
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(body, wrapper):  # keep gunicorn's sendfile
            wrapped: Any = body
            wrapped.filelike = _ClosingFile(wrapped.filelike, done)
            wrapped.close = wrapped.filelike.close
            return wrapped
        return _ClosingBody(body, done)

    return logged


def _body(environ: dict, response: Response) -> Iterable[bytes]:
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


class _ClosingBody:
    """A response body whose close() (the server's, once the body went out) also calls done."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]):
        self._body = body
        self._done = done

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


class _ClosingFile:
    """A file handed to gunicorn's sendfile, whose close() also calls done."""

    def __init__(self, file: Any, done: Callable[[], None]):
        self._file = file
        self._done = done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._done()


def _log_access(access_log: Any, environ: dict, answer: tuple, seconds: float) -> None:
    status, headers = answer
    size: Optional[int] = None
    if environ.get("REQUEST_METHOD", "").upper() != "HEAD":
        for key, value in headers:
            if key.lower() == "content-length":
                size = int(value)
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    access_log.log(environ.get("REMOTE_ADDR", ""), environ.get("REQUEST_METHOD", ""), path,
                   environ.get("QUERY_STRING", ""), protocol.partition("/")[2] or "1.1", int(status.split()[0]),
                   size, seconds, environ.get("HTTP_USER_AGENT", ""))


SERVERS = ("uvicorn", "granian", "gunicorn")
# Measured on 2 cores: one granian worker (its HTTP work runs on Rust threads) stays
# far under 150 MB during a 1 GiB push; two reached ~140 MB for a small gain.
DEFAULT_WORKERS = {"uvicorn": 1, "granian": 1, "gunicorn": 2}


def serve(
    api: RegistryAPI, addr: str, workers: Optional[int] = None, threads: int = 8, http: Optional[HTTPConfig] = None,
    accesslog_disabled: bool = False,
) -> None:
    """Serve the api (already built) on addr with the server STRATUS_SERVER names.

    `http` brings http.net, http.tls, http.draintimeout, http.timeout and
    http.maxconcurrentuploads (read from the environment's configuration when not
    given); addr is host:port, or a socket path when http.net is unix. Raises
    ConfigError for a TLS setting the chosen server cannot apply, or TLS files that
    do not load."""
    name = (os.environ.get("STRATUS_SERVER") or SERVERS[0]).strip().lower()
    if name not in SERVERS:
        raise SystemExit(f"STRATUS_SERVER: expected one of {', '.join(SERVERS)}, got {name!r}")
    workers = workers or int(os.environ.get("STRATUS_WORKERS") or DEFAULT_WORKERS[name])
    http = http or _http_config()
    if http.debug.addr and http.debug.prometheus_enabled and (name != "uvicorn" or workers > 1):
        # not silently: the counters live in each process, the debug listener in this one
        log.warning("http.debug.prometheus: /metrics counts the requests this process answers; %s with %d "
                    "worker(s) answers them in worker processes, whose counts it does not see: serve with "
                    "uvicorn and one worker for metrics", name, workers)
    access = None if accesslog_disabled else _access_log()
    if name == "uvicorn":
        _serve_uvicorn(api, addr, workers, threads, http, access)
    elif name == "granian":
        _serve_granian(api, addr, workers, threads, http, access)
    else:
        _serve_gunicorn(api, addr, workers, threads, http, access)


def _http_config() -> HTTPConfig:
    from ..config import load_config

    return load_config().http


def _ssl_context(http: HTTPConfig) -> Any:
    if http.tls is None:
        return None
    from ..tls import server_context

    return server_context(http.tls)


def _where(http: HTTPConfig, addr: str) -> str:
    from ..tls import describe

    return f"{describe(http.tls)} on {'unix:' + addr if http.net == 'unix' else addr}"


def _serve_uvicorn(api: RegistryAPI, addr: str, workers: int, threads: int, http: HTTPConfig,
                   access: Optional[str]) -> None:
    """The api as an ASGI app (asgi.py) on uvicorn with timeouts (server_uvicorn.py):
    no thread waits on a client's socket, see docs/benchmarks.md for the measurements."""
    from . import server_uvicorn
    from .asgi import ASGIApp, Limits
    from ..logs import enable_access_log

    timeouts = http.timeouts
    context = _ssl_context(http)
    app = ASGIApp(api, Limits(read_timeout=timeouts.read, max_uploads=http.max_concurrent_uploads, threads=threads),
                  access_log=None if access is None else enable_access_log(access))
    if http.net == "unix":
        sock = server_uvicorn.listen_unix(addr)
    else:
        host, port = _split_addr(addr)
        sock = server_uvicorn.listen(host, port)
    log.info("stratus listening, %s (uvicorn, %d worker(s) x %d threads, %d uploads)",
             _where(http, addr), workers, threads, http.max_concurrent_uploads)
    try:
        server_uvicorn.run(app, sock, workers, timeouts, ssl_context=context, drain=http.draintimeout)
    finally:
        if http.net == "unix":
            _unlink(addr)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _access_log() -> Optional[str]:
    """STRATUS_ACCESS_LOG: unset or 0 is off, 1 logs to stderr (through the root logger's
    handlers, formatted by log.formatter), else the path of a file."""
    value = os.environ.get("STRATUS_ACCESS_LOG", "").strip()
    if value in ("", "0"):
        return None
    return "-" if value == "1" else value


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


_APP: Optional[Callable] = None


def _granian_app(target: str) -> Callable:
    """granian's loader, called in each worker: the app built before forking, or, where
    workers are spawned rather than forked, one built again from the same configuration
    (cli's serve left its path in REGISTRY_CONFIGURATION_PATH; REGISTRY_* and STRATUS_*
    variables are inherited)."""
    if _APP is not None:
        return _APP
    from ..bootstrap import Stratus
    from ..debug_server import HEALTH_STATE_ENV, Health, HealthGatedAPI
    from ..logs import enable_access_log

    owner = Stratus.load()
    api = owner.api
    state = os.environ.get(HEALTH_STATE_ENV)
    if state:  # the parent runs health checks: this worker is gated by what they publish
        api = HealthGatedAPI(api, Health.attach(state))
    access = None if owner.config.log.accesslog_disabled else _access_log()
    return _without_process_headers(wsgi_app(api, None if access is None else enable_access_log(access)))


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


def _granian_tls(http: HTTPConfig) -> dict[str, Any]:
    """granian's TLS options for http.tls, or ConfigError naming what granian cannot do."""
    from pathlib import Path

    from ..config import ConfigError

    tls = http.tls
    if tls is None:
        return {}
    if tls.ciphersuites:
        raise ConfigError("http.tls.ciphersuites: not supported by STRATUS_SERVER=granian (it uses its own "
                          "suites); remove it or serve with uvicorn or gunicorn", key="http.tls.ciphersuites")
    if tls.clientcas and tls.clientauth == "verify-client-cert-if-given":
        raise ConfigError("http.tls.clientauth: verify-client-cert-if-given is not supported by "
                          "STRATUS_SERVER=granian; serve with uvicorn or gunicorn", key="http.tls.clientauth")
    _ssl_context(http)  # the files load, or the error names the key, before granian starts
    options: dict[str, Any] = {"ssl_cert": Path(tls.certificate), "ssl_key": Path(tls.key)}
    from granian.constants import SSLProtocols

    options["ssl_protocol_min"] = SSLProtocols.tls13 if tls.minimumtls == "tls1.3" else SSLProtocols.tls12
    if tls.clientcas:
        options["ssl_ca"] = Path(_ca_bundle(tls.clientcas))
        options["ssl_client_verify"] = True
    return options


def _ca_bundle(paths: list[str]) -> str:
    """One file of the CAs (granian takes one): written beside nothing else, removed at exit."""
    import atexit
    import tempfile

    handle, bundle = tempfile.mkstemp(prefix="stratus-clientcas-", suffix=".pem")
    with os.fdopen(handle, "wb") as out:
        for path in paths:
            with open(path, "rb") as ca:
                out.write(ca.read().rstrip(b"\n") + b"\n")
    atexit.register(_unlink, bundle)
    return bundle


def _serve_granian(api: RegistryAPI, addr: str, workers: int, threads: int, http: HTTPConfig,
                   access: Optional[str]) -> None:
    global _APP
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from ..logs import enable_access_log

    tls = _granian_tls(http)
    where: dict[str, Any] = {}
    if http.net == "unix":
        from pathlib import Path

        where["uds"] = Path(addr)
    else:
        host, port = _split_addr(addr)
        where.update(address=host, port=port)
    _APP = _without_process_headers(wsgi_app(api, None if access is None else enable_access_log(access)))
    server = Granian(
        "stratus",
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=int(http.timeouts.readheader * 1000)),
        workers=workers,
        blocking_threads=threads,
        log_level=LogLevels.warning,
        log_access=False,  # ours (wsgi_app): with the query string redacted, and the duration
        # http.draintimeout: how long a stopping worker gets before granian kills it
        workers_kill_timeout=None if http.draintimeout is None else max(1, math.ceil(http.draintimeout)),
        **where,
        **tls,
    )
    log.info("stratus listening, %s (granian, %d worker(s) x %d threads)", _where(http, addr), workers, threads)
    server.serve(target_loader=_granian_app)


def _serve_gunicorn(api: RegistryAPI, addr: str, workers: int, threads: int, http: HTTPConfig,
                    access: Optional[str]) -> None:
    """Run gunicorn in this process with the api already built (preloaded)."""
    from gunicorn.app.base import BaseApplication

    from ..logs import enable_access_log

    if http.net == "unix":
        bind = f"unix:{addr}"
    else:
        host, port = _split_addr(addr)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    context = _ssl_context(http)
    app = wsgi_app(api, None if access is None else enable_access_log(access))
    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "keepalive": max(1, round(http.timeouts.idle)),
        # large pushes stream for minutes; a stalled client is cut by the OS, not a timer
        "timeout": 0,
        # http.draintimeout: how long stopping workers finish their requests (unset: a day)
        "graceful_timeout": 86400 if http.draintimeout is None else math.ceil(http.draintimeout),  # whole seconds
        "accesslog": None,  # ours (wsgi_app)
        "loglevel": "warning",
        "preload_app": True,
    }
    if context is not None:
        # gunicorn wraps its sockets only when certfile is set; the context it then asks
        # for is ours, so clientcas, minimumtls and the suites are applied whole
        options["certfile"] = http.tls.certificate  # type: ignore[union-attr]
        options["keyfile"] = http.tls.key  # type: ignore[union-attr]
        options["ssl_context"] = lambda config, default: context

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Callable:
            return app

    log.info("stratus listening, %s (gunicorn, %d worker(s) x %d threads)", _where(http, addr), workers, threads)
    _Server().run()
