"""Native targets on the serverless platforms: EventBridge from the Lambda handler (app.py,
in-process) against moto's server, read back through a rule that targets an SQS queue;
Event Grid through the azure-eventgrid SDK to a local receiver of the Event Grid protocol.
Both carry the webhook's event as their payload, and both are sent before the response
returns (a function runs nothing afterwards): the latency that adds is measured here."""
from __future__ import annotations

import json
import statistics
import time
import uuid
from typing import Any

import pytest

from .lambda_events import Invoker
from .moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoS3
from .oci_client import OCI_MANIFEST, canonical, descriptor, sha256, OCI_CONFIG, OCI_LAYER

SOURCE = "stratus.registry"


def eventbridge_to_sqs(moto_s3: MotoS3) -> tuple[str, str]:
    """A bus with a rule sending every registry event to a queue: (bus, queue URL)."""
    events, sqs = moto_s3.client("events"), moto_s3.client("sqs")
    bus = f"stratus-{uuid.uuid4().hex[:8]}"
    events.create_event_bus(Name=bus)
    queue_url = sqs.create_queue(QueueName=bus)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="registry", EventBusName=bus, EventPattern=json.dumps({"source": [SOURCE]}))
    events.put_targets(Rule="registry", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}])
    return bus, queue_url


def received(moto_s3: MotoS3, queue_url: str, count: int) -> list[dict[str, Any]]:
    sqs, messages = moto_s3.client("sqs"), []
    deadline = time.monotonic() + 30
    while len(messages) < count and time.monotonic() < deadline:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in batch.get("Messages", []):
            messages.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return messages


def lambda_env(bus: str, moto_s3: MotoS3, **extra: str) -> dict[str, str]:
    return {"REGISTRY_HTTP_SECRET": "lambda-test-secret", "REGISTRY_STORAGE_DELETE_ENABLED": "true", "REGISTRY_NOTIFICATIONS_EVENTBRIDGE_BUS": bus,
            "REGISTRY_NOTIFICATIONS_EVENTBRIDGE_ENDPOINT": moto_s3.endpoint,
            "REGISTRY_NOTIFICATIONS_EVENTBRIDGE_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, **extra}


def push(invoke: Invoker, repo: str, tag: str) -> tuple[list[bytes], bytes]:
    config = canonical({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex})
    layer = uuid.uuid4().bytes * 8
    for blob in (config, layer):
        done = invoke("POST", f"/v2/{repo}/blobs/uploads/", f"digest={sha256(blob)}",
                      {"Content-Type": "application/octet-stream"}, blob, fresh=False)
        assert done.status == 201, done.body
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                          "layers": [descriptor(OCI_LAYER, layer)]})
    put = invoke("PUT", f"/v2/{repo}/manifests/{tag}", "", {"Content-Type": OCI_MANIFEST}, manifest, fresh=False)
    assert put.status == 201, put.body
    return [config, layer], manifest


def test_eventbridge_on_lambda_carries_the_webhook_event(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    bus, queue_url = eventbridge_to_sqs(moto_s3)
    bucket = moto_s3.create_bucket()
    repo = "lambda/notify"
    with moto_s3.lambda_function(monkeypatch, bucket, **lambda_env(bus, moto_s3)):
        invoke = Invoker("http")
        invoke("GET", "/v2/")  # the cold start, built once
        blobs, manifest = push(invoke, repo, "v1")
        pulled = invoke("GET", f"/v2/{repo}/manifests/v1", "", {"Accept": OCI_MANIFEST}, fresh=False)
        assert pulled.status == 200
        redirected = invoke("GET", f"/v2/{repo}/blobs/{sha256(blobs[1])}", fresh=False)
        assert redirected.status == 307  # to a presigned S3 URL: the response does not say the size
        import app

        (endpoint,) = app.RegistryChalice._owner.api.notifier.endpoints
        calls, sent = len(endpoint.latencies), endpoint.counts["sent"]
        deleted = invoke("DELETE", f"/v2/{repo}/manifests/{sha256(manifest)}", fresh=False)
        assert deleted.status == 202
        assert (len(endpoint.latencies) - calls, endpoint.counts["sent"] - sent) == (1, 2)  # one PutEvents, 2 events
        everything = received(moto_s3, queue_url, 7)
        messages, deletes = everything[:5], everything[5:]
    assert [m["detail-type"] for m in messages] == ["Blob Push", "Blob Push", "Manifest Push", "Manifest Pull",
                                                    "Blob Pull"]
    assert messages[4]["detail"]["target"]["size"] == len(blobs[1])  # asked of storage before sending
    assert sorted((m["detail-type"], json.dumps(m["detail"]["target"], sort_keys=True)) for m in deletes) == [
        ("Manifest Delete", json.dumps({"digest": sha256(manifest), "repository": repo}, sort_keys=True)),
        ("Tag Delete", json.dumps({"repository": repo, "tag": "v1"}, sort_keys=True))]
    assert {m["source"] for m in messages} == {SOURCE}
    details = [m["detail"] for m in messages]
    assert [list(d) for d in details] == [["id", "timestamp", "action", "target", "request", "actor", "source"]] * 5
    assert [d["target"]["digest"] for d in details] == [sha256(b) for b in blobs] + [sha256(manifest)] * 2 \
        + [sha256(blobs[1])]
    assert details[0]["target"] == {"mediaType": "application/octet-stream", "size": len(blobs[0]),
                                    "digest": sha256(blobs[0]), "length": len(blobs[0]), "repository": repo,
                                    "url": details[0]["target"]["url"]}
    assert details[0]["target"]["url"].endswith(f"/v2/{repo}/blobs/{sha256(blobs[0])}")
    assert details[2]["target"]["tag"] == "v1" and details[2]["target"]["mediaType"] == OCI_MANIFEST
    assert details[2]["request"]["method"] == "PUT" and details[3]["request"]["method"] == "GET"


def median_ms(invoke: Invoker, path: str, runs: int = 40) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        assert invoke("GET", path, "", {"Accept": OCI_MANIFEST}, fresh=False).status == 200
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def test_latency_eventbridge_adds_to_a_function_pull(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Measured, not asserted: a manifest GET on a warm instance with and without the send."""
    bus, queue_url = eventbridge_to_sqs(moto_s3)
    bucket = moto_s3.create_bucket()
    repo = "lambda/latency"
    with moto_s3.lambda_function(monkeypatch, bucket, **lambda_env(bus, moto_s3)):
        import app

        invoke = Invoker("http")
        push(invoke, repo, "v1")
        (endpoint,) = app.RegistryChalice._owner.api.notifier.endpoints
        endpoint.latencies.clear()
        with_send = median_ms(invoke, f"/v2/{repo}/manifests/v1")
        sends = sorted(endpoint.latencies)
        assert len(sends) == 40 and endpoint.counts["failures"] == 0
        send = statistics.median(sends) * 1000
        p90 = sends[int(len(sends) * 0.9)] * 1000
    with moto_s3.lambda_function(monkeypatch, bucket, REGISTRY_HTTP_SECRET="lambda-test-secret"):
        invoke = Invoker("http")
        invoke("GET", "/v2/")
        without = median_ms(invoke, f"/v2/{repo}/manifests/v1")
    print(f"\nmanifest GET on a warm Lambda instance (moto): {without:.2f} ms without notifications, "
          f"{with_send:.2f} ms with an EventBridge PutEvents per request; the send itself: "
          f"median {send:.2f} ms, p90 {p90:.2f} ms")
    assert len(received(moto_s3, queue_url, 42)) >= 40  # every measured pull was sent (and the push)


# ------------------------------------------------------------------ Event Grid on Functions


class EventGridTopic:
    """A local custom topic: takes what the SDK publishes (Event Grid or CloudEvents
    schema, the access key in `aeg-sas-key`) and keeps it; 200 as Event Grid answers."""

    def __init__(self, key: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        topic = self
        self.key, self.posts, self.changed = key, [], threading.Condition()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                authorized = self.headers.get("aeg-sas-key") == topic.key
                with topic.changed:
                    if authorized:
                        topic.posts.append((self.path, dict(self.headers.items()), json.loads(body)))
                    topic.changed.notify_all()
                self.send_response(200 if authorized else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, count: int) -> list[dict[str, Any]]:
        with self.changed:
            assert self.changed.wait_for(lambda: sum(len(p[2]) for p in self.posts) >= count, 30)
            return [e for p in self.posts for e in p[2]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_event_grid_on_functions_carries_the_webhook_event(schema: str, azurite, tmp_path) -> None:
    from tests.functions_host import functions_host
    from tests.test_azure_functions import Client, push_manifest, push_monolithic, settings

    topic = EventGridTopic("topic-key")
    try:
        container = azurite.new_container()
        env = settings(azurite, container, FUNCTIONS_WORKER_RUNTIME="python",
                       REGISTRY_NOTIFICATIONS_EVENTGRID_ENDPOINT=topic.url,
                       REGISTRY_NOTIFICATIONS_EVENTGRID_KEY="topic-key",
                       REGISTRY_NOTIFICATIONS_EVENTGRID_SCHEMA=schema)
        with functions_host(env, tmp_path) as host:
            functions = Client(host)
            config, layer = canonical({"os": "linux", "n": uuid.uuid4().hex}), uuid.uuid4().bytes * 4
            for blob in (config, layer):
                push_monolithic(functions, "grid/app", blob)
            manifest = push_manifest(functions, "grid/app", config, [layer], "v1")
            # a function sends before its response returns: all three are there already
            assert sum(len(p[2]) for p in topic.posts) == 3
            events = topic.events(3)
        path, headers, _ = topic.posts[0]
    finally:
        topic.close()
    assert path.startswith("/api/events?api-version=")
    if schema == "eventgrid":
        assert headers["Content-Type"].startswith("application/json")
        assert [e["eventType"] for e in events] == ["Stratus.Registry.BlobPush"] * 2 + ["Stratus.Registry.ManifestPush"]
        assert events[2]["subject"] == "grid/app/v1" and events[2]["dataVersion"] == "1.0"
        data = [e["data"] for e in events]
    else:
        assert headers["Content-Type"].startswith("application/cloudevents-batch+json")
        assert [e["type"] for e in events] == ["Stratus.Registry.BlobPush"] * 2 + ["Stratus.Registry.ManifestPush"]
        assert {e["source"] for e in events} == {SOURCE} and {e["specversion"] for e in events} == {"1.0"}
        data = [e["data"] for e in events]
    assert [e["id"] for e in events] == [d["id"] for d in data]
    assert [list(d) for d in data] == [["id", "timestamp", "action", "target", "request", "actor", "source"]] * 3
    assert [d["target"]["digest"] for d in data] == [sha256(config), sha256(layer), sha256(manifest)]
    assert data[1]["target"]["size"] == len(layer) == data[1]["target"]["length"]
    assert data[2]["target"]["tag"] == "v1" and data[2]["target"]["mediaType"] == OCI_MANIFEST
