"""Garbage collection that cannot under-mark: a failure while marking stops the run
before anything is deleted, and references are read from any manifest's JSON,
including the schema1 and unknown-media-type manifests a registry:2 tree may hold."""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.context import Context
from chalicelib.digest import Digest
from chalicelib.registry import Registry
from chalicelib.registry.blobs import GC_STATE, blob_path, gc_state, is_sweeping, quarantine_path
from chalicelib.registry.errors import ManifestBlobUnknownError
from chalicelib.registry.maintenance import GCError, collect_garbage, references
from chalicelib.registry.manifest_types import OCI_INDEX, OCI_MANIFEST
from chalicelib.storage import PathNotFoundError, StorageError, paths
from chalicelib.storage.filesystem import from_parameters as filesystem
from chalicelib.storage.inmemory import from_parameters as inmemory

from .clients_servers import needs_reference, reference_registry
from .moto_server import moto_s3  # noqa: F401  (a fixture)
from .oci_client import Registry as Client
from .oci_client import canonical, random_bytes, sha256

CTX = Context()
ROOT = Path(__file__).resolve().parent.parent


# -- a driver that fails now and then --------------------------------------------------


class TransientError(StorageError):
    pass


class FlakyDriver:
    """Delegates to a real driver; reads and listings raise a transient error with
    probability `p`, a walk possibly halfway through. Seeded, so a failure replays."""

    READS = ("get_content", "stat", "list", "reader")

    def __init__(self, inner, seed: int, p: float):
        self._inner = inner
        self._rng = random.Random(seed)
        self._p = p
        self.injected = 0

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name in self.READS:
            def flaky(ctx, path, *args, **kwargs):
                self._maybe_fail(path)
                return attr(ctx, path, *args, **kwargs)
            return flaky
        if name == "walk":
            def walk(ctx, path):
                self._maybe_fail(path)
                for info in attr(ctx, path):
                    self._maybe_fail(info.path)
                    yield info
            return walk
        return attr

    def _maybe_fail(self, path: str) -> None:
        if self._rng.random() < self._p:
            self.injected += 1
            raise TransientError("flaky", path, "injected transient error")


# -- a registry with every kind of reference -------------------------------------------


def push_blob(registry: Registry, name: str, data: bytes) -> Digest:
    digest = Digest.from_bytes(data)
    registry.repository(name).uploads.create(CTX).commit(CTX, digest, io.BytesIO(data), len(data))
    return digest


def push_image(registry: Registry, name: str, tag, layers: list[bytes], **extra) -> tuple[Digest, set]:
    config = canonical({"architecture": "amd64", "os": "linux", "n": random.random()})
    blobs = {push_blob(registry, name, config)} | {push_blob(registry, name, layer) for layer in layers}
    doc = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.from_bytes(config)), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(Digest.from_bytes(layer)), "size": len(layer)} for layer in layers],
        **extra,
    }
    body = canonical(doc)
    digest, _ = registry.repository(name).manifests.put(CTX, body, OCI_MANIFEST, tag=tag)
    return digest, blobs | {digest}


def populate(registry: Registry) -> dict:
    """Tagged images in three repositories, an index with an untagged child, a referrer,
    untagged images, and orphans. Returns what must survive, by mode."""
    live, untagged_only, garbage, untagged_manifests = set(), set(), set(), set()
    shared = b"shared base layer"
    for i, name in enumerate(["a", "b/c", "d/e/f"]):
        _, blobs = push_image(registry, name, "v1", [shared, f"{name} layer".encode()])
        live |= blobs
        subject, blobs = push_image(registry, name, "v2", [f"{name} v2".encode()])
        live |= blobs
        _, blobs = push_image(registry, name, None, [f"{name} sbom".encode()],
                              subject={"mediaType": OCI_MANIFEST, "digest": str(subject), "size": 1})
        live |= blobs  # a referrer of a tagged manifest stays
        untagged, blobs = push_image(registry, name, None, [f"{name} untagged".encode(), shared])
        untagged_only |= blobs - live
        untagged_manifests.add((name, untagged))
        child, blobs = push_image(registry, name, None, [f"{name} child".encode()])
        live |= blobs
        index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": str(child), "size": 1}]})
        index_digest, _ = registry.repository(name).manifests.put(CTX, index, OCI_INDEX, tag="multi")
        live.add(index_digest)
        garbage.add(push_blob(registry, name, f"{name} orphan {i}".encode()))
    return {"live": live, "untagged": untagged_only, "garbage": garbage, "untagged_manifests": untagged_manifests}


def assert_present(driver, digests) -> None:
    missing = []
    for digest in digests:
        try:
            driver.stat(CTX, paths.blob_data(digest.algorithm.value, digest.hex))
        except PathNotFoundError:
            missing.append(str(digest))
    assert not missing, f"{len(missing)} live blob(s) lost: {missing}"


def revisions(driver) -> set:
    found = set()
    for name in ["a", "b/c", "d/e/f"]:
        for info in driver.walk(CTX, paths.manifest_revisions(name)):
            if info.path.endswith("/link"):
                parts = info.path.split("/")
                found.add((name, Digest.parse(f"{parts[-3]}:{parts[-2]}")))
    return found


@pytest.mark.parametrize("remove_untagged", [False, True], ids=["keep-untagged", "delete-untagged"])
def test_transient_errors_while_marking_stop_gc_and_lose_nothing(remove_untagged):
    runs, failed, succeeded, injected = 200, 0, 0, 0
    for seed in range(runs):
        driver = inmemory({})
        registry = Registry(driver, InMemoryBlobDescriptorCache(1000))
        expected = populate(registry)
        before = revisions(driver)
        flaky = FlakyDriver(driver, seed, p=0.0005 + 0.006 * (seed % 5) / 4)
        try:
            report = collect_garbage(CTX, flaky, remove_untagged=remove_untagged, grace=0)
        except GCError as exc:
            failed += 1
            assert "injected transient error" in str(exc)  # the report names what failed
            # no blob was deleted, not even garbage: what was moved aside is back
            assert_present(driver, expected["live"] | expected["untagged"] | expected["garbage"])
            if exc.phase == "mark" or not remove_untagged:
                assert revisions(driver) == before
            # at most the untagged manifests planned went, if the failure came after the mark
            assert revisions(driver) >= before - expected["untagged_manifests"]
        else:
            succeeded += 1
            assert_present(driver, expected["live"])
            gone = set(report.deleted)
            assert expected["garbage"] <= gone
            assert not gone & expected["live"]
            if remove_untagged:
                assert expected["untagged"] <= gone
            else:
                assert_present(driver, expected["untagged"])
                assert revisions(driver) == before
        injected += flaky.injected
    print(f"{runs} runs: {failed} stopped with a report, {succeeded} completed, {injected} errors injected")
    assert failed > runs // 4 and succeeded > runs // 10  # both paths were exercised


def test_transient_errors_on_a_filesystem_tree_lose_nothing(tmp_path):
    failed = 0
    for seed in range(30):
        driver = filesystem({"rootdirectory": str(tmp_path / str(seed))})
        expected = populate(Registry(driver, InMemoryBlobDescriptorCache(1000)))
        flaky = FlakyDriver(driver, 1000 + seed, p=0.003)
        try:
            collect_garbage(CTX, flaky, remove_untagged=bool(seed % 2), grace=0)
        except GCError:
            failed += 1
        assert_present(driver, expected["live"])
        # no sweep left its state at "sweeping", nor anything moved aside
        assert not is_sweeping(gc_state(CTX, driver))
        assert not [i for i in driver.walk(CTX, "/docker") if "/_gc/quarantine/" in i.path and not i.is_dir]
    assert failed > 0


def test_a_repository_whose_listing_fails_stops_gc():
    driver = inmemory({})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    expected = populate(registry)

    class ListingFails:
        def __getattr__(self, name):
            attr = getattr(driver, name)
            if name == "list":
                def failing(ctx, path):
                    if path == paths.repository("d/e"):
                        raise TransientError("flaky", path, "listing timed out")
                    return attr(ctx, path)
                return failing
            return attr

    with pytest.raises(GCError, match="listing repositories.*listing timed out"):
        collect_garbage(CTX, ListingFails(), grace=0)
    assert_present(driver, expected["live"] | expected["garbage"])


def test_dry_run_prints_the_plan_and_deletes_nothing(tmp_path):
    driver = filesystem({"rootdirectory": str(tmp_path)})
    expected = populate(Registry(driver, InMemoryBlobDescriptorCache(1000)))
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n")
    run = subprocess.run(
        [sys.executable, "-m", "chalicelib", "gc", "-c", str(config), "--dry-run", "-m", "--grace", "0s"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    planned = {Digest.parse(line.rsplit(" ", 1)[1]) for line in run.stdout.splitlines() if line.startswith("blob would delete")}
    assert planned == expected["garbage"] | expected["untagged"]
    assert len([line for line in run.stdout.splitlines() if line.startswith("manifest would delete")]) == 3
    assert_present(driver, expected["live"] | expected["garbage"] | expected["untagged"])
    real = collect_garbage(CTX, driver, remove_untagged=True, grace=0)
    assert set(real.deleted) == planned


def test_grace_period_keeps_young_unreferenced_blobs(tmp_path):
    driver = filesystem({"rootdirectory": str(tmp_path)})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    young = push_blob(registry, "r", b"uploaded, manifest not yet pushed")
    old = push_blob(registry, "r", b"abandoned long ago")
    past = time.time() - 2 * 3600
    for path in (paths.blob_data("sha256", old.hex), paths.layer_link("r", "sha256", old.hex)):
        os.utime(tmp_path / path.lstrip("/"), (past, past))
    report = collect_garbage(CTX, driver, grace=3600)
    assert report.deleted == [old] and report.kept_young == [young]
    assert_present(driver, {young})


def test_a_young_layer_link_protects_an_old_blob(tmp_path):
    """A filesystem rename keeps the time of an upload's last chunk: the link written
    at commit is what shows the blob was just uploaded."""
    driver = filesystem({"rootdirectory": str(tmp_path)})
    digest = push_blob(Registry(driver, InMemoryBlobDescriptorCache(100)), "r", b"chunks sent yesterday")
    past = time.time() - 86400
    os.utime(tmp_path / paths.blob_data("sha256", digest.hex).lstrip("/"), (past, past))
    report = collect_garbage(CTX, driver, grace=3600)
    assert report.deleted == [] and report.kept_young == [digest]


def test_lenient_references_read_every_field():
    d = [str(Digest.from_bytes(bytes([i]))) for i in range(7)]
    body = json.dumps({
        "schemaVersion": 1, "mediaType": "application/x-unknown",
        "config": {"digest": d[0]}, "layers": [{"digest": d[1]}, {"nodigest": 1}, "junk"],
        "blobs": [{"digest": d[2]}], "manifests": [{"digest": d[3]}], "subject": {"digest": d[4]},
        "fsLayers": [{"blobSum": d[5]}, {"blobSum": "not-a-digest"}], "other": {"digest": d[6]},
    }).encode()
    assert references(body) == {Digest.parse(x) for x in d[:6]}
    assert references(b"not json") == set() and references(b"[1]") == set()


# -- a tree written by registry:2 ------------------------------------------------------


def write_link(root: Path, path: str, digest: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(digest)


def write_blob(root: Path, data: bytes) -> str:
    digest = sha256(data)
    hex_ = digest.split(":", 1)[1]
    target = root / paths.blob_data("sha256", hex_).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return digest


def write_manifest(root: Path, name: str, tag: str, body: bytes, layers: list[str]) -> str:
    """A manifest as registry:2 lays it out: blob, revision link, tag links, layer links."""
    digest = write_blob(root, body)
    hex_ = digest.split(":", 1)[1]
    write_link(root, paths.manifest_revision_link(name, "sha256", hex_), digest)
    write_link(root, paths.tag_current_link(name, tag), digest)
    write_link(root, paths.tag_index_link(name, tag, "sha256", hex_), digest)
    for layer in layers:
        write_link(root, paths.layer_link(name, "sha256", layer.split(":", 1)[1]), layer)
    return digest


@needs_reference
def test_gc_keeps_every_layer_of_a_registry2_tree_with_schema1_and_unknown_manifests(tmp_path):
    root = tmp_path / "registry"
    root.mkdir()
    with reference_registry(root) as url:  # the reference writes a schema2 image itself
        client = Client(url)
        image = client.push_image("library/modern", "latest", layers=2)
        orphan = client.push_blob("library/modern", random_bytes(100))
        client.close()
    # a schema1 image (signed, as registry:2 2.x stored it) and a manifest of a media
    # type nobody knows, both refused by the push-time parser
    v1_layers = [write_blob(root, random_bytes(200 + i)) for i in range(3)]
    schema1 = json.dumps({
        "schemaVersion": 1, "name": "library/old", "tag": "1.0", "architecture": "amd64",
        "fsLayers": [{"blobSum": d} for d in v1_layers],
        "history": [{"v1Compatibility": "{}"} for _ in v1_layers],
        "signatures": [{"header": {"alg": "ES256"}, "signature": "x", "protected": "e30"}],
    }, indent=3).encode()
    write_manifest(root, "library/old", "1.0", schema1, v1_layers)
    odd_layers = [write_blob(root, random_bytes(300 + i)) for i in range(2)]
    odd_config = write_blob(root, b'{"kind":"odd"}')
    odd = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.example.unknown.manifest.v9+json",
        "config": {"mediaType": "application/vnd.example.config", "digest": odd_config, "size": 14},
        "layers": [{"mediaType": "application/vnd.example.layer", "digest": d, "size": 300} for d in odd_layers],
    }).encode()
    write_manifest(root, "vendor/odd", "v9", odd, odd_layers + [odd_config])

    driver = filesystem({"rootdirectory": str(root)})
    report = collect_garbage(CTX, driver, grace=0)

    kept = set(v1_layers + odd_layers + [odd_config, image.config_digest, image.digest] + image.layer_digests)
    assert_present(driver, {Digest.parse(d) for d in kept})
    assert report.deleted == [Digest.parse(orphan)]
    with reference_registry(root) as url:  # and the reference still serves all of it
        for name, digest in [("library/old", d) for d in v1_layers] + [("vendor/odd", d) for d in odd_layers]:
            response = requests.get(f"{url}/v2/{name}/blobs/{digest}", timeout=30)
            assert response.status_code == 200 and sha256(response.content) == digest
        assert requests.get(f"{url}/v2/library/modern/blobs/{orphan}", timeout=30).status_code == 404


# -- a manifest PUT beside a sweep ------------------------------------------------------


def sweep_state(driver, what: str, generation: int = 7) -> None:
    driver.put_content(CTX, GC_STATE, f"{what} {generation} 2026-01-01T00:00:00Z".encode())


def test_put_beside_a_sweep_takes_back_what_the_sweep_moved_aside():
    driver = inmemory({})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    layer = push_blob(registry, "r", b"moved aside by a sweep")
    config = push_blob(registry, "r", b"{}")
    sweep_state(driver, "sweeping")
    driver.move(CTX, blob_path(layer), quarantine_path(layer))
    body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config), "size": 2},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(layer), "size": 22}]})
    digest, _ = registry.repository("r").manifests.put(CTX, body, OCI_MANIFEST, tag="v1")
    assert driver.get_content(CTX, blob_path(layer)) == b"moved aside by a sweep"
    with pytest.raises(PathNotFoundError):
        driver.stat(CTX, quarantine_path(layer))
    assert registry.repository("r").tags.get(CTX, "v1") == digest


def test_put_beside_a_sweep_that_deleted_a_reference_is_refused_and_undone():
    driver = inmemory({})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    repo = registry.repository("r")
    good, _ = push_image(registry, "r", "v1", [b"good layer"])
    layer = push_blob(registry, "r", b"swept while the PUT ran")
    config = push_blob(registry, "r", b"{}")
    body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config), "size": 2},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(layer), "size": 23}]})
    sweep_state(driver, "idle")

    class SweepDuringPut:  # the sweep runs between the PUT's first check and its writes
        def __getattr__(self, name):
            attr = getattr(driver, name)
            if name == "stat":
                def stat(ctx, path):
                    if path == paths.manifest_revision_link("r", "sha256", Digest.from_bytes(body).hex):
                        sweep_state(driver, "sweeping", 8)  # the whole sweep, start to end
                        driver.delete(ctx, blob_path(layer).rsplit("/", 1)[0])
                        sweep_state(driver, "idle", 8)
                    return attr(ctx, path)
                return stat
            return attr

    other = Registry(SweepDuringPut(), InMemoryBlobDescriptorCache(100)).repository("r")
    with pytest.raises(ManifestBlobUnknownError):
        other.manifests.put(CTX, body, OCI_MANIFEST, tag="v1")
    assert repo.tags.get(CTX, "v1") == good  # the tag is back where it was
    assert not repo.manifests.exists(CTX, Digest.from_bytes(body))  # and the revision unlinked


def test_grace_period_is_configured_and_checked():
    from chalicelib.config import ConfigError, config_from_mapping

    def grace(value):
        return config_from_mapping({"version": 0.1, "storage": {"inmemory": {}, "maintenance": {"gc": {"graceperiod": value}}}}).storage.gc_graceperiod

    assert config_from_mapping({"version": 0.1, "storage": {"inmemory": {}}}).storage.gc_graceperiod == 3600
    assert grace("10m") == 600 and grace("0s") == 0
    with pytest.raises(ConfigError, match="storage.maintenance.gc.graceperiod"):
        grace("soon")
    with pytest.raises(ConfigError, match="storage.maintenance.gc.graceperiod"):
        grace("-1h")


def test_an_interrupted_sweep_blocks_the_next_gc_until_recovered(tmp_path):
    driver = filesystem({"rootdirectory": str(tmp_path)})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    _, live = push_image(registry, "r", "v1", [b"live layer"])
    layer = Digest.from_bytes(b"live layer")
    sweep_state(driver, "sweeping", 3)  # as a gc killed with this blob moved aside leaves it
    driver.move(CTX, blob_path(layer), quarantine_path(layer))
    with pytest.raises(GCError, match="--recover"):
        collect_garbage(CTX, driver, grace=0)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n")
    run = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "-c", str(config), "--recover"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0 and f"blob put back: {layer}" in run.stdout, run.stderr
    assert gc_state(CTX, driver).startswith(b"idle 4")
    report = collect_garbage(CTX, driver, grace=0)
    assert report.deleted == [] and live <= report.marked
    assert_present(driver, live)


def test_gc_that_fails_to_mark_exits_nonzero_naming_it(tmp_path):
    driver = filesystem({"rootdirectory": str(tmp_path)})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    digest, blobs = push_image(registry, "r", "v1", [b"layer"])
    os.remove(tmp_path / blob_path(digest).lstrip("/"))  # a revision whose manifest cannot be read
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n")
    run = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "-c", str(config), "--grace", "0s"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 1
    assert f"failed to mark: manifest r@{digest} is linked but its data is missing" in run.stderr
    assert_present(driver, blobs - {digest})


def test_transient_errors_on_s3_lose_nothing(moto_s3):  # noqa: F811
    from chalicelib.storage import create_driver

    failed = 0
    for seed in range(6):
        driver = create_driver("s3", moto_s3.parameters(moto_s3.create_bucket()))
        expected = populate(Registry(driver, InMemoryBlobDescriptorCache(1000)))
        flaky = FlakyDriver(driver, 2000 + seed, p=0.004)
        try:
            report = collect_garbage(CTX, flaky, remove_untagged=bool(seed % 2), grace=0)
        except GCError:
            failed += 1
            assert_present(driver, expected["garbage"])  # nothing swept on a failure
        else:
            assert expected["garbage"] <= set(report.deleted)
        assert_present(driver, expected["live"])
        assert not is_sweeping(gc_state(CTX, driver))
    assert failed > 0


def test_a_blob_whose_shared_cache_entry_cannot_be_cleared_is_kept():
    """Redis down during gc: deleting the blob would leave other servers claiming it."""
    from chalicelib.cache.redis import RedisBlobDescriptorCache
    from chalicelib.config import RedisConfig

    from .servers import free_port

    driver = inmemory({})
    registry = Registry(driver, InMemoryBlobDescriptorCache(100))
    orphan = push_blob(registry, "r", b"orphan while redis is down")
    unreachable = RedisBlobDescriptorCache(RedisConfig(addr=f"127.0.0.1:{free_port()}"))
    try:
        report = collect_garbage(CTX, driver, cache=unreachable, grace=0)
    finally:
        unreachable.close()
    assert report.deleted == [] and report.rescued == [orphan]
    assert_present(driver, {orphan})
    assert collect_garbage(CTX, driver, cache=None, grace=0).deleted == [orphan]
