"""Tags: _manifests/tags/<tag>/current/link names the manifest, index/ keeps history.

Immutable tags (storage.tag.immutable): once pushed, such a tag is neither moved
(a manifest PUT by the tag naming another digest) nor deleted (DELETE of the tag,
or of a manifest it names); pushing the same digest again is accepted. Every
refusal is DENIED (403), the spec's code for an operation the registry does not
allow on that resource. The check reads the tag's link before the PUT writes
anything; storage offers no compare-and-swap, so two *first* pushes of one tag
racing each other both succeed, the later write winning (any push after either
of them has landed is refused).
"""
from __future__ import annotations

from typing import Sequence

from ..config import ImmutableTagRule
from ..context import Context
from ..digest import Digest, DigestError
from ..storage import PathNotFoundError, StorageDriver, paths
from .errors import DeniedError, ManifestUnknownError, NameUnknownError


def immutable_rule(rules: Sequence[ImmutableTagRule], name: str, tag: str):
    """The first rule making name:tag immutable, else None."""
    for rule in rules:
        if rule.matches(name, tag):
            return rule
    return None


def _denied(name: str, tag: str, what: str, rule: ImmutableTagRule, current: Digest | None) -> DeniedError:
    detail = {"name": name, "tag": tag, "rule": {"repository": rule.repository, "tags": rule.tags}}
    if current is not None:
        detail["digest"] = str(current)
    return DeniedError(detail, message=f"tag {tag} of {name} is immutable (storage.tag.immutable): {what}")


class TagStore:
    def __init__(self, driver: StorageDriver, name: str, immutable: Sequence[ImmutableTagRule] = ()):
        self.driver = driver
        self.name = name
        self.immutable = tuple(immutable)

    def check_move(self, ctx: Context, tag: str, digest: Digest) -> None:
        """Before a PUT tags `digest`: DENIED if the tag is immutable and names another."""
        rule = immutable_rule(self.immutable, self.name, tag)
        if rule is None:
            return
        try:
            current = self.get(ctx, tag)
        except ManifestUnknownError:
            return  # its first push (or a corrupt link, which a push repairs)
        if current != digest:
            raise _denied(self.name, tag, f"it names {current}, not {digest}", rule, current)

    def check_untag(self, ctx: Context, tag: str) -> None:
        """Before a DELETE of the tag: MANIFEST_UNKNOWN if absent, DENIED if immutable."""
        current = self.get(ctx, tag)
        rule = immutable_rule(self.immutable, self.name, tag)
        if rule is not None:
            raise _denied(self.name, tag, "it cannot be deleted", rule, current)

    def check_delete_manifest(self, ctx: Context, digest: Digest) -> None:
        """Before a DELETE of a manifest: DENIED if an immutable tag names it."""
        if not self.immutable:
            return
        for tag in self.lookup(ctx, digest):
            rule = immutable_rule(self.immutable, self.name, tag)
            if rule is not None:
                raise _denied(self.name, tag, f"it names {digest}, which therefore cannot be deleted", rule, digest)

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
