"""Blob-descriptor caches: answer "is this blob here, how big?" without storage round trips.

Providers: memory (an in-process LRU, the default) and redis (shared by every process
of a deployment, e.g. ElastiCache); the redis module is imported only when chosen.
"""
from .base import (
    BlobDescriptorCacheProvider,
    BlobDescriptorService,
    CacheUnavailableError,
    DescriptorNotCachedError,
)

__all__ = [
    "BlobDescriptorCacheProvider",
    "BlobDescriptorService",
    "CacheUnavailableError",
    "DescriptorNotCachedError",
]
