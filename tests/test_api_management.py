"""Content management over HTTP: deleting tags, manifests and blobs, and what 404s after.

Covers what the OCI conformance suite's content-management workflow checks, the
deletes of its teardowns (referrers, index children), and a registry started with
`storage.delete.enabled: false`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .oci_client import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Registry,
    assert_error,
    canonical,
    sha256,
    unique_repo,
)
from .servers import stratus_server


@pytest.fixture
def repo() -> str:
    return unique_repo("manage")


def test_delete_tag_returns_202_and_keeps_the_manifest(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="tagtest0")
    oci.put_manifest(repo, "keep", image.body)
    response = oci.delete(f"/v2/{repo}/manifests/tagtest0")
    assert response.status_code == 202
    assert_error(oci.manifest(repo, "tagtest0"), 404, "MANIFEST_UNKNOWN")
    assert oci.manifest(repo, image.digest).status_code == 200
    assert oci.manifest(repo, "keep").status_code == 200


def test_tags_list_reflects_tag_deletion(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="a")
    oci.put_manifest(repo, "b", image.body)
    before = oci.tags(repo).json()["tags"]
    assert oci.delete(f"/v2/{repo}/manifests/a").status_code == 202
    after = oci.tags(repo).json()["tags"]
    assert after == ["b"]
    assert len(after) == len(before) - 1


def test_delete_unknown_tag_returns_404(oci: Registry, repo: str) -> None:
    oci.push_image(repo, tag="present")
    assert_error(oci.delete(f"/v2/{repo}/manifests/absent"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_by_digest_returns_202_then_404(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="tagtest0")
    response = oci.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert response.status_code == 202
    assert_error(oci.manifest(repo, image.digest), 404, "MANIFEST_UNKNOWN")
    assert oci.head(f"/v2/{repo}/manifests/{image.digest}").status_code == 404


def test_delete_manifest_by_digest_removes_every_tag_pointing_at_it(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="one")
    other = oci.push_image(repo, tag="other")
    oci.put_manifest(repo, "two", image.body)
    assert oci.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    for tag in ("one", "two"):
        assert_error(oci.manifest(repo, tag), 404, "MANIFEST_UNKNOWN")
    assert oci.tags(repo).json()["tags"] == ["other"]
    assert oci.manifest(repo, "other").headers["Docker-Content-Digest"] == other.digest


def test_deleting_the_last_tag_leaves_an_empty_or_unknown_tag_list(oci: Registry, repo: str) -> None:
    oci.push_image(repo, tag="only")
    assert oci.delete(f"/v2/{repo}/manifests/only").status_code == 202
    response = oci.tags(repo)
    if response.status_code == 200:
        assert response.json()["tags"] == []
    else:
        assert_error(response, 404, "NAME_UNKNOWN")


def test_delete_manifest_twice_returns_404_the_second_time(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo)
    assert oci.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert_error(oci.delete(f"/v2/{repo}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")


def test_delete_manifest_of_unknown_repository_returns_404(oci: Registry) -> None:
    response = oci.delete(f"/v2/{unique_repo('manage')}/manifests/{sha256(b'nothing')}")
    assert_error(response, 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


def test_manifest_can_be_pushed_again_after_delete(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="again")
    oci.delete(f"/v2/{repo}/manifests/{image.digest}")
    assert oci.put_manifest(repo, "again", image.body).status_code == 201
    assert oci.manifest(repo, "again").content == image.body


def test_delete_blob_returns_202_then_404(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="t")
    oci.delete(f"/v2/{repo}/manifests/{image.digest}")
    for digest in [image.config_digest, *image.layer_digests]:
        response = oci.delete(f"/v2/{repo}/blobs/{digest}")
        assert response.status_code == 202
        assert_error(oci.blob(repo, digest), 404, "BLOB_UNKNOWN")
        assert oci.head(f"/v2/{repo}/blobs/{digest}").status_code == 404


def test_delete_unknown_blob_returns_404_blob_unknown(oci: Registry, repo: str) -> None:
    oci.push_image(repo)
    assert_error(oci.delete(f"/v2/{repo}/blobs/{sha256(b'never pushed')}"), 404, "BLOB_UNKNOWN")


def test_blob_delete_only_unlinks_it_from_that_repository(oci: Registry, repo: str) -> None:
    other = unique_repo("manage")
    digest = oci.push_blob(repo, b"shared layer bytes")
    oci.push_blob(other, b"shared layer bytes")
    assert oci.delete(f"/v2/{repo}/blobs/{digest}").status_code == 202
    assert oci.blob(repo, digest).status_code == 404
    assert oci.blob(other, digest).content == b"shared layer bytes"


def test_deleted_blob_can_be_mounted_back_from_another_repository(oci: Registry, repo: str) -> None:
    other = unique_repo("manage")
    digest = oci.push_blob(other, b"mount me back")
    oci.push_blob(repo, b"mount me back")
    oci.delete(f"/v2/{repo}/blobs/{digest}")
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": other})
    assert response.status_code == 201
    assert oci.blob(repo, digest).content == b"mount me back"


def test_deleting_a_referrer_removes_it_from_the_referrers_list(oci: Registry, repo: str) -> None:
    subject = oci.push_image(repo, tag="subject", layers=0)
    kept, _, _ = oci.push_referrer(repo, subject, artifact_type="application/vnd.example.kept")
    dropped, _, _ = oci.push_referrer(repo, subject, artifact_type="application/vnd.example.dropped")
    assert len(oci.referrers(repo, subject.digest).json()["manifests"]) == 2
    assert oci.delete(f"/v2/{repo}/manifests/{dropped}").status_code == 202
    assert [m["digest"] for m in oci.referrers(repo, subject.digest).json()["manifests"]] == [kept]


def test_deleting_the_subject_leaves_its_referrers_listed(oci: Registry, repo: str) -> None:
    subject = oci.push_image(repo, tag="subject", layers=0)
    referrer, _, _ = oci.push_referrer(repo, subject, artifact_type="application/vnd.example.sig")
    assert oci.delete(f"/v2/{repo}/manifests/{subject.digest}").status_code == 202
    response = oci.referrers(repo, subject.digest)
    assert response.status_code == 200
    assert [m["digest"] for m in response.json()["manifests"]] == [referrer]


def test_index_and_its_children_can_be_deleted_in_any_order(oci: Registry, repo: str) -> None:
    child = oci.push_image(repo, layers=0)
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": child.digest, "size": len(child.body)}]})
    oci.push_manifest(repo, "index", index, OCI_INDEX)
    assert oci.delete(f"/v2/{repo}/manifests/{child.digest}").status_code == 202
    assert oci.delete(f"/v2/{repo}/manifests/{sha256(index)}").status_code == 202
    assert_error(oci.manifest(repo, "index"), 404, "MANIFEST_UNKNOWN")


# -- a registry with deletes disabled -------------------------------------------------


@pytest.fixture(scope="module")
def no_delete(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("stratus-nodelete") / "data"
    root.mkdir()
    with stratus_server(root, env={"REGISTRY_STORAGE_DELETE_ENABLED": "false"}) as url:
        client = Registry(url)
        yield client
        client.close()


def test_deletes_are_refused_with_405_when_disabled(no_delete: Registry) -> None:
    repo = unique_repo("manage")
    image: Image = no_delete.push_image(repo, tag="t")
    for path in (f"/v2/{repo}/manifests/t", f"/v2/{repo}/manifests/{image.digest}",
                 f"/v2/{repo}/blobs/{image.config_digest}"):
        assert_error(no_delete.delete(path), 405, "UNSUPPORTED")
    assert no_delete.manifest(repo, "t").status_code == 200
    assert no_delete.blob(repo, image.config_digest).status_code == 200


def test_upload_cancel_still_works_when_deletes_are_disabled(no_delete: Registry) -> None:
    location = no_delete.upload_location(unique_repo("manage"))
    assert no_delete.delete(location).status_code == 204


# -- a read-only registry (storage.maintenance.readonly) ---------------------------------


def test_writes_are_refused_with_405_when_read_only(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    repo = unique_repo("manage")
    with stratus_server(root) as url:
        writable = Registry(url)
        image: Image = writable.push_image(repo, tag="t")
        writable.close()
    with stratus_server(root, env={"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": "true"}) as url:
        read_only = Registry(url)
        try:
            assert_error(read_only.start_upload(repo), 405, "UNSUPPORTED")
            assert_error(read_only.put_manifest(repo, "t2", image.body), 405, "UNSUPPORTED")
            assert read_only.manifest(repo, "t").status_code == 200
            assert read_only.blob(repo, image.config_digest).status_code == 200
        finally:
            read_only.close()
