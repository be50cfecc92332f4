"""The BlobDescriptorService contract shared by caches and the storage-backed statters."""
from __future__ import annotations

from typing import Protocol

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest

# How long an entry is trusted before storage is asked again: the bound on how long
# a stale entry can be served when a clear could not reach it (a shared cache that
# was down during a delete, or another process's in-memory cache). Repository-scoped
# entries answer "is this blob linked here", which a DELETE changes, so they are
# short; global entries change only when garbage collection removes blob data.
REPOSITORY_TTL = 300.0
GLOBAL_TTL = 3600.0


class DescriptorNotCachedError(KeyError):
    """The cache has no entry; the caller asks storage."""


class CacheUnavailableError(Exception):
    """The cache could not be reached or answered in time; the caller asks storage."""


# What a cache may answer. Existence ("this blob is here", "linked in this
# repository") is falsified by a DELETE or a garbage collection in any process, so
# only a cache every process shares and every delete clears (Redis: `shared` True)
# may answer it. A per-process cache (`shared` False: the in-memory LRU) would be
# told of deletes made here only, so the cached statter never asks it whether a
# blob exists: with several instances (Lambda, replicas, `stratus gc` running
# beside `stratus serve`) it would claim a deleted blob present, accept a manifest
# naming it, or refuse a re-push as "already exists". Such a cache may only hold
# what no delete can falsify (a digest's size and media type), and answers nothing
# about existence.


class BlobDescriptorService(Protocol):
    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor: ...

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None: ...

    def clear(self, ctx: Context, digest: Digest) -> None: ...


class BlobDescriptorCacheProvider(BlobDescriptorService, Protocol):
    """A global cache that also hands out views scoped to one repository.

    A repository-scoped stat answers only for blobs set through that scope and still
    present globally: clearing a digest globally (garbage collection) hides it from
    every repository, clearing it in one repository hides it from that one only.
    """

    shared: bool  # every process sees the same entries, and every delete clears them

    def repository_scoped(self, name: str) -> BlobDescriptorService: ...


def validate_descriptor(digest: Digest, descriptor: BlobDescriptor) -> None:
    """What a cache refuses to store: it would later be served as the truth."""
    if descriptor.size < 0:
        raise ValueError(f"{digest}: negative size {descriptor.size}")
    if descriptor.digest.algorithm == digest.algorithm and descriptor.digest != digest:
        raise ValueError(f"descriptor for {digest} names {descriptor.digest}")
