"""The global blob store and the per-repository linked blob store.

Blob bytes live once, under blobs/<alg>/<hex[:2]>/<hex>/data; a repository sees a
blob only through a link file holding its digest (_layers for layers and configs,
_manifests/revisions for manifests). Access checks therefore cost one link read and
one stat, and both are what the descriptor cache saves.
"""
from __future__ import annotations

import time
from typing import BinaryIO, Callable, Optional, Protocol

from ..cache.base import BlobDescriptorService
from ..cache.statter import CachedBlobStatter
from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest, DigestError
from ..storage import PathNotFoundError, StorageDriver, paths
from .errors import BlobUnknownError

LinkPath = Callable[[str, str, str], str]  # (repository name, algorithm, hex) -> path

# Garbage collection's own folder beside blobs/ and repositories/ (registry:2 ignores
# it). `state` reads "sweeping <n>" while the n-th sweep moves blobs aside into
# quarantine/, then "idle <n>"; it is rewritten, never removed, so a writer that
# reads it before and after its work learns whether a sweep overlapped it (see
# registry.maintenance for the protocol).
GC_DIR = f"{paths.ROOT}/_gc"
GC_STATE = f"{GC_DIR}/state"
QUARANTINE = f"{GC_DIR}/quarantine"


def quarantine_path(digest: Digest) -> str:
    return f"{QUARANTINE}/{digest.algorithm.value}/{digest.hex}/data"


def blob_path(digest: Digest) -> str:
    return paths.blob_data(digest.algorithm.value, digest.hex)


def gc_state(ctx: Context, driver: StorageDriver) -> bytes:
    """The garbage collector's state (b"" before the first sweep)."""
    try:
        return driver.get_content(ctx, GC_STATE)
    except PathNotFoundError:
        return b""


def is_sweeping(state: bytes) -> bool:
    return state.startswith(b"sweeping")


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

    def stat_stored(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        """The data's stat in storage now, past every cache; a blob a sweep has moved
        aside is taken back first (the caller holds a reference to it, written
        before this call: registry.maintenance)."""
        statter = BlobStatter(self.driver)
        try:
            return statter.stat(ctx, digest)
        except BlobUnknownError:
            try:
                self.driver.move(ctx, quarantine_path(digest), blob_path(digest))
            except PathNotFoundError:
                # not in quarantine either: gone, or the sweep put it back itself between
                # our stat and this move (it re-lists references, ours among them); the
                # stat below tells which, raising BlobUnknownError when it is gone
                pass
            return statter.stat(ctx, digest)

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


class BlobStat(Protocol):
    """What a linked statter asks of the store behind the links: only a stat."""

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor: ...


class LinkedBlobStatter:
    """Stat through a repository's link files: present only if linked here."""

    def __init__(self, driver: StorageDriver, name: str, link_path: LinkPath, blobs: BlobStat):
        self.driver = driver
        self.name = name
        self.link_path = link_path
        self.blobs = blobs

    def _link(self, digest: Digest) -> str:
        return self.link_path(self.name, digest.algorithm.value, digest.hex)

    def linked(self, ctx: Context, digest: Digest) -> Digest:
        """The digest the link names, read from storage: BlobUnknownError when unlinked."""
        try:
            target = self.driver.get_content(ctx, self._link(digest)).decode("utf-8", "replace").strip()
        except PathNotFoundError:
            raise BlobUnknownError(str(digest)) from None
        try:
            return Digest.parse(target)
        except DigestError:
            raise BlobUnknownError(f"{digest}: corrupt link") from None

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        linked = self.linked(ctx, digest)
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


class _StoredStatter:
    """BlobStore.stat_stored as a statter."""

    def __init__(self, blobs: BlobStore):
        self._blobs = blobs

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        return self._blobs.stat_stored(ctx, digest)


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
        self._links = LinkedBlobStatter(blobs.driver, name, link_path, blobs.statter)
        # storage only, no cache at any level: what a writer checks under a sweep
        self._storage = LinkedBlobStatter(blobs.driver, name, link_path, _StoredStatter(blobs))
        statter: BlobDescriptorService = self._links
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

    def stat_stored(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        """Linked here and its data present, read from storage now, past every cache."""
        return self._storage.stat(ctx, digest)

    def linked(self, ctx: Context, digest: Digest) -> Digest:
        """Linked here (the link read from storage), without a stat of the data."""
        return self._links.linked(ctx, digest)

    def link(self, ctx: Context, descriptor: BlobDescriptor, verify: bool = True) -> None:
        """Link the blob here; BlobUnknownError if a sweep took its data meanwhile.

        Written first, checked after (registry.maintenance): if a garbage collection
        is sweeping, the data is stat'ed in storage once the link exists (taken back
        if the sweep moved it aside), and a link to data gone is removed again. A
        manifest PUT checks its references itself; this keeps a commit or a mount
        that raced a sweep from answering 201 for a blob the sweep then deletes.
        """
        self.statter.set_descriptor(ctx, descriptor.digest, descriptor)
        if not verify or not is_sweeping(gc_state(ctx, self.blobs.driver)):
            return
        try:
            self._storage.stat(ctx, descriptor.digest)
        except BlobUnknownError:
            try:
                self.unlink(ctx, descriptor.digest)
            except BlobUnknownError:
                pass
            raise

    def unlink(self, ctx: Context, digest: Digest) -> None:
        self.statter.clear(ctx, digest)

    def get(self, ctx: Context, digest: Digest) -> bytes:
        self.stat(ctx, digest)
        return self.blobs.get(ctx, digest)

    def open(self, ctx: Context, digest: Digest, offset: int = 0) -> BinaryIO:
        return self.blobs.open(ctx, digest, offset)
