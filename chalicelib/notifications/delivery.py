"""Delivery: a bounded queue and a thread per endpoint, or a synchronous send on functions.

Background (``stratus serve``): the request thread only appends to a bounded intake
queue (never waits; a full queue drops, logs and counts). One dispatcher thread
finishes each event (asks storage what the response did not say) and puts it on each
endpoint's queue, in memory or spooled to a directory; each endpoint's thread sends,
retrying as the reference does: at once while fewer than `threshold` tries in a row
failed, then once per `backoff`, never dropping what it has queued.

Sync (Lambda, Azure Functions: nothing runs after the response): the event is sent
before the response returns, one try with the endpoint's timeout, all targets of the
request in one call each; a failure is logged and counted, the response is unchanged.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Optional

from .config import EndpointConfig, NotificationsConfig
from .events import Pending
from .queues import MemoryQueue
from .sinks import sink_for

log = logging.getLogger("stratus.notifications")


class Endpoint:
    def __init__(self, config: EndpointConfig, queue: Any, sink: Any = None):
        self.config = config
        self.sink = sink if sink is not None else sink_for(config)
        self.queue = queue
        self.counts: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=1000)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failures = 0
        self._last_failure = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"notify-{self.config.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def enqueue(self, event: dict) -> None:
        if self.queue.put(event):
            self.counts["queued"] += 1
            return
        self.counts["dropped"] += 1
        log.error("notifications: endpoint %s: queue full (%d events), event %s (%s) dropped",
                  self.config.name, self.queue.size, event.get("id"), event.get("action"))

    def send_now(self, events: list[dict]) -> bool:
        """One try, for a function's request; counted like the background's, and timed:
        `latencies` keeps the last sends' seconds (what the request waited for)."""
        started = time.perf_counter()
        try:
            self.sink.send(events)
        except Exception as exc:
            self.latencies.append(time.perf_counter() - started)
            self.counts["failures"] += 1
            self.counts["lost"] += len(events)
            log.error("notifications: endpoint %s: %s; %d events lost", self.config.name, exc, len(events))
            return False
        self.latencies.append(time.perf_counter() - started)
        self.counts["sent"] += len(events)
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            items = self.queue.peek(self.sink.batch, timeout=1.0)
            if not items:
                continue
            if self._deliver([event for _, event in items]):
                self.queue.remove([key for key, _ in items])
                self.counts["sent"] += len(items)

    def _deliver(self, events: list[dict]) -> bool:
        """The reference's retrying sink: True once sent, False only when stopping."""
        while not self._stopping.is_set():
            if self._failures >= self.config.threshold:
                wait = self._last_failure + self.config.backoff - time.monotonic()
                if wait > 0:
                    if self._failures == self.config.threshold:
                        log.warning("notifications: endpoint %s: %d failures in a row, backing off %.3gs",
                                    self.config.name, self._failures, self.config.backoff)
                    self._stopping.wait(wait)
                    continue
            try:
                self.sink.send(events)
            except Exception as exc:
                self._failures += 1
                self._last_failure = time.monotonic()
                self.counts["failures"] += 1
                log.error("notifications: endpoint %s: %s; retrying", self.config.name, exc)
                continue
            self._failures = 0
            return True
        return False


class Notifier:
    """Takes a request's pending events; where they go depends on `background`."""

    def __init__(self, config: NotificationsConfig, registry: Callable[[], Any], background: bool,
                 spool: Optional[Callable[[str], Any]] = None, sinks: Optional[dict[str, Any]] = None):
        self.config = config
        self.background = background
        self._registry = registry  # resolved lazily: the wrapped api's registry
        self.counts: Counter[str] = Counter()
        # spool(endpoint name) -> the endpoint's durable queue (queues.spool_in_directory,
        # spool_in_redis); None: in memory
        self._spool = spool if background else None
        self._sinks = sinks or {}
        self._start()
        if background:
            # `serve --workers N` forks after the api is built: threads do not survive a
            # fork, so each child starts its own (and claims its own spool slot)
            os.register_at_fork(after_in_child=self._start_in_child)

    def _start(self) -> None:
        spool = self._spool
        self.endpoints = [
            Endpoint(e, spool(e.name) if spool else MemoryQueue(self.config.queue_size), self._sinks.get(e.name))
            for e in self.config.active
        ]
        self._intake: queue.Queue[Optional[Pending]] = queue.Queue(self.config.queue_size)
        self._dispatcher: Optional[threading.Thread] = None
        if self.background:
            for endpoint in self.endpoints:
                endpoint.start()
            self._dispatcher = threading.Thread(target=self._dispatch, name="notify-dispatch", daemon=True)
            self._dispatcher.start()

    def _start_in_child(self) -> None:
        for endpoint in self.endpoints:
            release = getattr(endpoint.queue, "release", None)
            if release is not None:
                release()
        self.counts = Counter()
        self._start()

    def wanted(self, action: str, media_type: str) -> bool:
        return any(not e.config.ignores(action, media_type) for e in self.endpoints)

    def publish(self, pendings: list[Pending]) -> None:
        """A request's events (one, or a manifest delete and its tags), on the request
        thread once the response is built."""
        pendings = [p for p in pendings if self.wanted(p.action, p.media_type)]
        if not pendings:
            return
        if not self.background:
            self._send_now(pendings)
            return
        for pending in pendings:
            try:
                self._intake.put_nowait(pending)
            except queue.Full:
                self.counts["dropped"] += 1
                log.error("notifications: intake queue full (%d); %s event dropped", self.config.queue_size,
                          pending.action)

    def _send_now(self, pendings: list[Pending]) -> None:
        """All of a request's events in one call per endpoint (EventBridge: 10 at most)."""
        events = [(p, p.resolve(self._registry(), self.config.include_references)) for p in pendings]
        for endpoint in self.endpoints:
            wanted = [event for p, event in events if not endpoint.config.ignores(p.action, p.media_type)]
            for start in range(0, len(wanted), 10):
                endpoint.send_now(wanted[start:start + 10])

    def _dispatch(self) -> None:
        while True:
            pending = self._intake.get()
            if pending is None:
                return
            try:
                event = pending.resolve(self._registry(), self.config.include_references)
            except Exception:
                log.exception("notifications: could not finish a %s event; dropped", pending.action)
                self.counts["dropped"] += 1
                continue
            for endpoint in self.endpoints:
                if not endpoint.config.ignores(pending.action, pending.media_type):
                    endpoint.enqueue(event)

    def stop(self, timeout: float = 5.0) -> None:
        if self._dispatcher is not None:
            self._intake.put(None)
            self._dispatcher.join(timeout)
        for endpoint in self.endpoints:
            endpoint.stop(timeout)

    def stats(self) -> dict[str, Any]:
        return {"dropped": self.counts["dropped"],
                "endpoints": {e.config.name: {**e.counts, "pending": len(e.queue)} for e in self.endpoints}}

