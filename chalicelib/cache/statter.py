"""The cached statter: ask the cache, fall back to the backing statter, write back."""
from __future__ import annotations

import logging
import time

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest
from .base import BlobDescriptorService, DescriptorNotCachedError

log = logging.getLogger("stratus.cache")
_WARN_INTERVAL = 60.0


class _RateLimitedWarning:
    """One log line per interval: a cache outage must not flood the logs per request."""

    def __init__(self, interval: float = _WARN_INTERVAL):
        self._interval = interval
        self._last = -interval

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            log.warning(message, *args)


_warn = _RateLimitedWarning()


class CachedBlobStatter:
    def __init__(self, cache: BlobDescriptorService, backend: BlobDescriptorService):
        self._cache = cache
        self._backend = backend

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
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
        self._write_back(ctx, digest, descriptor)

    def clear(self, ctx: Context, digest: Digest) -> None:
        try:
            self._cache.clear(ctx, digest)
        except Exception as exc:
            _warn("blob descriptor cache unavailable on clear: %s", exc)
        self._backend.clear(ctx, digest)

    def _write_back(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        try:
            self._cache.set_descriptor(ctx, digest, descriptor)
        except Exception as exc:
            _warn("blob descriptor cache unavailable on write: %s", exc)
