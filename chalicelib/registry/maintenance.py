"""Upload purging and garbage collection over the storage layout.

Both walk repositories by listing, so they work on every driver and on trees
written by registry:2.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from ..cache.base import BlobDescriptorService
from ..context import Context
from ..digest import Digest, DigestError
from ..storage import PathNotFoundError, StorageDriver, StorageError, paths
from . import catalog
from .blobs import blob_path
from .manifest_types import parse_manifest, media_type_of
from .errors import ManifestInvalidError
from .tags import TagStore

log = logging.getLogger("stratus.maintenance")


def _parse_started_at(text: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def purge_uploads(
    ctx: Context, driver: StorageDriver, older_than: timedelta, dry_run: bool = False,
    now: Optional[datetime] = None,
) -> list[str]:
    """Remove uploads started before now - older_than; returns the upload dirs removed.

    An upload whose startedat is missing or unreadable is purged too: registry:2
    does the same, since nothing can ever complete it safely.
    """
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    removed = []
    # repositories with uploads may have no manifests yet
    for name in catalog.repositories(ctx, driver, marker="_uploads"):
        try:
            uploads = driver.list(ctx, paths.uploads(name))
        except StorageError:
            continue
        for upload_dir in uploads:
            upload_id = upload_dir.rsplit("/", 1)[1]
            try:
                started = _parse_started_at(driver.get_content(ctx, paths.upload_started_at(name, upload_id)).decode())
            except (StorageError, UnicodeDecodeError):
                started = None
            if started is not None and started.tzinfo is None:
                started = started.replace(tzinfo=timezone.utc)
            if started is not None and started >= cutoff:
                continue
            removed.append(upload_dir)
            if not dry_run:
                try:
                    driver.delete(ctx, upload_dir)
                except PathNotFoundError:
                    pass
    if removed:
        log.info("purged %d upload(s)%s", len(removed), " (dry run)" if dry_run else "")
    return removed


@dataclass
class GCReport:
    marked: set = field(default_factory=set)
    deleted: list = field(default_factory=list)
    manifests_deleted: list = field(default_factory=list)


def _list_digests(ctx: Context, driver: StorageDriver, directory: str) -> list[Digest]:
    """Digests under <directory>/<alg>/<hex>/link."""
    found = []
    try:
        algorithms = driver.list(ctx, directory)
    except StorageError:
        return found
    for alg_dir in algorithms:
        try:
            entries = driver.list(ctx, alg_dir)
        except StorageError:
            continue
        for entry in entries:
            try:
                found.append(Digest.parse(f"{alg_dir.rsplit('/', 1)[1]}:{entry.rsplit('/', 1)[1]}"))
            except DigestError:
                continue
    return found


def collect_garbage(
    ctx: Context, driver: StorageDriver, dry_run: bool = False, remove_untagged: bool = False,
    cache: Optional[BlobDescriptorService] = None,
) -> GCReport:
    """Mark every blob a manifest of any repository references, sweep the rest.

    Run it with the registry read-only (storage.maintenance.readonly): a blob
    uploaded but not yet referenced by a manifest is indistinguishable from garbage.
    Each swept blob is cleared from the descriptor cache the servers share, so
    none of them goes on reporting it present.
    """
    report = GCReport()
    for name in catalog.repositories(ctx, driver):
        tagged: Optional[set] = None
        children: Optional[set] = None  # digests the tagged indexes name, read once when first needed
        if remove_untagged:
            tags = TagStore(driver, name)
            tagged = set()
            for tag in tags.all(ctx):
                try:
                    tagged.add(tags.get(ctx, tag))
                except Exception:
                    continue
        revisions = _list_digests(ctx, driver, paths.manifest_revisions(name))
        for digest in revisions:
            try:
                body = driver.get_content(ctx, blob_path(digest))
            except StorageError:
                continue
            try:
                manifest = parse_manifest(body, media_type_of(body))
            except ManifestInvalidError:
                manifest = None
            keep = (
                tagged is None
                or digest in tagged
                or (manifest is not None and manifest.subject is not None and manifest.subject.digest in tagged)
            )
            if not keep:
                if children is None:
                    children = _index_children(ctx, driver, tagged)
                keep = str(digest) in children
            if not keep:
                report.manifests_deleted.append(f"{name}@{digest}")
                if not dry_run:
                    driver.delete(ctx, paths.manifest_revision_link(name, digest.algorithm.value, digest.hex).rsplit("/", 1)[0])
                continue
            report.marked.add(digest)
            if manifest is not None:
                for descriptor in manifest.blobs + manifest.manifests:
                    report.marked.add(descriptor.digest)
    for info in list(_walk_blobs(ctx, driver)):
        if info not in report.marked:
            report.deleted.append(info)
            if not dry_run:
                try:
                    driver.delete(ctx, blob_path(info).rsplit("/", 1)[0])
                except PathNotFoundError:
                    pass
                if cache is not None:
                    cache.clear(ctx, info)
    return report


def _index_children(ctx: Context, driver: StorageDriver, tagged: set) -> set:
    """The digests the tagged indexes of a repository name: an untagged manifest they name stays."""
    children = set()
    for parent in tagged:
        try:
            body = driver.get_content(ctx, blob_path(parent))
            doc = json.loads(body)
        except (StorageError, ValueError):
            continue
        for child in doc.get("manifests", []) if isinstance(doc, dict) else []:
            if isinstance(child, dict) and isinstance(child.get("digest"), str):
                children.add(child["digest"])
    return children


def _walk_blobs(ctx: Context, driver: StorageDriver):
    try:
        entries = list(driver.walk(ctx, paths.BLOBS))
    except StorageError:
        return
    for info in entries:
        if info.is_dir or not info.path.endswith("/data"):
            continue
        parts = info.path.split("/")
        try:
            yield Digest.parse(f"{parts[-4]}:{parts[-2]}")
        except (DigestError, IndexError):
            continue
