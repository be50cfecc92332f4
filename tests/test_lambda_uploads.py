"""Blob uploads across stateless function instances over S3 (moto server): chunks of
any size, the digest verified at the end, nothing left behind by a bad upload, the
eventual-consistency retries, and the S3 requests a push and a pull cost.

What a client sends goes through the API Gateway stand-in (tests/lambda_gateway.py),
so a chunk the platform would refuse is refused here too; chunks larger than any
invocation can carry (the S3 writer must take them from `stratus serve`) are driven
through the registry api directly."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from typing import Iterator

import pytest
import requests as http

from chalicelib.bootstrap import build_api
from chalicelib.config import config_from_mapping
from chalicelib.context import Context
from chalicelib.digest import Digest
from chalicelib.registry import Registry, RegistryOptions
from chalicelib.registry.errors import BlobUnknownError
from chalicelib.storage import PathNotFoundError, create_driver
from chalicelib.storage.s3 import client as s3_client
from tests.lambda_gateway import EVENT_LIMIT, GatewayClient, LambdaGateway, lambda_gateway
from tests.moto_server import MotoS3

MiB = 1 << 20
# the largest chunk whose event (base64 plus ~2 KB of request) fits in one invocation
LARGEST_CHUNK = (EVENT_LIMIT - 4096) // 4 * 3


def random_bytes(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"upload-{seed}".encode()).digest(size)


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


@pytest.fixture(scope="module")
def gateway(moto_s3: MotoS3, bucket: str, tmp_path_factory) -> Iterator[LambdaGateway]:
    """The function with its chunk limit raised to 8 MiB: only the platform limits chunks.
    Each request on a fresh registry, as on a new function instance."""
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "uploads-secret",
           "REGISTRY_HTTP_CHUNKMAXLENGTH": "8MiB"}
    with lambda_gateway(env, "http", instances="cold", workdir=tmp_path_factory.mktemp("gateway")) as gw:
        yield gw
        gw.assert_nothing_over_the_limit_reached_the_function()


@pytest.fixture
def invoke(gateway: LambdaGateway) -> GatewayClient:
    return gateway.client()


def multipart_uploads(moto_s3: MotoS3, bucket: str) -> list[str]:
    return [u["Key"] for u in moto_s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def keys_under(moto_s3: MotoS3, bucket: str, prefix: str) -> list[str]:
    pages = moto_s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.mark.parametrize("chunks", [(MiB, 3 * MiB, LARGEST_CHUNK), (MiB,), (3 * MiB,), (LARGEST_CHUNK,)],
                         ids=["1-3-max", "1", "3", "max"])
def test_23_mib_in_chunks_each_on_a_fresh_instance(invoke, moto_s3, bucket, chunks) -> None:
    """1+3+max+1+3+... MiB through the gateway (tails folded into parts at every size), and
    each size alone; `max` is the most one invocation carries, ~4.4 MiB."""
    name = "chunks/c" + "-".join(str(c) for c in chunks)
    data = random_bytes(23 * MiB, seed=sum(chunks))
    digest = invoke.push_blob(name, data, chunk=list(chunks))
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert multipart_uploads(moto_s3, bucket) == []
    assert keys_under(moto_s3, bucket, f"docker/registry/v2/repositories/{name}/_uploads/") == []
    got = invoke("GET", f"/v2/{name}/blobs/{digest}")
    assert got.status == 307
    assert hashlib.sha256(http.get(got.header("Location"), timeout=60).content).hexdigest() == digest[7:]


def test_a_chunk_over_what_an_invocation_carries_is_refused_by_the_platform(invoke, gateway) -> None:
    started = invoke("POST", "/v2/chunks/too-big/blobs/uploads/")
    path, query = started.location()
    piece = random_bytes(LARGEST_CHUNK + 3 * 1024, seed=5)
    refused = invoke("PATCH", path, query, {"Content-Range": f"0-{len(piece) - 1}"}, piece)
    assert refused.status == 413 and refused.body == b'{"message":"Request Too Long"}'
    assert not gateway.records()[-1].reached_function
    assert invoke("GET", path, query).header("Range") == "0-0"  # nothing of it was written


def api_call(config, method: str, path: str, query: str = "", headers=None, body: bytes = b""):
    """One request to a registry built afresh, as a new instance would build it."""
    from chalicelib.api.http import Request

    return build_api(config).handle(Request.from_bytes(method, path, query, headers or {}, body,
                                                       base_url="https://r"))


def test_23_mib_in_chunks_of_7_mib_reach_the_s3_writer_from_other_fronts(moto_s3, bucket) -> None:
    """Chunks bigger than an S3 part (which only `stratus serve` can receive) go straight
    into parts, with the tails folded; no gateway can carry them, so the api is driven."""
    config = config_from_mapping({"storage": {"s3": moto_s3.parameters(bucket)}, "http": {"secret": "s"}})
    name, data = "chunks/c1-3-7", random_bytes(23 * MiB, seed=11)
    response = api_call(config, "POST", f"/v2/{name}/blobs/uploads/")
    location = response.header("Location").split("https://r", 1)[1]
    offset, sizes = 0, iter([1, 3, 7] * 3)
    while offset < len(data):
        piece = data[offset:offset + next(sizes) * MiB]
        path, query = location.split("?", 1)
        response = api_call(config, "PATCH", path, query,
                            {"Content-Range": f"{offset}-{offset + len(piece) - 1}"}, piece)
        assert response.status == 202, response.body_bytes()
        location = response.header("Location").split("https://r", 1)[1]
        offset += len(piece)
    path, query = location.split("?", 1)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert api_call(config, "PUT", path, f"{query}&digest={digest}").status == 201
    assert multipart_uploads(moto_s3, bucket) == []
    assert keys_under(moto_s3, bucket, f"docker/registry/v2/repositories/{name}/_uploads/") == []
    stored = moto_s3.client().get_object(Bucket=bucket, Key=f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data")
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == digest[7:]


def test_digest_mismatch_leaves_nothing_and_aborts_the_upload(invoke, moto_s3, bucket) -> None:
    data = random_bytes(7 * MiB, seed=9)
    started = invoke("POST", "/v2/bad/digest/blobs/uploads/")
    path, query = started.location()
    for offset in (0, 4 * MiB):  # 4 MiB in the tail, then a 7 MiB part: a multipart upload exists
        piece = data[offset:offset + 4 * MiB]
        patched = invoke("PATCH", path, query, {"Content-Range": f"{offset}-{offset + len(piece) - 1}"}, piece)
        assert patched.status == 202
        path, query = patched.location()
    assert len(multipart_uploads(moto_s3, bucket)) == 1
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    refused = invoke("PUT", path, f"{query}&digest={wrong}")
    assert refused.status == 400
    assert json.loads(refused.body)["errors"][0]["code"] == "DIGEST_INVALID"
    assert multipart_uploads(moto_s3, bucket) == []
    assert keys_under(moto_s3, bucket, f"docker/registry/v2/blobs/sha256/{wrong[7:9]}/{wrong[7:]}") == []
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    assert keys_under(moto_s3, bucket, f"docker/registry/v2/blobs/sha256/{right[7:9]}/{right[7:]}") == []
    assert keys_under(moto_s3, bucket, "docker/registry/v2/repositories/bad/digest/_uploads/") == []
    assert invoke("HEAD", f"/v2/bad/digest/blobs/{wrong}").status == 404


def test_lost_hash_state_is_recovered_at_commit(invoke, moto_s3, bucket) -> None:
    """S3 cannot read an upload's parts before it completes: the digest is computed after."""
    data = random_bytes(10 * MiB, seed=4)
    started = invoke("POST", "/v2/lost/state/blobs/uploads/")
    path, query = started.location()
    for i, offset in enumerate(range(0, len(data), 4 * MiB)):
        if i == 2:  # the states written so far vanish (a crash between data and state)
            upload = path.rsplit("/", 1)[1]
            prefix = f"docker/registry/v2/repositories/lost/state/_uploads/{upload}/hashstates/"
            for key in keys_under(moto_s3, bucket, prefix):
                moto_s3.client().delete_object(Bucket=bucket, Key=key)
        piece = data[offset:offset + 4 * MiB]
        patched = invoke("PATCH", path, query, {"Content-Range": f"{offset}-{offset + len(piece) - 1}"}, piece)
        assert patched.status == 202, patched.body
        path, query = patched.location()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert invoke("PUT", path, f"{query}&digest={digest}").status == 201
    assert invoke("HEAD", f"/v2/lost/state/blobs/{digest}").status == 200


# -- eventual consistency ---------------------------------------------------------------------


def s3_config(moto_s3: MotoS3, bucket: str, **s3_extra) -> dict:
    return {"storage": {"s3": moto_s3.parameters(bucket, **s3_extra)}, "http": {"secret": "s"}}


def test_stat_retries_where_s3_may_be_eventually_consistent(moto_s3, bucket) -> None:
    api = build_api(config_from_mapping(s3_config(moto_s3, bucket)))
    assert api.registry.options.stat_retries == 3  # an S3-compatible endpoint: maybe Ceph RGW
    tree = {"storage": {"s3": {"bucket": bucket, "region": "eu-west-1"}}, "http": {"secret": "s"}}
    assert build_api(config_from_mapping(tree)).registry.options.stat_retries == 0  # AWS S3 reads its writes


class LaggingDriver:
    """An S3 driver whose stat does not see a blob until it was asked `lag` times."""

    def __init__(self, driver, lag: int):
        self._driver, self.lag, self.stats = driver, lag, 0

    def __getattr__(self, name):
        return getattr(self._driver, name)

    def stat(self, ctx, path):
        self.stats += 1
        if self.stats <= self.lag:
            raise PathNotFoundError("s3", path)
        return self._driver.stat(ctx, path)


@pytest.mark.parametrize("lag, visible", [(2, True), (4, False)])
def test_a_blob_not_yet_visible_is_retried_three_times(moto_s3, bucket, lag, visible) -> None:
    driver = create_driver("s3", moto_s3.parameters(bucket))
    data = b"just committed"
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    ctx = Context()
    driver.put_content(ctx, f"/docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data", data)
    lagging = LaggingDriver(driver, lag)
    registry = Registry(lagging, None, RegistryOptions(stat_retries=3))
    started = time.monotonic()
    if visible:
        assert registry.blobs.stat(ctx, digest).size == len(data)
    else:
        with pytest.raises(BlobUnknownError):
            registry.blobs.stat(ctx, digest)
    assert lagging.stats == min(lag + 1, 4)
    assert time.monotonic() - started >= 0.1 * min(lag, 3) * 0.9  # 100 ms between attempts


# -- what a push and a pull cost --------------------------------------------------------------


def counted(api, method, path, query="", headers=None, body=b"") -> tuple:
    from chalicelib.api.http import Request

    before = s3_client.requests.snapshot()
    response = api.handle(Request.from_bytes(method, path, query, headers or {}, body, base_url="https://r"))
    after = s3_client.requests.snapshot()
    after.subtract(before)
    return response, +after


def push_and_pull_counts(moto_s3: MotoS3, bucket: str, size: int, chunk: int) -> dict:
    config = config_from_mapping(s3_config(moto_s3, bucket))
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fresh = lambda: build_api(config)  # noqa: E731 - each request on a new instance
    total: Counter = Counter()
    response, used = counted(fresh(), "POST", "/v2/count/me/blobs/uploads/")
    total += used
    per_patch = []
    location = response.header("Location").split("https://r", 1)[1]
    for offset in range(0, size, chunk):
        piece = data[offset:offset + chunk]
        path, query = location.split("?", 1)
        response, used = counted(fresh(), "PATCH", path, query,
                                 {"Content-Range": f"{offset}-{offset + len(piece) - 1}"}, piece)
        assert response.status == 202
        per_patch.append(sum(used.values()))
        total += used
        location = response.header("Location").split("https://r", 1)[1]
    path, query = location.split("?", 1)
    response, put = counted(fresh(), "PUT", path, f"{query}&digest={digest}")
    assert response.status == 201
    total += put
    response, pull = counted(fresh(), "GET", f"/v2/count/me/blobs/{digest}")
    assert response.status == 307
    return {"push": sum(total.values()), "push_by_operation": dict(total), "patches": per_patch,
            "put": sum(put.values()), "pull": sum(pull.values()), "pull_by_operation": dict(pull)}


def test_requests_per_push_and_pull(moto_s3, bucket, capsys) -> None:
    size = int(os.environ.get("STRATUS_S3_COUNT_MIB", "32")) * MiB
    counts = push_and_pull_counts(moto_s3, bucket, size, 4 * MiB)
    chunks = size // (4 * MiB)
    # A 4 MiB chunk costs a GET of the upload's tail (which also proves it exists) and
    # of the hash state, then PUT of the tail and of the new state, and every other
    # chunk one UploadPart
    # (the first of them creates the multipart upload).
    assert max(counts["patches"]) <= 7 and sum(counts["patches"]) <= 5.5 * chunks + 1
    assert counts["put"] <= 25
    assert counts["pull"] == 2  # the link and a HEAD of the blob; the bytes come from S3
    with capsys.disabled():
        print(f"\nS3 requests for {size // MiB} MiB in 4 MiB chunks: {json.dumps(counts)}")
