"""`stratus serve` on uvicorn (httptools), with the timeouts uvicorn lacks.

uvicorn parses HTTP with httptools (llhttp, C) on one event loop, and bounds only
the idle time between requests. A client can otherwise hold a connection forever
by sending half a request line, and a response to a client that stopped reading
waits forever (asyncio's close() waits for the buffer to drain). The protocol here
adds, per connection:

- readheader: a request's line and headers must arrive within it, counted from the
  connection's start or the request's first byte; at most MAX_HEADER_BYTES of them.
- write: while the socket's send buffer stays full for this long, the connection
  is aborted (reset), which ends the response being sent.
- idle: uvicorn's keep-alive timeout.

The body timeout (read) is the app's (asgi.py), which receives the body.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
from http import HTTPStatus
from asyncio import TimerHandle
from collections import deque
from typing import Any, Optional, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..api.errors import error_body
from .asgi import MAX_TARGET

log = logging.getLogger("stratus.server")

MAX_HEADER_BYTES = 1 << 20  # as Go's net/http (http.DefaultMaxHeaderBytes)
# body bytes read ahead per request before the socket is paused: 256 KiB keeps 32
# concurrent pushes at 81-84 MB peak RSS (1 MiB: 93-101 MB) at the same push speed
BODY_BUFFER = 256 << 10


class BodyChannel:
    """A request body from the protocol to the app (asgi._Body), piece by piece.

    uvicorn's own receive() copies a body twice on its way (into a bytearray, then
    out of it) and pauses the socket every 64 KiB; this hands over the pieces the
    parser produced, pausing the socket only while BODY_BUFFER bytes wait unread.
    Used on the event loop's thread only.
    """

    def __init__(self, protocol: "TimeoutProtocol", cycle: Any):
        self._protocol = protocol
        self._cycle = cycle
        self.pieces: deque = deque()
        self.buffered = 0
        self.more = True
        self.disconnected = False
        self._event = asyncio.Event()

    def feed(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.buffered += len(piece)
        if self.buffered > BODY_BUFFER:
            self._protocol.flow.pause_reading()
        self._event.set()

    def end(self, disconnected: bool = False) -> None:
        self.more = False
        self.disconnected = self.disconnected or disconnected
        self._event.set()

    async def wait(self) -> None:
        """Until a piece arrives or the body ends (the caller bounds the wait)."""
        cycle = self._cycle
        if cycle.waiting_for_100_continue and not self._protocol.transport.is_closing():
            self._protocol.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        while not self.pieces and self.more:
            self._protocol.flow.resume_reading()
            self._event.clear()
            await self._event.wait()

    def take(self) -> list:
        """Every piece that arrived so far; reading resumes."""
        pieces = list(self.pieces)
        self.pieces.clear()
        self.buffered = 0
        if self.more:
            self._protocol.flow.resume_reading()
        return pieces


class Cork:
    """`with` it around a response's head and (whole) body: they leave in one write.

    uvicorn writes the head and the body apart, a send() system call each, and each
    one a GIL hand-off between the loop and the handler threads, which is where most
    of a small request's CPU went (docs/benchmarks.md). While corked, the request's
    cycle writes into this object; what it wrote (and a close it asked for) goes to
    the transport at the end. Used on the event loop's thread only.
    """

    __slots__ = ("_cycle", "_transport", "_pieces", "_close")

    def __init__(self, cycle: Any):
        self._cycle = cycle
        self._transport: Any = None
        self._pieces: list = []
        self._close = False

    def __enter__(self) -> None:
        self._transport = self._cycle.transport
        self._cycle.transport = self

    def __exit__(self, *exc: Any) -> None:
        transport, self._cycle.transport = self._transport, self._transport
        if self._pieces:
            transport.write(self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces))
            self._pieces = []
        if self._close:
            transport.close()

    # what uvicorn's cycle asks of its transport while it sends a response
    def write(self, data: bytes) -> None:
        self._pieces.append(data)

    def close(self) -> None:
        self._close = True

    def is_closing(self) -> bool:
        return self._close or self._transport.is_closing()


class TimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with header and write timeouts; set the class attributes first."""

    header_timeout: float = 30.0
    write_timeout: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: Optional[TimerHandle] = None
        self._write_timer: Optional[TimerHandle] = None
        self._header_bytes: Optional[int] = None  # counting while a request's head arrives
        self._refused = False

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._abort, "header")
        self._header_bytes = 0

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = None

    def _abort(self, why: str) -> None:
        log.debug("closing a connection from %s: %s timeout", self.client, why)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's sends end now, and uvicorn logs no error
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn writes a response's head and body apart: without TCP_NODELAY the body
        # waits for the client's delayed ACK (~40 ms per small response, measured)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._arm_header_timer()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_header_timer()
        channel = getattr(self.cycle, "stratus_body", None)
        if channel is not None:
            channel.end(disconnected=True)
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_bytes is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES + (64 << 10):
                self._refuse_431()
                return
        super().data_received(data)

    def _refuse(self, status: int, message: str, detail: Any = None) -> None:
        """Answer with an OCI error body before the app sees the request, and close."""
        if self._refused:
            return
        self._refused = True  # what the parser and the client do next is ignored
        body = error_body("UNSUPPORTED", message, detail)
        self._cancel_header_timer()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(), len(body), body)
        )
        self.transport.close()

    def _refuse_431(self) -> None:
        self._refuse(431, "request headers too large", {"max_bytes": MAX_HEADER_BYTES})

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def eof_received(self) -> Optional[bool]:  # type: ignore[override]  # asyncio's contract: True keeps it open
        """A client that half-closes mid-body (it sent all it will) still gets its answer:
        the body ends short, the handler answers (400 for a short chunk), then the
        connection closes. A half-close between requests closes it now."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self._header_bytes is not None:
            return None
        cycle.keep_alive = False
        cycle.more_body = False
        _channel(cycle).end()
        cycle.message_event.set()
        return True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["stratus.transport"] = self.transport  # type: ignore[typeddict-unknown-key]
        self.scope["stratus.flow"] = self.flow  # type: ignore[typeddict-unknown-key]
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        if len(self.url) > MAX_TARGET:  # httptools cannot parse it; asgi.py refuses shorter ones
            self._refuse(414, "request target too long", {"max_length": MAX_TARGET})
            return
        super().on_headers_complete()
        channel = BodyChannel(self, self.cycle)
        self.cycle.stratus_body = channel  # type: ignore[attr-defined]  # uvicorn's cycle carries ours
        self.scope["stratus.body"] = channel  # type: ignore[typeddict-unknown-key]
        self.scope["stratus.cork"] = Cork(self.cycle)  # type: ignore[typeddict-unknown-key]
        if self.transport.get_extra_info("sslcontext") is None:
            # os.sendfile writes to the socket beneath TLS: bytes would leave unencrypted
            self.scope["stratus.sendfile"] = functools.partial(  # type: ignore[typeddict-unknown-key]
                self.sendfile, self.cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined request may have begun already; else the keep-alive timer runs
        # until the next one's first byte (on_message_begin arms the header timer)

    async def sendfile(self, cycle: Any, pool: Any, fd: int, offset: int, count: int) -> int:
        """Up to `count` bytes of file `fd` from `offset` straight into the socket:
        os.sendfile on a `pool` thread (no copy through Python, and a disk read never
        stops the loop), the socket being non-blocking. Returns what the socket took,
        0 when it is full or the transport holds unsent bytes (then the caller writes
        through the transport, whose flow control waits for the client), -1 when the
        connection is gone. The socket is dup()ed for the call: a connection reset
        meanwhile cannot hand its descriptor number to another client."""
        transport = self.transport
        if transport is None or transport.is_closing() or cycle.disconnected:
            return -1
        if transport.get_write_buffer_size():
            return 0
        sock = transport.get_extra_info("socket")
        if sock is None:
            return -1
        own = os.dup(sock.fileno())
        try:
            sent = await pool.run(self.loop, _sendfile, own, fd, offset, count)
        finally:
            os.close(own)
        if sent < 0:
            self._abort("send")
            return -1
        cycle.expected_content_length -= sent  # uvicorn counts what went out through it
        return sent

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle.response_complete:
            return  # what is left of a body answered already: dropped
        _channel(cycle).feed(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.more_body = False
        _channel(cycle).end()
        cycle.message_event.set()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout, self._abort, "write")

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None


def _channel(cycle: Any) -> BodyChannel:
    """The body channel on_headers_complete put on uvicorn's request cycle."""
    return cycle.stratus_body


def _sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    try:
        return os.sendfile(out_fd, in_fd, offset, count)
    except BlockingIOError:
        return 0
    except OSError:  # the client reset the connection
        return -1


def protocol_class(header_timeout: float, write_timeout: float) -> type:
    return type("StratusHTTPProtocol", (TimeoutProtocol,),
                {"header_timeout": header_timeout, "write_timeout": write_timeout})


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def listen_unix(path: str, backlog: int = 2048) -> socket.socket:
    """A listening unix socket at path (http.net: unix). A socket file left by a server
    that is gone is replaced; one a live server listens on is not taken over."""
    import stat

    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except ConnectionRefusedError:  # nobody listens: stale
                os.unlink(path)
            else:
                raise OSError(f"a server already listens on {path}")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _loop() -> str:
    """asyncio's loop; STRATUS_LOOP=uvloop (installed separately) measured no clear gain."""
    return "uvloop" if os.environ.get("STRATUS_LOOP", "").strip().lower() == "uvloop" else "asyncio"


def run(app: Any, sock: socket.socket, workers: int, timeouts: Any, ssl_context: Any = None,
        drain: Optional[float] = None) -> None:
    """Serve app on sock in `workers` processes forked from this one (the api built once).

    On SIGTERM (or SIGINT) each worker stops accepting, closes its idle connections and
    lets the requests in flight finish, for at most `drain` seconds (http.draintimeout;
    None: as long as they take), then cancels what is left and exits. The access log is
    the app's (asgi.py), not uvicorn's, which leaves out the duration."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=protocol_class(timeouts.readheader, timeouts.write),
        ws="none",
        lifespan="off",
        interface="asgi3",
        loop=_loop(),
        timeout_keep_alive=max(1, round(timeouts.idle)),
        # uvicorn annotates it int; asyncio.timeout, which takes it, counts seconds as a float
        timeout_graceful_shutdown=cast(Any, drain),
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        backlog=2048,
        ssl_context_factory=None if ssl_context is None else (lambda config, default: ssl_context),
    )
    if workers <= 1:
        # uvicorn raises the signal that stopped it again once it is done, with the
        # handlers it found: these note it, and it becomes SystemExit once uvicorn has
        # returned, so the caller's clean-up (a unix socket's file) runs and the exit
        # status still says which signal it was
        received: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: received.append(signum))
        uvicorn.Server(config).run(sockets=[sock])
        if received:
            raise SystemExit(128 + received[0])
        return
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: serve until told to stop
            code = 0
            try:
                uvicorn.Server(config).run(sockets=[sock])
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    # the workers listen; were the parent's copy left open, the kernel would go on
    # queueing connections on it after they stopped accepting at SIGTERM
    sock.close()

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
