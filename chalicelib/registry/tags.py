"""Tags: _manifests/tags/<tag>/current/link names the manifest, index/ keeps history."""
from __future__ import annotations

from ..context import Context
from ..digest import Digest, DigestError
from ..storage import PathNotFoundError, StorageDriver, paths
from .errors import ManifestUnknownError, NameUnknownError


class TagStore:
    def __init__(self, driver: StorageDriver, name: str):
        self.driver = driver
        self.name = name

    def get(self, ctx: Context, tag: str) -> Digest:
        try:
            link = self.driver.get_content(ctx, paths.tag_current_link(self.name, tag))
        except PathNotFoundError:
            raise ManifestUnknownError(f"tag {tag!r} not found") from None
        try:
            return Digest.parse(link.decode("utf-8", "replace").strip())
        except DigestError:
            raise ManifestUnknownError(f"tag {tag!r} has a corrupt link") from None

    def tag(self, ctx: Context, tag: str, digest: Digest) -> None:
        alg, hex_ = digest.algorithm.value, digest.hex
        # index first: registry:2 reads index/ to find the tags of a manifest
        self.driver.put_content(ctx, paths.tag_index_link(self.name, tag, alg, hex_), str(digest).encode())
        self.driver.put_content(ctx, paths.tag_current_link(self.name, tag), str(digest).encode())

    def untag(self, ctx: Context, tag: str) -> None:
        try:
            self.driver.delete(ctx, paths.tag_dir(self.name, tag))
        except PathNotFoundError:
            raise ManifestUnknownError(f"tag {tag!r} not found") from None

    def all(self, ctx: Context) -> list[str]:
        """Every tag, sorted; NAME_UNKNOWN when the repository has no manifests."""
        try:
            entries = self.driver.list(ctx, paths.tags(self.name))
        except PathNotFoundError:
            if not self._has_manifests(ctx):
                raise NameUnknownError(self.name) from None
            return []
        cut = len(paths.tags(self.name)) + 1  # entries are "<tags dir>/<tag>"
        return sorted([entry[cut:] for entry in entries])

    def lookup(self, ctx: Context, digest: Digest) -> list[str]:
        """Tags whose current link names digest."""
        try:
            tags = self.all(ctx)
        except NameUnknownError:
            return []
        found = []
        for tag in tags:
            try:
                if self.get(ctx, tag) == digest:
                    found.append(tag)
            except ManifestUnknownError:
                continue
        return found

    def _has_manifests(self, ctx: Context) -> bool:
        try:
            self.driver.stat(ctx, paths.manifests(self.name))
            return True
        except PathNotFoundError:
            return False
