"""Pushing over HTTP to a running `stratus serve`: every upload method, mounts, manifests.

Covers what the OCI conformance suite's push workflow checks (streamed, monolithic,
single-POST and chunked uploads, out-of-order chunks, upload status, cross-repository
mounts with and without `from`, manifest uploads) and the other manifest kinds a
1.1 registry takes (Docker schema2 and manifest list, OCI index, artifacts, sha512).
"""
from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit

import pytest

from .oci_client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    EMPTY_JSON,
    OCI_ARTIFACT_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    OCTET_STREAM,
    Image,
    Registry,
    assert_error,
    canonical,
    descriptor,
    digest_of,
    random_bytes,
    sha256,
    sha512,
    unique_repo,
)


@pytest.fixture
def repo() -> str:
    return unique_repo("push")


def path_of(location: str) -> str:
    """The path of an absolute or relative Location."""
    return urlsplit(location).path


def assert_blob_created(oci: Registry, response, repo: str, digest: str, data: bytes) -> None:
    assert response.status_code == 201, response.text
    assert path_of(response.headers["Location"]) == f"/v2/{repo}/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    pulled = oci.get(response.headers["Location"])
    assert pulled.status_code == 200
    assert pulled.content == data


# -- upload sessions ---------------------------------------------------------------


def test_post_returns_202_with_location_range_and_upload_uuid(oci: Registry, repo: str) -> None:
    response = oci.start_upload(repo)
    assert response.status_code == 202
    location = response.headers["Location"]
    upload_id = response.headers["Docker-Upload-UUID"]
    assert path_of(location) == f"/v2/{repo}/blobs/uploads/{upload_id}"
    assert response.headers["Range"] == "0-0"
    assert response.headers["Content-Length"] == "0"


def test_each_post_starts_a_new_session(oci: Registry, repo: str) -> None:
    assert oci.upload_location(repo) != oci.upload_location(repo)


def test_streamed_patch_then_put_creates_blob(oci: Registry, repo: str) -> None:
    data = random_bytes(42)
    patched = oci.patch(oci.upload_location(repo), data)
    assert patched.status_code == 202
    assert patched.headers["Range"] == "0-41"
    assert patched.headers["Location"]
    response = oci.put_upload(patched.headers["Location"], sha256(data))
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_patch_with_chunked_transfer_encoding_streams_the_body(oci: Registry, repo: str) -> None:
    pieces = [random_bytes(1000), random_bytes(3000), random_bytes(5)]
    patched = oci.request("PATCH", oci.upload_location(repo), data=iter(pieces),
                          headers={"Content-Type": OCTET_STREAM})
    assert patched.status_code == 202
    assert patched.headers["Range"] == "0-4004"
    data = b"".join(pieces)
    assert_blob_created(oci, oci.put_upload(patched.headers["Location"], sha256(data)), repo, sha256(data), data)


def test_monolithic_post_then_put_creates_blob(oci: Registry, repo: str) -> None:
    data = random_bytes(300)
    response = oci.put_upload(oci.upload_location(repo), sha256(data), data)
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_single_post_with_digest_creates_blob(oci: Registry, repo: str) -> None:
    data = random_bytes(128)
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, data=data,
                           headers={"Content-Type": OCTET_STREAM})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_single_post_with_wrong_digest_returns_400_and_stores_nothing(oci: Registry, repo: str) -> None:
    data = random_bytes(64)
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(b"other")}, data=data)
    assert_error(response, 400, "DIGEST_INVALID")
    assert oci.blob(repo, sha256(data)).status_code == 404
    assert oci.blob(repo, sha256(b"other")).status_code == 404


def test_put_with_wrong_digest_returns_400_and_ends_the_session(oci: Registry, repo: str) -> None:
    location = oci.upload_location(repo)
    assert_error(oci.put_upload(location, sha256(b"something else"), b"data"), 400, "DIGEST_INVALID")
    assert oci.blob(repo, sha256(b"something else")).status_code == 404
    assert_error(oci.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_empty_blob_can_be_pushed_and_pulled(oci: Registry, repo: str) -> None:
    response = oci.put_upload(oci.upload_location(repo), sha256(b""), b"")
    assert_blob_created(oci, response, repo, sha256(b""), b"")
    head = oci.head(f"/v2/{repo}/blobs/{sha256(b'')}")
    assert head.headers["Content-Length"] == "0"


def test_pushing_an_existing_blob_again_succeeds(oci: Registry, repo: str) -> None:
    data = random_bytes(77)
    oci.push_blob(repo, data)
    response = oci.put_upload(oci.upload_location(repo), sha256(data), data)
    assert_blob_created(oci, response, repo, sha256(data), data)


# -- chunked uploads ---------------------------------------------------------------


def test_chunked_upload_in_order_reports_range_after_each_chunk(oci: Registry, repo: str) -> None:
    data = random_bytes(42)
    first, second = data[:22], data[22:]
    one = oci.patch(oci.upload_location(repo), first, "0-21")
    assert one.status_code == 202
    assert one.headers["Range"] == "0-21"
    two = oci.patch(one.headers["Location"], second, "22-41")
    assert two.status_code == 202
    assert two.headers["Range"] == "0-41"
    response = oci.put_upload(two.headers["Location"], sha256(data), **{"Content-Length": "0"})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_chunked_upload_may_send_the_last_chunk_with_the_put(oci: Registry, repo: str) -> None:
    data = random_bytes(3000)
    one = oci.patch(oci.upload_location(repo), data[:1000], "0-999")
    two = oci.patch(one.headers["Location"], data[1000:2000], "1000-1999")
    response = oci.put_upload(two.headers["Location"], sha256(data), data[2000:],
                              **{"Content-Range": "2000-2999"})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_chunked_upload_of_many_chunks_resumes_hashing(oci: Registry, repo: str) -> None:
    data = random_bytes(64 * 1024 + 17)
    location, offset = oci.upload_location(repo), 0
    for size in (1, 63, 64, 4096, 100, 60000):
        chunk = data[offset:offset + size]
        response = oci.patch(location, chunk, f"{offset}-{offset + len(chunk) - 1}")
        assert response.status_code == 202, response.text
        offset += len(chunk)
        location = response.headers["Location"]
    response = oci.put_upload(location, sha256(data), data[offset:], **{"Content-Range": f"{offset}-{len(data) - 1}"})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_chunk_range_in_rfc_9110_form_is_accepted(oci: Registry, repo: str) -> None:
    response = oci.patch(oci.upload_location(repo), b"hello", "bytes 0-4/5")
    assert response.status_code == 202
    assert response.headers["Range"] == "0-4"


def test_patch_out_of_order_returns_416(oci: Registry, repo: str) -> None:
    location = oci.upload_location(repo)
    response = oci.patch(location, random_bytes(20), "22-41")
    assert_error(response, 416, "BLOB_UPLOAD_INVALID")
    assert response.headers["Range"] == "0-0"
    assert path_of(response.headers["Location"]) == path_of(location)


def test_retrying_a_chunk_already_written_returns_416(oci: Registry, repo: str) -> None:
    data = random_bytes(42)
    location = oci.upload_location(repo)
    assert oci.patch(location, data[:22], "0-21").status_code == 202
    retry = oci.patch(location, data[:22], "0-21")  # the POST's (now stale) location
    assert_error(retry, 416, "BLOB_UPLOAD_INVALID")
    assert retry.headers["Range"] == "0-21"


def test_patch_with_a_stale_location_and_no_range_returns_416(oci: Registry, repo: str) -> None:
    location = oci.upload_location(repo)
    assert oci.patch(location, b"abc").status_code == 202
    assert_error(oci.patch(location, b"def"), 416)


def test_get_upload_status_returns_204_with_range_and_location(oci: Registry, repo: str) -> None:
    location = oci.upload_location(repo)
    oci.patch(location, random_bytes(22), "0-21")
    status = oci.get(location)  # a stale location still finds the session
    assert status.status_code == 204
    assert status.headers["Range"] == "0-21"
    assert status.headers["Location"]
    assert status.content == b""


def test_upload_resumes_after_416_from_the_status_location(oci: Registry, repo: str) -> None:
    data = random_bytes(90)
    location = oci.upload_location(repo)
    location = oci.patch(location, data[:30], "0-29").headers["Location"]
    assert oci.patch(location, data[60:], "60-89").status_code == 416  # skips ahead
    status = oci.get(location)
    assert status.headers["Range"] == "0-29"
    location = oci.patch(status.headers["Location"], data[30:60], "30-59").headers["Location"]
    response = oci.put_upload(location, sha256(data), data[60:], **{"Content-Range": "60-89"})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_out_of_order_final_put_returns_416_and_keeps_the_session(oci: Registry, repo: str) -> None:
    data = random_bytes(40)
    location = oci.patch(oci.upload_location(repo), data[:20], "0-19").headers["Location"]
    bad = oci.put_upload(location, sha256(data), data[30:], **{"Content-Range": "30-39"})
    assert_error(bad, 416)
    assert oci.get(location).headers["Range"] == "0-19"
    response = oci.put_upload(location, sha256(data), data[20:], **{"Content-Range": "20-39"})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_content_range_not_matching_the_body_length_returns_416(oci: Registry, repo: str) -> None:
    assert_error(oci.patch(oci.upload_location(repo), b"hello", "0-3"), 416)


def test_cancel_upload_returns_204_then_404(oci: Registry, repo: str) -> None:
    location = oci.upload_location(repo)
    oci.patch(location, b"partial")
    cancelled = oci.delete(location)
    assert cancelled.status_code == 204
    assert_error(oci.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(oci.patch(location, b"more"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(oci.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


def test_status_of_unknown_upload_returns_404(oci: Registry, repo: str) -> None:
    response = oci.get(f"/v2/{repo}/blobs/uploads/1d0d3f52-3b55-4bd8-8b0c-2b1e4d7f00aa")
    assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


# -- sha512 ------------------------------------------------------------------------


def test_sha512_blob_monolithic_upload(oci: Registry, repo: str) -> None:
    data = random_bytes(500)
    response = oci.put_upload(oci.upload_location(repo), sha512(data), data)
    assert_blob_created(oci, response, repo, sha512(data), data)


def test_sha512_blob_single_post(oci: Registry, repo: str) -> None:
    data = random_bytes(500)
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": sha512(data)}, data=data)
    assert_blob_created(oci, response, repo, sha512(data), data)


def test_sha512_blob_chunked_upload(oci: Registry, repo: str) -> None:
    data = random_bytes(3 * 700 - 5)
    location = oci.upload_location(repo)
    for start in (0, 700):
        location = oci.patch(location, data[start:start + 700], f"{start}-{start + 699}").headers["Location"]
    response = oci.put_upload(location, sha512(data), data[1400:], **{"Content-Range": f"1400-{len(data) - 1}"})
    assert_blob_created(oci, response, repo, sha512(data), data)


def test_sha512_blob_with_wrong_digest_returns_400(oci: Registry, repo: str) -> None:
    assert_error(oci.put_upload(oci.upload_location(repo), sha512(b"x"), b"y"), 400, "DIGEST_INVALID")


def test_sha512_manifest_put_by_digest_keeps_that_digest(oci: Registry, repo: str) -> None:
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = random_bytes(100)
    oci.push_blob(repo, config, "sha512")
    oci.push_blob(repo, layer, "sha512")
    body = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha512(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha512(layer), "size": len(layer)}],
    })
    response = oci.put_manifest(repo, sha512(body), body)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == sha512(body)
    assert path_of(response.headers["Location"]) == f"/v2/{repo}/manifests/{sha512(body)}"
    pulled = oci.manifest(repo, sha512(body))
    assert pulled.status_code == 200
    assert pulled.content == body
    assert pulled.headers["Docker-Content-Digest"] == sha512(body)


# -- cross-repository mounts ---------------------------------------------------------


def test_mount_with_from_returns_201_with_location_and_digest(oci: Registry, repo: str) -> None:
    source = unique_repo("push")
    data = random_bytes(42)
    oci.push_blob(source, data)
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(data), "from": source})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_mount_without_from_finds_a_blob_anywhere_in_the_registry(oci: Registry, repo: str) -> None:
    data = random_bytes(42)
    oci.push_blob(unique_repo("push"), data)
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(data)})
    assert_blob_created(oci, response, repo, sha256(data), data)


def test_mount_without_from_of_missing_blob_starts_an_upload(oci: Registry, repo: str) -> None:
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(b"hello world")})
    assert response.status_code == 202
    assert path_of(response.headers["Location"]).startswith(f"/v2/{repo}/blobs/uploads/")


def test_mount_of_missing_blob_falls_back_to_202_upload_that_works(oci: Registry, repo: str) -> None:
    data = random_bytes(42)
    source = unique_repo("push")
    oci.push_blob(source, b"something else")
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(data), "from": source})
    assert response.status_code == 202
    assert path_of(response.headers["Location"]).startswith(f"/v2/{repo}/blobs/uploads/")
    put = oci.put_upload(response.headers["Location"], sha256(data), data)
    assert_blob_created(oci, put, repo, sha256(data), data)


def test_mount_from_a_repository_without_the_blob_returns_202(oci: Registry, repo: str) -> None:
    data = random_bytes(42)
    oci.push_blob(unique_repo("push"), data)  # in the registry, but not in `from`
    response = oci.request("POST", f"/v2/{repo}/blobs/uploads/",
                           params={"mount": sha256(data), "from": unique_repo("push")})
    assert response.status_code == 202
    assert oci.blob(repo, sha256(data)).status_code == 404


# -- manifests -----------------------------------------------------------------------


def test_put_manifest_by_tag_returns_201_with_location_and_digest(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="v1")
    response = oci.put_manifest(repo, "v1", image.body)
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert path_of(response.headers["Location"]) == f"/v2/{repo}/manifests/{image.digest}"
    assert oci.manifest(repo, "v1").content == image.body


def test_put_manifest_by_digest_returns_201(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo)  # pushed by digest
    assert oci.manifest(repo, image.digest).content == image.body
    assert oci.tags(repo).json()["tags"] == []


def test_same_manifest_under_several_tags(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="test0")
    for i in range(1, 4):
        response = oci.put_manifest(repo, f"test{i}", image.body)
        assert response.status_code == 201
        assert response.headers["Location"]
    for i in range(4):
        assert oci.manifest(repo, f"test{i}").headers["Docker-Content-Digest"] == image.digest


def test_pushing_a_tag_again_moves_it(oci: Registry, repo: str) -> None:
    first = oci.push_image(repo, tag="latest")
    second = oci.push_image(repo, tag="latest")
    assert oci.manifest(repo, "latest").content == second.body
    assert oci.manifest(repo, first.digest).content == first.body


def test_manifest_with_no_layers_is_accepted(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo, tag="emptylayer", layers=0)
    assert json.loads(oci.manifest(repo, "emptylayer").content)["layers"] == []
    assert image.layers == []


def test_manifest_with_data_field_and_unknown_fields_is_stored_byte_exact(oci: Registry, repo: str) -> None:
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    oci.push_blob(repo, config)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {**descriptor(OCI_CONFIG, config), "data": base64.b64encode(config).decode(),
                   "newUnspecifiedField": base64.b64encode(b"hello world").decode()},
        "layers": [],
        "x-vendor": {"nested": [1, 2, 3]},
    }
    body = json.dumps(doc, indent="   ").encode() + b"\n"
    digest = oci.push_manifest(repo, "custom", body)
    assert digest == sha256(body)
    assert oci.manifest(repo, "custom").content == body


def test_content_type_parameters_are_ignored(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo)
    response = oci.put_manifest(repo, "withparams", image.body, OCI_MANIFEST + "; charset=utf-8")
    assert response.status_code == 201


def test_manifest_without_media_type_field_takes_the_content_type(oci: Registry, repo: str) -> None:
    config = canonical({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    oci.push_blob(repo, config)
    body = canonical({"schemaVersion": 2, "config": descriptor(OCI_CONFIG, config), "layers": []})
    oci.push_manifest(repo, "nomediatype", body, OCI_MANIFEST)
    response = oci.manifest(repo, "nomediatype")
    assert response.content == body
    assert response.headers["Content-Type"] == OCI_MANIFEST


def test_docker_schema2_manifest_and_manifest_list(oci: Registry, repo: str) -> None:
    amd64 = oci.push_image(repo, media_type=DOCKER_MANIFEST)
    arm64 = oci.push_image(repo, media_type=DOCKER_MANIFEST)
    body = canonical({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": amd64.digest, "size": len(amd64.body),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": DOCKER_MANIFEST, "digest": arm64.digest, "size": len(arm64.body),
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    })
    digest = oci.push_manifest(repo, "multi", body, DOCKER_MANIFEST_LIST)
    response = oci.manifest(repo, "multi", accept=DOCKER_MANIFEST_LIST)
    assert response.content == body
    assert response.headers["Content-Type"] == DOCKER_MANIFEST_LIST
    assert response.headers["Docker-Content-Digest"] == digest
    assert oci.manifest(repo, amd64.digest, accept=DOCKER_MANIFEST).headers["Content-Type"] == DOCKER_MANIFEST


def test_oci_index_of_images_and_a_nested_index(oci: Registry, repo: str) -> None:
    image = oci.push_image(repo)
    inner = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.body)}]})
    inner_digest = oci.push_manifest(repo, sha256(inner), inner, OCI_INDEX)
    outer = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": inner_digest, "size": len(inner)},
        {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.body)}],
        "annotations": {"org.opencontainers.image.ref.name": "outer"}})
    oci.push_manifest(repo, "outer", outer, OCI_INDEX)
    assert oci.manifest(repo, "outer", accept=OCI_INDEX).content == outer


def test_artifact_with_subject_returns_oci_subject(oci: Registry, repo: str) -> None:
    subject = oci.push_image(repo, tag="subject")
    digest, body, response = oci.push_referrer(repo, subject, artifact_type="application/vnd.example.sbom")
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest
    assert response.headers["Docker-Content-Digest"] == digest
    assert oci.manifest(repo, digest).content == body


def test_artifact_whose_subject_is_not_pushed_is_accepted(oci: Registry, repo: str) -> None:
    body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})
    ghost = Image(repo, sha256(body), body, OCI_MANIFEST, b"", [])  # never pushed
    _, _, response = oci.push_referrer(repo, ghost, artifact_type="application/vnd.example.sig")
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == ghost.digest


def test_index_with_subject_and_artifact_type_returns_oci_subject(oci: Registry, repo: str) -> None:
    subject = oci.push_image(repo)
    child = oci.push_image(repo)
    body = canonical({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.food.stand",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child.digest, "size": len(child.body)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.body)},
        "annotations": {"org.opencontainers.conformance.test": "test index"},
    })
    response = oci.put_manifest(repo, sha256(body), body, OCI_INDEX)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest


def test_oci_artifact_manifest_media_type_is_accepted(oci: Registry, repo: str) -> None:
    subject = oci.push_image(repo)
    payload = random_bytes(20)
    oci.push_blob(repo, payload)
    body = canonical({
        "mediaType": OCI_ARTIFACT_MANIFEST, "artifactType": "application/vnd.example.note",
        "blobs": [descriptor("text/plain", payload)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.body)},
    })
    response = oci.put_manifest(repo, "note", body, OCI_ARTIFACT_MANIFEST)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest
    assert oci.manifest(repo, "note", accept=OCI_ARTIFACT_MANIFEST).headers["Content-Type"] == OCI_ARTIFACT_MANIFEST


def test_image_with_empty_config_and_artifact_type(oci: Registry, repo: str) -> None:
    oci.push_blob(repo, EMPTY_JSON)
    payload = random_bytes(10)
    oci.push_blob(repo, payload)
    body = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.thing",
        "config": descriptor(OCI_EMPTY, EMPTY_JSON), "layers": [descriptor("application/vnd.example.thing", payload)],
    })
    assert oci.push_manifest(repo, "artifact", body) == digest_of(body)


def test_foreign_layers_need_not_be_pushed(oci: Registry, repo: str) -> None:
    config = canonical({"architecture": "amd64", "os": "windows", "rootfs": {"type": "layers", "diff_ids": []}})
    oci.push_blob(repo, config)
    body = canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, config),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": sha256(b"not here"), "size": 8, "urls": ["https://example.com/layer"]}],
    })
    assert oci.put_manifest(repo, "foreign", body).status_code == 201
