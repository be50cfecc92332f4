"""X-Ray segment documents, sent over UDP to the X-Ray daemon (or Lambda's endpoint).

What AWS documents as the daemon protocol: one datagram per document, a JSON header
line ``{"format": "json", "version": 1}`` and the segment document after it
(https://docs.aws.amazon.com/xray/latest/devguide/xray-api-segmentdocuments.html).
A subsegment sent on its own says ``"type": "subsegment"`` and names its parent and
trace. That is all Stratus needs, so it writes the documents itself rather than load
aws-xray-sdk: the SDK (with wrapt, asyncio and importlib.metadata) cost every traced
cold start on Lambda ~40 ms, and AWS put it in maintenance mode on 2026-02-25 (end of
support 2027-02-25).

Sending never raises: a trace that cannot be sent is dropped, and the request goes on.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Optional

log = logging.getLogger("stratus.tracing")

DAEMON_ADDRESS_ENV = "AWS_XRAY_DAEMON_ADDRESS"
DEFAULT_DAEMON_ADDRESS = "127.0.0.1:2000"
_HEADER = b'{"format": "json", "version": 1}\n'
# the daemon takes datagrams up to 64 KiB; a bigger segment is sent in pieces
MAX_DOCUMENT = 60 * 1024


def new_id() -> str:
    """A segment or subsegment id: 64 random bits, 16 hex digits."""
    return os.urandom(8).hex()


def new_trace_id() -> str:
    """``1-<epoch seconds, 8 hex>-<96 random bits, 24 hex>``."""
    return f"1-{int(time.time()):08x}-{os.urandom(12).hex()}"


class TraceHeader:
    """``X-Amzn-Trace-Id`` / ``_X_AMZN_TRACE_ID``: ``Root=...;Parent=...;Sampled=1``."""

    __slots__ = ("root", "parent", "sampled")

    def __init__(self, root: Optional[str] = None, parent: Optional[str] = None, sampled: Optional[bool] = None):
        self.root, self.parent, self.sampled = root, parent, sampled

    @classmethod
    def parse(cls, header: Optional[str]) -> "TraceHeader":
        fields = {}
        for part in (header or "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep:
                fields[key] = value
        sampled = {"1": True, "0": False}.get(fields.get("Sampled", ""))
        return cls(fields.get("Root") or None, fields.get("Parent") or None, sampled)


class Daemon:
    """Where documents go: ``AWS_XRAY_DAEMON_ADDRESS`` (``host:port``, or the
    ``udp:host:port tcp:host:port`` form, of which the UDP address is used)."""

    def __init__(self, address: Optional[str] = None):
        self.address = _udp_address(address or os.environ.get(DAEMON_ADDRESS_ENV) or DEFAULT_DAEMON_ADDRESS)
        self._socket: Any = None  # made by the first send: GET /v2/ on a cold start imports no socket
        self._lock = threading.Lock()

    def send(self, document: dict) -> None:
        data = json.dumps(document, separators=(",", ":"), default=str).encode()
        if len(data) > MAX_DOCUMENT and document.get("subsegments"):
            # each subsegment goes on its own, as a child of this document
            children = document.pop("subsegments")
            for child in children:
                self.send({**child, "type": "subsegment", "parent_id": document["id"],
                           "trace_id": document["trace_id"]})
            data = json.dumps(document, separators=(",", ":"), default=str).encode()
        try:
            if self._socket is None:
                with self._lock:
                    if self._socket is None:
                        import socket

                        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET,
                                             socket.SOCK_DGRAM)
                        sock.setblocking(False)  # a full send buffer drops a trace, never stalls a request
                        self._socket = sock
            self._socket.sendto(_HEADER + data, self.address)
        except OSError as exc:
            log.debug("X-Ray document not sent to %s:%s: %s", *self.address, exc)


def _udp_address(text: str) -> tuple[str, int]:
    words = text.split()
    chosen = next((w[4:] for w in words if w.startswith("udp:")), None) or next(
        (w for w in words if not w.startswith("tcp:")), words[0] if words else DEFAULT_DAEMON_ADDRESS)
    host, _, port = chosen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Entity:
    """A segment or subsegment being recorded; ``document()`` is what is sent."""

    __slots__ = ("name", "id", "start_time", "end_time", "metadata", "annotations", "subsegments", "http",
                 "error", "fault", "cause", "namespace")

    def __init__(self, name: str, namespace: Optional[str] = None):
        self.name, self.id, self.namespace = name, new_id(), namespace
        self.start_time = time.time()
        self.end_time: Optional[float] = None
        self.metadata: dict[str, Any] = {}
        self.annotations: dict[str, Any] = {}
        self.subsegments: list[Entity] = []
        self.http: dict[str, dict[str, Any]] = {}
        self.error = self.fault = False
        self.cause: Optional[dict] = None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.metadata.setdefault(namespace, {})[key] = value

    def put_annotation(self, key: str, value: Any) -> None:
        self.annotations[key] = value

    def add_exception(self, exc: BaseException) -> None:
        """A fault, with the exception and where it was raised (the innermost frames)."""
        import traceback

        self.fault = True
        stack = [{"path": frame.filename, "line": frame.lineno, "label": frame.name}
                 for frame in traceback.extract_tb(exc.__traceback__)[-8:]][::-1]
        self.cause = {"working_directory": os.getcwd(), "exceptions": [
            {"id": new_id(), "type": type(exc).__name__, "message": str(exc)[:1024], "stack": stack}]}

    def close(self) -> None:
        self.end_time = time.time()

    def document(self) -> dict:
        doc: dict[str, Any] = {"name": self.name, "id": self.id, "start_time": self.start_time,
                               "end_time": self.end_time or time.time()}
        if self.namespace:
            doc["namespace"] = self.namespace
        for key in ("metadata", "annotations", "http", "cause"):
            value = getattr(self, key)
            if value:
                doc[key] = value
        if self.fault:
            doc["fault"] = True
        elif self.error:
            doc["error"] = True
        if self.subsegments:
            doc["subsegments"] = [child.document() for child in self.subsegments]
        return doc
