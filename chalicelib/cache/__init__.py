"""Blob-descriptor caches: answer "is this blob here, how big?" without storage round trips."""
from .base import BlobDescriptorCacheProvider, BlobDescriptorService, DescriptorNotCachedError

__all__ = ["BlobDescriptorCacheProvider", "BlobDescriptorService", "DescriptorNotCachedError"]
