"""One boto3 S3 client per process and parameter set, built on first use.

A Lambda instance serves many invocations and `stratus serve` many requests: the
client, its credentials and its bounded connection pool live as long as the
process. boto3 is imported here, on the first request that needs S3, so a cold
start that never touches storage (GET /v2/) does not pay for it. The cache is
keyed by pid too, because gunicorn builds the app before forking its workers
and a connection pool must never be shared across a fork.

Every HTTP request a client sends is counted by operation (a botocore
``before-send`` hook; light.py counts its own), so tests and traces can say what an
operation cost, and observers see each request's operation and URL path.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from .params import ConnectionParameters

_lock = threading.Lock()
K = TypeVar("K")
V = TypeVar("V")
_clients: dict[tuple[int, ConnectionParameters], Any] = {}


class RequestCounter:
    """S3 requests sent by this process, per operation (retries count again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._local = threading.local()
        self._observers: list[Callable[[str, str], None]] = []

    def __call__(self, event_name: str = "", request: Any = None, **kwargs: Any) -> None:
        # event_name is "before-send.s3.<Operation>"
        self.count(event_name.rsplit(".", 1)[-1], urlsplit(request.url).path if request is not None else "")

    def count(self, operation: str, path: str = "") -> None:
        """One request of operation to the (encoded) URL path."""
        with self._lock:
            self._counts[operation] += 1
        self._local.count = getattr(self._local, "count", 0) + 1
        for observer in self._observers:
            observer(operation, path)

    def observe(self, observer: Callable[[str, str], None]) -> Callable[[], None]:
        """Call observer(operation, path) for every request from now on; returns its removal."""
        self._observers = [*self._observers, observer]  # replaced, never mutated: senders iterate it
        return lambda: setattr(self, "_observers", [o for o in self._observers if o is not observer])

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def thread_total(self) -> int:
        """Requests sent so far by the calling thread (for per-call trace metadata)."""
        return getattr(self._local, "count", 0)


requests = RequestCounter()


def per_process(cache: dict[tuple[int, K], V], key: K, build: Callable[[], V]) -> V:
    """cache's value for key in this process, built once. What a parent process left in
    the cache is dropped in its children: its sockets are not theirs."""
    full = (os.getpid(), key)
    value = cache.get(full)
    if value is not None:
        return value
    with _lock:
        value = cache.get(full)
        if value is None:
            for stale in [k for k in cache if k[0] != full[0]]:
                del cache[stale]
            value = cache[full] = build()
    return value


def client_for(connection: ConnectionParameters, log_level: str = "off") -> Any:
    return per_process(_clients, connection, lambda: _build(connection, log_level))


def _build(connection: ConnectionParameters, log_level: str) -> Any:
    import boto3
    from botocore.config import Config

    if log_level != "off":
        logging.getLogger("botocore").setLevel(logging.DEBUG)
    s3_options: dict[str, Any] = {"addressing_style": "path" if connection.force_path_style else "auto"}
    if connection.dual_stack:
        s3_options["use_dualstack_endpoint"] = True
    if connection.accelerate:
        s3_options["use_accelerate_endpoint"] = True
    config = Config(
        region_name=connection.region,
        signature_version="s3v4" if connection.v4auth else "s3",
        s3=s3_options,
        max_pool_connections=connection.max_pool_connections,
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        tcp_keepalive=True,
        use_fips_endpoint=connection.fips or None,
        user_agent_extra=connection.user_agent or "stratus",
    )
    # A session of our own: boto3's default session is not safe to create clients
    # from in several threads at once.
    session = boto3.session.Session(
        aws_access_key_id=connection.access_key,
        aws_secret_access_key=connection.secret_key,
        aws_session_token=connection.session_token,
        region_name=connection.region,
    )
    client = session.client("s3", endpoint_url=connection.endpoint, verify=connection.verify, config=config)
    client.meta.events.register("before-send.s3", requests)
    return client
