"""Unit tests of the registry domain over the inmemory and filesystem drivers."""
from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.context import Context
from chalicelib.digest import Algorithm, Digest, ResumableHasher
from chalicelib.registry import Registry, RegistryOptions
from chalicelib.registry.errors import (
    BlobUnknownError,
    BlobUploadUnknownError,
    DigestInvalidError,
    ManifestBlobUnknownError,
    ManifestInvalidError,
    ManifestUnknownError,
    NameInvalidError,
    NameUnknownError,
    RangeInvalidError,
)
from chalicelib.registry.maintenance import collect_garbage, purge_uploads
from chalicelib.registry.manifest_types import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from chalicelib.storage import PathNotFoundError, paths
from chalicelib.storage.filesystem import FilesystemDriver
from chalicelib.storage.filesystem import from_parameters as filesystem
from chalicelib.storage.inmemory import from_parameters as inmemory

CTX = Context()


@pytest.fixture(params=["inmemory", "filesystem"])
def driver(request, tmp_path):
    if request.param == "inmemory":
        return inmemory({})
    return filesystem({"rootdirectory": str(tmp_path)})


@pytest.fixture
def registry(driver):
    return Registry(driver, InMemoryBlobDescriptorCache(100))


def fresh(registry: Registry) -> Registry:
    """Another process over the same storage: no state shared but the driver."""
    return Registry(registry.driver, InMemoryBlobDescriptorCache(100))


def push_blob(registry: Registry, name: str, data: bytes) -> Digest:
    digest = Digest.from_bytes(data)
    upload = registry.repository(name).uploads.create(CTX)
    upload.commit(CTX, digest, io.BytesIO(data), len(data))
    return digest


def image_manifest(registry: Registry, name: str, layers: list[bytes], **extra) -> bytes:
    config = b'{"architecture":"amd64","os":"linux"}'
    config_digest = push_blob(registry, name, config)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config_digest), "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(push_blob(registry, name, layer)), "size": len(layer)}
            for layer in layers
        ],
        **extra,
    }
    return json.dumps(doc).encode()


def test_chunked_upload_resumes_across_fresh_registries_and_stores_go_hash_states(registry):
    data = bytes(range(256)) * 5000
    upload = registry.repository("team/app").uploads.create(CTX)
    offset = 0
    for size in (1, 63, 64, 1000, 70000, 300000):
        other = fresh(registry).repository("team/app").uploads.get(CTX, upload.id)
        other.write(CTX, io.BytesIO(data[offset : offset + size]), size, start=offset)
        offset += size
        state = registry.driver.get_content(CTX, paths.upload_hash_state("team/app", upload.id, "sha256", offset))
        assert len(state) == 108 and state[:4] == b"sha\x03"
        expected = hashlib.sha256(data[:offset]).hexdigest()
        assert ResumableHasher.restore(Algorithm.SHA256, state).digest().hex == expected
    final = fresh(registry).repository("team/app").uploads.get(CTX, upload.id)
    rest = data[offset:]
    descriptor = final.commit(CTX, Digest.from_bytes(data), io.BytesIO(rest), len(rest))
    assert descriptor.size == len(data)
    assert registry.repository("team/app").blobs.get(CTX, descriptor.digest) == data
    with pytest.raises(PathNotFoundError):
        registry.driver.stat(CTX, paths.upload_dir("team/app", upload.id))


def test_commit_without_hash_state_hashes_stored_data(registry):
    data = b"abc" * 100000
    upload = registry.repository("r").uploads.create(CTX)
    upload.write(CTX, io.BytesIO(data), len(data))
    registry.driver.delete(CTX, f"{paths.upload_dir('r', upload.id)}/hashstates")
    resumed = fresh(registry).repository("r").uploads.get(CTX, upload.id)
    resumed.commit(CTX, Digest.from_bytes(data))
    assert registry.repository("r").blobs.stat(CTX, Digest.from_bytes(data)).size == len(data)


def test_sha512_upload_is_verified_from_stored_data(registry):
    data = b"x" * 12345
    digest = Digest.from_bytes(data, Algorithm.SHA512)
    upload = registry.repository("r").uploads.create(CTX)
    upload.write(CTX, io.BytesIO(data), len(data))
    upload.commit(CTX, digest)
    assert registry.repository("r").blobs.get(CTX, digest) == data


def test_digest_mismatch_leaves_nothing_behind(registry):
    upload = registry.repository("r").uploads.create(CTX)
    with pytest.raises(DigestInvalidError):
        upload.commit(CTX, Digest.from_bytes(b"other"), io.BytesIO(b"data"), 4)
    files = [info.path for info in registry.driver.walk(CTX, "/") if not info.is_dir]
    assert not [f for f in files if f.startswith(paths.BLOBS)]
    assert not [f for f in files if "/_uploads/" in f]
    with pytest.raises(BlobUploadUnknownError):
        registry.repository("r").uploads.get(CTX, upload.id)


def test_out_of_order_chunk_is_refused_and_upload_kept(registry):
    upload = registry.repository("r").uploads.create(CTX)
    upload.write(CTX, io.BytesIO(b"12345"), 5, start=0)
    with pytest.raises(RangeInvalidError):
        upload.write(CTX, io.BytesIO(b"xx"), 2, start=7)
    with pytest.raises(RangeInvalidError):
        fresh(registry).repository("r").uploads.get(CTX, upload.id).write(CTX, io.BytesIO(b"xx"), 2, start=0)
    assert registry.repository("r").uploads.get(CTX, upload.id).size == 5


def test_unknown_upload_ids_are_refused(registry):
    uploads = registry.repository("r").uploads
    for upload_id in ("nope", "../../etc", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(BlobUploadUnknownError):
            uploads.get(CTX, upload_id)


def test_blob_is_visible_only_in_repositories_that_link_it(registry):
    digest = push_blob(registry, "a", b"layer")
    assert registry.repository("a").blobs.stat(CTX, digest).size == 5
    with pytest.raises(BlobUnknownError):
        registry.repository("b").blobs.stat(CTX, digest)
    registry.repository("a").blobs.unlink(CTX, digest)
    with pytest.raises(BlobUnknownError):
        fresh(registry).repository("a").blobs.stat(CTX, digest)


def test_manifest_put_get_tag_and_layout(registry):
    repo = registry.repository("team/app")
    body = image_manifest(registry, "team/app", [b"one", b"two"])
    digest, manifest = repo.manifests.put(CTX, body, OCI_MANIFEST, tag="v1")
    assert digest == Digest.from_bytes(body)
    assert repo.tags.get(CTX, "v1") == digest
    stored = fresh(registry).repository("team/app").manifests.get(CTX, digest)
    assert stored.body == body and stored.media_type == OCI_MANIFEST
    link = registry.driver.get_content(CTX, paths.tag_current_link("team/app", "v1"))
    assert link == str(digest).encode()
    assert registry.driver.get_content(CTX, paths.manifest_revision_link("team/app", "sha256", digest.hex)) == link
    assert registry.driver.get_content(CTX, paths.tag_index_link("team/app", "v1", "sha256", digest.hex)) == link


def test_manifest_with_missing_blob_is_refused(registry):
    body = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + "a" * 64, "size": 2},
        "layers": [],
    }).encode()
    with pytest.raises(ManifestBlobUnknownError):
        registry.repository("r").manifests.put(CTX, body, DOCKER_MANIFEST)


def test_manifest_with_wrong_blob_size_is_refused(registry):
    doc = json.loads(image_manifest(registry, "r", [b"abc"]))
    doc["layers"][0]["size"] = 4
    with pytest.raises(ManifestInvalidError):
        registry.repository("r").manifests.put(CTX, json.dumps(doc).encode(), OCI_MANIFEST)


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    b'{"schemaVersion": 1, "name": "r", "tag": "t", "fsLayers": []}',
    b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
    b'{"schemaVersion": 2, "mediaType": "application/x-unknown"}',
    b'{"schemaVersion": 3, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}',
])
def test_invalid_manifests_are_refused(registry, body):
    with pytest.raises(ManifestInvalidError):
        registry.repository("r").manifests.put(CTX, body, None)


def test_put_by_digest_must_match_body(registry):
    body = image_manifest(registry, "r", [])
    with pytest.raises(DigestInvalidError):
        registry.repository("r").manifests.put(CTX, body, OCI_MANIFEST, digest=Digest.from_bytes(b"x"))


def test_index_children_must_exist(registry):
    repo = registry.repository("r")
    child = image_manifest(registry, "r", [b"l"])
    child_digest, _ = repo.manifests.put(CTX, child, OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(child_digest), "size": len(child)},
    ]}
    repo.manifests.put(CTX, json.dumps(index).encode(), OCI_INDEX, tag="multi")
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 1})
    with pytest.raises(ManifestBlobUnknownError):
        repo.manifests.put(CTX, json.dumps(index).encode(), OCI_INDEX)


def test_referrers_index_filters_and_forgets_deleted_referrers(registry):
    repo = registry.repository("r")
    subject_digest, _ = repo.manifests.put(CTX, image_manifest(registry, "r", [b"s"]), OCI_MANIFEST)
    subject = {"mediaType": OCI_MANIFEST, "digest": str(subject_digest), "size": 1}
    sig = image_manifest(registry, "r", [b"sig"], artifactType="application/vnd.example.sig", subject=subject,
                         annotations={"org.example": "yes"})
    sbom = image_manifest(registry, "r", [b"sbom"], artifactType="application/vnd.example.sbom", subject=subject)
    sig_digest, _ = repo.manifests.put(CTX, sig, OCI_MANIFEST)
    repo.manifests.put(CTX, sbom, OCI_MANIFEST)
    everything = repo.referrers.list(CTX, subject_digest)
    assert {d["artifactType"] for d in everything} == {"application/vnd.example.sig", "application/vnd.example.sbom"}
    only_sig = repo.referrers.list(CTX, subject_digest, "application/vnd.example.sig")
    assert only_sig == [{"mediaType": OCI_MANIFEST, "digest": str(sig_digest), "size": len(sig),
                         "artifactType": "application/vnd.example.sig", "annotations": {"org.example": "yes"}}]
    repo.manifests.delete(CTX, sig_digest)
    assert [d["artifactType"] for d in repo.referrers.list(CTX, subject_digest)] == ["application/vnd.example.sbom"]


def test_manifest_delete_removes_tags_pointing_at_it(registry):
    repo = registry.repository("r")
    digest, _ = repo.manifests.put(CTX, image_manifest(registry, "r", []), OCI_MANIFEST, tag="a")
    repo.tags.tag(CTX, "b", digest)
    repo.manifests.delete(CTX, digest)
    # drivers without real directories forget the emptied repository altogether
    try:
        assert repo.tags.all(CTX) == []
    except NameUnknownError:
        assert not isinstance(registry.driver, FilesystemDriver)
    with pytest.raises(ManifestUnknownError):
        repo.manifests.get(CTX, digest)


def test_tags_sorted_and_unknown_repository(registry):
    repo = registry.repository("r")
    digest, _ = repo.manifests.put(CTX, image_manifest(registry, "r", []), OCI_MANIFEST)
    for tag in ("b", "A", "a", "1.0", "_x"):
        repo.tags.tag(CTX, tag, digest)
    assert repo.tags.all(CTX) == sorted(["b", "A", "a", "1.0", "_x"])
    with pytest.raises(NameUnknownError):
        registry.repository("nothing/here").tags.all(CTX)


def test_catalog_lists_repositories_with_manifests_sorted(registry):
    for name in ("b", "a/b", "a-c", "a", "x/y/z"):
        registry.repository(name).manifests.put(CTX, image_manifest(registry, name, []), OCI_MANIFEST)
    push_blob(registry, "only/blobs", b"no manifests here")
    assert registry.catalog(CTX) == ["a", "a-c", "a/b", "b", "x/y/z"]


@pytest.mark.parametrize("name", ["", "A", "a/../b", "a//b", "/a", "a/", "_a", "a" * 256, "a/_layers", "a\nb"])
def test_invalid_names_are_refused_before_storage(registry, name):
    with pytest.raises(NameInvalidError):
        registry.repository(name)


def test_stat_retries_wait_for_eventually_consistent_blobs(driver):
    calls = []

    class Lagging:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def stat(self, ctx, path):
            calls.append(path)
            if len(calls) < 3:
                raise PathNotFoundError("lag", path)
            return self.inner.stat(ctx, path)

    digest = push_blob(Registry(driver), "r", b"late")
    lagging = Registry(Lagging(driver), None, RegistryOptions(stat_retries=3))
    lagging.blobs.statter._backoff = 0.001
    assert lagging.blobs.stat(CTX, digest).size == 4
    assert len(calls) == 3


def test_purge_removes_only_old_uploads(registry):
    uploads = registry.repository("r").uploads
    old, new = uploads.create(CTX), uploads.create(CTX)
    later = datetime.now(timezone.utc) + timedelta(days=8)
    registry.driver.put_content(CTX, paths.upload_started_at("r", new.id),
                                (later - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ").encode())
    removed = purge_uploads(CTX, registry.driver, timedelta(days=7), now=later)
    assert removed == [paths.upload_dir("r", old.id)]
    uploads.get(CTX, new.id)
    with pytest.raises(BlobUploadUnknownError):
        uploads.get(CTX, old.id)


def test_garbage_collection_keeps_referenced_blobs_only(registry):
    repo = registry.repository("r")
    repo.manifests.put(CTX, image_manifest(registry, "r", [b"kept"]), OCI_MANIFEST, tag="v1")
    orphan = push_blob(registry, "r", b"orphan")
    report = collect_garbage(CTX, registry.driver, dry_run=True, grace=0)
    assert report.deleted == [orphan]
    assert registry.blobs.stat(CTX, orphan).size == 6  # now cached
    collect_garbage(CTX, registry.driver, cache=registry.cache, grace=0)
    with pytest.raises(BlobUnknownError):
        registry.blobs.stat(CTX, orphan)
    with pytest.raises(BlobUnknownError):
        fresh(registry).blobs.stat(CTX, orphan)
    assert fresh(registry).blobs.stat(CTX, Digest.from_bytes(b"kept")).size == 4


def test_garbage_collection_removes_untagged_manifests_unless_an_index_or_subject_keeps_them(registry):
    repo = registry.repository("r")
    child = image_manifest(registry, "r", [b"child layer"])
    child_digest, _ = repo.manifests.put(CTX, child, OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": str(child_digest), "size": len(child)},
    ]}
    repo.manifests.put(CTX, json.dumps(index).encode(), OCI_INDEX, tag="multi")
    tagged = image_manifest(registry, "r", [b"tagged layer"])
    tagged_digest, _ = repo.manifests.put(CTX, tagged, OCI_MANIFEST, tag="v1")
    subject = {"mediaType": OCI_MANIFEST, "digest": str(tagged_digest), "size": len(tagged)}
    referrer_digest, _ = repo.manifests.put(CTX, image_manifest(registry, "r", [b"sbom"], subject=subject), OCI_MANIFEST)
    untagged_digest, _ = repo.manifests.put(CTX, image_manifest(registry, "r", [b"untagged layer"]), OCI_MANIFEST)

    report = collect_garbage(CTX, registry.driver, remove_untagged=True, cache=registry.cache, grace=0)

    assert report.manifests_deleted == [f"r@{untagged_digest}"]
    assert Digest.from_bytes(b"untagged layer") in report.deleted
    for kept in (child_digest, tagged_digest, referrer_digest):
        assert fresh(registry).repository("r").manifests.exists(CTX, kept)
    assert not fresh(registry).repository("r").manifests.exists(CTX, untagged_digest)
    assert fresh(registry).blobs.stat(CTX, Digest.from_bytes(b"child layer")).size == len(b"child layer")
