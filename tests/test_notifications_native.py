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
    return {"REGISTRY_HTTP_SECRET": "lambda-test-secret", "REGISTRY_NOTIFICATIONS_EVENTBRIDGE_BUS": bus,
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
        messages = received(moto_s3, queue_url, 4)
    assert [m["detail-type"] for m in messages] == ["Blob Push", "Blob Push", "Manifest Push", "Manifest Pull"]
    assert {m["source"] for m in messages} == {SOURCE}
    details = [m["detail"] for m in messages]
    assert [list(d) for d in details] == [["id", "timestamp", "action", "target", "request", "actor", "source"]] * 4
    assert [d["target"]["digest"] for d in details] == [sha256(b) for b in blobs] + [sha256(manifest)] * 2
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
        invoke = Invoker("http")
        push(invoke, repo, "v1")
        with_send = median_ms(invoke, f"/v2/{repo}/manifests/v1")
    with moto_s3.lambda_function(monkeypatch, bucket, REGISTRY_HTTP_SECRET="lambda-test-secret"):
        invoke = Invoker("http")
        invoke("GET", "/v2/")
        without = median_ms(invoke, f"/v2/{repo}/manifests/v1")
    print(f"\nmanifest GET on a warm Lambda instance (moto): {without:.2f} ms without notifications, "
          f"{with_send:.2f} ms with an EventBridge PutEvents per request (+{with_send - without:.2f} ms)")
    assert len(received(moto_s3, queue_url, 42)) >= 40  # every measured pull was sent (and the push)
