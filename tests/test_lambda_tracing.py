"""X-Ray tracing: subsegments per storage and cache call, caught by a UDP listener on
loopback standing in for the X-Ray daemon; nothing traced, nothing loaded when off."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.api.http import Request
from chalicelib.bootstrap import build_api
from chalicelib.config import config_from_mapping
from chalicelib.storage.s3 import S3Driver
from tests import clients_images
from tests.clients_images import Layout, assert_same_image, images_dir, needs_tools, session_image
from tests.lambda_events import Invoker
from tests.lambda_gateway import lambda_gateway
from tests.moto_server import MotoS3
from tests import redis_server

redis_srv = redis_server.redis_srv  # the module-scoped fixture, requested by name below

REPO = Path(__file__).resolve().parent.parent
TRACE_ROOT = "1-65f1c2a0-0123456789abcdef01234567"
PARENT = "53995c3f42cd8ad8"


class Daemon:
    """What the X-Ray daemon would receive: UDP datagrams of '<header>\\n<document>'."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def documents(self, quiet: float = 0.3) -> list[dict]:
        docs = []
        self.sock.settimeout(quiet)
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return docs
            header, _, body = data.decode().partition("\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            docs.append(json.loads(body))

    def close(self) -> None:
        self.sock.close()


def walk(docs: list[dict]) -> Iterator[dict]:
    for doc in docs:
        yield doc
        yield from walk(doc.get("subsegments", []))


@pytest.fixture
def daemon(monkeypatch) -> Iterator[Daemon]:
    d = Daemon()
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", d.address)
    yield d
    d.close()


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


def push(api, name: str, data: bytes) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = api.handle(Request.from_bytes("POST", f"/v2/{name}/blobs/uploads/", base_url="http://r"))
    path, query = started.header("Location").split("http://r", 1)[1].split("?", 1)
    done = api.handle(Request.from_bytes("PUT", path, f"{query}&digest={digest}", {}, data, base_url="http://r"))
    assert done.status == 201
    return digest


def test_stratus_serve_traces_each_request_with_subsegments(daemon, monkeypatch, moto_s3, bucket, redis_srv) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    monkeypatch.setenv("STRATUS_XRAY_SAMPLING_RATE", "1")
    # Redis, not the in-memory cache: only a cache shared by every instance is asked
    # whether a blob exists, so only it shows cache.stat subsegments
    config = config_from_mapping({"storage": {"s3": moto_s3.parameters(bucket), "cache": {"blobdescriptor": "redis"}},
                                  "redis": {"addr": redis_srv.addr}, "http": {"secret": "s"},
                                  "tracing": {"xray": True}})
    api = build_api(config)
    digest = push(api, "traced/app", b"layer bytes")
    response = api.handle(Request.from_bytes("GET", f"/v2/traced/app/blobs/{digest}",
                                             headers={"X-Amzn-Trace-Id": f"Root={TRACE_ROOT};Sampled=1"}))
    assert response.status == 307
    segments = [d for d in daemon.documents() if d.get("type") != "subsegment"]
    assert len(segments) == 3 and {s["name"] for s in segments} == {"stratus"}
    assert segments[-1]["trace_id"] == TRACE_ROOT  # joined the caller's trace
    assert segments[-1]["http"]["response"]["status"] == 307
    names = [s["name"] for s in walk(segments)]
    for expected in ("s3.put_content", "s3.writer", "s3.writer.commit", "s3.move", "s3.delete",
                     "s3.redirect_url", "cache.stat", "cache.set_descriptor"):
        assert expected in names, (expected, sorted(set(names)))
    commits = [s for s in walk(segments) if s["name"] == "s3.writer.commit"]
    assert commits[0]["metadata"]["stratus"]["requests"] >= 1  # the S3 requests of the call
    misses = [s for s in walk(segments) if s["name"] == "s3.get_content" and s.get("annotations")]
    assert all(s["annotations"]["outcome"] == "not_found" and not s.get("fault") for s in misses)


def test_lambda_invocations_add_subsegments_to_lambdas_segment(daemon, monkeypatch, moto_s3, bucket) -> None:
    with moto_s3.lambda_function(monkeypatch, bucket, REGISTRY_HTTP_SECRET="s", LAMBDA_TASK_ROOT=str(REPO),
                                 AWS_XRAY_DAEMON_ADDRESS=daemon.address,
                                 _X_AMZN_TRACE_ID=f"Root={TRACE_ROOT};Parent={PARENT};Sampled=1"):
        invoke = Invoker("http")
        assert invoke("POST", "/v2/traced/fn/blobs/uploads/").status == 202
        docs = daemon.documents()
        assert docs and all(d["type"] == "subsegment" for d in docs)
        assert {d["trace_id"] for d in docs} == {TRACE_ROOT}
        assert {d["parent_id"] for d in docs} == {PARENT}  # children of Lambda's own segment
        assert {"s3.put_content", "s3.writer", "s3.writer.close"} <= {d["name"] for d in walk(docs)}

        monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root=1-65f1c2a0-00000000000000000000000a;Parent={PARENT};Sampled=0")
        assert invoke("POST", "/v2/traced/fn/blobs/uploads/").status == 202
        assert daemon.documents() == []  # an invocation X-Ray did not sample sends nothing


def test_tracing_off_wraps_nothing_and_sends_nothing(daemon, monkeypatch, moto_s3, bucket) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    monkeypatch.setenv("STRATUS_XRAY_SAMPLING_RATE", "1")
    config = config_from_mapping({"storage": {"s3": moto_s3.parameters(bucket)}, "http": {"secret": "s"}})
    api = build_api(config)
    assert type(api).__name__ == "RegistryAPI"
    assert isinstance(api.registry.driver, S3Driver)
    push(api, "off/app", b"untraced")
    response = api.handle(Request.from_bytes("GET", "/v2/off/app/tags/list",
                                             headers={"X-Amzn-Trace-Id": f"Root={TRACE_ROOT};Sampled=1"}))
    assert response.status == 404
    assert daemon.documents() == []


def test_sdk_is_not_needed_to_trace() -> None:
    """The documents are ours (xray.py): aws-xray-sdk is in maintenance mode and was
    ~40 ms of every traced cold start."""
    code = """
import sys
from chalicelib import tracing
tracer = tracing.XRayTracer({"AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9"})
from chalicelib.api.http import Request
with tracer.request_segment(Request.from_bytes("GET", "/v2/", headers={"X-Amzn-Trace-Id": "Sampled=1"})):
    with tracer.context(None).trace("s3.stat", path="/x"):
        pass
assert not {"aws_xray_sdk", "wrapt", "asyncio"} & set(sys.modules), sorted(sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_LAMBDA_FUNCTION_NAME", "_X_AMZN_TRACE_ID")}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)


def test_errors_large_segments_and_an_unreachable_daemon(daemon, monkeypatch) -> None:
    from chalicelib import tracing, xray

    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    tracer = tracing.XRayTracer({"AWS_XRAY_DAEMON_ADDRESS": f"tcp:127.0.0.1:1 udp:{daemon.address}"})
    request = Request.from_bytes("GET", "/v2/a/b/manifests/latest",
                                 headers={"X-Amzn-Trace-Id": f"Root={TRACE_ROOT};Parent={PARENT};Sampled=1"})
    with tracer.request_segment(request):
        ctx = tracer.context(request)
        with pytest.raises(RuntimeError):
            with ctx.trace("s3.get_content", path="/broken"):
                raise RuntimeError("storage on fire")
        with ctx.trace("s3.list", path="/outer"):
            with ctx.trace("s3.stat", path="/inner"):
                pass
        for i in range(70):  # more than one datagram holds
            with ctx.trace("s3.stat", path=f"/{i:01000x}"):
                pass
    docs = daemon.documents()
    segment = next(d for d in docs if d.get("type") != "subsegment")
    children = [d for d in docs if d.get("type") == "subsegment"]
    assert segment["trace_id"] == TRACE_ROOT and segment["parent_id"] == PARENT
    assert "subsegments" not in segment and len(children) == 72  # sent one by one, under the segment
    assert {c["parent_id"] for c in children} == {segment["id"]} and {c["trace_id"] for c in children} == {TRACE_ROOT}
    broken = children[0]
    assert broken["fault"] is True
    assert broken["cause"]["exceptions"][0]["type"] == "RuntimeError"
    assert broken["cause"]["exceptions"][0]["message"] == "storage on fire"
    assert children[1]["name"] == "s3.list" and [s["name"] for s in children[1]["subsegments"]] == ["s3.stat"]
    assert all(c["end_time"] >= c["start_time"] for c in children)

    # no daemon listening, or no route: the request is served, the trace dropped
    unreachable = tracing.XRayTracer({"AWS_XRAY_DAEMON_ADDRESS": "[::1]:9"})
    with unreachable.request_segment(request):
        with unreachable.context(request).trace("s3.stat", path="/x"):
            pass
    assert xray.TraceHeader.parse("Root=1-a-b;Sampled=0").sampled is False
    assert xray.TraceHeader.parse("Self=1-x;Root=1-a-b;Parent=c").sampled is None


def test_sampling_rate_and_reservoir() -> None:
    from chalicelib import tracing

    none = tracing.XRayTracer({"STRATUS_XRAY_SAMPLING_RATE": "0"})
    assert none.sampled() is True  # the first request of the second
    assert not any(none.sampled() for _ in range(200))
    every = tracing.XRayTracer({"STRATUS_XRAY_SAMPLING_RATE": "1"})
    assert all(every.sampled() for _ in range(50))
    some = tracing.XRayTracer({"STRATUS_XRAY_SAMPLING_RATE": "0.5"})
    assert 40 < sum(some.sampled() for _ in range(400)) < 360


def test_tracing_can_be_turned_off_on_lambda(monkeypatch) -> None:
    from chalicelib import tracing

    environ = {"AWS_LAMBDA_FUNCTION_NAME": "f", "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
               "_X_AMZN_TRACE_ID": f"Root={TRACE_ROOT};Parent={PARENT};Sampled=1"}
    assert tracing.wanted(config_from_mapping({}), environ)
    assert not tracing.wanted(config_from_mapping({"tracing": {"xray": False}}), environ)
    assert not tracing.wanted(config_from_mapping({}), {})
    assert tracing.wanted(config_from_mapping({"tracing": {"xray": True}}), {})


@needs_tools
def test_skopeo_pushes_and_pulls_through_a_traced_function_on_fresh_instances(
        moto_s3, bucket, redis_srv, tmp_path, tmp_path_factory) -> None:
    """A real client through the API Gateway stand-in (REST API, the platform's limits),
    each instance a fresh interpreter, X-Ray active as both Chalice stages deploy it and
    the descriptor cache in Redis: the pushed image comes back identical, and every
    invocation that touched storage or the cache sent its subsegments, as children of
    Lambda's segment for that invocation, to the daemon."""
    image = session_image(images_dir(tmp_path_factory), "small")
    daemon = Daemon()
    try:
        env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "traced",
               "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis_srv.addr,
               "AWS_XRAY_DAEMON_ADDRESS": daemon.address, "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR"}
        with lambda_gateway(env, "rest", instances="isolated", workdir=tmp_path) as gateway:
            clients_images.push(image.path, "v1", gateway.url, "traced/skopeo", "v1")
            copy = Layout(tmp_path / "copy")
            clients_images.pull(gateway.url, "traced/skopeo", "v1", copy.path, "v1")
            assert_same_image(image, "v1", copy, "v1")
            gateway.assert_nothing_over_the_limit_reached_the_function()
            docs = daemon.documents()
    finally:
        daemon.close()
    assert docs and all(d["type"] == "subsegment" and d["parent_id"] for d in docs)
    # one trace per invocation: the roots are the gateway's, one per request that was traced
    assert len({d["trace_id"] for d in docs}) > 5
    names = {d["name"] for d in walk(docs)}
    assert {"s3.writer.commit", "s3.redirect_url", "cache.stat", "cache.set_descriptor"} <= names, sorted(names)
