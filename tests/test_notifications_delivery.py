"""Delivery through `stratus serve` when the endpoint misbehaves: answering 500, down,
or so slow it holds every event; the queue's bound; and a restart with events spooled.

Pushes must not wait for delivery: each test finishes its pushes while the endpoint is
still failing or holding the first event, and only then lets it recover."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .notifications_receiver import receiver
from .oci_client import Registry, random_bytes, sha256, unique_repo
from . import redis_server
from .servers import free_port, stratus_server
from .test_notifications import notifications_yaml, push_three_layers, write_config

redis_srv = redis_server.redis_srv  # the module-scoped fixture, requested by name below


def pushed_digests(image) -> list[str]:
    return [sha256(b) for b in [image.config] + list(image.layers)] + [image.digest]


def test_endpoint_answering_500_gets_retries_then_every_event(tmp_path: Path) -> None:
    with receiver(status=500) as webhook:
        config = write_config(tmp_path, notifications_yaml(webhook.url))
        repo = unique_repo("notify")
        with stratus_server(tmp_path / "root", config=config) as url:
            started = time.perf_counter()
            image = push_three_layers(url, repo)  # every request answered while the endpoint fails
            print(f"push of 4 blobs + manifest with the endpoint answering 500: {time.perf_counter() - started:.3f}s")
            webhook.wait_for(lambda r: r.attempts >= 6)  # threshold 3: 3 at once, then one per backoff
            assert webhook.deliveries == []
            webhook.status = 200
            events = webhook.wait_events(5)
    assert [e["target"]["digest"] for e in events] == pushed_digests(image)  # in order, none twice


def test_endpoint_down_then_up_receives_everything(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: connections are refused
    config = write_config(tmp_path, notifications_yaml(f"http://127.0.0.1:{port}/events"))
    repo = unique_repo("notify")
    with stratus_server(tmp_path / "root", config=config) as url:
        image = push_three_layers(url, repo)
        log = next(tmp_path.glob("stratus-*.log"))
        deadline = time.monotonic() + 30
        while "retrying" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the server's log for its first failed try
        assert "Connection refused" in log.read_text()
        with receiver(port=port) as webhook:
            events = webhook.wait_events(5)
    assert [e["target"]["digest"] for e in events] == pushed_digests(image)


def test_slow_endpoint_does_not_hold_pushes(tmp_path: Path) -> None:
    with receiver(delay=120.0) as webhook:  # holds each POST until released
        config = write_config(tmp_path, notifications_yaml(webhook.url, timeout="300s"))
        repo = unique_repo("notify")
        with stratus_server(tmp_path / "root", config=config) as url:
            started = time.perf_counter()
            image = push_three_layers(url, repo)
            print(f"push with the endpoint holding the first event: {time.perf_counter() - started:.3f}s")
            assert webhook.attempts == 0  # the first POST is still held: the push did not wait for it
            webhook.release.set()
            events = webhook.wait_events(5)
    assert [e["target"]["digest"] for e in events] == pushed_digests(image)


def test_full_queue_drops_beyond_the_bound_and_says_so(tmp_path: Path) -> None:
    with receiver(delay=120.0) as webhook:
        text = notifications_yaml(webhook.url, timeout="300s") + "  queue:\n    size: 3\n"
        config = write_config(tmp_path, text)
        repo = unique_repo("notify")
        with stratus_server(tmp_path / "root", config=config) as url:
            registry = Registry(url)
            blobs = [random_bytes(100 + i) for i in range(8)]
            for blob in blobs:
                registry.push_blob(repo, blob)  # answered at once, queue full or not
            registry.close()
            log = next(tmp_path.glob("stratus-*.log"))
            deadline = time.monotonic() + 30
            while log.read_text().count("dropped") < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            webhook.release.set()
            events = webhook.wait_events(3)
            registry = Registry(url)
            registry.push_blob(repo, b"after")  # the queue drains: a later event goes again
            registry.close()
            events = webhook.wait_events(4)
    # the three queued (the first in flight, two waiting) are delivered; five were dropped
    assert [e["target"]["digest"] for e in events] == [sha256(b) for b in blobs[:3]] + [sha256(b"after")]
    assert log.read_text().count("queue full") == 5


def test_restart_delivers_spooled_events(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, notifications_yaml(f"http://127.0.0.1:{port}/events"))
    root = tmp_path / "root"
    repo = unique_repo("notify")
    with stratus_server(root, config=config) as url:
        image = push_three_layers(url, repo)
        spool = tmp_path / "root-notifications" / "receiver" / "0"  # beside the storage root
        deadline = time.monotonic() + 30
        while len(list(spool.glob("*.json"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    spooled = sorted(spool.glob("*.json"))
    assert len(spooled) == 5  # the server stopped with all five undelivered
    ids = [json.loads(p.read_text())["id"] for p in spooled]
    with receiver(port=port) as webhook:
        with stratus_server(root, config=config):  # a new process: nothing pushed this time
            events = webhook.wait_events(5)
            webhook.wait_for(lambda r: not list(spool.glob("*.json")))  # removed once accepted
    assert [e["id"] for e in events] == ids
    assert [e["target"]["digest"] for e in events] == pushed_digests(image)


def test_forked_workers_each_deliver(tmp_path: Path) -> None:
    """`serve --workers 2` forks after the api is built: each worker runs its own threads."""
    with receiver() as webhook:
        config = write_config(tmp_path, notifications_yaml(webhook.url))
        repo = unique_repo("notify")
        with stratus_server(tmp_path / "root", config=config, workers=2) as url:
            images = [push_three_layers(url, repo, f"v{i}") for i in range(3)]
            events = webhook.wait_events(15)
        spool = tmp_path / "root-notifications" / "receiver"
        slots = sorted(p.name for p in spool.iterdir() if p.is_dir())
    assert sorted(e["target"]["digest"] for e in events) == sorted(d for i in images for d in pushed_digests(i))
    assert len(slots) >= 2  # the workers spooled apart (and the parent holds slot 0)


def test_restart_delivers_events_queued_in_redis(tmp_path: Path, redis_srv: redis_server.RedisServer) -> None:
    """queue.redis: the queue is a Redis list, for replicas without a shared disk."""
    port = free_port()
    text = notifications_yaml(f"http://127.0.0.1:{port}/events") + "  queue:\n    redis: true\n" \
        + f"redis:\n  addr: {redis_srv.addr}\n"
    config = write_config(tmp_path, text)
    root, repo = tmp_path / "root", unique_repo("notify")
    queued = redis_srv.client()
    queued.delete("stratus:notifications:receiver")
    with stratus_server(root, config=config) as url:
        image = push_three_layers(url, repo)
        deadline = time.monotonic() + 30
        while queued.llen("stratus:notifications:receiver") < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    ids = [json.loads(item)["id"] for item in queued.lrange("stratus:notifications:receiver", 0, -1)]
    assert len(ids) == 5 and not (tmp_path / "root-notifications").exists()
    with receiver(port=port) as webhook:
        with stratus_server(root, config=config):  # takes the lease once the stopped one's expires
            events = webhook.wait_events(5, timeout=60)
            webhook.wait_for(lambda r: queued.llen("stratus:notifications:receiver") == 0)
    assert [e["id"] for e in events] == ids
    assert [e["target"]["digest"] for e in events] == pushed_digests(image)
