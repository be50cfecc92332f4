"""The BlobDescriptorService contract shared by caches and the storage-backed statters."""
from __future__ import annotations

from typing import Protocol

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest


class DescriptorNotCachedError(KeyError):
    """The cache has no entry; the caller asks storage."""


class BlobDescriptorService(Protocol):
    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor: ...

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None: ...

    def clear(self, ctx: Context, digest: Digest) -> None: ...


class BlobDescriptorCacheProvider(BlobDescriptorService, Protocol):
    """A global cache that also hands out views scoped to one repository."""

    def repository_scoped(self, name: str) -> BlobDescriptorService: ...
