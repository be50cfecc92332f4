"""Request, storage and cache metrics: Prometheus for `stratus serve`, CloudWatch
Embedded Metric Format (EMF) log lines on Lambda.

Like tracing.py, this wraps from the outside: the api (one observation per request),
the storage driver (one per call) and the blob-descriptor cache (hit, miss or error
per lookup), so nothing in registry/ or storage/ knows about metrics. When metrics
are off, from_config returns None and bootstrap wraps nothing: no call pays for them.

* Prometheus (``http.debug.prometheus.enabled`` with ``http.debug.addr``): counters
  and histograms in a registry of their own, served by debug_server.py at
  ``http.debug.prometheus.path``. prometheus_client is imported here only then.
* EMF (``metrics.emf.enabled``, on Lambda): one JSON line on stdout per request (one
  invocation), which CloudWatch Logs turns into metrics of ``metrics.emf.namespace``
  with the dimensions {Route, Method} and {Driver}. prometheus_client is never
  imported on Lambda.

Notifications (chalicelib.notifications), when an endpoint is enabled: MetricsAPI hands
the notifier to the recorder, which reads its counters (events sent, failed tries,
events lost or dropped, by endpoint) without touching the delivery path: Prometheus
at each scrape, EMF after each request (a line per endpoint whose counts moved).

The request's latency is the handler's: the time from the request reaching the api
to its response being ready (a streamed blob's sending is not part of it). Bytes in
are the request's Content-Length (a body sent without one is counted as it is read);
bytes out the response's Content-Length, none for a HEAD or a 304.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, BinaryIO, Iterator, Mapping, Optional

from . import aws_runtime

log = logging.getLogger("stratus.metrics")

# A driver or cache raising these answered: "not there" is not a storage error.
_NOT_ERRORS = ("PathNotFoundError", "BlobUnknownError")
_CACHE_MISS = "DescriptorNotCachedError"
# seconds: from a cached manifest GET (~1 ms) to a large PUT's server-side copy
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def from_config(config: Any, environ: Optional[Mapping[str, str]] = None) -> Optional["Recorder"]:
    """The recorder the configuration asks for, or None (then nothing is wrapped)."""
    environ = os.environ if environ is None else environ
    # no debug listener on a function (Lambda, Azure Functions): EMF lines or nothing
    function = aws_runtime.on_lambda(environ) or bool(environ.get("FUNCTIONS_WORKER_RUNTIME"))
    if function:
        return EMFRecorder(config.metrics.namespace, config.storage.driver) if config.metrics.emf else None
    debug = config.http.debug
    if debug.prometheus_enabled and debug.addr:
        try:
            return PrometheusRecorder()
        except ImportError:
            from .config import ConfigError

            raise ConfigError("http.debug.prometheus.enabled: needs the prometheus-client package "
                              "(requirements-server.txt)", key="http.debug.prometheus.enabled") from None
    if config.metrics.emf:
        return EMFRecorder(config.metrics.namespace, config.storage.driver)
    return None


class Recorder:
    """What the wrappers report to."""

    def request(self, route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        raise NotImplementedError

    def storage_call(self, driver: str, call: str, seconds: float, failed: bool) -> None:
        raise NotImplementedError

    def cache_lookup(self, outcome: str) -> None:  # "hit" | "miss" | "error"
        raise NotImplementedError

    def request_began(self) -> None:
        """A request reaches the api (EMF gathers per request; Prometheus needs nothing)."""

    def bytes_read(self, route: str, method: str, count: int) -> None:
        """Body bytes of a request without Content-Length, as they are read."""

    def watch_notifications(self, notifier: Any) -> None:
        """The notifier (chalicelib.notifications.delivery.Notifier) whose counts to report."""


# What a notifier counts per endpoint (Endpoint.counts) and what the metrics call it:
# events sent; tries that failed (each retry counts); events a function's single try did
# not deliver; events refused by a full queue. "queued" is the background's intake.
NOTIFICATION_COUNTS = (("sent", "sent"), ("failures", "failed"), ("lost", "lost"), ("dropped", "dropped"),
                       ("queued", "queued"))


def notification_counts(notifier: Any) -> tuple[list[tuple[str, str, dict[str, int]]], int]:
    """[(endpoint, kind, {count: value})] and the events dropped before any endpoint's queue
    (the intake's bound), from Notifier.stats() and the endpoints' kinds."""
    stats = notifier.stats()
    kinds = {e.config.name: e.config.kind for e in list(notifier.endpoints)}
    endpoints = [(name, kinds.get(name, ""), {count: int(counts.get(count, 0)) for count, _ in NOTIFICATION_COUNTS}
                  | {"pending": int(counts.get("pending", 0))})
                 for name, counts in stats["endpoints"].items()]
    return endpoints, int(stats.get("dropped", 0))


# ------------------------------------------------------------------------ Prometheus


class PrometheusRecorder(Recorder):
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("stratus_http_requests", "HTTP requests answered, by route, method and status",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("stratus_http_request_duration_seconds",
                                 "Time to a response's headers, by route and method", ("route", "method"),
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.bytes_in = Counter("stratus_http_request_bytes", "Request body bytes, by route and method",
                                ("route", "method"), registry=r)
        self.bytes_out = Counter("stratus_http_response_bytes", "Response body bytes, by route and method",
                                 ("route", "method"), registry=r)
        self.storage_calls = Counter("stratus_storage_calls", "Storage driver calls, by driver and call",
                                     ("driver", "call"), registry=r)
        self.storage_errors = Counter("stratus_storage_errors", "Storage driver calls that failed, by driver and call",
                                      ("driver", "call"), registry=r)
        self.storage_latency = Histogram("stratus_storage_call_duration_seconds",
                                         "Storage driver call time, by driver and call", ("driver", "call"),
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.cache = Counter("stratus_descriptor_cache_lookups", "Blob descriptor cache lookups, by outcome "
                             "(hit, miss, error)", ("outcome",), registry=r)

    def request(self, route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        if bytes_in:
            self.bytes_in.labels(route, method).inc(bytes_in)
        if bytes_out:
            self.bytes_out.labels(route, method).inc(bytes_out)

    def bytes_read(self, route: str, method: str, count: int) -> None:
        self.bytes_in.labels(route, method).inc(count)

    def storage_call(self, driver: str, call: str, seconds: float, failed: bool) -> None:
        self.storage_calls.labels(driver, call).inc()
        self.storage_latency.labels(driver, call).observe(seconds)
        if failed:
            self.storage_errors.labels(driver, call).inc()

    def cache_lookup(self, outcome: str) -> None:
        self.cache.labels(outcome).inc()

    def watch_notifications(self, notifier: Any) -> None:
        self.registry.register(_NotificationsCollector(notifier))

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, for GET /metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _NotificationsCollector:
    """The notifier's counters, read at each scrape: nothing runs on the delivery path."""

    def __init__(self, notifier: Any):
        self._notifier = notifier

    def describe(self) -> list:
        return []  # families appear with the endpoints; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ("endpoint", "kind")
        families = {
            "sent": CounterMetricFamily("stratus_notifications_sent", "Events delivered, by endpoint", labels=labels),
            "failures": CounterMetricFamily("stratus_notifications_failures", "Sends that failed (each retry "
                                            "counts), by endpoint", labels=labels),
            "lost": CounterMetricFamily("stratus_notifications_lost", "Events a function's single try did not "
                                        "deliver, by endpoint", labels=labels),
            "dropped": CounterMetricFamily("stratus_notifications_dropped", "Events dropped because the endpoint's "
                                           "queue was full, by endpoint", labels=labels),
            "queued": CounterMetricFamily("stratus_notifications_queued", "Events put on the endpoint's queue "
                                          "(background delivery), by endpoint", labels=labels),
        }
        pending = GaugeMetricFamily("stratus_notifications_pending", "Events queued and not yet delivered, "
                                    "by endpoint", labels=labels)
        intake = CounterMetricFamily("stratus_notifications_intake_dropped", "Events dropped before reaching any "
                                     "endpoint's queue (the intake queue was full)")
        try:
            endpoints, intake_dropped = notification_counts(self._notifier)
        except Exception:  # a spool that cannot say its length (Redis down): the scrape still answers
            log.warning("metrics: notification counts unavailable", exc_info=True)
            return
        for name, kind, counts in endpoints:
            for count, family in families.items():
                family.add_metric((name, kind), counts[count])
            pending.add_metric((name, kind), counts["pending"])
        intake.add_metric((), intake_dropped)
        yield from families.values()
        yield pending
        yield intake


# ------------------------------------------------------------------------------- EMF


class EMFRecorder(Recorder):
    """One EMF line per request. A Lambda instance runs one invocation at a time, so the
    counts of the current request live in one place, where the threads a request starts
    (parallel part copies) add theirs too."""

    def __init__(self, namespace: str, driver: str, stream: Any = None):
        self.namespace = namespace
        self.driver = driver
        self._stream = stream
        self._lock = threading.Lock()
        self._notifier: Any = None
        self._reported: dict[str, dict[str, int]] = {}  # the notifier's counts at the last line
        self._reset()

    def _reset(self) -> None:
        self._storage_calls = self._storage_errors = 0
        self._storage_ms = 0.0
        self._hits = self._misses = self._cache_errors = 0
        self._bytes_read = 0

    def request_began(self) -> None:
        with self._lock:
            self._reset()

    def storage_call(self, driver: str, call: str, seconds: float, failed: bool) -> None:
        with self._lock:
            self._storage_calls += 1
            self._storage_errors += failed
            self._storage_ms += seconds * 1000

    def cache_lookup(self, outcome: str) -> None:
        with self._lock:
            if outcome == "hit":
                self._hits += 1
            elif outcome == "miss":
                self._misses += 1
            else:
                self._cache_errors += 1

    def bytes_read(self, route: str, method: str, count: int) -> None:
        with self._lock:
            self._bytes_read += count

    def request(self, route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        with self._lock:
            values = {
                "Requests": (1, "Count"),
                "Latency": (round(seconds * 1000, 3), "Milliseconds"),
                "ClientErrors": (int(400 <= status < 500), "Count"),
                "ServerErrors": (int(status >= 500), "Count"),
                "BytesIn": (bytes_in + self._bytes_read, "Bytes"),
                "BytesOut": (bytes_out, "Bytes"),
                "StorageCalls": (self._storage_calls, "Count"),
                "StorageErrors": (self._storage_errors, "Count"),
                "StorageLatency": (round(self._storage_ms, 3), "Milliseconds"),
                "CacheHits": (self._hits, "Count"),
                "CacheMisses": (self._misses, "Count"),
                "CacheErrors": (self._cache_errors, "Count"),
            }
            self._reset()
        timestamp = int(time.time() * 1000)
        line = {
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["Route", "Method"], ["Driver"]],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in values.items()],
                }],
            },
            "Route": route,
            "Method": method,
            "Driver": self.driver,
            "Status": status,
            **{name: value for name, (value, _) in values.items()},
        }
        lines = [line] + self._notification_lines(timestamp)
        stream = self._stream or sys.stdout
        stream.write("".join(json.dumps(one, separators=(",", ":")) + "\n" for one in lines))
        stream.flush()

    def watch_notifications(self, notifier: Any) -> None:
        self._notifier = notifier

    # EMF names of the counts, as in NOTIFICATION_COUNTS
    _EMF_NOTIFICATIONS = (("sent", "NotificationsSent"), ("failures", "NotificationsFailed"),
                          ("lost", "NotificationsLost"), ("dropped", "NotificationsDropped"))

    def _notification_lines(self, timestamp: int) -> list[dict[str, Any]]:
        """What each endpoint's counts gained since the last line (on a function: this
        request's synchronous sends), one line per endpoint that moved, dimension {Endpoint}."""
        if self._notifier is None:
            return []
        try:
            endpoints, intake_dropped = notification_counts(self._notifier)
        except Exception:
            log.warning("metrics: notification counts unavailable", exc_info=True)
            return []
        lines = []
        with self._lock:
            for name, kind, counts in endpoints + [("", "intake", {"dropped": intake_dropped})]:
                before = self._reported.get(name, {})
                gained = {metric: counts.get(count, 0) - before.get(count, 0) for count, metric in self._EMF_NOTIFICATIONS}
                # a forked worker starts its counts over: what it has is all new
                if any(v < 0 for v in gained.values()):
                    gained = {metric: counts.get(count, 0) for count, metric in self._EMF_NOTIFICATIONS}
                self._reported[name] = dict(counts)
                if not any(gained.values()):
                    continue
                if not name:  # dropped before any endpoint's queue: no Endpoint dimension
                    gained = {"NotificationsIntakeDropped": gained["NotificationsDropped"]}
                lines.append({
                    "_aws": {
                        "Timestamp": timestamp,
                        "CloudWatchMetrics": [{
                            "Namespace": self.namespace,
                            "Dimensions": [["Endpoint"]] if name else [[]],
                            "Metrics": [{"Name": metric, "Unit": "Count"} for metric in gained],
                        }],
                    },
                    **({"Endpoint": name, "Kind": kind} if name else {}),
                    **gained,
                })
        return lines


# -------------------------------------------------------------------------- wrappers


class MetricsDriver:
    """A StorageDriver that reports every call of the driver it wraps."""

    def __init__(self, driver: Any, recorder: Recorder):
        self._driver = driver
        self._recorder = recorder
        self.name = driver.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def _call(self, call: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        failed = False
        try:
            return fn(*args)
        except BaseException as exc:
            failed = type(exc).__name__ not in _NOT_ERRORS
            raise
        finally:
            self._recorder.storage_call(self.name, call, time.perf_counter() - start, failed)

    def get_content(self, ctx: Any, path: str) -> bytes:
        return self._call("get_content", self._driver.get_content, ctx, path)

    def put_content(self, ctx: Any, path: str, content: bytes) -> None:
        return self._call("put_content", self._driver.put_content, ctx, path, content)

    def reader(self, ctx: Any, path: str, offset: int = 0) -> BinaryIO:
        return self._call("reader", self._driver.reader, ctx, path, offset)

    def writer(self, ctx: Any, path: str, append: bool = False) -> Any:
        return MetricsWriter(self, self._call("writer", self._driver.writer, ctx, path, append))

    def stat(self, ctx: Any, path: str) -> Any:
        return self._call("stat", self._driver.stat, ctx, path)

    def list(self, ctx: Any, path: str) -> list[str]:
        return self._call("list", self._driver.list, ctx, path)

    def move(self, ctx: Any, source: str, dest: str) -> None:
        return self._call("move", self._driver.move, ctx, source, dest)

    def delete(self, ctx: Any, path: str) -> None:
        return self._call("delete", self._driver.delete, ctx, path)

    def redirect_url(self, ctx: Any, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        return self._call("redirect_url", self._driver.redirect_url, ctx, method, path, expiry_seconds)

    def walk(self, ctx: Any, path: str) -> Iterator[Any]:
        return self._call("walk", self._driver.walk, ctx, path)


class MetricsWriter:
    """Reports the writer calls that reach storage; write() only buffers or streams."""

    def __init__(self, driver: MetricsDriver, writer: Any):
        self._driver, self._writer = driver, writer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes) -> int:
        return self._writer.write(data)

    def close(self) -> None:
        self._driver._call("writer.close", self._writer.close)

    def commit(self) -> None:
        self._driver._call("writer.commit", self._writer.commit)

    def cancel(self) -> None:
        self._driver._call("writer.cancel", self._writer.cancel)


class MetricsCache:
    """A blob descriptor cache (or one repository's view of it) whose lookups are counted."""

    def __init__(self, cache: Any, recorder: Recorder):
        self._cache = cache
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)

    def stat(self, ctx: Any, digest: Any) -> Any:
        try:
            descriptor = self._cache.stat(ctx, digest)
        except Exception as exc:
            self._recorder.cache_lookup("miss" if type(exc).__name__ == _CACHE_MISS else "error")
            raise
        self._recorder.cache_lookup("hit")
        return descriptor

    def set_descriptor(self, ctx: Any, digest: Any, descriptor: Any) -> None:
        return self._cache.set_descriptor(ctx, digest, descriptor)

    def clear(self, ctx: Any, digest: Any) -> None:
        return self._cache.clear(ctx, digest)

    def repository_scoped(self, name: str) -> "MetricsCache":
        return MetricsCache(self._cache.repository_scoped(name), self._recorder)


class _CountingBody:
    """A request body without Content-Length, its bytes reported as they are read."""

    def __init__(self, body: Any, recorder: Recorder, route: str, method: str):
        self._body, self._recorder, self._route, self._method = body, recorder, route, method

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)

    def read(self, size: int = -1) -> bytes:
        data = self._body.read(size)
        if data:
            self._recorder.bytes_read(self._route, self._method, len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._body.readinto(buffer)
        if count:
            self._recorder.bytes_read(self._route, self._method, count)
        return count


class MetricsAPI:
    """The RegistryAPI with one observation per request."""

    def __init__(self, api: Any, recorder: Recorder):
        self._api = api
        self.metrics = recorder
        notifier = getattr(api, "notifier", None)  # chalicelib.notifications' NotifyingAPI, if wrapped
        if notifier is not None:
            recorder.watch_notifications(notifier)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def handle(self, request: Any) -> Any:
        from .api.app import match_route

        recorder = self.metrics
        route = match_route(request.path)[0] or "unknown"
        method = request.method.upper()
        recorder.request_began()
        bytes_in = request.content_length or 0
        if request.content_length is None and request.body is not None:
            request.body = _CountingBody(request.body, recorder, route, method)
        start = time.perf_counter()
        response = self._api.handle(request)
        seconds = time.perf_counter() - start
        recorder.request(route, method, response.status, seconds, bytes_in, _bytes_out(method, response))
        return response


def _bytes_out(method: str, response: Any) -> int:
    if method == "HEAD" or response.status in (204, 304):
        return 0
    length = response.header("Content-Length")
    if length is not None and length.isdigit():
        return int(length)
    body = response.body
    return len(body) if isinstance(body, (bytes, bytearray)) else 0
