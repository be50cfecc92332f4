"""A tiny fake upstream registry for the pull-through cache's tests: it answers /v2/
and blob HEAD/GET from `blobs` (digest -> the bytes it sends, which need not be that
digest's), records each blob GET, and writes bodies through `send`, which a test may
override (to stall mid-blob, say). A fake is the one way to make a registry lie or
stall; everything else meets the reference registry (tests/upstream_registry.py)."""
from __future__ import annotations

from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO, Iterator

from .servers import serving


class StubUpstream:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.gets: list[str] = []  # the digest of every blob GET, in order

    def send(self, wfile: BinaryIO, digest: str, data: bytes) -> None:
        wfile.write(data)

    @contextmanager
    def running(self) -> Iterator[str]:
        """The stub on a loopback port; yields its URL."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, body: bool) -> None:
                if self.path == "/v2/":
                    self._empty(200)
                    return
                digest = self.path.rsplit("/", 1)[-1]
                data = stub.blobs.get(digest)
                if body and "/blobs/" in self.path:
                    stub.gets.append(digest)
                if "/blobs/" not in self.path or data is None:
                    self._empty(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if body:
                    try:
                        stub.send(self.wfile, digest, data)
                    except OSError:
                        pass  # the client went away

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
            yield f"http://127.0.0.1:{port}"
