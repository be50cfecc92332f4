"""The BlobDescriptorCacheProvider contract, run against both providers.

The Redis provider talks to a real redis-server on loopback; whatever one provider
answers, the other must answer the same.
"""
from __future__ import annotations

import time

import pytest

from chalicelib.cache import DescriptorNotCachedError
from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.config import RedisConfig
from chalicelib.context import Context
from chalicelib.descriptor import OCTET_STREAM, BlobDescriptor
from chalicelib.digest import Algorithm, Digest

from .redis_server import RedisServer, redis_srv, requires_redis  # noqa: F401  (redis_srv: fixture)

CTX = Context()
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def digest_of(data: bytes, algorithm: Algorithm = Algorithm.SHA256) -> Digest:
    return Digest.from_bytes(data, algorithm)


def make_provider(kind: str, request: pytest.FixtureRequest, **ttls):
    if kind == "inmemory":
        return InMemoryBlobDescriptorCache(1000, **ttls)
    from chalicelib.cache.redis import RedisBlobDescriptorCache

    server: RedisServer = request.getfixturevalue("redis_srv")
    server.client().flushdb()
    cache = RedisBlobDescriptorCache(RedisConfig(addr=server.addr), **ttls)
    request.addfinalizer(cache.close)
    return cache


@pytest.fixture(params=["inmemory", pytest.param("redis", marks=requires_redis)])
def provider_factory(request):
    return lambda **ttls: make_provider(request.param, request, **ttls)


@pytest.fixture
def provider(provider_factory):
    return provider_factory()


def test_unknown_digest_is_a_miss_globally_and_in_a_repository(provider):
    d = digest_of(b"nothing")
    with pytest.raises(DescriptorNotCachedError):
        provider.stat(CTX, d)
    with pytest.raises(DescriptorNotCachedError):
        provider.repository_scoped("library/a").stat(CTX, d)


def test_set_then_stat_returns_the_descriptor(provider):
    d = digest_of(b"layer")
    provider.set_descriptor(CTX, d, BlobDescriptor(d, 5, LAYER))
    assert provider.stat(CTX, d) == BlobDescriptor(d, 5, LAYER)


def test_repository_set_is_seen_in_that_repository_and_globally(provider):
    d = digest_of(b"blob")
    provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(d, 4, LAYER))
    assert provider.repository_scoped("a").stat(CTX, d) == BlobDescriptor(d, 4, LAYER)
    assert provider.stat(CTX, d).size == 4


def test_blob_linked_in_one_repository_is_not_present_in_another(provider):
    d = digest_of(b"private")
    provider.repository_scoped("team/a").set_descriptor(CTX, d, BlobDescriptor(d, 7))
    with pytest.raises(DescriptorNotCachedError):
        provider.repository_scoped("team/b").stat(CTX, d)
    # a name that is a prefix of the other shares nothing with it either
    with pytest.raises(DescriptorNotCachedError):
        provider.repository_scoped("team").stat(CTX, d)


def test_repository_clear_hides_the_blob_there_only(provider):
    d = digest_of(b"shared")
    a, b = provider.repository_scoped("a"), provider.repository_scoped("b")
    a.set_descriptor(CTX, d, BlobDescriptor(d, 6))
    b.set_descriptor(CTX, d, BlobDescriptor(d, 6))
    a.clear(CTX, d)
    with pytest.raises(DescriptorNotCachedError):
        a.stat(CTX, d)
    assert b.stat(CTX, d).size == 6
    assert provider.stat(CTX, d).size == 6  # the bytes are still in storage


def test_global_clear_hides_the_blob_from_every_repository(provider):
    d = digest_of(b"collected")
    provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(d, 9))
    provider.clear(CTX, d)
    for stat in (provider.stat, provider.repository_scoped("a").stat):
        with pytest.raises(DescriptorNotCachedError):
            stat(CTX, d)


def test_clear_of_an_unknown_digest_is_harmless(provider):
    d = digest_of(b"never")
    provider.clear(CTX, d)
    provider.repository_scoped("a").clear(CTX, d)


def test_first_media_type_stays_globally_and_a_repository_may_override_it(provider):
    d = digest_of(b"typed")
    provider.set_descriptor(CTX, d, BlobDescriptor(d, 5, CONFIG))
    provider.set_descriptor(CTX, d, BlobDescriptor(d, 5, LAYER))
    assert provider.stat(CTX, d).media_type == CONFIG
    provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(d, 5, LAYER))
    assert provider.repository_scoped("a").stat(CTX, d).media_type == LAYER
    assert provider.stat(CTX, d).media_type == CONFIG


def test_default_media_type_round_trips(provider):
    d = digest_of(b"plain")
    provider.set_descriptor(CTX, d, BlobDescriptor(d, 0))
    assert provider.stat(CTX, d) == BlobDescriptor(d, 0, OCTET_STREAM)


def test_sha512_digests_are_kept_apart_from_sha256(provider):
    data = b"two algorithms"
    d256, d512 = digest_of(data), digest_of(data, Algorithm.SHA512)
    provider.repository_scoped("a").set_descriptor(CTX, d512, BlobDescriptor(d512, len(data)))
    assert provider.repository_scoped("a").stat(CTX, d512).digest == d512
    with pytest.raises(DescriptorNotCachedError):
        provider.repository_scoped("a").stat(CTX, d256)


def test_invalid_descriptors_are_refused(provider):
    d, other = digest_of(b"x"), digest_of(b"y")
    with pytest.raises(ValueError):
        provider.set_descriptor(CTX, d, BlobDescriptor(d, -1))
    with pytest.raises(ValueError):
        provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(other, 1))
    with pytest.raises(DescriptorNotCachedError):
        provider.stat(CTX, d)


def test_repository_entries_expire_after_their_ttl(provider_factory):
    provider = provider_factory(repository_ttl=0.3, global_ttl=60)
    d = digest_of(b"short-lived")
    provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(d, 3))
    assert provider.repository_scoped("a").stat(CTX, d).size == 3
    time.sleep(0.45)
    with pytest.raises(DescriptorNotCachedError):
        provider.repository_scoped("a").stat(CTX, d)
    assert provider.stat(CTX, d).size == 3
    # a write-back after the miss makes it present again
    provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(d, 3))
    assert provider.repository_scoped("a").stat(CTX, d).size == 3


def test_global_entries_expire_after_their_ttl(provider_factory):
    provider = provider_factory(repository_ttl=60, global_ttl=0.3)
    d = digest_of(b"global-short")
    provider.repository_scoped("a").set_descriptor(CTX, d, BlobDescriptor(d, 3))
    time.sleep(0.45)
    for stat in (provider.stat, provider.repository_scoped("a").stat):
        with pytest.raises(DescriptorNotCachedError):
            stat(CTX, d)


def test_many_repositories_and_digests_do_not_interfere(provider):
    digests = [digest_of(str(i).encode()) for i in range(20)]
    for i, d in enumerate(digests):
        provider.repository_scoped(f"r{i % 3}").set_descriptor(CTX, d, BlobDescriptor(d, i))
    for i, d in enumerate(digests):
        for r in range(3):
            scoped = provider.repository_scoped(f"r{r}")
            if r == i % 3:
                assert scoped.stat(CTX, d).size == i
            else:
                with pytest.raises(DescriptorNotCachedError):
                    scoped.stat(CTX, d)


def test_inmemory_lru_is_bounded_by_blobdescriptorsize():
    cache = InMemoryBlobDescriptorCache(3)
    digests = [digest_of(bytes([i])) for i in range(4)]
    for d in digests[:3]:
        cache.set_descriptor(CTX, d, BlobDescriptor(d, 1))
    cache.stat(CTX, digests[0])  # recently used: survives the next insert
    cache.set_descriptor(CTX, digests[3], BlobDescriptor(digests[3], 1))
    assert len(cache) == 3
    with pytest.raises(DescriptorNotCachedError):
        cache.stat(CTX, digests[1])
    for d in (digests[0], digests[2], digests[3]):
        assert cache.stat(CTX, d).size == 1
    # repository entries count against the same bound
    cache.repository_scoped("a").set_descriptor(CTX, digests[1], BlobDescriptor(digests[1], 1))
    assert len(cache) == 3


def test_inmemory_size_must_be_positive():
    with pytest.raises(ValueError):
        InMemoryBlobDescriptorCache(0)
