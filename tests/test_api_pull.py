"""Pulling over HTTP from a running `stratus serve`: blobs and manifests, by tag and by digest.

Covers what the OCI conformance suite's pull workflow checks, plus the read
headers Stratus promises (ETag, If-None-Match, Cache-Control, Range).
"""
from __future__ import annotations

import json

import pytest

from .oci_client import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Registry,
    assert_error,
    canonical,
    random_bytes,
    sha256,
    unique_repo,
)

DUMMY_DIGEST = sha256(b"hello world")


@pytest.fixture(scope="module")
def image(oci: Registry) -> Image:
    return oci.push_image(unique_repo("pull"), tag="tagtest0")


@pytest.fixture(scope="module")
def blob(oci: Registry, image: Image) -> tuple[str, bytes]:
    data = random_bytes(2048)
    return oci.push_blob(image.repo, data), data


def test_base_endpoint_returns_200_with_api_version(oci: Registry) -> None:
    response = oci.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.json() == {}


def test_head_missing_blob_returns_404(oci: Registry, image: Image) -> None:
    response = oci.head(f"/v2/{image.repo}/blobs/{DUMMY_DIGEST}")
    assert response.status_code == 404
    assert response.content == b""


def test_get_missing_blob_returns_404_blob_unknown(oci: Registry, image: Image) -> None:
    assert_error(oci.blob(image.repo, DUMMY_DIGEST), 404, "BLOB_UNKNOWN")


def test_head_blob_returns_200_with_digest_and_length(oci: Registry, image: Image) -> None:
    response = oci.head(f"/v2/{image.repo}/blobs/{image.config_digest}")
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.config_digest
    assert response.headers["Content-Length"] == str(len(image.config))
    assert response.content == b""


def test_get_blob_returns_its_bytes_with_digest_etag_and_cache_control(oci: Registry, image: Image) -> None:
    response = oci.blob(image.repo, image.layer_digests[0])
    assert response.status_code == 200
    assert response.content == image.layers[0]
    assert response.headers["Docker-Content-Digest"] == image.layer_digests[0]
    assert response.headers["ETag"] == f'"{image.layer_digests[0]}"'
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Length"] == str(len(image.layers[0]))
    assert "max-age" in response.headers["Cache-Control"]


def test_blob_of_another_repository_is_404_here(oci: Registry, image: Image) -> None:
    other = unique_repo("pull")
    oci.push_blob(other, b"only in the other repository")
    assert_error(oci.blob(image.repo, sha256(b"only in the other repository")), 404, "BLOB_UNKNOWN")
    assert oci.blob(other, sha256(b"only in the other repository")).status_code == 200


@pytest.mark.parametrize(
    "range_header, start, end",
    [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
        ("bytes=2000-5000", 2000, 2047),  # an end past the blob is cut at the blob's end
        ("bytes=0-0", 0, 0),
        ("Bytes=1-2", 1, 2),
    ],
)
def test_get_blob_range_returns_206_with_content_range(
    oci: Registry, image: Image, blob: tuple[str, bytes], range_header: str, start: int, end: int
) -> None:
    digest, data = blob
    response = oci.blob(image.repo, digest, headers={"Range": range_header})
    assert response.status_code == 206
    assert response.content == data[start:end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
    assert response.headers["Content-Length"] == str(end - start + 1)
    assert response.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize("range_header", ["bytes=500-0", "bytes=5000-10000", "bytes=2048-", "bytes=-0"])
def test_get_blob_unsatisfiable_range_returns_416(
    oci: Registry, image: Image, blob: tuple[str, bytes], range_header: str
) -> None:
    digest, data = blob
    response = oci.blob(image.repo, digest, headers={"Range": range_header})
    assert_error(response, 416)
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"


def test_get_blob_range_with_unknown_unit_returns_whole_blob(
    oci: Registry, image: Image, blob: tuple[str, bytes]
) -> None:
    digest, data = blob
    response = oci.blob(image.repo, digest, headers={"Range": "items=0-1"})
    assert response.status_code == 200
    assert response.content == data


def test_head_blob_with_range_returns_206_without_body(oci: Registry, image: Image, blob: tuple[str, bytes]) -> None:
    digest, data = blob
    response = oci.head(f"/v2/{image.repo}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert response.status_code == 206
    assert response.headers["Content-Length"] == "10"
    assert response.content == b""


@pytest.mark.parametrize("etag_form", ['"{d}"', "{d}", 'W/"{d}"', '"sha256:other", "{d}"', "*"])
def test_get_blob_if_none_match_returns_304(oci: Registry, image: Image, etag_form: str) -> None:
    digest = image.layer_digests[0]
    response = oci.blob(image.repo, digest, headers={"If-None-Match": etag_form.format(d=digest)})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == f'"{digest}"'


def test_get_blob_if_none_match_other_etag_returns_200(oci: Registry, image: Image) -> None:
    response = oci.blob(image.repo, image.layer_digests[0], headers={"If-None-Match": f'"{DUMMY_DIGEST}"'})
    assert response.status_code == 200
    assert response.content == image.layers[0]


def test_head_missing_manifest_returns_404(oci: Registry, image: Image) -> None:
    response = oci.head(f"/v2/{image.repo}/manifests/.INVALID_MANIFEST_NAME")
    assert response.status_code == 404
    assert response.content == b""


@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "missingtag", DUMMY_DIGEST])
def test_get_missing_manifest_returns_404_manifest_unknown(oci: Registry, image: Image, reference: str) -> None:
    assert_error(oci.manifest(image.repo, reference), 404, "MANIFEST_UNKNOWN")


def test_get_manifest_of_unknown_repository_returns_404(oci: Registry) -> None:
    response = oci.manifest(unique_repo("pull"), "latest")
    assert_error(response, 404, "MANIFEST_UNKNOWN", "NAME_UNKNOWN")


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_head_manifest_returns_200_with_digest_type_and_length(oci: Registry, image: Image, by: str) -> None:
    reference = "tagtest0" if by == "tag" else image.digest
    response = oci.head(f"/v2/{image.repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert response.headers["Content-Length"] == str(len(image.body))
    assert response.content == b""


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_get_manifest_returns_exact_bytes(oci: Registry, image: Image, by: str) -> None:
    reference = "tagtest0" if by == "tag" else image.digest
    response = oci.manifest(image.repo, reference)
    assert response.status_code == 200
    assert response.content == image.body
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert response.headers["ETag"] == f'"{image.digest}"'


def test_get_manifest_by_digest_is_cacheable_but_by_tag_is_not_immutable(oci: Registry, image: Image) -> None:
    by_digest = oci.manifest(image.repo, image.digest)
    assert "max-age" in by_digest.headers["Cache-Control"]
    by_tag = oci.manifest(image.repo, "tagtest0")
    assert "max-age=31536000" not in by_tag.headers.get("Cache-Control", "")


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_get_manifest_if_none_match_returns_304(oci: Registry, image: Image, by: str) -> None:
    reference = "tagtest0" if by == "tag" else image.digest
    response = oci.manifest(image.repo, reference, headers={"If-None-Match": f'"{image.digest}"'})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["Docker-Content-Digest"] == image.digest


def test_get_manifest_with_malformed_digest_returns_400_with_spec_error(oci: Registry, image: Image) -> None:
    # the conformance suite sends a body with this GET; it must not matter
    response = oci.request(
        "GET", f"/v2/{image.repo}/manifests/sha256:totallywrong",
        headers={"Content-Type": OCI_MANIFEST}, data=b"blablabla",
    )
    assert_error(response, 400, "DIGEST_INVALID")


def test_manifest_is_served_with_its_own_media_type(oci: Registry) -> None:
    repo = unique_repo("pull")
    docker = oci.push_image(repo, tag="docker", media_type=DOCKER_MANIFEST)
    index_body = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": docker.digest, "size": len(docker.body),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    })
    oci.push_manifest(repo, "index", index_body, OCI_INDEX)
    assert oci.manifest(repo, "docker", accept=DOCKER_MANIFEST).headers["Content-Type"] == DOCKER_MANIFEST
    response = oci.manifest(repo, "index", accept=OCI_INDEX)
    assert response.headers["Content-Type"] == OCI_INDEX
    assert json.loads(response.content)["manifests"][0]["digest"] == docker.digest

