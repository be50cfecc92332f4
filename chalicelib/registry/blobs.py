"""The global blob store and the per-repository linked blob store.

Blob bytes live once, under blobs/<alg>/<hex[:2]>/<hex>/data; a repository sees a
blob only through a link file holding its digest (_layers for layers and configs,
_manifests/revisions for manifests). Access checks therefore cost one link read and
one stat, and both are what the descriptor cache saves.
"""
from __future__ import annotations

import time
from typing import BinaryIO, Callable, Optional

from ..cache.base import BlobDescriptorService
from ..cache.statter import CachedBlobStatter
from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest, DigestError
from ..storage import PathNotFoundError, StorageDriver, paths
from .errors import BlobUnknownError

LinkPath = Callable[[str, str, str], str]  # (repository name, algorithm, hex) -> path

# Garbage collection's own folder beside blobs/ and repositories/ (registry:2 ignores
# it). The marker exists while a sweep moves blobs aside: a writer of a reference
# that sees it checks the referenced data in storage (see registry.maintenance).
GC_DIR = f"{paths.ROOT}/_gc"
SWEEP_MARKER = f"{GC_DIR}/sweeping"


def blob_path(digest: Digest) -> str:
    return paths.blob_data(digest.algorithm.value, digest.hex)


class BlobStatter:
    """Stat of a blob's data in storage, the ground truth the caches front.

    Stores that are only eventually consistent may not show a blob just committed;
    `retries` re-stats with a back-off before calling it unknown.
    """

    def __init__(self, driver: StorageDriver, retries: int = 0, backoff: float = 0.1):
        self.driver = driver
        self._retries = retries
        self._backoff = backoff

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        for attempt in range(self._retries + 1):
            try:
                info = self.driver.stat(ctx, blob_path(digest))
            except PathNotFoundError:
                if attempt < self._retries:
                    time.sleep(self._backoff)
                continue
            if info.is_dir:
                break
            return BlobDescriptor(digest=digest, size=info.size)
        raise BlobUnknownError(str(digest))

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        """Storage learns of blobs by their bytes being written; nothing to record."""

    def clear(self, ctx: Context, digest: Digest) -> None:
        """Blob data is removed by garbage collection only; a clear forgets cached state."""


class BlobStore:
    """Global, repository-agnostic access to blob bytes. Not access-controlled."""

    def __init__(
        self, driver: StorageDriver, statter: BlobDescriptorService,
        statter_now: Optional[BlobDescriptorService] = None,
    ):
        self.driver = driver
        self.statter = statter
        self._statter_now = statter_now or BlobStatter(driver)

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        return self.statter.stat(ctx, digest)

    def stat_now(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        """The cache, then one look at storage, without consistency retries.

        For callers to whom absence is the common, expected answer (about to write
        the blob, or probing for a mount): waiting out a lag would only slow them.
        """
        return self._statter_now.stat(ctx, digest)

    def get(self, ctx: Context, digest: Digest) -> bytes:
        try:
            return self.driver.get_content(ctx, blob_path(digest))
        except PathNotFoundError:
            raise BlobUnknownError(str(digest)) from None

    def put(self, ctx: Context, digest: Digest, content: bytes, media_type: str) -> BlobDescriptor:
        """Store small content (a manifest) at its digest's path, once."""
        descriptor = BlobDescriptor(digest=digest, size=len(content), media_type=media_type)
        self._store_once(ctx, descriptor, lambda path: self.driver.put_content(ctx, path, content))
        return descriptor

    def move_into_place(self, ctx: Context, source: str, descriptor: BlobDescriptor) -> None:
        """Make the finished file at `source` the blob, unless the blob is already stored."""
        self._store_once(ctx, descriptor, lambda path: self.driver.move(ctx, source, path))

    def _store_once(self, ctx: Context, descriptor: BlobDescriptor, write: Callable[[str], None]) -> None:
        # a new blob is the common case, and missing an existing one only costs a write
        try:
            self.stat_now(ctx, descriptor.digest)
            return  # content-addressed: an existing blob already has these bytes
        except BlobUnknownError:
            pass
        write(blob_path(descriptor.digest))
        self.statter.set_descriptor(ctx, descriptor.digest, descriptor)

    def open(self, ctx: Context, digest: Digest, offset: int = 0) -> BinaryIO:
        try:
            return self.driver.reader(ctx, blob_path(digest), offset)
        except PathNotFoundError:
            raise BlobUnknownError(str(digest)) from None

    def redirect_url(self, ctx: Context, digest: Digest, expiry_seconds: int) -> Optional[str]:
        return self.driver.redirect_url(ctx, "GET", blob_path(digest), expiry_seconds)


class LinkedBlobStatter:
    """Stat through a repository's link files: present only if linked here."""

    def __init__(self, driver: StorageDriver, name: str, link_path: LinkPath, blobs: BlobDescriptorService):
        self.driver = driver
        self.name = name
        self.link_path = link_path
        self.blobs = blobs

    def _link(self, digest: Digest) -> str:
        return self.link_path(self.name, digest.algorithm.value, digest.hex)

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        try:
            target = self.driver.get_content(ctx, self._link(digest)).decode("utf-8", "replace").strip()
        except PathNotFoundError:
            raise BlobUnknownError(str(digest)) from None
        try:
            linked = Digest.parse(target)
        except DigestError:
            raise BlobUnknownError(f"{digest}: corrupt link") from None
        descriptor = self.blobs.stat(ctx, linked)
        if linked != digest:
            # a link may map one digest onto content stored under another algorithm
            descriptor = BlobDescriptor(digest=digest, size=descriptor.size, media_type=descriptor.media_type)
        return descriptor

    def set_descriptor(self, ctx: Context, digest: Digest, descriptor: BlobDescriptor) -> None:
        self.driver.put_content(ctx, self._link(digest), str(descriptor.digest).encode())

    def clear(self, ctx: Context, digest: Digest) -> None:
        try:
            self.driver.delete(ctx, self._link(digest).rsplit("/", 1)[0])
        except PathNotFoundError:
            raise BlobUnknownError(str(digest)) from None


class LinkedBlobStore:
    """A repository's view of the blob store over one set of links."""

    def __init__(
        self,
        blobs: BlobStore,
        name: str,
        link_path: LinkPath,
        repository_cache: Optional[BlobDescriptorService] = None,
    ):
        self.blobs = blobs
        self.name = name
        statter: BlobDescriptorService = LinkedBlobStatter(blobs.driver, name, link_path, blobs.statter)
        if repository_cache is not None:
            statter = CachedBlobStatter(repository_cache, statter)
        self.statter = statter

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        return self.statter.stat(ctx, digest)

    def exists(self, ctx: Context, digest: Digest) -> bool:
        try:
            self.stat(ctx, digest)
            return True
        except BlobUnknownError:
            return False

    def link(self, ctx: Context, descriptor: BlobDescriptor) -> None:
        self.statter.set_descriptor(ctx, descriptor.digest, descriptor)

    def unlink(self, ctx: Context, digest: Digest) -> None:
        self.statter.clear(ctx, digest)

    def get(self, ctx: Context, digest: Digest) -> bytes:
        self.stat(ctx, digest)
        return self.blobs.get(ctx, digest)

    def open(self, ctx: Context, digest: Digest, offset: int = 0) -> BinaryIO:
        return self.blobs.open(ctx, digest, offset)
