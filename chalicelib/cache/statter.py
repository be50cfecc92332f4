"""The cached statter: ask the cache, fall back to the backing statter, write back.

The cache is never a point of failure: whatever it raises, the answer comes from
storage, and the failure is logged once per interval rather than once per request.

Only a `shared` cache is asked (cache.base): over a per-process cache this statter
is the backing statter itself, since existence is the one thing a stat answers.
"""
from __future__ import annotations

import logging

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest
from .base import BlobDescriptorService, DescriptorNotCachedError
from .ratelimit import RateLimitedLog

log = logging.getLogger("stratus.cache")

_warn = RateLimitedLog(log)


class CachedBlobStatter:
    def __init__(self, cache: BlobDescriptorService, backend: BlobDescriptorService):
        self._cache = cache
        self._backend = backend
        # getattr: a wrapper (tracing) forwards it; a cache that does not say is not trusted
        self.trusted = bool(getattr(cache, "shared", False))

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        if not self.trusted:
            return self._backend.stat(ctx, digest)
        try:
            return self._cache.stat(ctx, digest)
        except DescriptorNotCachedError:
            pass
        except Exception as exc:  # a broken cache degrades to storage reads
            _warn("blob descriptor cache unavailable, reading storage: %s", exc)
        descriptor = self._backend.stat(ctx, digest)
        self._write_back(ctx, digest, descriptor)
        return descriptor

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        self._backend.set_descriptor(ctx, digest, descriptor)
        if self.trusted:
            self._write_back(ctx, digest, descriptor)

    def clear(self, ctx: Context, digest: Digest) -> None:
        """Clear the cache, then storage, then the cache again.

        The second clear removes an entry a concurrent stat may have written back
        from storage it read just before the storage clear.
        """
        self._clear_cache(ctx, digest)
        self._backend.clear(ctx, digest)
        self._clear_cache(ctx, digest)

    def _clear_cache(self, ctx: Context, digest: Digest) -> None:
        try:
            self._cache.clear(ctx, digest)
        except Exception as exc:
            _warn("blob descriptor cache unavailable on clear of %s: %s", digest, exc)

    def _write_back(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        try:
            self._cache.set_descriptor(ctx, digest, descriptor)
        except Exception as exc:
            _warn("blob descriptor cache unavailable on write: %s", exc)
