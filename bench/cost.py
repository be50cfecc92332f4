"""Issue 13, item 5: what a registry on Lambda costs, beside ECR, from measured work.

The Lambda app runs behind the API Gateway stand-in in HTTP API mode (the Terraform path,
tests/lambda_gateway.py) over S3 on moto, with the memory infra/terraform/aws configures
(`memory_size`). A counting proxy sits between everything and moto: the function's S3
calls and the clients' presigned GETs and part PUTs go through it, so every S3 request is
counted by price class, and the bytes S3 sends to clients are the transfer out. From the
stand-in's records come the invocations, each invocation's duration (billed per 1 ms,
rounded up, at the configured memory) and the API requests (an HTTP API meters each in
512 KB increments). bench/prices.py turns the counts into dollars.

- **Pulls**: a 5-layer image is pushed, then pulled as docker does (GET /v2/, the manifest
  by tag, the config and each layer, answered 307 and read from S3); the mean of the
  pulls, times 1,000.
- **Push**: a blob through `stratus relay` (bench/relay.py's pieces), once with direct
  uploads (parts PUT straight to S3) and once in chunked PATCHes through the function;
  1 GiB (12 MiB with --quick), everything the relay, the function and S3 did counted.
- **ECR** for the same work: no request charges (pushes, pulls and API calls are free), the
  same bytes out at the same internet rate, and its storage price.
- Storage and transfer have rows of their own; transfer in is free on both.

Durations on moto are this machine's: S3 on AWS answers in milliseconds more per call, so
compute is a floor. Not counted: CloudWatch Logs ingestion, X-Ray, the secret's SSM or
Secrets Manager calls (one per instance), ElastiCache, and the 100 GB/month of free
transfer out.
"""
from __future__ import annotations

import http.client
import json
import math
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

from . import prices, servers
from .prices import GB, usd

MiB = 1 << 20
API_INCREMENT = 512 * 1024  # an HTTP API request is metered in 512 KB increments
PULLS = 1000
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- counting S3 requests ------------------------------------------------------------------------


@dataclass
class S3Counts:
    tier1: int = 0  # PUT, COPY, POST, LIST
    tier2: int = 0  # GET, HEAD
    free: int = 0  # DELETE
    out_bytes: int = 0  # bodies of presigned GETs: what S3 sends out of AWS to a client

    def minus(self, other: "S3Counts") -> "S3Counts":
        return S3Counts(self.tier1 - other.tier1, self.tier2 - other.tier2, self.free - other.free,
                        self.out_bytes - other.out_bytes)


def s3_class(method: str, path: str, query: str) -> str:
    """The price class of a path-style S3 request ("tier1", "tier2" or "free")."""
    if method == "DELETE":
        return "free"
    if method in ("PUT", "POST"):
        return "tier1"  # PutObject, UploadPart, CopyObject, UploadPartCopy, Create/CompleteMultipartUpload
    key = path.lstrip("/").partition("/")[2]
    if method == "GET" and (not key or "uploadId=" in query or "uploads" in query.split("&")):
        return "tier1"  # ListObjectsV2, ListParts, ListMultipartUploads
    return "tier2"


class CountingProxy:
    """HTTP in front of moto_server: forwards every request as it came, counts it."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.counts = S3Counts()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def snapshot(self) -> S3Counts:
        with self._lock:
            return replace(self.counts)

    def count(self, kind: str, out_bytes: int) -> None:
        with self._lock:
            setattr(self.counts, kind, getattr(self.counts, kind) + 1)
            self.counts.out_bytes += out_bytes

    def _handler(self) -> type:
        from tests.lambda_gateway import read_body

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = read_body(self.rfile, headers, 1 << 40).data or b""
                path, _, query = self.path.partition("?")
                send = {k: v for k, v in self.headers.items()
                        if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
                if body or self.command in ("PUT", "POST"):
                    send["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=600)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=send)
                    response = upstream.getresponse()
                    data = response.read()
                    reply = [(k, v) for k, v in response.getheaders()
                             if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")]
                    length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                finally:
                    upstream.close()
                presigned = re.search(r"(^|&)(X-Amz-)?Signature=", query) is not None  # SigV4 or V2
                proxy.count(s3_class(self.command, path, query),
                            len(data) if presigned and self.command == "GET" and response.status < 300 else 0)
                try:
                    self.send_response_only(response.status)
                    for name, value in reply:
                        self.send_header(name, value)
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except ConnectionError:  # a client that gave up (the relay after a gateway timeout)
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> "CountingProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- what the functions and the API did ----------------------------------------------------------


@dataclass
class Work:
    """Counted work of one scenario, and its price."""

    invocations: int = 0
    billed_ms: int = 0  # each invocation rounded up to 1 ms
    api_requests: int = 0
    api_units: int = 0  # 512 KB increments
    api_out_bytes: int = 0  # response bodies the API sent to clients
    s3: S3Counts = field(default_factory=S3Counts)
    memory_mb: int = 1024

    def scaled(self, factor: float) -> "Work":
        return Work(round(self.invocations * factor), round(self.billed_ms * factor),
                    round(self.api_requests * factor), round(self.api_units * factor),
                    round(self.api_out_bytes * factor),
                    S3Counts(round(self.s3.tier1 * factor), round(self.s3.tier2 * factor),
                             round(self.s3.free * factor), round(self.s3.out_bytes * factor)), self.memory_mb)

    @property
    def gb_seconds(self) -> float:
        return self.billed_ms / 1000 * self.memory_mb / 1024

    def requests_usd(self, api: str = "http") -> float:
        """Lambda requests and duration, API Gateway requests (an HTTP API's in 512 KB
        increments, a REST API's whole), S3 requests."""
        gateway = usd("http_api_request", self.api_units) if api == "http" else usd("rest_api_request",
                                                                                 self.api_requests)
        return (usd("lambda_request", self.invocations) + usd("lambda_gb_second", self.gb_seconds) + gateway
                + usd("s3_tier1", self.s3.tier1) + usd("s3_tier2", self.s3.tier2))

    @property
    def out_bytes(self) -> int:
        return self.s3.out_bytes + self.api_out_bytes

    def transfer_usd(self) -> float:
        return usd("transfer_out", self.out_bytes / GB)

    def describe(self) -> str:
        return (f"{self.invocations:,} invocations, {self.gb_seconds:,.1f} GB-s at {self.memory_mb} MB; "
                f"{self.api_requests:,} API requests ({self.api_units:,} metered); "
                f"S3 {self.s3.tier1:,} PUT/POST/LIST + {self.s3.tier2:,} GET/HEAD")


def gateway_work(records: list, s3: S3Counts, memory_mb: int) -> Work:
    invoked = [r for r in records if r.reached_function]
    return Work(
        invocations=len(invoked),
        billed_ms=sum(math.ceil(r.duration_ms or 0) for r in invoked),
        api_requests=len(records),
        api_units=sum(max(1, math.ceil(max(r.body_bytes, r.response_bytes or 0) / API_INCREMENT)) for r in records),
        api_out_bytes=sum(r.response_bytes or 0 for r in records),
        s3=s3, memory_mb=memory_mb)


def terraform_memory() -> int:
    """infra/terraform/aws's memory_size default: the memory a deployment runs with."""
    text = (servers.ROOT / "infra" / "terraform" / "aws" / "variables.tf").read_text()
    found = re.search(r'variable "memory_size" \{.*?default\s*=\s*(\d+)', text, re.S)
    return int(found.group(1)) if found else 1024


@contextmanager
def counted_registry(workdir: Path, name: str, memory_mb: int, **env: str) -> Iterator[tuple[Any, CountingProxy]]:
    """A fresh moto_server behind the counting proxy, and the Lambda app in front of it."""
    from tests.lambda_gateway import lambda_gateway, runtime_environment
    from tests.moto_server import MotoS3, moto_s3_server

    with moto_s3_server(workdir / f"moto-cost-{name}.log") as s3, CountingProxy(s3.endpoint) as proxy:
        bucket = s3.create_bucket()
        function_env = {**runtime_environment(memory_mb=memory_mb), **MotoS3(proxy.url).environment(bucket),
                        "REGISTRY_HTTP_SECRET": "bench-cost", **env}
        gateway_dir = workdir / f"gateway-cost-{name}"
        gateway_dir.mkdir()
        with lambda_gateway(function_env, "http", workdir=gateway_dir) as gw:
            yield gw, proxy


# -- pulls ---------------------------------------------------------------------------------------


def layer_sizes(quick: bool) -> list[int]:
    return [MiB] * 5 if quick else [2 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB]


def push_image(client: Any, name: str, sizes: list[int]) -> tuple[bytes, int]:
    """Layers of random bytes, a config and a manifest; (manifest, image bytes)."""
    import hashlib
    import os

    layers = []
    for size in sizes:
        data = os.urandom(size)
        layers.append({"mediaType": LAYER, "size": size, "digest": client.push_blob(name, data, chunk=4 * MiB)})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(os.urandom(8)).hexdigest()}"
                                                                   for _ in sizes]}}).encode()
    config_digest = client.push_blob(name, config, chunk=4 * MiB)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "size": len(config), "digest": config_digest},
                           "layers": layers}).encode()
    put = client("PUT", f"/v2/{name}/manifests/v1", headers={"Content-Type": DOCKER_MANIFEST}, body=manifest)
    assert put.status == 201, put.body
    return manifest, sum(sizes) + len(config) + len(manifest)


def pull_once(client: Any, name: str) -> int:
    """docker's requests for a pull; the bytes read."""
    assert client("GET", "/v2/").status == 200
    got = client("GET", f"/v2/{name}/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert got.status == 200, got.body
    manifest = got.json()
    total = len(got.body)
    for blob in [manifest["config"], *manifest["layers"]]:
        redirect = client("GET", f"/v2/{name}/blobs/{blob['digest']}")
        assert redirect.status == 307, (redirect.status, redirect.body[:200])
        total += len(_get(redirect.header("Location")))
    return total


def _get(url: str) -> bytes:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data[:200])
        return data
    finally:
        connection.close()


def measure_pulls(workdir: Path, quick: bool, memory_mb: int) -> tuple[Work, int, int]:
    """(work of one pull, the image's bytes, pulls measured)."""
    pulls = 3 if quick else 10
    with counted_registry(workdir, "pull", memory_mb) as (gw, proxy):
        client = gw.client()
        _, image_bytes = push_image(client, "bench/cost", layer_sizes(quick))
        before, seen = proxy.snapshot(), len(gw.records())
        for _ in range(pulls):
            assert pull_once(client, "bench/cost") == image_bytes
        work = gateway_work(gw.records()[seen:], proxy.snapshot().minus(before), memory_mb)
    return work.scaled(1 / pulls), image_bytes, pulls


# -- pushes --------------------------------------------------------------------------------------


def measure_push(workdir: Path, quick: bool, memory_mb: int, direct: bool) -> tuple[Work, int, str]:
    """(work of one push through stratus relay, bytes pushed, size label)."""
    from . import relay as relay_bench

    settings = relay_bench.relay_settings(quick)
    mode = "direct" if direct else "chunked"
    blob = relay_bench.Blob(settings.size)
    blob.stamp(f"cost {mode}")
    env = {"REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE": relay_bench.COPY_CHUNK}
    if not direct:
        env["REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED"] = "false"
    with counted_registry(workdir, f"push-{mode}", memory_mb, **env) as (gw, proxy):
        before = proxy.snapshot()
        with relay_bench.relay(workdir, gw.url, f"cost-{mode}", settings.part_size) as running:
            relay_bench.push(running.url, f"bench/cost-{mode}", blob)
        work = gateway_work(gw.records(), proxy.snapshot().minus(before), memory_mb)
    return work, settings.size, settings.label


# -- the rows ------------------------------------------------------------------------------------


def rows() -> dict[str, Any]:
    from .report import Row

    unit = f"USD, {prices.REGION} prices of {prices.AS_OF}"
    return {
        "cost_pull": Row("Cost vs ECR: 1,000 pulls of a 5-layer image, requests and compute", unit, fmt="{:.4f}"),
        "cost_pull_rest": Row("Cost vs ECR: the same 1,000 pulls through a REST API (chalice deploy), requests "
                              "and compute", unit, fmt="{:.4f}"),
        "cost_pull_transfer": Row("Cost vs ECR: 1,000 pulls of a 5-layer image, transfer out", unit, fmt="{:.4f}"),
        "cost_push_direct": Row("Cost vs ECR: push via stratus relay, direct uploads, requests and compute "
                                "(transfer in free)", unit, fmt="{:.4f}"),
        "cost_push_chunked": Row("Cost vs ECR: push via stratus relay, chunked PATCHes, requests and compute "
                                 "(transfer in free)", unit, fmt="{:.4f}"),
        "cost_storage": Row("Cost vs ECR: 1 GiB stored for a month (S3 Standard)", unit, fmt="{:.4f}"),
    }


def measure(workdir: Path, quick: bool, record: Any, row_of: Any) -> None:
    """Runs the scenarios; record(key, "stratus"|"reference", usd), row_of(key) -> Row."""
    memory = terraform_memory()
    pull, image_bytes, pulls = measure_pulls(workdir, quick, memory)
    thousand = pull.scaled(PULLS)
    record("cost_pull", "stratus", thousand.requests_usd())
    record("cost_pull", "reference", 0.0)
    # the same work priced as a REST API's requests; an auth'd registry's gateway
    # authorizer (README) adds one invocation per request with credentials, not counted
    record("cost_pull_rest", "stratus", thousand.requests_usd(api="rest"))
    record("cost_pull_rest", "reference", 0.0)
    record("cost_pull_transfer", "stratus", thousand.transfer_usd())
    record("cost_pull_transfer", "reference", usd("transfer_out", image_bytes * PULLS / GB))
    size = f"{image_bytes / MiB:.0f} MiB"
    row_of("cost_pull").label += f" ({size}; per 1,000, from {pulls} measured: {thousand.describe()})"
    row_of("cost_pull_transfer").label += f" ({size}; {thousand.out_bytes / GB:,.2f} GB out)"
    log(f"cost: 1,000 pulls of {size}: ${thousand.requests_usd():.4f} requests and compute, "
        f"${thousand.transfer_usd():.4f} transfer ({thousand.describe()})")
    for direct, key in ((True, "cost_push_direct"), (False, "cost_push_chunked")):
        work, pushed, label = measure_push(workdir, quick, memory, direct)
        record(key, "stratus", work.requests_usd())
        record(key, "reference", 0.0)
        row = row_of(key)
        row.label = row.label.replace("push ", f"push of {label} ", 1) + f" ({work.describe()})"
        log(f"cost: push of {label} {'direct' if direct else 'chunked'}: ${work.requests_usd():.4f} "
            f"({work.describe()})")
    record("cost_storage", "stratus", usd("s3_storage", 1))
    record("cost_storage", "reference", usd("ecr_storage", 1))


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m bench.cost [--quick]`: the rows alone, printed."""
    from . import report

    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    table = rows()
    with servers.workspace(keep=False) as workdir:
        measure(workdir, quick, lambda key, who, value: getattr(table[key], who).append(value),
                lambda key: table[key])
    print(report.table(list(table.values())))


if __name__ == "__main__":
    main()
