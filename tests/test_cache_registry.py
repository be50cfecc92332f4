"""The descriptor cache inside the registry: what it saves, and that it never lies.

Requests go through the framework-neutral api in-process, over a filesystem driver
wrapped to count every storage call; the Redis provider talks to a real redis-server.
A second Registry over the same storage and Redis stands for another function
instance: it shares nothing with the first but the two of them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

from chalicelib.api import APISettings, RegistryAPI
from chalicelib.api.http import Request, Response
from chalicelib.bootstrap import build_registry
from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.cache.redis import RedisBlobDescriptorCache, blob_key, repository_set_key
from chalicelib.config import RedisConfig, config_from_mapping
from chalicelib.digest import Digest
from chalicelib.registry import Registry
from chalicelib.registry.blobs import GC_STATE
from chalicelib.storage import paths
from chalicelib.storage.filesystem import from_parameters as filesystem

from .components import require
from .redis_server import (  # noqa: F401  (redis_srv: a fixture)
    HAVE_REDIS,
    NO_REDIS,
    ManualClock,
    RedisServer,
    count_redis_network,
    redis_server,
    redis_srv,
    requires_redis,
)

ROOT = Path(__file__).resolve().parent.parent
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class CountingDriver:
    """Every storage call, by method and path; optionally a presigned-URL redirect."""

    def __init__(self, inner, redirect: bool = False):
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self._redirect = redirect

    def redirect_url(self, ctx, method, path, expiry):
        if not self._redirect:
            return self.inner.redirect_url(ctx, method, path, expiry)
        return f"https://storage.example{path}?expires={expiry}"  # signed locally: no request

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(ctx, *args, **kwargs):
            self.calls.append((name, args[0] if args else ""))
            return attr(ctx, *args, **kwargs)

        return counted

    def reset(self) -> list[tuple[str, str]]:
        calls, self.calls = self.calls, []
        return calls


class Client:
    def __init__(self, registry: Registry):
        self.api = RegistryAPI(registry, APISettings(secret=b"cache-tests"))

    def __call__(self, method: str, path: str, query: str = "", headers=None, body: bytes = b"") -> Response:
        response = self.api.handle(Request.from_bytes(method, path, query, headers, body, "http://registry"))
        response.body = response.body_bytes()
        return response

    def push_blob(self, name: str, data: bytes) -> Digest:
        digest = Digest.from_bytes(data)
        response = self("POST", f"/v2/{name}/blobs/uploads/", f"digest={digest}", body=data)
        assert response.status == 201, response.body
        return digest

    def push_image(self, name: str, tag: str, layers: list[bytes], push_blobs: bool = True) -> tuple[Digest, bytes]:
        config = json.dumps({"architecture": "amd64", "os": "linux", "layers": len(layers)}).encode()
        if push_blobs:
            for blob in [config] + layers:
                self.push_blob(name, blob)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [_descriptor(layer, "application/vnd.oci.image.layer.v1.tar") for layer in layers],
        }
        body = json.dumps(manifest).encode()
        response = self("PUT", f"/v2/{name}/manifests/{tag}", headers={"Content-Type": OCI_MANIFEST}, body=body)
        assert response.status == 201, response.body
        return Digest.parse(response.header("Docker-Content-Digest")), body


def _descriptor(data: bytes, media_type: str) -> dict:
    return {"mediaType": media_type, "digest": str(Digest.from_bytes(data)), "size": len(data)}


class Deployment:
    """Storage plus a cache provider factory: each instance() is another process."""

    def __init__(self, root: Path, kind: str, server: Optional[RedisServer]):
        self.root = root
        self.kind = kind
        self.server = server
        self.driver = CountingDriver(filesystem({"rootdirectory": str(root)}), redirect=True)
        self.providers: list = []

    def provider(self, **kwargs):
        if self.kind == "inmemory":
            return InMemoryBlobDescriptorCache(1000)
        cache = RedisBlobDescriptorCache(RedisConfig(addr=self.server.addr), **kwargs)
        self.providers.append(cache)
        return cache

    def instance(self, **kwargs) -> tuple[Registry, Client]:
        registry = Registry(self.driver, self.provider(**kwargs))
        return registry, Client(registry)


@pytest.fixture(params=["inmemory", pytest.param("redis", marks=requires_redis)])
def deployment(request, tmp_path) -> Iterator[Deployment]:
    server = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_srv")
        server.client().flushdb()
    dep = Deployment(tmp_path / "storage", request.param, server)
    yield dep
    for cache in dep.providers:
        cache.close()


@pytest.fixture
def shared(tmp_path) -> Iterator[Deployment]:
    """Redis only: what one function instance caches, another serves."""
    require("redis-server", None if HAVE_REDIS else NO_REDIS)
    with redis_server(tmp_path / "redis") as server:
        dep = Deployment(tmp_path / "storage", "redis", server)
        yield dep
        for cache in dep.providers:
            cache.close()


def reads(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [c for c in calls if c[0] in ("stat", "get_content", "list", "reader", "walk")]


# -- what the cache saves ----------------------------------------------------------------


def existence_reads(digest: Digest, name: str = "app") -> list[tuple[str, str]]:
    """What a blob HEAD reads when existence comes from storage: the link, the data."""
    return [
        ("get_content", paths.layer_link(name, "sha256", digest.hex)),
        ("stat", paths.blob_data("sha256", digest.hex)),
    ]


def without_marker(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The calls but a writer's reads of the garbage collector's state."""
    return [c for c in calls if c != ("get_content", GC_STATE)]


@requires_redis
def test_warm_blob_head_makes_no_storage_calls(shared):
    _, client = shared.instance()
    digest = client.push_blob("app", b"layer bytes")
    shared.driver.reset()
    response = client("HEAD", f"/v2/app/blobs/{digest}")
    assert response.status == 200 and response.header("Content-Length") == "11"
    assert shared.driver.reset() == []


def test_inmemory_blob_head_reads_existence_from_storage(tmp_path):
    """A per-process cache cannot be told of a delete elsewhere: it answers no
    existence, so a HEAD reads the link and stats the data, every time."""
    dep = Deployment(tmp_path, "inmemory", None)
    _, client = dep.instance()
    digest = client.push_blob("app", b"layer bytes")
    for _ in range(2):
        dep.driver.reset()
        assert client("HEAD", f"/v2/app/blobs/{digest}").status == 200
        assert dep.driver.reset() == existence_reads(digest)


@requires_redis
def test_cold_head_reads_storage_once_then_serves_from_the_cache(shared):
    _, pusher = shared.instance()
    digest = pusher.push_blob("app", b"cold")
    shared.server.client().flushdb()
    _, client = shared.instance()
    shared.driver.reset()
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 200
    cold = shared.driver.reset()
    assert cold and all(op in ("get_content", "stat") for op, _ in cold)
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 200
    assert shared.driver.reset() == []


def test_redirect_descriptor_comes_from_the_cache(deployment):
    _, client = deployment.instance()
    digest = client.push_blob("app", b"redirected")
    deployment.driver.reset()
    response = client("GET", f"/v2/app/blobs/{digest}")
    assert response.status == 307 and response.header("Location").startswith("https://storage.example/")
    # presigning is local, not counted as a call
    assert deployment.driver.reset() == ([] if deployment.kind == "redis" else existence_reads(digest))


def test_manifest_put_verifies_warm_blobs_without_reading_storage(shared):
    _, client = shared.instance()
    layers = [b"one", b"two", b"three"]
    client.push_image("app", "v1", layers)
    shared.driver.reset()
    digest, _ = client.push_image("app", "v2", layers, push_blobs=False)  # same blobs, new manifest
    calls = without_marker(shared.driver.reset())
    # reads of the layers' links or data; the tag's and the manifest's own are not
    layer_reads = [c for c in reads(calls) if "/_layers/" in c[1] or ("/blobs/" in c[1] and digest.hex not in c[1])]
    assert layer_reads == [], layer_reads


def test_manifest_put_with_an_inmemory_cache_verifies_blobs_in_storage(tmp_path):
    dep = Deployment(tmp_path, "inmemory", None)
    _, client = dep.instance()
    layers = [b"one", b"two"]
    client.push_image("app", "v1", layers)
    dep.driver.reset()
    client.push_image("app", "v2", layers, push_blobs=False)
    layer_reads = [c for c in reads(dep.driver.reset()) if "/_layers/" in c[1]]
    assert sorted(layer_reads) == sorted(
        ("get_content", paths.layer_link("app", "sha256", Digest.from_bytes(b).hex)) for b in layers
    ) + [("get_content", paths.layer_link("app", "sha256", Digest.from_bytes(
        json.dumps({"architecture": "amd64", "os": "linux", "layers": 2}).encode()).hex))]


@requires_redis
def test_mount_from_a_repository_uses_its_scoped_entry(shared):
    _, client = shared.instance()
    digest = client.push_blob("source", b"mounted")
    shared.driver.reset()
    response = client("POST", "/v2/target/blobs/uploads/", f"mount={digest}&from=source")
    assert response.status == 201
    calls = without_marker(shared.driver.reset())
    assert reads(calls) == [] and [op for op, _ in calls] == ["put_content"]  # the new link
    assert client("HEAD", f"/v2/target/blobs/{digest}").status == 200


@requires_redis
def test_mount_without_from_uses_the_global_entry(shared):
    _, client = shared.instance()
    digest = client.push_blob("somewhere", b"anywhere")
    shared.driver.reset()
    assert client("POST", "/v2/elsewhere/blobs/uploads/", f"mount={digest}").status == 201
    assert reads(without_marker(shared.driver.reset())) == []


def test_mount_from_a_repository_that_lacks_the_blob_is_refused(deployment):
    _, client = deployment.instance()
    digest = client.push_blob("has-it", b"only here")
    client("HEAD", f"/v2/has-it/blobs/{digest}")
    response = client("POST", "/v2/target/blobs/uploads/", f"mount={digest}&from=lacks-it")
    assert response.status == 202  # a plain upload session instead
    assert client("HEAD", f"/v2/target/blobs/{digest}").status == 404


@requires_redis
def test_one_instance_warms_the_cache_for_another(shared):
    _, first = shared.instance()
    digest = first.push_blob("app", b"shared by instances")
    _, second = shared.instance()
    shared.driver.reset()
    assert second("HEAD", f"/v2/app/blobs/{digest}").status == 200
    assert shared.driver.reset() == []


# -- never a stale answer ----------------------------------------------------------------


def test_blob_in_one_repository_is_unknown_in_another(deployment):
    _, client = deployment.instance()
    digest = client.push_blob("team/a", b"scoped")
    assert client("HEAD", f"/v2/team/a/blobs/{digest}").status == 200
    assert client("HEAD", f"/v2/team/b/blobs/{digest}").status == 404
    assert client("GET", f"/v2/team/b/blobs/{digest}").status == 404


def test_deleted_blob_is_unknown_here_and_in_other_instances(deployment):
    _, client = deployment.instance()
    digest = client.push_blob("app", b"to delete")
    client.push_blob("other", b"to delete")
    _, other = deployment.instance()
    assert other("HEAD", f"/v2/app/blobs/{digest}").status == 200
    assert client("DELETE", f"/v2/app/blobs/{digest}").status == 202
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 404
    assert client("GET", f"/v2/app/blobs/{digest}").status == 404
    assert client("HEAD", f"/v2/other/blobs/{digest}").status == 200
    assert other("HEAD", f"/v2/app/blobs/{digest}").status == 404  # at once, either cache
    if deployment.kind == "redis":
        r = deployment.server.client()
        assert not r.sismember(repository_set_key("app"), str(digest))
        assert r.sismember(repository_set_key("other"), str(digest))


def test_another_processes_in_memory_cache_never_serves_a_deleted_blob(tmp_path):
    driver = filesystem({"rootdirectory": str(tmp_path)})
    first = Client(Registry(driver, InMemoryBlobDescriptorCache(100)))
    second = Client(Registry(driver, InMemoryBlobDescriptorCache(100)))
    digest = first.push_blob("app", b"per-process caches")
    assert second("HEAD", f"/v2/app/blobs/{digest}").status == 200
    assert first("DELETE", f"/v2/app/blobs/{digest}").status == 202
    # the second process cannot be told, so it never answered from its cache
    assert second("HEAD", f"/v2/app/blobs/{digest}").status == 404
    assert second("GET", f"/v2/app/blobs/{digest}").status == 404


def test_deleted_manifest_is_unknown(deployment):
    _, client = deployment.instance()
    digest, _ = client.push_image("app", "v1", [b"m-layer"])
    assert client("HEAD", f"/v2/app/manifests/{digest}").status == 200
    assert client("DELETE", f"/v2/app/manifests/{digest}").status == 202
    _, other = deployment.instance()
    for c in (client, other):
        assert c("GET", f"/v2/app/manifests/{digest}").status == 404
        assert c("HEAD", "/v2/app/manifests/v1").status == 404


def test_relinked_blob_after_delete_is_present_again(deployment):
    _, client = deployment.instance()
    digest = client.push_blob("app", b"back again")
    client("DELETE", f"/v2/app/blobs/{digest}")
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 404
    client.push_blob("app", b"back again")
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 200


@requires_redis
def test_delete_while_redis_is_down_is_never_served_stale(shared):
    clock = ManualClock()
    _, client = shared.instance(cooldown=0.1, clock=clock)
    digest = client.push_blob("app", b"deleted during an outage")
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 200
    shared.server.snapshot()
    shared.server.kill()
    assert client("DELETE", f"/v2/app/blobs/{digest}").status == 202
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 404
    shared.server.start()  # comes back holding the entry the delete could not clear
    assert shared.server.client().sismember(repository_set_key("app"), str(digest))
    clock.advance(0.15)
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 404
    # the clear was replayed, so a new instance does not see the entry either
    assert not shared.server.client().sismember(repository_set_key("app"), str(digest))
    _, other = shared.instance()
    assert other("HEAD", f"/v2/app/blobs/{digest}").status == 404


@requires_redis
def test_redis_down_every_request_succeeds_and_it_refills_after(shared, monkeypatch):
    clock = ManualClock()
    _, client = shared.instance(cooldown=0.1, clock=clock)
    digest, body = client.push_image("app", "v1", [b"l1", b"l2"])
    shared.server.kill()
    network = count_redis_network(monkeypatch)
    assert client("GET", "/v2/app/manifests/v1").body == body
    for layer in (b"l1", b"l2", b"l3"):
        client.push_blob("app", layer)
    client.push_image("app", "v2", [b"l1", b"l3"])
    assert client("HEAD", f"/v2/app/blobs/{Digest.from_bytes(b'l3')}").status == 200
    # the whole outage cost one refused connect (the manifest GET's descriptor read,
    # the kept connection seen closed first): after that first failure every
    # request went to storage alone until the cooldown ended
    assert network == {"connect": 1}
    shared.server.start()  # empty
    clock.advance(0.15)
    assert client("HEAD", f"/v2/app/blobs/{Digest.from_bytes(b'l3')}").status == 200
    keys = shared.server.client().keys("*")
    assert blob_key(Digest.from_bytes(b"l3")) in keys and repository_set_key("app") in keys


# -- providers by configuration ---------------------------------------------------------


@pytest.mark.parametrize("key", ["blobdescriptor", "layerinfo"])
def test_redis_provider_by_configuration(tmp_path, key):
    config = config_from_mapping(
        {
            "storage": {"filesystem": {"rootdirectory": str(tmp_path)}, "cache": {key: "redis"}},
            "redis": {"addr": "127.0.0.1:1", "dialtimeout": "50ms"},
        }
    )
    registry = build_registry(config)
    assert isinstance(registry.cache, RedisBlobDescriptorCache)
    assert build_registry(config).cache is registry.cache  # one pool per process
    # nothing listens there: the registry still answers from storage
    client = Client(registry)
    digest = client.push_blob("app", b"no redis at all")
    assert client("HEAD", f"/v2/app/blobs/{digest}").status == 200


def test_inmemory_provider_never_imports_redis(tmp_path):
    script = f"""
import sys
from chalicelib.bootstrap import build_api
from chalicelib.config import config_from_mapping
from chalicelib.api.http import Request
from chalicelib.cache.memory import InMemoryBlobDescriptorCache
config = config_from_mapping({{
    "storage": {{"filesystem": {{"rootdirectory": {str(tmp_path)!r}}},
                 "cache": {{"blobdescriptor": "inmemory", "blobdescriptorsize": 7}}}},
    "http": {{"secret": "x"}},
}})
api = build_api(config)
assert isinstance(api.registry.cache, InMemoryBlobDescriptorCache)
assert api.registry.cache._lru._size == 7
body = b"hello"
import hashlib
digest = "sha256:" + hashlib.sha256(body).hexdigest()
r = api.handle(Request.from_bytes("POST", "/v2/a/blobs/uploads/", "digest=" + digest, body=body))
assert r.status == 201, r.status
assert api.handle(Request.from_bytes("HEAD", "/v2/a/blobs/" + digest)).status == 200
leaked = sorted(m for m in sys.modules if m == "redis" or m.startswith("redis.") or m == "chalicelib.cache.redis")
assert not leaked, leaked
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
