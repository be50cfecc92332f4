"""One upstream fetch per blob across processes and function instances (the lease,
chalicelib/registry/proxy/lease.py): the election in storage and the Redis lease
among contenders that share nothing but storage (or Redis); 16 concurrent cold pulls
spread over Lambda instances (the stand-in's "isolated" instances, a process each, on
moto S3) and over two `stratus serve` processes on one filesystem root, each making
one upstream GET; a holder killed mid-fetch, taken over once its lease expires."""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import pytest
import requests

from chalicelib.context import Context
from chalicelib.registry.proxy.lease import LEASES, Held, Leases, StorageLease
from chalicelib.storage import PathNotFoundError
from chalicelib.storage.factory import create_driver

from .clients_servers import needs_reference
from .lambda_gateway import lambda_gateway
from .moto_server import MotoS3
from .redis_server import RedisServer, redis_srv  # noqa: F401 - the fixture
from .servers import ROOT, free_port, process
from .test_proxy import put_blob
from .test_proxy_lambda import blob_key, gateway_env, stored_keys
from .upstream_registry import reference_upstream
from .upstream_stub import StubUpstream

MiB = 1 << 20
DIGEST = "sha256:" + "ab" * 32
STALL_AT = 3 * MiB


def ctx() -> Context:
    return Context()


def drivers(tmp_path: Path, moto_s3: Optional[MotoS3], kind: str):
    if kind == "inmemory":
        return create_driver("inmemory")
    if kind == "filesystem":
        return create_driver("filesystem", {"rootdirectory": str(tmp_path / "fs")})
    assert moto_s3 is not None
    return create_driver("s3", moto_s3.parameters(moto_s3.create_bucket()))


def lease_files(driver, key: str) -> list[str]:
    """Names in the lease's folder (on S3 and in memory a folder with no file is gone)."""
    try:
        return [p.rsplit("/", 1)[-1] for p in driver.list(ctx(), StorageLease.folder(key))]
    except PathNotFoundError:
        return []


def contend(leases: list, key: str) -> list[Optional[Held]]:
    """Every contender tries at once (a barrier), as a burst of cold pulls does."""
    held: list[Optional[Held]] = [None] * len(leases)
    barrier = threading.Barrier(len(leases))

    def run(i: int) -> None:
        barrier.wait()
        held[i] = leases[i].acquire(ctx(), key)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(leases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return held


# -- the lease itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["inmemory", "filesystem", "s3"])
def test_storage_lease_elects_exactly_one_holder_in_a_burst(kind: str, tmp_path: Path, request) -> None:
    moto_s3 = request.getfixturevalue("moto_s3") if kind == "s3" else None
    driver = drivers(tmp_path, moto_s3, kind)
    for burst in range(3):
        key = f"sha256:{burst:064x}"
        # a lease object each, as separate processes have: they share only the driver's storage
        held = contend([StorageLease(driver, ttl=10.0) for _ in range(16)], key)
        holders = [h for h in held if h is not None]
        assert len(holders) == 1, f"burst {burst}: {len(holders)} holders"
        assert StorageLease(driver, 10.0).acquire(ctx(), key) is None  # held: nobody else gets it
        holders[0].release()
        # released: the losers left nothing behind, and the next one gets it at once
        assert lease_files(driver, key) == []
        again = StorageLease(driver, 10.0).acquire(ctx(), key)
        assert again is not None
        again.release()


def test_storage_lease_is_renewed_while_held_and_taken_over_once_it_expires(tmp_path: Path) -> None:
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "fs")})
    lease = StorageLease(driver, ttl=0.6)
    holder = lease.acquire(ctx(), DIGEST)
    assert holder is not None
    time.sleep(1.5)  # over twice the ttl: only renewals keep it
    assert lease.acquire(ctx(), DIGEST) is None and not holder.lost
    # the holder dies: its renewals stop, its file stays (nothing releases it)
    holder._stop.set()
    started = time.monotonic()
    while (successor := lease.acquire(ctx(), DIGEST)) is None:
        assert time.monotonic() - started < 3, "the expired lease was never taken over"
        time.sleep(0.05)
    assert time.monotonic() - started <= 0.6 + 0.3
    # the dead holder's file was cleared away by the successor, who holds the only one
    names = lease_files(driver, DIGEST)
    assert len(names) == 1 and names[0].startswith(successor.token) and names[0].endswith(".l")
    successor.release()


def test_storage_lease_ignores_and_clears_a_crashed_holders_file(tmp_path: Path) -> None:
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "fs")})
    stale = f"{StorageLease.folder(DIGEST)}/{'0' * 32}.{int((time.time() - 5) * 1000)}.l"
    driver.put_content(ctx(), stale, b"")
    held = StorageLease(driver, 5.0).acquire(ctx(), DIGEST)
    assert held is not None
    assert stale.rsplit("/", 1)[-1] not in lease_files(driver, DIGEST)
    held.release()
    assert LEASES.startswith("/docker/registry/v2/_proxy/")  # a folder registry:2 ignores


def test_redis_lease_one_holder_and_a_stale_holder_cannot_release_its_successor(
        redis_srv: RedisServer) -> None:  # noqa: F811 - the fixture imported above
    from chalicelib.cache.redis import RedisBlobDescriptorCache
    from chalicelib.config import RedisConfig

    cache = RedisBlobDescriptorCache.from_config(RedisConfig(addr=redis_srv.addr, db=5))
    driver = create_driver("inmemory")
    leases = [Leases(driver, cache, ttl=0.5) for _ in range(16)]
    assert leases[0].redis is not None
    held = contend(leases, DIGEST)
    holders = [h for h in held if h is not None]
    assert len(holders) == 1
    assert not _exists(driver)  # the Redis lease writes nothing to storage
    time.sleep(1.2)  # renewed past twice its ttl
    assert leases[1].acquire(ctx(), DIGEST) is None
    # the holder stalls past the ttl (its renewals stop): another takes over, and the
    # stalled one's release does not delete the successor's lease (compare on the token)
    holders[0]._stop.set()
    time.sleep(0.7)
    successor = leases[2].acquire(ctx(), DIGEST)
    assert successor is not None
    holders[0]._stop.clear()
    holders[0].release()
    assert leases[3].busy(ctx(), DIGEST)
    successor.release()
    assert not leases[3].busy(ctx(), DIGEST)


def _exists(driver) -> bool:
    try:
        driver.stat(ctx(), "/docker/registry/v2")
        return True
    except Exception:
        return False


# -- across function instances and server processes ------------------------------------------------


def concurrent_gets(urls: list[str], timeout: float = 180) -> list[Optional[bytes]]:
    results: list[Optional[bytes]] = [None] * len(urls)
    barrier = threading.Barrier(len(urls))

    def pull(i: int) -> None:
        barrier.wait()
        response = requests.get(urls[i], timeout=timeout)
        results[i] = response.content if response.status_code == 200 else None

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 30)
    return results


@needs_reference
def test_sixteen_cold_pulls_across_lambda_instances_fetch_once(moto_s3: MotoS3, tmp_path: Path) -> None:
    """Each invocation on an instance of its own, as Lambda scales a burst: before the
    lease, every instance fetched."""
    data = os.urandom(3 * MiB)
    bucket = moto_s3.create_bucket()
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/big", data)
        with lambda_gateway(gateway_env(moto_s3, bucket, upstream.url), workdir=tmp_path,
                            instances="isolated") as gateway:
            results = concurrent_gets([f"{gateway.url}/v2/team/big/blobs/{digest}"] * 16)
            assert all(r == data for r in results), [len(r) if r else r for r in results]
            instances = {r.instance for r in gateway.invocations() if "/blobs/" in r.path}
            print(f"16 cold pulls on {len(instances)} instances: {upstream.blob_gets(digest)} upstream GET(s)")
            assert len(instances) >= 4  # the burst really was spread
            assert upstream.blob_gets(digest) == 1
            assert all(r.status in (307, 200) for r in gateway.records()), \
                [(r.path, r.status) for r in gateway.records()]
            assert blob_key(digest) in stored_keys(moto_s3, bucket, "docker/registry/v2/blobs/")
            # the lease is gone once the copy is done
            assert not stored_keys(moto_s3, bucket, "docker/registry/v2/_proxy/leases/")


@needs_reference
@pytest.mark.parametrize("size_mib", [3, 12], ids=["inline", "over-the-inline-limit"])
def test_on_lambda_a_crashed_instances_lease_is_taken_over_once_it_expires(
        moto_s3: MotoS3, tmp_path: Path, size_mib: int) -> None:
    """An instance that died mid-copy (Lambda froze or killed it) leaves its lease file in
    the bucket. A pull waits for it rather than fetching, and once it expires copies the
    blob itself (inline), or starts a fill whose copy the client waits for through
    _proxywait redirects (over the inline limit, upstream behind htpasswd so there is no
    upstream URL to hand the client)."""
    from .upstream_registry import PASSWORD, USER, htpasswd_auth

    ttl = 4.0
    data = os.urandom(size_mib * MiB)
    bucket = moto_s3.create_bucket()
    credentials = (USER, PASSWORD)
    with reference_upstream(tmp_path / "upstream", htpasswd_auth(tmp_path), credentials=credentials) as upstream:
        digest = put_blob(upstream.url, "team/big", data, auth=credentials)
        leases = f"docker/registry/v2/_proxy/leases/sha256/{digest[7:]}/"
        env = gateway_env(moto_s3, bucket, upstream.url, REGISTRY_PROXY_USERNAME=USER,
                          REGISTRY_PROXY_PASSWORD=PASSWORD, REGISTRY_PROXY_INLINELIMIT=str(4 * MiB))
        with lambda_gateway(env, workdir=tmp_path, instances="isolated") as gateway:
            assert requests.get(f"{gateway.url}/v2/", timeout=30).status_code == 200  # an instance is warm
            # the dead instance's lease: leading, renewed last 1 s ago, so ~ttl-1 s left
            expires = int((time.time() + ttl - 1) * 1000)
            moto_s3.client().put_object(Bucket=bucket, Key=f"{leases}{'f' * 32}.{expires}.l", Body=b"")
            started = time.monotonic()
            response = requests.get(f"{gateway.url}/v2/team/big/blobs/{digest}", timeout=120)
            elapsed = time.monotonic() - started
            print(f"{size_mib} MiB behind a dead instance's lease ({ttl - 1:g} s left): pulled in {elapsed:.1f} s")
            assert response.status_code == 200 and response.content == data
            assert elapsed >= ttl - 1.5  # it waited for the lease, not fetched beside it
            assert elapsed < ttl + 15
            if size_mib * MiB <= 4 * MiB:
                assert upstream.blob_gets(digest) == 1
            else:  # the fill's GET, and the probes for a redirect to hand the client (whose
                # bodies are not read; see test_proxy_lambda's inline-limit test)
                assert 1 <= upstream.blob_gets(digest) <= 3
            assert not stored_keys(moto_s3, bucket, leases)  # the dead one's file cleared, ours released
            assert all(r.status < 500 for r in gateway.records()), [(r.path, r.status) for r in gateway.records()]


@contextmanager
def serve(root: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`stratus serve` over root, as tests.servers.stratus_server, with its pid (to kill it)."""
    port = free_port()
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}"]
    server_env = {"REGISTRY_HTTP_SECRET": "lease-secret", "PYTHONPATH": str(ROOT),
                  "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root), **env}
    with process(argv, port, server_env, log_path=root.parent / f"stratus-{port}.log", cwd=ROOT) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


@needs_reference
def test_sixteen_pulls_across_two_servers_on_one_root_fetch_once(tmp_path: Path) -> None:
    data = os.urandom(8 * MiB)  # over the buffered size: the holder streams to its client
    root = tmp_path / "data"
    root.mkdir()
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/big", data)
        env = {"REGISTRY_PROXY_REMOTEURL": upstream.url}
        with serve(root, env) as (first, _), serve(root, env) as (second, _):
            urls = [f"{(first, second)[i % 2]}/v2/team/big/blobs/{digest}" for i in range(16)]
            results = concurrent_gets(urls)
            assert all(r == data for r in results)
            assert upstream.blob_gets(digest) == 1
            assert list((root / "docker/registry/v2/_proxy/leases/sha256").iterdir())[0].is_dir()
            assert not list((root / "docker/registry/v2/_proxy/leases/sha256").glob("*/*"))


@needs_reference
def test_with_a_redis_cache_the_lease_is_in_redis(tmp_path: Path, redis_srv: RedisServer) -> None:  # noqa: F811
    """Two servers whose descriptor cache is one Redis hold the lease there: one upstream
    GET for 16 pulls, and nothing written under _proxy/leases in storage."""
    data = os.urandom(3 * MiB)
    root = tmp_path / "data"
    root.mkdir()
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/big", data)
        env = {"REGISTRY_PROXY_REMOTEURL": upstream.url, "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis",
               "REGISTRY_REDIS_ADDR": redis_srv.addr, "REGISTRY_REDIS_DB": "6"}
        with serve(root, env) as (first, _), serve(root, env) as (second, _):
            urls = [f"{(first, second)[i % 2]}/v2/team/big/blobs/{digest}" for i in range(16)]
            results = concurrent_gets(urls)
            assert all(r == data for r in results)
            assert upstream.blob_gets(digest) == 1
    assert not (root / "docker/registry/v2/_proxy/leases").exists()
    import redis

    assert not redis.Redis(host="127.0.0.1", port=redis_srv.port, db=6).keys("stratus::proxy::lease::*")  # released


class SlowUpstream(StubUpstream):
    """An upstream with one blob: its first GET sends a piece and then stalls (a fetch in
    progress, for its holder to be killed in), later GETs send it whole."""

    def __init__(self, data: bytes):
        super().__init__()
        self.data = data
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[self.digest] = data
        self.release = threading.Event()

    def send(self, wfile: BinaryIO, digest: str, data: bytes) -> None:
        if len(self.gets) == 1:
            # a piece reaches the client only once the next has arrived (the last is
            # held back until verified): send a few
            wfile.write(data[:STALL_AT])
            wfile.flush()
            self.release.wait(60)
            data = data[STALL_AT:]
        wfile.write(data)

    @contextmanager
    def running(self) -> Iterator[str]:
        with super().running() as url:
            try:
                yield url
            finally:
                self.release.set()


def test_a_waiter_takes_over_from_a_holder_killed_mid_fetch(tmp_path: Path) -> None:
    ttl = 3.0
    slow = SlowUpstream(os.urandom(8 * MiB))
    root = tmp_path / "data"
    root.mkdir()
    leases = root / "docker/registry/v2/_proxy/leases" / slow.digest.replace(":", "/")
    with slow.running() as upstream_url:
        env = {"REGISTRY_PROXY_REMOTEURL": upstream_url, "REGISTRY_PROXY_LEASETTL": f"{ttl:g}s"}
        with serve(root, env) as (holder_url, holder_pid), serve(root, env) as (waiter_url, _):
            url = f"/v2/team/app/blobs/{slow.digest}"
            first = requests.get(holder_url + url, stream=True, timeout=30)
            assert first.status_code == 200
            assert len(next(first.iter_content(MiB // 2))) > 0  # the fetch is under way
            assert [p.name for p in leases.iterdir() if p.name.endswith(".l")]  # and holds the lease
            # a waiter arrives, then the holder dies mid-fetch: its lease stays until it expires
            result: dict[str, object] = {}

            def wait_pull() -> None:
                response = requests.get(waiter_url + url, timeout=60)
                result.update(status=response.status_code, body=response.content, done=time.monotonic())

            waiter = threading.Thread(target=wait_pull)
            waiter.start()
            time.sleep(0.5)
            assert len(slow.gets) == 1  # the waiter waits, it does not fetch
            os.killpg(holder_pid, signal.SIGKILL)  # the holder's own process group (tests.servers.process)
            killed = time.monotonic()
            first.close()
            waiter.join(60)
            takeover = float(result["done"]) - killed  # type: ignore[arg-type]
            print(f"takeover after the holder was killed: {takeover:.2f} s (lease ttl {ttl:g} s)")
            assert result["status"] == 200 and result["body"] == slow.data
            assert len(slow.gets) == 2  # the dead holder's fetch and the successor's
            # it waited for the lease to expire (renewed every ttl/3), and not much longer
            assert takeover < ttl + 2.0
            assert (root / "docker/registry/v2/blobs/sha256" / slow.digest[7:9] / slow.digest[7:] / "data").exists()
