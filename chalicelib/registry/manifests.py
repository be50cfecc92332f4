"""A repository's manifests: stored as blobs, linked as revisions, verified on put."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import CANONICAL, Algorithm, Digest
from ..storage import PathNotFoundError, paths
from .blobs import BlobStore, LinkedBlobStore, gc_state, is_sweeping
from .errors import (
    BlobUnknownError,
    DigestInvalidError,
    ManifestBlobUnknownError,
    ManifestInvalidError,
    ManifestUnknownError,
)
from .manifest_cache import ManifestBodyCache
from .manifest_types import Manifest, media_type_of, parse_manifest
from .referrers import ReferrersIndex
from .tags import TagStore


@dataclass(frozen=True)
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes


class ManifestStore:
    def __init__(
        self,
        blobs: BlobStore,
        revisions: LinkedBlobStore,
        layers: LinkedBlobStore,
        tags: TagStore,
        referrers: ReferrersIndex,
        bodies: ManifestBodyCache,
    ):
        self.blobs = blobs
        self.revisions = revisions
        self.layers = layers
        self.tags = tags
        self.referrers = referrers
        self.bodies = bodies

    def get(self, ctx: Context, digest: Digest) -> StoredManifest:
        # linked in this repository, read from storage now: never cached. The link is
        # enough: garbage collection deletes a manifest's data only once no revision
        # links it, and a PUT that links it under a sweep checks the data is there
        # (registry.maintenance). The body, immutable by digest, may come from memory.
        try:
            self.revisions.linked(ctx, digest)
        except BlobUnknownError:
            raise ManifestUnknownError(str(digest)) from None
        cached = self.bodies.get(digest)
        if cached is not None:
            return StoredManifest(digest=digest, media_type=cached[0], body=cached[1])
        try:
            body = self.blobs.get(ctx, digest)
        except BlobUnknownError:
            raise ManifestUnknownError(str(digest)) from None
        stored = StoredManifest(digest=digest, media_type=media_type_of(body), body=body)
        self.bodies.put(digest, stored.media_type, body)
        return stored

    def stat(self, ctx: Context, digest: Digest) -> BlobDescriptor:
        try:
            return self.revisions.stat(ctx, digest)
        except BlobUnknownError:
            raise ManifestUnknownError(str(digest)) from None

    def exists(self, ctx: Context, digest: Digest) -> bool:
        return self.revisions.exists(ctx, digest)

    def put(
        self,
        ctx: Context,
        body: bytes,
        content_type: Optional[str],
        digest: Optional[Digest] = None,
        tag: Optional[str] = None,
    ) -> tuple[Digest, Manifest]:
        """Verify and store a manifest; `digest` (a PUT by digest) must match the body.

        References are verified before anything is written, through the shared
        cache or storage (a per-process cache is never asked: cache.base). If a
        garbage collection swept, or is sweeping, at any time between that check
        and the end of the writes (its state file changed or says so), they are
        verified again in storage: see registry.maintenance for why a check after
        writing is what makes an online sweep safe.
        """
        before = gc_state(ctx, self.blobs.driver)
        manifest = parse_manifest(body, content_type)
        algorithm: Algorithm = digest.algorithm if digest is not None else CANONICAL
        actual = algorithm.from_bytes(body)
        if digest is not None and actual != digest:
            raise DigestInvalidError(f"manifest digest {actual} does not match {digest}")
        try:
            self._verify_references(ctx, manifest)
            deferred = False
        except ManifestBlobUnknownError:
            # a sweep may have moved it aside: decided after writing, by _verify_stored
            if not is_sweeping(gc_state(ctx, self.blobs.driver)):
                raise
            deferred = True
        existed = self._revision_exists(ctx, actual)
        previous = self._tagged(ctx, tag)
        descriptor = BlobDescriptor(digest=actual, size=len(body), media_type=manifest.media_type)
        self.blobs.put(ctx, actual, body, manifest.media_type)
        self.revisions.link(ctx, descriptor, verify=False)
        if manifest.subject is not None:
            self.referrers.add(ctx, manifest.subject.digest, actual, manifest)
        if tag is not None:
            self.tags.tag(ctx, tag, actual)
        after = gc_state(ctx, self.blobs.driver)
        if deferred or after != before or is_sweeping(after):
            self._verify_stored(ctx, manifest, descriptor, existed, tag, previous)
        return actual, manifest

    def _tagged(self, ctx: Context, tag: Optional[str]) -> Optional[Digest]:
        if tag is None:
            return None
        try:
            return self.tags.get(ctx, tag)
        except ManifestUnknownError:
            return None

    def _revision_exists(self, ctx: Context, digest: Digest) -> bool:
        try:
            self.blobs.driver.stat(ctx, self._revision_link(digest))
            return True
        except PathNotFoundError:
            return False

    def _revision_link(self, digest: Digest) -> str:
        return paths.manifest_revision_link(self.revisions.name, digest.algorithm.value, digest.hex)

    def _verify_stored(
        self, ctx: Context, manifest: Manifest, descriptor: BlobDescriptor, existed: bool, tag: Optional[str],
        previous: Optional[Digest],
    ) -> None:
        """Beside a sweep, after every write: the revision link, the body and every
        reference, in storage. What the sweep moved aside is taken back (this PUT's
        reference was written first, so the sweep either sees it or has not yet
        decided), a body gone is written again; a reference gone is a refusal,
        undoing what this PUT linked and putting its tag back where it was."""
        digest = descriptor.digest
        if not self._revision_exists(ctx, digest):  # the sweep removed it as untagged
            self.revisions.link(ctx, descriptor, verify=False)
        try:
            self.blobs.stat_stored(ctx, digest)
        except BlobUnknownError:
            self.blobs.driver.put_content(ctx, paths.blob_data(digest.algorithm.value, digest.hex), manifest.body)
        missing, wrong_size = [], []
        for reference in manifest.blobs:
            try:
                found = self.layers.stat_stored(ctx, reference.digest)
            except BlobUnknownError:
                missing.append(str(reference.digest))
                continue
            if found.size != reference.size:  # checked here only if the first check was deferred
                wrong_size.append(f"{reference.digest} has size {found.size}, manifest says {reference.size}")
        for child in manifest.manifests:
            try:
                self.revisions.stat_stored(ctx, child.digest)
            except BlobUnknownError:
                missing.append(str(child.digest))
        if not missing and not wrong_size:
            return
        if tag is not None and previous != digest and self._tagged(ctx, tag) == digest:
            if previous is None:
                self.tags.untag(ctx, tag)
            else:
                self.tags.tag(ctx, tag, previous)
        if not existed:
            try:
                self.revisions.unlink(ctx, digest)
            except BlobUnknownError:
                pass
        if wrong_size:
            raise ManifestInvalidError("; ".join(wrong_size))
        raise ManifestBlobUnknownError(missing[0] if len(missing) == 1 else missing)

    def delete(self, ctx: Context, digest: Digest) -> None:
        """Remove the revision, every tag pointing at it, and its referrers entry."""
        stored = self.get(ctx, digest)
        for tag in self.tags.lookup(ctx, digest):
            self.tags.untag(ctx, tag)
        try:
            manifest = parse_manifest(stored.body, stored.media_type)
        except ManifestInvalidError:
            manifest = None
        if manifest is not None and manifest.subject is not None:
            self.referrers.remove(ctx, manifest.subject.digest, digest)
        try:
            self.revisions.unlink(ctx, digest)
        except BlobUnknownError:
            raise ManifestUnknownError(str(digest)) from None

    def _verify_references(self, ctx: Context, manifest: Manifest) -> None:
        missing: list[str] = []
        for descriptor in manifest.blobs:
            try:
                found = self.layers.stat(ctx, descriptor.digest)
            except BlobUnknownError:
                missing.append(str(descriptor.digest))
                continue
            if found.size != descriptor.size:
                raise ManifestInvalidError(
                    f"{descriptor.digest} has size {found.size}, manifest says {descriptor.size}"
                )
        for child in manifest.manifests:
            if not self.revisions.exists(ctx, child.digest):
                missing.append(str(child.digest))
        if missing:
            raise ManifestBlobUnknownError(missing[0] if len(missing) == 1 else missing)
