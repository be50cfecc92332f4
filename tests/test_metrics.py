"""Metrics: Prometheus on `stratus serve`'s debug address, CloudWatch EMF lines on Lambda.

The values are read before and after real traffic and compared: each test asserts
what the traffic must have added (bytes pushed, requests by route, method and status,
storage calls by driver, descriptor-cache hits and misses)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from chalicelib.api import RegistryAPI
from chalicelib.bootstrap import build_api
from chalicelib.config import config_from_mapping

from .lambda_gateway import lambda_gateway, runtime_environment
from .moto_server import MotoS3
from . import redis_server
from .redis_server import RedisServer
from .oci_client import OCI_MANIFEST, Registry, canonical, descriptor, digest_of, random_bytes, unique_repo
from .servers import ROOT, free_port, stratus_server

redis_srv = redis_server.redis_srv  # the module-scoped fixture, requested by name below
Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of name whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def push_image(registry: Registry, repo: str, layer: bytes) -> tuple[str, str, bytes]:
    config_blob = b'{"architecture":"amd64","os":"linux"}'
    config_digest = registry.push_blob(repo, config_blob)
    layer_digest = registry.push_blob(repo, layer)
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config_blob),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    })
    registry.push_manifest(repo, "v1", manifest)
    return config_digest, layer_digest, config_blob


def test_prometheus_metrics_move_with_traffic(tmp_path, redis_srv: RedisServer):
    debug_port = free_port()
    env = {
        "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}",
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
        # a shared cache is the one stats ask (an in-process one only remembers)
        "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis",
        "REGISTRY_REDIS_ADDR": redis_srv.addr,
    }
    with stratus_server(tmp_path / "data", env) as url:
        metrics_url = f"http://127.0.0.1:{debug_port}/metrics"
        before = scrape(metrics_url)
        registry = Registry(url)
        repo = unique_repo("metrics")
        layer = random_bytes(300_000)
        config_digest, layer_digest, config_blob = push_image(registry, repo, layer)
        pulled = registry.blob(repo, layer_digest)
        assert pulled.status_code == 200 and pulled.content == layer
        for _ in range(3):
            assert registry.manifest(repo, "v1").status_code == 200
        assert registry.head(f"/v2/{repo}/blobs/{config_digest}").status_code == 200
        unknown = digest_of(b"never pushed")
        assert registry.head(f"/v2/{repo}/blobs/{unknown}").status_code == 404
        registry.close()
        after = scrape(metrics_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def delta_total(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # requests by route, method and status
    assert delta("stratus_http_requests_total", route="upload", method="PUT", status="201") == 2
    assert delta("stratus_http_requests_total", route="uploads", method="POST", status="202") == 2
    assert delta("stratus_http_requests_total", route="manifest", method="PUT", status="201") == 1
    assert delta("stratus_http_requests_total", route="manifest", method="GET", status="200") == 3
    assert delta("stratus_http_requests_total", route="blob", method="HEAD", status="404") == 1
    # latency histograms count every request of their series
    assert delta("stratus_http_request_duration_seconds_count", route="manifest", method="GET") == 3
    assert delta("stratus_http_request_duration_seconds_bucket", route="manifest", method="GET", le="+Inf") == 3
    assert delta("stratus_http_request_duration_seconds_sum", route="manifest", method="GET") > 0
    # bytes in and out: the blobs pushed, the layer pulled
    assert delta("stratus_http_request_bytes_total", route="upload", method="PUT") == len(layer) + len(config_blob)
    assert delta("stratus_http_response_bytes_total", route="blob", method="GET") == len(layer)
    assert delta("stratus_http_response_bytes_total", route="blob", method="HEAD") == 0
    # storage calls by driver, each timed
    assert delta_total("stratus_storage_calls_total", driver="filesystem") > 10
    assert delta("stratus_storage_calls_total", driver="filesystem", call="writer.commit") >= 2
    assert delta_total("stratus_storage_call_duration_seconds_count", driver="filesystem") == \
        delta_total("stratus_storage_calls_total", driver="filesystem")
    assert delta_total("stratus_storage_errors_total", driver="filesystem") == 0
    # descriptor cache (Redis): the blob HEAD after the push is a hit, the unknown digest a miss
    assert delta("stratus_descriptor_cache_lookups_total", outcome="hit") >= 1
    assert delta("stratus_descriptor_cache_lookups_total", outcome="miss") >= 1


def test_without_prometheus_nothing_is_wrapped_and_metrics_are_not_served(tmp_path):
    config = config_from_mapping({"storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
                                  "http": {"secret": "s", "debug": {"addr": "127.0.0.1:1"}}})
    api = build_api(config)
    assert type(api) is RegistryAPI  # no wrapper on the hot path
    assert type(api.registry.driver).__module__.startswith("chalicelib.storage.filesystem.")

    debug_port = free_port()
    with stratus_server(tmp_path / "data", {"REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}"}):
        assert requests.get(f"http://127.0.0.1:{debug_port}/metrics", timeout=10).status_code == 404
        health = requests.get(f"http://127.0.0.1:{debug_port}/debug/health", timeout=10)
        assert (health.status_code, health.json()) == (200, {})


# ------------------------------------------------------------------------------ Lambda


def emf_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"_aws"' in line:
            lines.append(json.loads(line))
    return lines


def test_lambda_writes_one_emf_line_per_invocation(tmp_path, moto_s3: MotoS3, redis_srv: RedisServer):
    bucket = moto_s3.create_bucket()
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "s", "REGISTRY_METRICS_EMF_ENABLED": "true",
           "REGISTRY_METRICS_EMF_NAMESPACE": "StratusTest",
           # ElastiCache, as a deployment shares descriptors between instances
           "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis_srv.addr}
    with lambda_gateway(env, "http", workdir=tmp_path) as gateway:
        client = gateway.client()
        repo = unique_repo("emf")
        layer = random_bytes(200_000)
        digest = client.push_blob(repo, layer, chunk=len(layer))
        assert client("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200
        assert client("HEAD", f"/v2/{repo}/blobs/{digest_of(b'never pushed')}").status == 404
        assert client("GET", "/v2/").status == 200
        invocations = gateway.invocations()
        log = tmp_path / f"gateway-{gateway.port}.log"
        lines = emf_lines(log)

    assert len(lines) == len(invocations) == 6  # POST, PATCH, PUT, HEAD, HEAD, GET
    for line in lines:
        directive = line["_aws"]["CloudWatchMetrics"][0]
        assert directive["Namespace"] == "StratusTest"
        assert directive["Dimensions"] == [["Route", "Method"], ["Driver"]]
        names = {m["Name"] for m in directive["Metrics"]}
        assert {"Requests", "Latency", "BytesIn", "BytesOut", "StorageCalls", "StorageErrors",
                "CacheHits", "CacheMisses"} <= names
        assert all(isinstance(line[name], (int, float)) for name in names)  # every metric has its value
        assert line["Driver"] == "s3" and line["Requests"] == 1 and line["Latency"] > 0
        assert isinstance(line["_aws"]["Timestamp"], int)
    by_request = {(line["Route"], line["Method"], line["Status"]): line for line in lines}
    patch = by_request[("upload", "PATCH", 202)]
    assert patch["BytesIn"] == len(layer) and patch["StorageCalls"] > 0
    assert by_request[("upload", "PUT", 201)]["StorageCalls"] > 0
    assert by_request[("blob", "HEAD", 200)]["CacheHits"] >= 1  # the PUT wrote the descriptor back
    assert by_request[("blob", "HEAD", 404)]["CacheMisses"] >= 1
    assert by_request[("blob", "HEAD", 404)]["StorageErrors"] == 0  # "not found" is an answer
    assert by_request[("base", "GET", 200)]["StorageCalls"] == 0
    assert by_request[("base", "GET", 200)]["BytesOut"] == 2  # {}


_PROBE = """\
import json, sys
from tests.lambda_events import LambdaContext, Response, rest_api_event
import app
response = Response(app.app(rest_api_event("GET", "/v2/"), LambdaContext()))
print(json.dumps({"status": response.status, "prometheus": "prometheus_client" in sys.modules}), flush=True)
"""


@pytest.mark.parametrize("emf", [True, False])
def test_lambda_never_imports_prometheus_and_emits_emf_only_when_enabled(emf):
    env = {**runtime_environment(), "PYTHONPATH": str(ROOT), "REGISTRY_STORAGE": "inmemory",
           "REGISTRY_HTTP_SECRET": "s",
           # even with the debug settings of a config shared with `stratus serve`
           "REGISTRY_HTTP_DEBUG_ADDR": "127.0.0.1:5001", "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true"}
    if emf:
        env["REGISTRY_METRICS_EMF_ENABLED"] = "true"
    out = subprocess.run([sys.executable, "-E", "-s", "-c", _PROBE], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    probe = [line for line in lines if "prometheus" in line]
    assert probe == [{"status": 200, "prometheus": False}]
    emitted = [line for line in lines if "_aws" in line]
    assert len(emitted) == (1 if emf else 0)
    if emf:
        assert emitted[0]["Route"] == "base" and emitted[0]["Driver"] == "inmemory"


def test_functions_get_emf_or_nothing_never_prometheus():
    from chalicelib import metrics

    shared = {"http": {"debug": {"addr": "127.0.0.1:5001", "prometheus": {"enabled": True}}}}
    config = config_from_mapping(shared)
    for environ in ({"FUNCTIONS_WORKER_RUNTIME": "python"}, runtime_environment()):
        assert metrics.from_config(config, environ) is None
        with_emf = config_from_mapping({**shared, "metrics": {"emf": {"enabled": True}}})
        assert isinstance(metrics.from_config(with_emf, environ), metrics.EMFRecorder)
    assert isinstance(metrics.from_config(config, {}), metrics.PrometheusRecorder)
