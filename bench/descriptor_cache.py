"""Blob HEAD and manifest PUT over S3 (moto server): cold descriptor cache vs warm Redis.

The registry api is called in-process, as the Lambda handler calls it, over the
S3 driver and the Redis provider, so the S3 requests each operation sends are
counted exactly (the S3 driver's botocore `before-send` counter). "Cold" empties
Redis before every operation (not timed), so each one misses and writes back;
"warm" repeats the operation against the entries the previous one left.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tests.moto_server import MotoS3, moto_s3_server
from tests.redis_server import HAVE_REDIS, redis_server

REFERENCES = 5  # config + 4 layers in the manifest PUT


def available() -> bool:
    return HAVE_REDIS and importlib.util.find_spec("moto") is not None


@dataclass(frozen=True)
class Result:
    rate: float  # operations per second
    s3_requests: float  # per operation


@contextmanager
def _backends(workdir: Path) -> Iterator[tuple[MotoS3, str]]:
    """(moto S3, Redis address), both on free loopback ports, started as the tests start them."""
    with moto_s3_server(workdir / "moto.log") as s3, redis_server(workdir / "redis") as redis:
        yield s3, redis.addr


def _timed(operation: Callable[[], None], ops: int, before: Callable[[], None], requests) -> Result:
    start_requests = sum(requests.snapshot().values())
    elapsed = 0.0
    for _ in range(ops):
        before()
        started = time.perf_counter()
        operation()
        elapsed += time.perf_counter() - started
    sent = sum(requests.snapshot().values()) - start_requests
    return Result(ops / elapsed, sent / ops)


def measure(workdir: Path, ops: int, reps: int = 1) -> list[dict[str, Result]]:
    """Per repetition: {"head_cold", "head_warm", "put_cold", "put_warm"}."""
    from chalicelib.api import APISettings, RegistryAPI
    from chalicelib.api.http import Request
    from chalicelib.cache.redis import RedisBlobDescriptorCache
    from chalicelib.config import RedisConfig
    from chalicelib.digest import Digest
    from chalicelib.registry import Registry, RegistryOptions
    from chalicelib.storage import create_driver
    from chalicelib.storage.s3 import client as s3_client

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

    with _backends(workdir) as (moto, redis_addr):
        driver = create_driver("s3", moto.parameters(moto.create_bucket("stratus-bench")))
        cache = RedisBlobDescriptorCache(RedisConfig(addr=redis_addr))
        api = RegistryAPI(Registry(driver, cache, RegistryOptions(stat_retries=3)), APISettings(secret=b"bench"))

        def call(method: str, path: str, query: str = "", headers=None, body: bytes = b"", expect: int = 200):
            response = api.handle(Request.from_bytes(method, path, query, headers, body, "http://bench"))
            if response.status != expect:
                raise RuntimeError(f"{method} {path}: {response.status} {response.body_bytes()[:300]!r}")

        blobs = [json.dumps({"architecture": "amd64", "os": "linux"}).encode()]
        blobs += [os.urandom(1024) for _ in range(REFERENCES - 1)]
        digests = [Digest.from_bytes(b) for b in blobs]
        for blob, digest in zip(blobs, digests):
            call("POST", "/v2/bench/app/blobs/uploads/", f"digest={digest}", body=blob, expect=201)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": str(digests[0]), "size": len(blobs[0])},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(d), "size": len(b)}
                       for b, d in zip(blobs[1:], digests[1:])],
        }).encode()
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        put = lambda: call("PUT", "/v2/bench/app/manifests/latest", headers=headers, body=manifest, expect=201)  # noqa: E731
        head = lambda: call("HEAD", f"/v2/bench/app/blobs/{digests[1]}")  # noqa: E731
        put()  # the manifest exists: every PUT below verifies and re-links it
        flush = cache.client.flushdb
        counter = s3_client.requests
        results = []
        for _ in range(reps):
            results.append({
                "head_cold": _timed(head, ops, flush, counter),
                "head_warm": _timed(head, ops, lambda: None, counter),
                "put_cold": _timed(put, ops, flush, counter),
                "put_warm": _timed(put, ops, lambda: None, counter),
            })
        cache.close()
        return results
