"""What the Redis descriptor cache saves on S3 (moto server): counted S3 requests.

Every request the S3 driver's boto3 client sends passes a counting hook
(chalicelib.storage.s3.client.requests); a warm blob HEAD must send none.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

import pytest

from chalicelib.cache.redis import RedisBlobDescriptorCache
from chalicelib.config import RedisConfig
from chalicelib.digest import Digest
from chalicelib.registry import Registry, RegistryOptions
from chalicelib.storage import create_driver

from .moto_server import MotoS3
from .redis_server import HAVE_REDIS, NO_REDIS, RedisServer, redis_server
from .test_cache_registry import Client

pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason=NO_REDIS)


class S3Requests:
    """S3 requests sent by this process since the last take()."""

    def __init__(self) -> None:
        from chalicelib.storage.s3 import client

        self._counter = client.requests
        self._start = self._counter.snapshot()

    def take(self) -> Counter:
        now = self._counter.snapshot()
        since = now.copy()
        since.subtract(self._start)
        self._start = now
        return +since


@pytest.fixture
def redis_srv(tmp_path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


class ObjectReads:
    """GetObject and HeadObject requests this process sent since the last take(), by key
    (through the boto3 client or the driver's botocore-free reads alike)."""

    def __init__(self) -> None:
        from chalicelib.storage.s3 import client

        self._keys: list[str] = []
        client.requests.observe(self._record)

    def _record(self, operation: str, path: str) -> None:
        if operation in ("GetObject", "HeadObject"):
            self._keys.append(f"{operation} {path}")

    def take(self) -> list[str]:
        keys, self._keys = self._keys, []
        return keys


def instance(moto: MotoS3, bucket: str, server: RedisServer) -> Client:
    """A function instance: its own Registry and Redis provider over shared S3 and Redis."""
    driver = create_driver("s3", moto.parameters(bucket))
    cache = RedisBlobDescriptorCache(RedisConfig(addr=server.addr))
    # stat_retries as bootstrap sets them for S3
    return Client(Registry(driver, cache, RegistryOptions(stat_retries=3)))


def test_warm_blob_head_on_s3_makes_zero_s3_requests(moto_s3, redis_srv):
    bucket = moto_s3.create_bucket()
    pusher = instance(moto_s3, bucket, redis_srv)
    digest = pusher.push_blob("app", b"a layer in S3")
    requests = S3Requests()

    puller = instance(moto_s3, bucket, redis_srv)  # warmed by the pusher, through Redis
    head = puller("HEAD", f"/v2/app/blobs/{digest}")
    assert head.status == 200 and head.header("Content-Length") == "13"
    assert requests.take() == Counter()
    # a GET's descriptor too: it is redirected to a presigned URL, signed locally
    get = puller("GET", f"/v2/app/blobs/{digest}")
    assert get.status == 307 and f"{bucket}/docker/registry/v2/blobs/sha256/" in get.header("Location")
    assert requests.take() == Counter()

    # the same HEAD with Redis emptied: the link and the blob are read from S3, once
    redis_srv.client().flushdb()
    assert puller("HEAD", f"/v2/app/blobs/{digest}").status == 200
    cold = requests.take()
    assert cold == Counter({"GetObject": 1, "HeadObject": 1}), cold
    assert puller("HEAD", f"/v2/app/blobs/{digest}").status == 200
    assert requests.take() == Counter()


def test_manifest_put_verification_on_s3_reads_no_blob_from_s3_when_warm(moto_s3, redis_srv):
    bucket = moto_s3.create_bucket()
    client = instance(moto_s3, bucket, redis_srv)
    layers = [b"layer one", b"layer two", b"layer three"]
    client.push_image("app", "v1", layers)
    reads = ObjectReads()

    # two new manifests over the same blobs (in another order), one warm, one cold
    client.push_image("app", "v2", [layers[1], layers[0], layers[2]], push_blobs=False)
    warm = reads.take()
    redis_srv.client().flushdb()
    client.push_image("app", "v3", [layers[2], layers[1], layers[0]], push_blobs=False)
    cold = reads.take()
    # four references (config + three layers): a link GET and a blob HEAD each when cold;
    # a manifest PUT also reads the gc state and the tag, which no cache may answer
    layer_hexes = [Digest.from_bytes(layer).hex for layer in layers]
    assert [k for k in warm if "/_layers/" in k or any(h in k for h in layer_hexes)] == [], warm
    def count(keys: list[str], operation: str, part: str) -> int:
        return len([k for k in keys if k.startswith(operation) and part in k])

    assert count(cold, "GetObject", "/_layers/") - count(warm, "GetObject", "/_layers/") == 4, (cold, warm)
    assert count(cold, "HeadObject", "/blobs/") - count(warm, "HeadObject", "/blobs/") == 4, (cold, warm)
    assert client("HEAD", f"/v2/app/blobs/{Digest.from_bytes(layers[0])}").status == 200
