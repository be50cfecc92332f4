"""The registry domain: repositories, blobs, manifests, tags, uploads, referrers, catalog.

Nothing here knows about HTTP; errors carry OCI codes for the api layer to map.
"""
from .errors import RegistryError
from .registry import Registry, RegistryOptions, Repository

__all__ = ["Registry", "RegistryError", "RegistryOptions", "Repository"]
