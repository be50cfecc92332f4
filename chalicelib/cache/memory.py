"""In-memory LRU descriptor cache: the default, and free of any Redis import."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest
from .base import DescriptorNotCachedError

DEFAULT_SIZE = 10000


class _LRU:
    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[Hashable, BlobDescriptor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> BlobDescriptor:
        with self._lock:
            try:
                self._items.move_to_end(key)
                return self._items[key]
            except KeyError:
                raise DescriptorNotCachedError(key) from None

    def put(self, key: Hashable, value: BlobDescriptor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)


class InMemoryBlobDescriptorCache:
    """Global entries keyed by digest; repository entries keyed by (name, digest).

    Both share one LRU bound, so the cache's memory is capped by `size` entries.
    """

    def __init__(self, size: int = DEFAULT_SIZE):
        if size <= 0:
            raise ValueError("storage.cache.blobdescriptorsize must be positive")
        self._lru = _LRU(size)

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        return self._lru.get(digest)

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        self._lru.put(digest, descriptor)

    def clear(self, ctx: Context, digest: Digest) -> None:
        self._lru.pop(digest)

    def repository_scoped(self, name: str) -> "_RepositoryScoped":
        return _RepositoryScoped(self, name)


class _RepositoryScoped:
    def __init__(self, parent: InMemoryBlobDescriptorCache, name: str):
        self._parent = parent
        self._name = name

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        return self._parent._lru.get((self._name, digest))

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        self._parent._lru.put((self._name, digest), descriptor)
        self._parent.set_descriptor(ctx, digest, descriptor)

    def clear(self, ctx: Context, digest: Digest) -> None:
        self._parent._lru.pop((self._name, digest))
