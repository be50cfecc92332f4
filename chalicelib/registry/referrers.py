"""The referrers index: manifests whose `subject` names a digest.

Kept under repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex>/descriptor as
the JSON descriptor the referrers API returns, so listing costs one read per
referrer and no manifest parsing; registry:2 ignores the unknown `_referrers` folder.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

from ..context import Context
from ..digest import Digest
from ..storage import PathNotFoundError, StorageDriver, paths

if TYPE_CHECKING:
    from .manifest_types import Manifest


class ReferrersIndex:
    def __init__(self, driver: StorageDriver, name: str):
        self.driver = driver
        self.name = name

    def add(self, ctx: Context, subject: Digest, referrer: Digest, manifest: "Manifest") -> None:
        descriptor = {"mediaType": manifest.media_type, "digest": str(referrer), "size": len(manifest.body)}
        if manifest.artifact_type:
            descriptor["artifactType"] = manifest.artifact_type
        if manifest.annotations:
            descriptor["annotations"] = manifest.annotations
        path = paths.referrer_entry(
            self.name, subject.algorithm.value, subject.hex, referrer.algorithm.value, referrer.hex
        )
        self.driver.put_content(ctx, path, json.dumps(descriptor, separators=(",", ":")).encode())

    def remove(self, ctx: Context, subject: Digest, referrer: Digest) -> None:
        path = paths.referrer_entry(
            self.name, subject.algorithm.value, subject.hex, referrer.algorithm.value, referrer.hex
        )
        try:
            self.driver.delete(ctx, path.rsplit("/", 1)[0])
        except PathNotFoundError:
            pass

    def list(self, ctx: Context, subject: Digest, artifact_type: Optional[str] = None) -> list[dict]:
        root = paths.referrers(self.name, subject.algorithm.value, subject.hex)
        descriptors = []
        try:
            algorithms = self.driver.list(ctx, root)
        except PathNotFoundError:
            return []
        for alg_dir in algorithms:
            try:
                entries = self.driver.list(ctx, alg_dir)
            except PathNotFoundError:
                continue
            for entry in entries:
                try:
                    descriptor = json.loads(self.driver.get_content(ctx, f"{entry}/descriptor"))
                except (PathNotFoundError, ValueError):
                    continue
                if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                    descriptors.append(descriptor)
        descriptors.sort(key=lambda d: d.get("digest", ""))
        return descriptors
