"""In-memory LRU descriptor cache: the default, and free of any Redis import.

Each process has its own, so a delete served by one process (a worker, a Lambda
instance, `stratus gc`) cannot clear another's entries. It is therefore not
`shared`: the cached statter never takes its word that a blob exists (cache.base),
and existence is read from storage on every request. Deployments that want blob
HEADs without storage reads use Redis, which every process shares and every
delete clears.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest
from .base import GLOBAL_TTL, DescriptorNotCachedError, validate_descriptor

DEFAULT_SIZE = 10000
REPOSITORY_TTL = 5.0


@dataclass(frozen=True)
class _Entry:
    descriptor: BlobDescriptor
    expires: float


class _LRU:
    """Bounded by entry count; an expired entry reads as absent."""

    def __init__(self, size: int, clock: Callable[[], float]):
        self._size = size
        self._clock = clock
        self._items: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> BlobDescriptor:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                raise DescriptorNotCachedError(key)
            if entry.expires <= self._clock():
                del self._items[key]
                raise DescriptorNotCachedError(key)
            self._items.move_to_end(key)
            return entry.descriptor

    def put(self, key: Hashable, value: BlobDescriptor, ttl: float, keep_media_type: bool = False) -> None:
        with self._lock:
            old = self._items.get(key)
            if keep_media_type and old is not None and old.expires > self._clock():
                # like the Redis provider's HSETNX: the first media type recorded stays
                value = BlobDescriptor(value.digest, value.size, old.descriptor.media_type)
            self._items[key] = _Entry(value, self._clock() + ttl)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class InMemoryBlobDescriptorCache:
    """Global entries keyed by digest; repository entries keyed by (name, digest).

    Both share one LRU bound, so the cache's memory is capped by `size` entries.
    """

    shared = False  # per process: never asked whether a blob exists

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        global_ttl: float = GLOBAL_TTL,
        repository_ttl: float = REPOSITORY_TTL,
        clock: Callable[[], float] = time.monotonic,
    ):
        if size <= 0:
            raise ValueError("storage.cache.blobdescriptorsize must be positive")
        self._lru = _LRU(size, clock)
        self.global_ttl = global_ttl
        self.repository_ttl = repository_ttl

    def __len__(self) -> int:
        return len(self._lru)

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        return self._lru.get(digest)

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        validate_descriptor(digest, descriptor)
        self._lru.put(digest, descriptor, self.global_ttl, keep_media_type=True)

    def clear(self, ctx: Context, digest: Digest) -> None:
        self._lru.pop(digest)

    def repository_scoped(self, name: str) -> "_RepositoryScoped":
        return _RepositoryScoped(self, name)


class _RepositoryScoped:
    shared = False

    def __init__(self, parent: InMemoryBlobDescriptorCache, name: str):
        self._parent = parent
        self._name = name

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        linked = self._parent._lru.get((self._name, digest))
        found = self._parent.stat(ctx, digest)
        return BlobDescriptor(digest=digest, size=found.size, media_type=linked.media_type)

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        validate_descriptor(digest, descriptor)
        self._parent._lru.put((self._name, digest), descriptor, self._parent.repository_ttl)
        self._parent.set_descriptor(ctx, digest, descriptor)

    def clear(self, ctx: Context, digest: Digest) -> None:
        self._parent._lru.pop((self._name, digest))
