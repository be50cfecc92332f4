"""The descriptor cache's reads, sent without redis-py: pipelined RESP2 over a socket.

A cold Lambda instance whose first request is a pull needs one cache read, and
redis-py costs ~70 ms to import before that read is sent: its package imports its
asyncio client, asyncio, importlib.metadata and more, and none of it can be left
out. Reads (HMGET, SISMEMBER, HGET) need none of that. Here they are written as RESP
arrays and the replies parsed by hiredis (redis's own C parser, imported in well
under a millisecond); connecting, AUTH, SELECT, TLS, timeouts and a small pool of
kept-alive connections are ours. Writes, clears and the proxy's lease stay on
redis-py (redis.py builds that client on the first of them).

Reads are idempotent, so one that failed on a reused connection (closed by Redis
or a failover, or dead after the Lambda instance was frozen) is sent once more on a
new one. A connection idle longer than the pool's idle timeout is not reused.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .. import keepalive

if TYPE_CHECKING:
    import ssl

Command = Sequence[str]

MAX_IDLE = 8  # kept-alive connections, when redis.pool.maxidle is unset
# errors a server gives an AUTH it refuses (redis 6+ WRONGPASS; older servers' wording)
_AUTH_REFUSED = ("WRONGPASS", "NOAUTH", "ERR invalid password", "ERR invalid username-password pair",
                 "ERR AUTH <password> called without any password configured")


class ReplyError(Exception):
    """Redis answered a command with an error (WRONGTYPE, OOM, LOADING...)."""


class AuthenticationError(ReplyError):
    """Redis refused the credentials."""


class ProtocolError(ConnectionError):
    """What came back is not RESP: the connection is not used again."""


class _Connection:
    __slots__ = ("sock", "reader", "idle_since")

    def __init__(self, sock: socket.socket):
        import hiredis

        self.sock = sock
        # error replies come back as ReplyError values, in their place among the replies
        self.reader = hiredis.Reader(encoding="utf-8", protocolError=ProtocolError, replyError=ReplyError)
        self.idle_since = 0.0


class ReadClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        username: Optional[str] = None,
        password: Optional[str] = None,
        db: int = 0,
        connect_timeout: float,
        read_timeout: float,
        write_timeout: float,
        max_idle: Optional[int] = None,
        idle_timeout: Optional[float] = None,
    ):
        self.host, self.port, self.tls = host, port, tls
        self._handshake: list[Command] = []
        if password is not None:
            self._handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._handshake.append(("SELECT", str(db)))
        self._connect_timeout, self._read_timeout, self._write_timeout = connect_timeout, read_timeout, write_timeout
        self._max_idle = MAX_IDLE if max_idle is None else max_idle
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._tls_context: Optional[ssl.SSLContext] = None

    def execute(self, *commands: Command) -> list[Any]:
        """The replies to `commands`, sent in one write. A reply error raises
        ReplyError after every reply was read (the connection stays usable)."""
        conn = self._take()
        try:
            try:
                replies = self._exchange(conn, commands)
            except OSError:
                self._discard(conn)
                if not conn.idle_since:
                    raise
                # a kept-alive connection may have died unseen: once more on a new one
                conn = self._new()
                replies = self._exchange(conn, commands)
        except BaseException:
            self._discard(conn)
            raise
        self._give(conn)
        for reply in replies:
            if isinstance(reply, ReplyError):
                raise reply
        return replies

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)

    # -- connections ------------------------------------------------------------------

    def _take(self) -> _Connection:
        now = time.monotonic()
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new()
            if (self._idle_timeout and now - conn.idle_since > self._idle_timeout) or keepalive.closed(conn.sock):
                self._discard(conn)
                continue
            return conn

    def _give(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        self._discard(conn)

    def _new(self) -> _Connection:
        sock = _connect(self.host, self.port, self._connect_timeout)
        try:
            if self.tls:
                sock = self._context().wrap_socket(sock, server_hostname=self.host)
            conn = _Connection(sock)
            if self._handshake:
                replies = self._exchange(conn, self._handshake, handshake=True)
                refused = next((r for r in replies if isinstance(r, ReplyError)), None)
                if refused is not None:
                    text = str(refused)
                    if text.startswith(_AUTH_REFUSED):
                        raise AuthenticationError(text)
                    raise ReplyError(text)
        except BaseException:
            sock.close()
            raise
        return conn

    def _context(self) -> "ssl.SSLContext":
        if self._tls_context is None:
            import ssl

            # the system's CAs (SSL_CERT_FILE honoured), the host name checked: what
            # redis-py's ssl_cert_reqs="required" gives
            self._tls_context = ssl.create_default_context()
        return self._tls_context

    @staticmethod
    def _discard(conn: _Connection) -> None:
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- the wire ---------------------------------------------------------------------

    def _exchange(self, conn: _Connection, commands: Sequence[Command], handshake: bool = False) -> list[Any]:
        sock = conn.sock
        sock.settimeout(self._write_timeout)
        _send(sock, b"".join(_encode(c) for c in commands))
        sock.settimeout(self._read_timeout)
        replies: list[Any] = []
        reader = conn.reader
        while len(replies) < len(commands):
            try:
                reply = reader.gets()
            except UnicodeDecodeError as exc:  # the reply was consumed: the connection stays in step
                reply = ReplyError(f"a reply is not UTF-8: {exc}")
            if reply is not False:
                replies.append(reply)
                continue
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("Redis closed the connection" + (" during AUTH/SELECT" if handshake else ""))
            reader.feed(data)
        return replies


def _encode(command: Command) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg.encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# the two socket operations, apart so that tests can count round trips
def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
