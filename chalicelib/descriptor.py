"""BlobDescriptor: what the registry knows about a blob without reading it."""
from __future__ import annotations

from dataclasses import dataclass

from .digest import Digest

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class BlobDescriptor:
    digest: Digest
    size: int
    media_type: str = OCTET_STREAM
