"""Retention policies (storage.maintenance.retention.policies), applied by `stratus gc`:
per repository glob, keep the newest N tags by push time, and delete untagged
manifests older than an age. Shown by a dry run first, then applied, and what is
kept stays pullable through the HTTP API."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.config import ConfigError, RetentionPolicy, config_from_mapping
from chalicelib.context import Context
from chalicelib.digest import Digest
from chalicelib.registry import Registry
from chalicelib.registry.blobs import GC_STATE
from chalicelib.registry.maintenance import collect_garbage
from chalicelib.registry.manifest_types import OCI_MANIFEST
from chalicelib.storage import paths
from chalicelib.storage.filesystem import from_parameters as filesystem

from .oci_client import Registry as Client
from .oci_client import canonical
from .servers import stratus_server

CTX = Context()
ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600


def push_blob(registry: Registry, name: str, data: bytes) -> Digest:
    digest = Digest.from_bytes(data)
    registry.repository(name).uploads.create(CTX).commit(CTX, digest, io.BytesIO(data), len(data))
    return digest


def push(registry: Registry, name: str, tag, unique: bytes) -> tuple[Digest, Digest]:
    """An image with a unique layer and a shared one; returns (manifest, unique layer)."""
    config = canonical({"os": "linux", "image": unique.decode()})
    shared = b"shared base"
    for blob in (config, shared, unique):
        push_blob(registry, name, blob)
    body = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.from_bytes(config)), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(Digest.from_bytes(b)), "size": len(b)}
                   for b in (shared, unique)],
    })
    digest, _ = registry.repository(name).manifests.put(CTX, body, OCI_MANIFEST, tag=tag)
    return digest, Digest.from_bytes(unique)


def set_age(root: Path, path: str, hours: float) -> None:
    when = time.time() - hours * HOUR
    os.utime(root / path.lstrip("/"), (when, when))


def age_everything(root: Path, hours: float) -> None:
    when = time.time() - hours * HOUR
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (when, when))


def build(root: Path):
    """team/app: five tags pushed a day apart, an old and a recent untagged manifest;
    other/app (no policy): the same shapes."""
    driver = filesystem({"rootdirectory": str(root)})
    registry = Registry(driver, InMemoryBlobDescriptorCache(1000))
    images = {}
    for name in ("team/app", "other/app"):
        for i in range(1, 6):
            images[(name, f"t{i}")] = push(registry, name, f"t{i}", f"{name} t{i}".encode())
        images[(name, "old-untagged")] = push(registry, name, None, f"{name} old untagged".encode())
        images[(name, "recent-untagged")] = push(registry, name, None, f"{name} recent untagged".encode())
    age_everything(root, 24 * 10)
    for (name, label), (digest, _) in images.items():
        if label.startswith("t"):  # pushed (their tags moved) 5, 4, 3, 2, 1 days ago
            set_age(root, paths.tag_current_link(name, label), 24 * (6 - int(label[1])))
        if label == "recent-untagged":
            set_age(root, paths.manifest_revision_link(name, "sha256", digest.hex), 10)
    return driver, registry, images


POLICY = RetentionPolicy(repositories="team/*", keeptags=2, untaggedage=48 * HOUR)


def test_retention_keeps_the_newest_tags_and_expires_old_untagged_manifests(tmp_path):
    root = tmp_path / "storage"
    driver, registry, images = build(root)
    plan = collect_garbage(CTX, driver, dry_run=True, retention=[POLICY], grace=HOUR)
    report = collect_garbage(CTX, driver, retention=[POLICY], grace=HOUR)

    expired = {f"team/app:t{i}" for i in (1, 2, 3)}
    assert set(plan.tags_deleted) == set(report.tags_deleted) == expired
    gone = {("team/app", label) for label in ("t1", "t2", "t3", "old-untagged")}
    assert set(report.manifests_deleted) == set(plan.manifests_deleted) == {
        f"{name}@{images[(name, label)][0]}" for name, label in gone}
    assert set(report.deleted) == set(plan.deleted)
    for key, (digest, unique) in images.items():
        repo = registry.repository(key[0])
        if key in gone:
            assert not repo.manifests.exists(CTX, digest)
            assert unique in report.deleted
        else:  # other/app has no policy: all of it stays, untagged or not
            assert repo.manifests.exists(CTX, digest)
            assert repo.blobs.get(CTX, unique)
    assert registry.repository("team/app").tags.all(CTX) == ["t4", "t5"]
    assert registry.repository("other/app").tags.all(CTX) == [f"t{i}" for i in range(1, 6)]
    assert Digest.from_bytes(b"shared base") not in report.deleted


def test_an_expired_tag_pushed_again_before_the_sweep_stays(tmp_path):
    root = tmp_path / "storage"
    driver, registry, images = build(root)

    class RepushAtSweep:  # t1 is pushed again between the plan and the sweep
        def __getattr__(self, name):
            return getattr(driver, name)

        def put_content(self, ctx, path, content):
            driver.put_content(ctx, path, content)
            if path == GC_STATE and content.startswith(b"sweeping"):
                registry.repository("team/app").tags.tag(ctx, "t1", images[("team/app", "t1")][0])

    report = collect_garbage(CTX, RepushAtSweep(), retention=[POLICY], grace=HOUR)
    assert set(report.tags_deleted) == {"team/app:t2", "team/app:t3"}
    digest, unique = images[("team/app", "t1")]
    repo = Registry(driver, InMemoryBlobDescriptorCache(10)).repository("team/app")
    assert repo.tags.get(CTX, "t1") == digest and repo.manifests.exists(CTX, digest)
    assert repo.blobs.get(CTX, unique) and unique not in report.deleted


def test_retention_through_stratus_gc_and_the_http_api(tmp_path):
    root = tmp_path / "storage"
    _, _, images = build(root)
    config = tmp_path / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        "  maintenance:\n    retention:\n      policies:\n"
        "        - repositories: team/*\n          keeptags: 2\n          untaggedage: 48h\n"
    )

    def gc(*flags: str) -> subprocess.CompletedProcess:
        run = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "-c", str(config), *flags],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert run.returncode == 0, run.stderr
        return run

    dry = gc("--dry-run")
    assert sorted(line for line in dry.stdout.splitlines() if line.startswith("tag ")) == [
        f"tag would delete: team/app:t{i}" for i in (1, 2, 3)]
    assert gc("--dry-run", "--no-retention").stdout == ""
    real = gc()
    assert real.stdout.replace("deleted", "would delete") == dry.stdout
    with stratus_server(root) as url:
        client = Client(url)
        assert client.tags("team/app").json()["tags"] == ["t4", "t5"]
        for tag in ("t4", "t5"):
            manifest = client.manifest("team/app", tag)
            assert manifest.status_code == 200
            for layer in manifest.json()["layers"]:
                assert client.blob("team/app", layer["digest"]).status_code == 200
        for tag in ("t1", "t2", "t3"):
            assert client.manifest("team/app", tag).status_code == 404
            assert client.manifest("team/app", str(images[("team/app", tag)][0])).status_code == 404
        assert client.manifest("team/app", str(images[("team/app", "recent-untagged")][0])).status_code == 200
        assert client.tags("other/app").json()["tags"] == [f"t{i}" for i in range(1, 6)]


def test_retention_policies_are_checked_at_start_up():
    def policies(value):
        return config_from_mapping({"version": 0.1, "storage": {"inmemory": {}, "maintenance": {
            "retention": {"policies": value}}}}).storage.retention

    assert policies([{"repositories": "a/*", "keeptags": 3}, {"untaggedage": "24h"}]) == (
        RetentionPolicy("a/*", 3, None), RetentionPolicy("*", None, 24 * HOUR))
    for bad, where in [
        ("all", "storage.maintenance.retention.policies"),
        ([{"repositories": "a/*"}], "policies[0]: expected keeptags or untaggedage"),
        ([{"keeptags": -1}], "policies[0].keeptags"),
        ([{"untaggedage": "0s"}], "policies[0].untaggedage"),
        ([{"keeptags": 1}, "x"], "policies[1]"),
    ]:
        with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
            policies(bad)
