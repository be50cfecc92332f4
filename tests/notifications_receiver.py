"""A webhook receiver on loopback for the notification tests: it records each POST and
answers as told (a status, or a delay before answering), like a real endpoint would."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, Optional
from contextlib import contextmanager


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["events"]


@dataclass
class Receiver:
    url: str
    status: int = 200
    delay: float = 0.0  # seconds before answering
    deliveries: list[Delivery] = field(default_factory=list)  # the accepted ones
    attempts: int = 0  # every POST, accepted or not
    changed: threading.Condition = field(default_factory=threading.Condition)
    release: threading.Event = field(default_factory=threading.Event)  # ends a delay early

    def events(self) -> list[dict[str, Any]]:
        with self.changed:
            return [e for d in self.deliveries for e in d.events]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        """Until predicate(self) holds: a condition, never a fixed sleep."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"receiver: condition not met; {self.attempts} attempts, "
                                     f"{len(self.deliveries)} deliveries")

    def wait_events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        self.wait_for(lambda r: sum(len(d.events) for d in r.deliveries) >= count, timeout)
        return self.events()


@contextmanager
def receiver(status: int = 200, port: int = 0, delay: float = 0.0) -> Iterator[Receiver]:
    state: Optional[Receiver] = None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            assert state is not None
            if state.delay:
                state.release.wait(state.delay)
            with state.changed:
                state.attempts += 1
                status = state.status
                if 200 <= status < 400:
                    state.deliveries.append(Delivery(self.path, dict(self.headers.items()), body))
                state.changed.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    state = Receiver(f"http://127.0.0.1:{server.server_address[1]}/events", status, delay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
