"""Notification counters in the metrics (issue 17): Prometheus on `stratus serve`'s debug
address, EMF lines on Lambda.

Real servers throughout: `stratus serve` (or the Lambda gateway stand-in running app.py)
delivering to a loopback webhook that answers 500 until told otherwise. The counters are
read before and after, and must move exactly as the deliveries the receiver saw."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from chalicelib.api import RegistryAPI
from chalicelib.bootstrap import build_api
from chalicelib.config import config_from_mapping
from chalicelib.notifications.api import NotifyingAPI

from .lambda_gateway import lambda_gateway
from .moto_server import MotoS3
from .notifications_receiver import receiver
from .oci_client import Registry, random_bytes, unique_repo
from .servers import free_port, stratus_server
from .test_metrics import Samples, emf_lines, scrape, value
from .test_notifications import notifications_yaml, push_three_layers, write_config

ENDPOINT = {"endpoint": "receiver", "kind": "webhook"}


def scrape_until(url: str, done: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    """Scrapes until done(samples): a counter moves once the endpoint's answer is read,
    a moment after the receiver has counted the request."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_prometheus_counts_failures_then_deliveries_by_endpoint(tmp_path: Path) -> None:
    debug_port = free_port()
    with receiver(status=500) as webhook:
        text = notifications_yaml(webhook.url) + (f"http:\n  debug:\n    addr: 127.0.0.1:{debug_port}\n"
                                                  "    prometheus:\n      enabled: true\n")
        config = write_config(tmp_path, text)
        with stratus_server(tmp_path / "root", config=config) as url:
            metrics = f"http://127.0.0.1:{debug_port}/metrics"
            before = scrape(metrics)
            assert value(before, "stratus_notifications_sent_total", **ENDPOINT) == 0
            assert value(before, "stratus_notifications_pending", **ENDPOINT) == 0
            push_three_layers(url, unique_repo("notify-metrics"))  # 4 blobs and a manifest: 5 events
            webhook.wait_for(lambda r: r.attempts >= 6)  # threshold 3: 3 at once, then one per backoff
            failing = scrape_until(metrics, lambda s: value(s, "stratus_notifications_failures_total", **ENDPOINT) >= 6)
            assert value(failing, "stratus_notifications_failures_total", **ENDPOINT) >= 6
            assert value(failing, "stratus_notifications_sent_total", **ENDPOINT) == 0
            assert value(failing, "stratus_notifications_queued_total", **ENDPOINT) == 5
            assert value(failing, "stratus_notifications_pending", **ENDPOINT) == 5  # nothing lost while failing

            webhook.status = 200  # the endpoint recovers
            events = webhook.wait_events(5)
            after = scrape_until(metrics, lambda s: value(s, "stratus_notifications_sent_total", **ENDPOINT) >= 5)
            attempts = webhook.attempts
    assert len(events) == 5
    assert value(after, "stratus_notifications_sent_total", **ENDPOINT) == 5
    assert value(after, "stratus_notifications_pending", **ENDPOINT) == 0
    # every try but the accepted ones failed, and each was counted
    accepted = len(webhook.deliveries)
    assert value(after, "stratus_notifications_failures_total", **ENDPOINT) == attempts - accepted
    assert value(after, "stratus_notifications_dropped_total", **ENDPOINT) == 0
    assert value(after, "stratus_notifications_lost_total", **ENDPOINT) == 0
    assert value(after, "stratus_notifications_intake_dropped_total") == 0


def test_prometheus_counts_the_events_a_full_queue_drops(tmp_path: Path) -> None:
    debug_port = free_port()
    with receiver(delay=120.0) as webhook:  # holds the first POST: the queue fills behind it
        text = notifications_yaml(webhook.url, timeout="300s") + "  queue:\n    size: 3\n" + (
            f"http:\n  debug:\n    addr: 127.0.0.1:{debug_port}\n    prometheus:\n      enabled: true\n")
        config = write_config(tmp_path, text)
        with stratus_server(tmp_path / "root", config=config) as url:
            metrics = f"http://127.0.0.1:{debug_port}/metrics"
            registry = Registry(url)
            repo = unique_repo("notify-metrics")
            for i in range(8):
                registry.push_blob(repo, random_bytes(100 + i))
            registry.close()

            def dropped(s: Samples) -> float:
                return value(s, "stratus_notifications_dropped_total", **ENDPOINT) + \
                    value(s, "stratus_notifications_intake_dropped_total")

            full = scrape_until(metrics, lambda s: dropped(s) >= 5)
            assert dropped(full) == 5 and value(full, "stratus_notifications_pending", **ENDPOINT) == 3
            webhook.release.set()
            events = webhook.wait_events(3)
            after = scrape_until(metrics, lambda s: value(s, "stratus_notifications_sent_total", **ENDPOINT) >= 3)
    assert len(events) == 3
    assert value(after, "stratus_notifications_sent_total", **ENDPOINT) == 3
    assert dropped(after) == 5 and value(after, "stratus_notifications_pending", **ENDPOINT) == 0


def test_lambda_emf_lines_count_each_requests_sends_by_endpoint(tmp_path: Path, moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    with receiver(status=500) as webhook:
        env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "s", "REGISTRY_METRICS_EMF_ENABLED": "true",
               "REGISTRY_METRICS_EMF_NAMESPACE": "StratusTest",
               "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME": "receiver",
               "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": webhook.url}
        with lambda_gateway(env, "http", workdir=tmp_path) as gateway:
            client = gateway.client()
            repo = unique_repo("notify-emf")
            failed = client.push_blob(repo, random_bytes(1000), chunk=1000)  # its PUT's event: one try, 500
            assert webhook.attempts == 1 and webhook.deliveries == []
            webhook.status = 200
            delivered = client.push_blob(repo, random_bytes(2000), chunk=2000)
            assert client("HEAD", f"/v2/{repo}/blobs/{delivered}").status == 200  # a pull: sent too
            assert client("GET", "/v2/").status == 200  # no event: no notification line
            lines = emf_lines(tmp_path / f"gateway-{gateway.port}.log")
    assert [e["target"]["digest"] for e in webhook.events()] == [delivered, delivered]
    assert failed != delivered
    requests = [line for line in lines if "Route" in line]
    notifications = [line for line in lines if "Endpoint" in line]
    assert len(requests) == 8  # POST, PATCH, PUT twice; HEAD; GET
    for line in notifications:
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "StratusTest" and directive["Dimensions"] == [["Endpoint"]]
        assert (line["Endpoint"], line["Kind"]) == ("receiver", "webhook")
        assert {m["Name"] for m in directive["Metrics"]} == {
            "NotificationsSent", "NotificationsFailed", "NotificationsLost", "NotificationsDropped"}
    # each line follows its request's line: the failed PUT, then the PUT and the HEAD delivered
    counts = [(n["NotificationsSent"], n["NotificationsFailed"], n["NotificationsLost"]) for n in notifications]
    assert counts == [(0, 1, 1), (1, 0, 0), (1, 0, 0)]
    following = [lines[lines.index(n) - 1] for n in notifications]
    assert [(r["Route"], r["Method"], r["Status"]) for r in following] == [
        ("upload", "PUT", 201), ("upload", "PUT", 201), ("blob", "HEAD", 200)]


def test_notifications_without_metrics_wrap_nothing_for_metrics(tmp_path: Path) -> None:
    config = config_from_mapping({"storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
                                  "http": {"secret": "s"},
                                  "notifications": {"delivery": "sync",
                                                    "endpoints": [{"name": "r", "url": "http://127.0.0.1:1/"}]}})
    api = build_api(config)
    assert type(api) is NotifyingAPI and type(api._api) is RegistryAPI  # no MetricsAPI, no collector
