"""The debug listener (``http.debug.addr``): ``/debug/health`` and Prometheus metrics.

As in the reference registry:

* the ``health`` checks run in the background, each on its ``interval``: the storage
  driver (a list of ``/``; "not found" still means the storage answered), files that
  must not exist, HTTP URIs that must answer a HEAD with ``statuscode``, TCP addresses
  that must accept a connection. A check with a ``threshold`` turns unhealthy after
  that many failures in a row and healthy again at its first success;
* ``GET /debug/health`` answers 200 ``{}`` when every check passes, else 503 with a
  JSON object naming each failing check (``storagedriver_<driver>``, the file, the
  URI, the address) and its last error;
* while a check fails, the registry itself answers every request 503 UNAVAILABLE
  ("health check failed: please see /debug/health"), so a load balancer moves away;
* ``GET <http.debug.prometheus.path>`` (``/metrics``) serves chalicelib.metrics'
  Prometheus registry when ``http.debug.prometheus.enabled`` is set.

The listener is a small threaded HTTP server of its own, apart from the registry's
server, so a registry saturated with pushes still answers health and metrics.
`stratus serve` calls start_debug_server once, before it starts serving.

The checks run in the process that started them; the servers answer requests in
worker processes (granian always, gunicorn, uvicorn with --workers > 1), forked after
the checks started or spawned afresh. So the failing checks are also published in a
small shared file mapping (SharedHealth, its path in STRATUS_HEALTH_STATE for spawned
workers), which the gate reads in any other process: a worker's copy of the checks
would otherwise stay as it was when it forked.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import socket
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from .api.errors import error_response
from .context import background

log = logging.getLogger("stratus.debug")

HEALTH_PATH = "/debug/health"
HEALTH_STATE_ENV = "STRATUS_HEALTH_STATE"
Probe = Callable[[], None]  # raises when unhealthy


class Check:
    """One periodic check: unhealthy after `threshold` failures in a row."""

    def __init__(self, name: str, probe: Probe, interval: float, threshold: int = 1):
        self.name = name
        self.probe = probe
        self.interval = interval
        self.threshold = max(1, threshold)
        self.failures = 0
        self.error: Optional[str] = None  # the last error while unhealthy
        self.on_change: Callable[[], None] = lambda: None  # told when error changes
        self._stop = threading.Event()

    def run_once(self) -> None:
        before = self.error
        try:
            self.probe()
        except Exception as exc:  # any failure is the check's answer
            self.failures += 1
            if self.failures >= self.threshold:
                if self.error is None:
                    log.error("health check %s failed: %s", self.name, exc)
                self.error = str(exc) or type(exc).__name__
        else:
            if self.error is not None:
                log.info("health check %s passes again", self.name)
            self.failures = 0
            self.error = None
        if self.error != before:
            self.on_change()

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(self.interval)

        threading.Thread(target=loop, name=f"health-{self.name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class SharedHealth:
    """The failing checks as JSON in a file mapped shared by every process that opens it
    (or forked with it): a sequence number (odd while a write is under way), the length,
    the JSON. One process writes (its checks' threads, under a lock); any reads."""

    SIZE = 64 << 10
    _HEAD = struct.Struct("<II")

    def __init__(self, path: Optional[str] = None):
        self.owned = path is None
        if path is None:
            handle, path = tempfile.mkstemp(prefix="stratus-health-")
            os.ftruncate(handle, self.SIZE)
        else:
            handle = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(handle, self.SIZE, mmap.MAP_SHARED)
        finally:
            os.close(handle)
        self.path = path
        self._lock = threading.Lock()

    def write(self, failing: dict[str, str]) -> None:
        body = json.dumps(failing).encode()
        if len(body) > self.SIZE - self._HEAD.size:  # very many long errors: names only
            body = json.dumps({name: "failing" for name in failing}).encode()[: self.SIZE - self._HEAD.size]
        with self._lock:
            sequence = self._HEAD.unpack_from(self._map, 0)[0]
            self._HEAD.pack_into(self._map, 0, sequence + 1, 0)
            self._map[self._HEAD.size:self._HEAD.size + len(body)] = body
            self._HEAD.pack_into(self._map, 0, sequence + 2, len(body))

    def read(self) -> dict[str, str]:
        for _ in range(100):
            before, length = self._HEAD.unpack_from(self._map, 0)
            if before % 2:
                continue  # a write is under way
            body = self._map[self._HEAD.size:self._HEAD.size + length]
            if self._HEAD.unpack_from(self._map, 0)[0] == before:
                return json.loads(body) if length else {}
        return {"health": "state unreadable"}  # a writer that never finishes: not healthy

    def remove(self) -> None:
        if self.owned:
            try:
                os.unlink(self.path)
            except OSError:
                pass


class Health:
    def __init__(self, checks: list[Check], shared: Optional[SharedHealth] = None):
        self.checks = checks
        self.shared = shared
        self._pid = os.getpid()  # the process whose threads run the checks

    @classmethod
    def attach(cls, path: str) -> "Health":
        """The health another process's checks publish at path (a spawned worker's view)."""
        health = cls([], SharedHealth(path))
        health._pid = -1
        return health

    def failing(self) -> dict[str, str]:
        if self.shared is not None and os.getpid() != self._pid:
            return self.shared.read()  # a worker: the checks run in the process that started them
        return {c.name: c.error for c in self.checks if c.error is not None}

    def publish(self) -> None:
        if self.shared is not None and os.getpid() == self._pid:
            self.shared.write(self.failing())

    def start(self) -> None:
        if self.shared is None:
            self.shared = SharedHealth()
            os.environ[HEALTH_STATE_ENV] = self.shared.path  # for workers spawned rather than forked
            import atexit

            atexit.register(self.shared.remove)
        for check in self.checks:
            check.on_change = self.publish
            check.start()

    def stop(self) -> None:
        for check in self.checks:
            check.stop()


# ------------------------------------------------------------------------- probes


def storage_probe(driver: Any) -> Probe:
    """A list of the storage's root: one request to S3, Azure or RADOS (the reference
    stats "/", which Stratus's object-store drivers answer without asking the store)."""

    def probe() -> None:
        try:
            driver.list(background(), "/")
        except Exception as exc:
            if type(exc).__name__ != "PathNotFoundError":  # the storage answered
                raise

    return probe


def file_probe(path: str) -> Probe:
    def probe() -> None:
        if os.path.lexists(path):
            raise RuntimeError("file exists")

    return probe


def http_probe(uri: str, statuscode: int, timeout: float, headers: dict[str, list[str]]) -> Probe:
    def probe() -> None:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(uri, method="HEAD")
        for name, values in headers.items():
            request.add_header(name, ", ".join(values))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        if status != statuscode:
            raise RuntimeError(f"downstream service returned unexpected status: {status}")

    return probe


def tcp_probe(addr: str, timeout: float) -> Probe:
    host, _, port = addr.rpartition(":")

    def probe() -> None:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass

    return probe


def health_from_config(config: Any, driver: Any) -> Health:
    health = config.health
    checks: list[Check] = []
    if health.storagedriver.enabled:
        sd = health.storagedriver
        checks.append(Check(f"storagedriver_{config.storage.driver}", storage_probe(driver), sd.interval, sd.threshold))
    checks += [Check(f.file, file_probe(f.file), f.interval) for f in health.file]
    checks += [Check(h.uri, http_probe(h.uri, h.statuscode, h.timeout, h.headers), h.interval, h.threshold)
               for h in health.http]
    checks += [Check(t.addr, tcp_probe(t.addr, t.timeout), t.interval, t.threshold) for t in health.tcp]
    return Health(checks)


# --------------------------------------------------------------------- the gate


class HealthGatedAPI:
    """The api answering 503 UNAVAILABLE while a health check fails (the reference's health.Handler)."""

    def __init__(self, api: Any, health: Health):
        self._api = api
        self.health = health

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def handle(self, request: Any) -> Any:
        if self.health.failing():
            return error_response("UNAVAILABLE", "service unavailable",
                                  "health check failed: please see /debug/health", status=503)
        return self._api.handle(request)


# -------------------------------------------------------------------- the server


class DebugServer:
    def __init__(self, addr: str, health: Health, metrics: Any = None, metrics_path: str = "/metrics"):
        self.health = health
        self.metrics = metrics
        self.metrics_path = metrics_path
        host, _, port = addr.rpartition(":")
        self._server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), _handler(self))
        self._server.daemon_threads = True
        self.address = self._server.server_address

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if path == HEALTH_PATH and method in ("GET", "HEAD"):
            failing = self.health.failing()
            return (503 if failing else 200), "application/json", json.dumps(failing).encode()
        if self.metrics is not None and path == self.metrics_path and method in ("GET", "HEAD"):
            body, content_type = self.metrics.exposition()
            return 200, content_type, body
        return 404, "text/plain; charset=utf-8", b"404 page not found\n"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="debug-server", daemon=True).start()
        log.info("debug server listening on %s:%d", *self.address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.health.stop()


def _handler(server: DebugServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            status, content_type, body = server.answer(self.command, self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not access-logged
            pass

    return Handler


def start_debug_server(config: Any, api: Any) -> Any:
    """Start the health checks and the debug listener the configuration asks for.

    Returns the api to serve: the same api, or, when health checks are configured,
    one that answers 503 while a check fails. Binding the debug address fails here,
    before the registry serves, with the address named."""
    debug = config.http.debug
    health = health_from_config(config, api.registry.driver) if config.health.any else Health([])
    if debug.addr:
        metrics = getattr(api, "metrics", None) if debug.prometheus_enabled else None
        if metrics is not None and not hasattr(metrics, "exposition"):
            metrics = None
        try:
            server = DebugServer(debug.addr, health, metrics, debug.prometheus_path)
        except OSError as exc:
            raise SystemExit(f"stratus: http.debug.addr {debug.addr}: {exc.strerror or exc}") from None
        server.start()
    elif health.checks:
        log.info("health checks run without http.debug.addr: /debug/health is not served")
    if not health.checks:
        return api
    health.start()
    return HealthGatedAPI(api, health)
