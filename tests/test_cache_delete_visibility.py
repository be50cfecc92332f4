"""Two instances over one storage: a delete through one is seen by the other at once.

Every multi-instance deployment (Lambda, replicas) looks like this: each instance
has its own in-memory descriptor cache, or they share Redis. After a blob is
deleted through instance A (DELETE of its link) or by garbage collection (its
data), instance B must answer HEAD and GET 404 straight away, refuse a manifest
naming it, and take it when it is pushed again; A must then see it again.
Instances are real: two `stratus serve` over one directory, or two warm Lambda
functions (app.py behind the API Gateway stand-in) over one moto S3 bucket.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Optional

import pytest
import requests

from chalicelib.cache.redis import RedisBlobDescriptorCache
from chalicelib.config import RedisConfig
from chalicelib.context import Context
from chalicelib.registry.maintenance import collect_garbage
from chalicelib.storage import create_driver

from .moto_server import moto_s3  # noqa: F401  (a fixture)
from .oci_client import canonical, descriptor, random_bytes, sha256
from .redis_server import redis_srv  # noqa: F401  (a fixture)
from .servers import stratus_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

Call = Callable[..., tuple[int, bytes]]  # (method, path, query="", headers=None, body=b"") -> (status, body)


def http_caller(url: str) -> Call:
    session = requests.Session()

    def call(method: str, path: str, query: str = "", headers: Optional[dict] = None, body: bytes = b"") -> tuple[int, bytes]:
        response = session.request(method, f"{url}{path}" + (f"?{query}" if query else ""), headers=headers or {},
                                   data=body, allow_redirects=False, timeout=60)
        return response.status_code, response.content

    return call


def gateway_caller(client) -> Call:
    def call(method: str, path: str, query: str = "", headers: Optional[dict] = None, body: bytes = b"") -> tuple[int, bytes]:
        reply = client(method, path, query, headers, body)
        return reply.status, reply.body

    return call


def push_blob(call: Call, name: str, data: bytes) -> str:
    digest = sha256(data)
    status, body = call("POST", f"/v2/{name}/blobs/uploads/", f"digest={digest}",
                        {"Content-Type": "application/octet-stream"}, data)
    assert status == 201, body
    return digest


def manifest(config: bytes, layers: list[bytes]) -> bytes:
    return canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
                      "layers": [descriptor(OCI_LAYER, layer) for layer in layers]})


def put_manifest(call: Call, name: str, tag: str, body: bytes) -> tuple[int, bytes]:
    return call("PUT", f"/v2/{name}/manifests/{tag}", headers={"Content-Type": OCI_MANIFEST}, body=body)


def present(call: Call, name: str, digest: str) -> tuple[int, int]:
    """(HEAD status, GET status); a GET may be a 307 to storage."""
    head, _ = call("HEAD", f"/v2/{name}/blobs/{digest}")
    get, _ = call("GET", f"/v2/{name}/blobs/{digest}")
    return head, get


def check_deletes_are_seen_at_once(a: Call, b: Call, gc: Callable[[], list]) -> None:
    name = "visibility/app"
    config, layer, loose = canonical({"os": "linux", "n": random_bytes(8).hex()}), random_bytes(3000), random_bytes(2000)
    for blob in (config, layer, loose):
        push_blob(a, name, blob)
    status, body = put_manifest(a, name, "v1", manifest(config, [layer]))
    assert status == 201, body
    # B has served both blobs, so whatever it caches, it has them cached
    for digest in (sha256(layer), sha256(loose)):
        for _ in range(2):
            assert present(b, name, digest)[0] == 200
            assert present(b, name, digest)[1] in (200, 307)

    # a DELETE of the blob's link through A
    status, _ = a("DELETE", f"/v2/{name}/blobs/{sha256(layer)}")
    assert status == 202
    assert present(b, name, sha256(layer)) == (404, 404)
    status, body = put_manifest(b, name, "v2", manifest(config, [layer]))
    assert status == 400 and b"MANIFEST_BLOB_UNKNOWN" in body, body
    push_blob(b, name, layer)  # pushed again through B: taken, and A sees it
    assert present(a, name, sha256(layer))[0] == 200
    status, body = put_manifest(b, name, "v2", manifest(config, [layer]))
    assert status == 201, body

    # garbage collection deleting the data of the blob no manifest names
    swept = gc()
    assert sha256(loose) in swept and sha256(layer) not in swept
    for instance in (a, b):
        assert present(instance, name, sha256(loose)) == (404, 404)
    status, body = put_manifest(b, name, "v3", manifest(config, [loose]))
    assert status == 400 and b"MANIFEST_BLOB_UNKNOWN" in body, body
    push_blob(b, name, loose)  # never "already exists" after a delete
    assert present(a, name, sha256(loose))[0] == 200
    status, body = put_manifest(a, name, "v3", manifest(config, [loose]))
    assert status == 201, body
    for tag, blobs in (("v1", []), ("v2", [config, layer]), ("v3", [config, loose])):
        status, _ = b("GET", f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert status == 200
        for blob in blobs:
            assert present(b, name, sha256(blob)) in ((200, 200), (200, 307))


def gc_over(driver, cache) -> Callable[[], list]:
    def run() -> list:
        report = collect_garbage(Context(), driver, cache=cache, grace=0)
        return [str(d) for d in report.deleted]

    return run


@contextmanager
def redis_cache(server) -> Iterator[RedisBlobDescriptorCache]:
    cache = RedisBlobDescriptorCache(RedisConfig(addr=server.addr))
    try:
        yield cache
    finally:
        cache.close()


@pytest.mark.parametrize("cache", ["inmemory", "redis"])
def test_two_stratus_servers_over_one_directory(cache, tmp_path, request):
    root = tmp_path / "storage"
    env = {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": cache}
    gc_cache = None
    with ExitStack() as stack:
        if cache == "redis":
            server = request.getfixturevalue("redis_srv")
            server.client().flushdb()
            env["REGISTRY_REDIS_ADDR"] = server.addr
            gc_cache = stack.enter_context(redis_cache(server))
        a = stack.enter_context(stratus_server(root, env))
        b = stack.enter_context(stratus_server(root, env))
        driver = create_driver("filesystem", {"rootdirectory": str(root)})
        check_deletes_are_seen_at_once(http_caller(a), http_caller(b), gc_over(driver, gc_cache))


@pytest.mark.parametrize("cache", ["inmemory", "redis"])
def test_two_lambda_functions_over_one_s3_bucket(cache, moto_s3, tmp_path, request):  # noqa: F811
    from .lambda_gateway import lambda_gateway

    bucket = moto_s3.create_bucket()
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "visibility",
           "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": cache}
    gc_cache = None
    with ExitStack() as stack:
        if cache == "redis":
            server = request.getfixturevalue("redis_srv")
            server.client().flushdb()
            env["REGISTRY_REDIS_ADDR"] = server.addr
            gc_cache = stack.enter_context(redis_cache(server))
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = stack.enter_context(lambda_gateway(env, "http", instances="warm", workdir=tmp_path / "a"))
        b = stack.enter_context(lambda_gateway(env, "http", instances="warm", workdir=tmp_path / "b"))
        driver = create_driver("s3", moto_s3.parameters(bucket))
        check_deletes_are_seen_at_once(gateway_caller(a.client()), gateway_caller(b.client()), gc_over(driver, gc_cache))
