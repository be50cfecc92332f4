"""A repository's manifests: stored as blobs, linked as revisions, verified on put."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import CANONICAL, Algorithm, Digest
from .blobs import BlobStore, LinkedBlobStore
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
        self.stat(ctx, digest)  # linked in this repository, now: never cached
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
        """Verify and store a manifest; `digest` (a PUT by digest) must match the body."""
        manifest = parse_manifest(body, content_type)
        algorithm: Algorithm = digest.algorithm if digest is not None else CANONICAL
        actual = algorithm.from_bytes(body)
        if digest is not None and actual != digest:
            raise DigestInvalidError(f"manifest digest {actual} does not match {digest}")
        self._verify_references(ctx, manifest)
        self.blobs.put(ctx, actual, body, manifest.media_type)
        self.revisions.link(ctx, BlobDescriptor(digest=actual, size=len(body), media_type=manifest.media_type))
        if manifest.subject is not None:
            self.referrers.add(ctx, manifest.subject.digest, actual, manifest)
        if tag is not None:
            self.tags.tag(ctx, tag, actual)
        return actual, manifest

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
