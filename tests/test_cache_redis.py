"""The Redis provider against a real redis-server: key schema, connections, outages."""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import redis

from chalicelib.cache import CacheUnavailableError, DescriptorNotCachedError
from chalicelib.cache.redis import (
    RedisBlobDescriptorCache,
    blob_key,
    connect,
    repository_blob_key,
    repository_set_key,
)
from chalicelib.cache.statter import CachedBlobStatter
from chalicelib.config import RedisConfig, RedisPoolConfig
from chalicelib.context import Context
from chalicelib.descriptor import BlobDescriptor
from chalicelib.digest import Digest
from chalicelib.registry.errors import BlobUnknownError

from .redis_server import ManualClock, RedisServer, count_redis_network, redis_server, requires_redis

pytestmark = requires_redis

CTX = Context()
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as srv:
        yield srv


def provider(server: RedisServer, **kwargs) -> RedisBlobDescriptorCache:
    config = kwargs.pop("config", None) or RedisConfig(addr=server.addr)
    return RedisBlobDescriptorCache(config, **kwargs)


def d(text: str) -> Digest:
    return Digest.from_bytes(text.encode())


# -- key schema --------------------------------------------------------------------------


def test_keys_follow_the_reference_schema(server):
    cache = provider(server)
    blob = d("layer")
    cache.repository_scoped("library/ubuntu").set_descriptor(CTX, blob, BlobDescriptor(blob, 1234, LAYER))
    r = server.client()
    assert blob_key(blob) == f"blobs::{blob}"
    assert r.hgetall(f"blobs::{blob}") == {"digest": str(blob), "size": "1234", "mediatype": LAYER}
    assert r.smembers("repository::library/ubuntu::blobs") == {str(blob)}
    assert r.hgetall(f"repository::library/ubuntu::blobs::{blob}") == {"mediatype": LAYER}
    assert sorted(r.keys("*")) == sorted(
        [f"blobs::{blob}", "repository::library/ubuntu::blobs", f"repository::library/ubuntu::blobs::{blob}"]
    )


def test_every_key_has_a_ttl(server):
    cache = provider(server, repository_ttl=300, global_ttl=86400)
    blob = d("ttl")
    cache.repository_scoped("a").set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
    r = server.client()
    assert 0 < r.ttl(repository_blob_key("a", blob)) <= 300
    assert 300 < r.ttl(blob_key(blob)) <= 86400
    assert 300 < r.ttl(repository_set_key("a")) <= 86400


def test_clears_remove_exactly_their_keys(server):
    cache = provider(server)
    blob = d("clear")
    a, b = cache.repository_scoped("a"), cache.repository_scoped("b")
    a.set_descriptor(CTX, blob, BlobDescriptor(blob, 2))
    b.set_descriptor(CTX, blob, BlobDescriptor(blob, 2))
    r = server.client()
    a.clear(CTX, blob)
    assert not r.sismember(repository_set_key("a"), str(blob))
    assert not r.exists(repository_blob_key("a", blob))
    assert r.sismember(repository_set_key("b"), str(blob)) and r.exists(blob_key(blob))
    cache.clear(CTX, blob)
    assert not r.exists(blob_key(blob))
    with pytest.raises(DescriptorNotCachedError):
        b.stat(CTX, blob)


def test_entries_written_by_the_reference_registry_are_read(server):
    """registry:2 writes no TTLs; the reference's layout alone must be enough."""
    r = server.client()
    blob = d("from registry:2")
    r.hset(blob_key(blob), mapping={"digest": str(blob), "size": "42", "mediatype": LAYER})
    r.sadd(repository_set_key("old/repo"), str(blob))
    r.hset(repository_blob_key("old/repo", blob), "mediatype", LAYER)
    cache = provider(server)
    assert cache.stat(CTX, blob) == BlobDescriptor(blob, 42, LAYER)
    assert cache.repository_scoped("old/repo").stat(CTX, blob) == BlobDescriptor(blob, 42, LAYER)


def test_legacy_length_field_and_garbage_are_misses(server):
    r = server.client()
    old, bad = d("length"), d("bad")
    r.hset(blob_key(old), mapping={"digest": str(old), "length": "42"})
    r.hset(blob_key(bad), mapping={"digest": str(bad), "size": "not a number"})
    cache = provider(server)
    for blob in (old, bad):
        with pytest.raises(DescriptorNotCachedError):
            cache.stat(CTX, blob)


def test_a_key_of_the_wrong_type_or_bytes_not_utf8_are_unavailable_not_an_error(server):
    server.client().set(blob_key(d("string")), "oops")
    redis.Redis(port=server.port).hset(blob_key(d("bytes")), mapping={"digest": b"\xff", "size": 1})
    cache = provider(server)
    with pytest.raises(CacheUnavailableError):
        cache.stat(CTX, d("string"))
    with pytest.raises(CacheUnavailableError):
        cache.stat(CTX, d("bytes"))
    # and it does not take the whole cache out
    cache.set_descriptor(CTX, d("fine"), BlobDescriptor(d("fine"), 1))
    assert cache.stat(CTX, d("fine")).size == 1


def test_stat_is_one_round_trip(server):
    cache = provider(server)
    blob = d("round trip")
    cache.repository_scoped("a").set_descriptor(CTX, blob, BlobDescriptor(blob, 3))
    cache.repository_scoped("a").stat(CTX, blob)  # connection made
    before = int(server.client().info("stats")["total_commands_processed"])
    cache.repository_scoped("a").stat(CTX, blob)
    cache.stat(CTX, blob)
    after = int(server.client().info("stats")["total_commands_processed"])
    # SISMEMBER + HMGET + HGET (pipelined), then HMGET; the INFO call counts itself once
    assert after - before == 5


# -- connections -----------------------------------------------------------------------


def test_one_pool_per_process_and_configuration(server):
    config = RedisConfig(addr=server.addr, db=3)
    first = RedisBlobDescriptorCache.from_config(config)
    assert RedisBlobDescriptorCache.from_config(RedisConfig(addr=server.addr, db=3)) is first
    assert RedisBlobDescriptorCache.from_config(RedisConfig(addr=server.addr, db=4)) is not first
    blob = d("pool")
    for i in range(50):
        first.repository_scoped("a").set_descriptor(CTX, blob, BlobDescriptor(blob, i))
        first.repository_scoped("a").stat(CTX, blob)
    clients = [c for c in server.client().client_list() if c["cmd"] != "client|list"]
    # one connection for the writes (redis-py's pool), one for the reads (resp.py's)
    assert sorted(c["cmd"] for c in clients) == ["exec", "hget"] and {c["db"] for c in clients} == {"3"}
    first.close()


def test_configured_timeouts_and_pool_reach_the_client(server):
    config = RedisConfig(
        addr=server.addr, dialtimeout=0.05, readtimeout=0.07, writetimeout=0.03,
        pool=RedisPoolConfig(maxactive=4, idletimeout=120),
    )
    pool = connect(config).connection_pool
    kwargs = pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 0.05 and kwargs["socket_timeout"] == 0.07
    assert kwargs["health_check_interval"] == 120 and pool.max_connections == 4


def test_unset_timeouts_default_to_short_ones(server):
    kwargs = connect(RedisConfig(addr=server.addr)).connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] <= 0.5 and kwargs["socket_timeout"] <= 0.5


def test_auth_with_a_password(tmp_path):
    with redis_server(tmp_path / "redis", password="s3cret") as srv:
        good = provider(srv, config=RedisConfig(addr=srv.addr, password="s3cret"))
        blob = d("auth")
        good.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
        assert good.stat(CTX, blob).size == 1
        bad = provider(srv, config=RedisConfig(addr=srv.addr, password="wrong"))
        with pytest.raises(CacheUnavailableError):
            bad.stat(CTX, blob)


def test_auth_with_username_and_password_as_elasticache_rbac(tmp_path):
    with redis_server(tmp_path / "redis") as srv:
        srv.client().acl_setuser("stratus", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all"])
        cache = provider(srv, config=RedisConfig(addr=srv.addr, username="stratus", password="pw"))
        blob = d("rbac")
        cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
        assert cache.stat(CTX, blob).size == 1
        assert any(c["user"] == "stratus" for c in srv.client().client_list())


def test_tls_and_auth_as_elasticache_in_transit_encryption(tmp_path, monkeypatch):
    with redis_server(tmp_path / "redis", password="tok", tls=True) as srv:
        # the server's certificate is trusted the way a system CA would be
        monkeypatch.setenv("SSL_CERT_FILE", str(srv.tls.ca))
        cache = provider(srv, config=RedisConfig(addr=srv.addr, password="tok", tls=True))
        blob = d("tls")
        cache.repository_scoped("a").set_descriptor(CTX, blob, BlobDescriptor(blob, 8))
        assert cache.repository_scoped("a").stat(CTX, blob).size == 8
        url = provider(srv, config=RedisConfig(addr=f"rediss://{srv.addr}", password="tok"))
        assert url.stat(CTX, blob).size == 8
        monkeypatch.delenv("SSL_CERT_FILE")
        plain = provider(srv, config=RedisConfig(addr=srv.addr, password="tok"))
        with pytest.raises(CacheUnavailableError):
            plain.stat(CTX, blob)


# -- outages ---------------------------------------------------------------------------
# Cooldowns run on a clock the test moves, and what an outage costs is counted in
# socket connects and commands sent, not in seconds: a loaded machine changes neither.


@pytest.fixture
def network(monkeypatch) -> Counter:
    return count_redis_network(monkeypatch)


def test_a_killed_server_fails_fast_then_stays_out_of_the_way(server, network):
    clock = ManualClock()
    cache = provider(server, cooldown=0.5, clock=clock)
    blob = d("killed")
    cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
    assert cache.stat(CTX, blob).size == 1  # the read connection is kept alive
    server.kill()
    network.clear()
    with pytest.raises(CacheUnavailableError) as refused:
        cache.stat(CTX, blob)
    # fast: the kept connection is seen closed without a round trip, and the new one
    # is refused (no timeout to wait for)
    assert isinstance(refused.value.__cause__, ConnectionRefusedError)
    assert network == {"connect": 1}
    for _ in range(100):
        with pytest.raises(CacheUnavailableError):
            cache.stat(CTX, blob)
        with pytest.raises(CacheUnavailableError):
            cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
        clock.advance(0.004)  # 0.4 s in all: still within the cooldown
    assert network == {"connect": 1}  # no network while cooling down
    clock.advance(0.2)
    with pytest.raises(CacheUnavailableError) as refused:  # the writes' client: refused, and its one retry
        cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
    assert isinstance(refused.value.__cause__, redis.ConnectionError)
    assert network == {"connect": 3}
    server.start()
    clock.advance(0.6)
    with pytest.raises(DescriptorNotCachedError):  # back, and empty
        cache.stat(CTX, blob)
    cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
    assert cache.stat(CTX, blob).size == 1


def test_a_hung_server_costs_at_most_the_timeouts(server, network):
    clock = ManualClock()
    cache = provider(
        server, cooldown=0.5, clock=clock,
        config=RedisConfig(addr=server.addr, dialtimeout=0.1, readtimeout=0.1, writetimeout=0.1),
    )
    assert cache.client.connection_pool.connection_kwargs["socket_timeout"] == 0.1
    assert cache.reader._read_timeout == 0.1 and cache.reader._connect_timeout == 0.1
    blob = d("hung")
    cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 1))
    assert cache.stat(CTX, blob).size == 1  # the read connection is kept alive
    server.pause()
    try:
        network.clear()
        with pytest.raises(CacheUnavailableError) as hung:
            cache.stat(CTX, blob)
        # one read timeout, one retry on a fresh connection: two waits of the timeout
        assert isinstance(hung.value.__cause__, TimeoutError)
        assert network == {"send": 2, "connect": 1}
        for _ in range(100):
            with pytest.raises(CacheUnavailableError):
                cache.repository_scoped("a").stat(CTX, blob)
            clock.advance(0.004)
        assert network == {"send": 2, "connect": 1}  # nothing more while cooling down
    finally:
        server.resume()
    clock.advance(0.1)
    assert cache.stat(CTX, blob).size == 1
    assert network["send"] == 3


def test_a_clear_that_failed_is_replayed_and_never_served_meanwhile(server):
    clock = ManualClock()
    cache = provider(server, cooldown=0.2, clock=clock)
    blob = d("deleted while down")
    scoped = cache.repository_scoped("a")
    scoped.set_descriptor(CTX, blob, BlobDescriptor(blob, 5))
    server.snapshot()
    server.kill()
    with pytest.raises(CacheUnavailableError):
        scoped.clear(CTX, blob)
    server.start()  # back with the entry the clear could not remove
    assert server.client().sismember(repository_set_key("a"), str(blob))
    # this process knows the entry is stale: while cooling down it does not ask...
    with pytest.raises(CacheUnavailableError):
        scoped.stat(CTX, blob)
    clock.advance(0.25)
    # ...and the first command that reaches Redis replays the clear before reading
    with pytest.raises(DescriptorNotCachedError):
        scoped.stat(CTX, blob)
    assert not server.client().sismember(repository_set_key("a"), str(blob))
    assert not server.client().exists(repository_blob_key("a", blob))
    assert not cache._tombstones
    # a later link of the same blob is cached again
    scoped.set_descriptor(CTX, blob, BlobDescriptor(blob, 5))
    assert scoped.stat(CTX, blob).size == 5


def test_a_timed_out_clear_is_not_trusted_either_way(server):
    """A command that timed out may still run when the server wakes up; the
    tombstone makes that irrelevant."""
    clock = ManualClock()
    cache = provider(server, cooldown=0.2, clock=clock, config=RedisConfig(addr=server.addr, readtimeout=0.1))
    blob = d("timed out")
    scoped = cache.repository_scoped("a")
    scoped.set_descriptor(CTX, blob, BlobDescriptor(blob, 5))
    server.pause()
    try:
        with pytest.raises(CacheUnavailableError):
            scoped.clear(CTX, blob)
        with pytest.raises(CacheUnavailableError):
            scoped.stat(CTX, blob)
    finally:
        server.resume()
    clock.advance(0.25)
    with pytest.raises(DescriptorNotCachedError):
        scoped.stat(CTX, blob)
    assert not server.client().exists(repository_blob_key("a", blob))


def test_other_processes_believe_a_stale_entry_no_longer_than_its_ttl(server):
    deleter = provider(server, cooldown=0.2, repository_ttl=1.0)
    other = provider(server, repository_ttl=1.0)
    blob = d("stale elsewhere")
    deleter.repository_scoped("a").set_descriptor(CTX, blob, BlobDescriptor(blob, 5))
    server.snapshot()
    server.kill()
    with pytest.raises(CacheUnavailableError):
        deleter.repository_scoped("a").clear(CTX, blob)
    deleter.close()  # the deleting instance went away before it could replay
    server.start()
    # another process cannot know; this is the window the TTL bounds
    assert other.repository_scoped("a").stat(CTX, blob).size == 5
    time.sleep(1.1)
    with pytest.raises(DescriptorNotCachedError):
        other.repository_scoped("a").stat(CTX, blob)


def test_statter_serves_from_storage_and_logs_once_per_interval(server, caplog, monkeypatch):
    from chalicelib.cache import statter

    monkeypatch.setattr(statter, "_warn", statter.RateLimitedLog(statter.log, interval=60))
    clock = ManualClock()
    cache = provider(server, cooldown=0.05, clock=clock)
    blob = d("degraded")

    class Storage:
        calls = 0

        def stat(self, ctx, digest):
            Storage.calls += 1
            if digest != blob:
                raise BlobUnknownError(str(digest))
            return BlobDescriptor(digest, 11)

        def set_descriptor(self, ctx, digest, descriptor):
            pass

        def clear(self, ctx, digest):
            pass

    cached = CachedBlobStatter(cache.repository_scoped("a"), Storage())
    assert cached.stat(CTX, blob).size == 11 and Storage.calls == 1
    assert cached.stat(CTX, blob).size == 11 and Storage.calls == 1  # from Redis
    server.kill()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stratus.cache"):
        for i in range(30):
            assert cached.stat(CTX, blob).size == 11
            with pytest.raises(BlobUnknownError):
                cached.stat(CTX, d("missing"))
            cached.clear(CTX, blob)
            clock.advance(0.02)  # 0.6 s in all, many cooldowns: Redis is retried and fails again
    assert Storage.calls == 61
    warnings = [r for r in caplog.records if r.name == "stratus.cache" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_too_many_failed_clears_distrust_the_whole_cache(server, monkeypatch):
    from chalicelib.cache import redis as redis_cache

    monkeypatch.setattr(redis_cache, "MAX_TOMBSTONES", 3)
    clock = ManualClock()
    cache = provider(server, cooldown=0.1, repository_ttl=60, clock=clock)
    kept = d("kept")
    cache.repository_scoped("a").set_descriptor(CTX, kept, BlobDescriptor(kept, 1))
    server.snapshot()
    server.kill()
    for i in range(4):
        with pytest.raises(CacheUnavailableError):
            cache.repository_scoped("a").clear(CTX, d(f"gone {i}"))
    server.start()
    clock.advance(0.15)
    # the fourth clear could not be remembered: nothing cached is believed any more
    with pytest.raises(DescriptorNotCachedError):
        cache.repository_scoped("a").stat(CTX, kept)
    assert server.client().exists(repository_blob_key("a", kept))


def test_a_key_of_the_wrong_type_does_not_wedge_the_replay(server):
    clock = ManualClock()
    cache = provider(server, cooldown=0.1, clock=clock)
    blob = d("wedge")
    server.kill()
    with pytest.raises(CacheUnavailableError):
        cache.repository_scoped("a").clear(CTX, blob)
    server.start()
    server.client().set(repository_set_key("a"), "not a set")
    clock.advance(0.15)
    other = d("after")
    cache.repository_scoped("b").set_descriptor(CTX, other, BlobDescriptor(other, 1))
    assert not cache._tombstones
    assert cache.repository_scoped("b").stat(CTX, other).size == 1


# -- the AUTH token from SSM or Secrets Manager ----------------------------------------
# STRATUS_REDIS_PASSWORD_PARAMETER, as the Terraform module sets it: read with the
# function's role (here moto's server) when the cache first needs a client.


@pytest.fixture
def aws_role(moto_s3, monkeypatch):
    from chalicelib import aws_runtime
    from tests.moto_server import ACCESS_KEY, SECRET_KEY

    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL_SSM", moto_s3.endpoint),
                        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_s3.endpoint)):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(aws_runtime, "_secrets", {})  # what this process has read: nothing yet
    return moto_s3


@pytest.fixture
def auth_server(tmp_path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", password=f"tok-{time.time_ns()}") as srv:
        yield srv


def lazy_provider(config: RedisConfig, **kwargs) -> RedisBlobDescriptorCache:
    """As from_config builds it (a connector, nothing connected), but not shared."""
    return RedisBlobDescriptorCache(config, **kwargs)


@pytest.mark.parametrize("store", ["ssm", "secretsmanager"])
def test_auth_token_from_a_parameter_is_read_on_first_use(aws_role, auth_server, monkeypatch, store):
    from chalicelib import aws_runtime

    if store == "ssm":
        name = f"/stratus/test/redis-auth-token-{time.time_ns()}"
        aws_role.client("ssm").put_parameter(Name=name, Value=auth_server.password, Type="SecureString")
    else:
        secret = aws_role.client("secretsmanager").create_secret(
            Name=f"stratus-redis-auth-{time.time_ns()}", SecretString=auth_server.password)
        name = f"secretsmanager:{secret['Name']}"
    monkeypatch.setenv("STRATUS_REDIS_PASSWORD_PARAMETER", name)
    before = int(auth_server.client().info("stats")["total_connections_received"])
    cache = lazy_provider(RedisConfig(addr=auth_server.addr))
    # built, and neither the parameter read nor Redis reached
    assert aws_runtime._secrets == {} and cache._client is None
    assert int(auth_server.client().info("stats")["total_connections_received"]) == before + 1  # the INFO
    blob = d("token")
    cache.repository_scoped("a").set_descriptor(CTX, blob, BlobDescriptor(blob, 7))
    assert cache.repository_scoped("a").stat(CTX, blob).size == 7
    assert auth_server.client().hgetall(blob_key(blob))["size"] == "7"
    assert list(aws_runtime._secrets) == [name]


def test_an_unreadable_auth_token_is_an_outage_not_an_error(aws_role, auth_server, monkeypatch):
    name = f"/stratus/test/redis-auth-token-missing-{time.time_ns()}"
    monkeypatch.setenv("STRATUS_REDIS_PASSWORD_PARAMETER", name)
    clock = ManualClock()
    cache = lazy_provider(RedisConfig(addr=auth_server.addr), cooldown=0.5, clock=clock)
    blob = d("no token yet")
    with pytest.raises(CacheUnavailableError) as refused:
        cache.stat(CTX, blob)
    assert "ParameterNotFound" in str(refused.value)
    # cooling down: SSM is not asked again on every request
    aws_role.client("ssm").put_parameter(Name=name, Value=auth_server.password, Type="SecureString")
    with pytest.raises(CacheUnavailableError, match="retrying shortly"):
        cache.stat(CTX, blob)
    clock.advance(0.6)  # after the cooldown the client is built, with the token now there
    with pytest.raises(DescriptorNotCachedError):
        cache.stat(CTX, blob)
    cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 3))
    assert cache.stat(CTX, blob).size == 3


def test_a_wrong_auth_token_degrades_to_storage(aws_role, auth_server, monkeypatch):
    name = f"/stratus/test/redis-auth-token-wrong-{time.time_ns()}"
    aws_role.client("ssm").put_parameter(Name=name, Value="not-the-token", Type="SecureString")
    monkeypatch.setenv("STRATUS_REDIS_PASSWORD_PARAMETER", name)
    cache = lazy_provider(RedisConfig(addr=auth_server.addr))
    with pytest.raises(CacheUnavailableError):
        cache.stat(CTX, d("wrong"))


def test_a_configured_password_wins_over_the_parameter(aws_role, auth_server, monkeypatch):
    from chalicelib import aws_runtime

    # a parameter that does not exist: reading it would fail
    monkeypatch.setenv("STRATUS_REDIS_PASSWORD_PARAMETER", f"/stratus/test/absent-{time.time_ns()}")
    cache = lazy_provider(RedisConfig(addr=auth_server.addr, password=auth_server.password))
    blob = d("configured")
    cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 5))
    assert cache.stat(CTX, blob).size == 5
    assert aws_runtime._secrets == {}


def test_a_rotated_auth_token_is_read_again(aws_role, auth_server, monkeypatch):
    """The operator rotates the token (SSM first, then Redis, as with ElastiCache's
    ROTATE then SET): the cached token is refused once, the cache is out for one
    cooldown, then the parameter is read again and Redis is back."""
    ssm = aws_role.client("ssm")
    name = f"/stratus/test/redis-auth-token-rotated-{time.time_ns()}"
    ssm.put_parameter(Name=name, Value=auth_server.password, Type="SecureString")
    monkeypatch.setenv("STRATUS_REDIS_PASSWORD_PARAMETER", name)
    config = RedisConfig(addr=auth_server.addr)
    clock = ManualClock()
    cache = RedisBlobDescriptorCache(config, cooldown=0.5, clock=clock)
    blob = d("rotated")
    cache.set_descriptor(CTX, blob, BlobDescriptor(blob, 9))
    rotated = f"rotated-{time.time_ns()}"
    ssm.put_parameter(Name=name, Value=rotated, Type="SecureString", Overwrite=True)
    admin = auth_server.client()
    admin.config_set("requirepass", rotated)
    admin.client_kill_filter(_type="normal", skipme=True)  # the pooled connection goes: it reconnects
    with pytest.raises(CacheUnavailableError, match="(?i)auth|password"):
        cache.stat(CTX, blob)
    clock.advance(0.6)
    assert cache.stat(CTX, blob).size == 9
