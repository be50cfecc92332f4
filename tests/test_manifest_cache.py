"""The in-process manifest body cache: bodies by digest, membership always from storage.

Two Registry objects over one driver stand for two server processes.
"""
from __future__ import annotations

import pytest

from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.context import Context
from chalicelib.digest import Digest
from chalicelib.registry import Registry
from chalicelib.registry.errors import ManifestUnknownError
from chalicelib.registry.manifest_cache import MAX_ENTRY_BYTES, ManifestBodyCache
from chalicelib.storage.filesystem import from_parameters as filesystem

from .test_registry import image_manifest

CTX = Context()


@pytest.fixture
def two_processes(tmp_path) -> tuple[Registry, Registry]:
    driver = filesystem({"rootdirectory": str(tmp_path)})
    return Registry(driver, InMemoryBlobDescriptorCache(100)), Registry(driver, InMemoryBlobDescriptorCache(100))


def test_delete_in_another_process_is_seen_although_the_body_is_cached(two_processes) -> None:
    a, b = two_processes
    body = image_manifest(a, "app", [b"layer"])
    digest, _ = a.repository("app").manifests.put(CTX, body, None, tag="v1")
    assert b.repository("app").manifests.get(CTX, digest).body == body  # now cached in b
    a.repository("app").manifests.delete(CTX, digest)
    with pytest.raises(ManifestUnknownError):
        b.repository("app").manifests.get(CTX, digest)


def test_tag_moved_in_another_process_is_seen_at_once(two_processes) -> None:
    a, b = two_processes
    first = image_manifest(a, "app", [b"one"])
    second = image_manifest(a, "app", [b"two"])
    d1, _ = a.repository("app").manifests.put(CTX, first, None, tag="latest")
    repo_b = b.repository("app")
    assert repo_b.manifests.get(CTX, repo_b.tags.get(CTX, "latest")).body == first
    d2, _ = a.repository("app").manifests.put(CTX, second, None, tag="latest")
    assert repo_b.tags.get(CTX, "latest") == d2
    assert repo_b.manifests.get(CTX, d2).body == second


def test_cached_body_is_only_served_where_it_is_linked(two_processes) -> None:
    a, _ = two_processes
    body = image_manifest(a, "app", [b"layer"])
    digest, _ = a.repository("app").manifests.put(CTX, body, None)
    assert a.repository("app").manifests.get(CTX, digest).body == body
    with pytest.raises(ManifestUnknownError):
        a.repository("other").manifests.get(CTX, digest)


def test_cache_is_bounded_by_bytes_least_recently_used_out() -> None:
    cache = ManifestBodyCache(max_bytes=100)
    digests = [Digest.from_bytes(bytes([i])) for i in range(3)]
    cache.put(digests[0], "t", b"a" * 40)
    cache.put(digests[1], "t", b"b" * 40)
    assert cache.get(digests[0]) == ("t", b"a" * 40)  # now most recent
    cache.put(digests[2], "t", b"c" * 40)
    assert cache.get(digests[1]) is None
    assert cache.get(digests[0]) is not None and cache.get(digests[2]) is not None
    big = ManifestBodyCache()
    big.put(digests[0], "t", b"x" * (MAX_ENTRY_BYTES + 1))
    assert big.get(digests[0]) is None
