"""Bad input over HTTP: every malformed request gets the spec's 4xx and error body, never a 500.

Names, digests, Range and Content-Range headers, manifest bodies, upload tokens and
paginations are attacked through a running `stratus serve`; raw requests send paths
byte for byte (dot segments, percent-encodings) the way a hostile client would. The
last test checks that nothing was written outside the storage root's registry layout.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import RunningRegistry, backend_only
from .oci_client import (
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    OCTET_STREAM,
    SPEC_ERROR_CODES,
    Image,
    Registry,
    assert_client_error,
    assert_error,
    canonical,
    descriptor,
    raw_request,
    send_truncated,
    sha256,
    unique_repo,
)

MAX_MANIFEST = 4 * 1024 * 1024
A_DIGEST = sha256(b"hello world")


@pytest.fixture(scope="module")
def image(oci: Registry) -> Image:
    return oci.push_image(unique_repo("bad"), tag="good")


def raw(oci: Registry, method: str, target: str, **kwargs):
    return raw_request(oci.url, method, target, **kwargs)


def assert_raw_error(response, status: int, *codes: str) -> None:
    assert response.status == status, (response.status, response.body[:300])
    if response.body:
        code = assert_client_error(response.status, response.body, response.headers)
        if codes:
            assert code in codes, code


# -- repository names ------------------------------------------------------------------

INVALID_NAMES = {
    "upper case": "Upper/case",
    "upper case component": "lower/Upper",
    "dot dot component": "a/../b",
    "dot dot alone": "..",
    "dot dot leading": "../../etc",
    "single dot": "a/./b",
    "empty component": "a//b",
    "leading separator": "/a",
    "trailing separator": "a/",
    "leading dash": "-a",
    "trailing dot": "a.",
    "double dot separator": "a..b",
    "triple underscore": "a___b",
    "layout folder": "a/_manifests",
    "underscore component": "_uploads",
    "encoded space": "a%20b",
    "encoded dot dot": "%2e%2e",
    "encoded dot dot component": "a/%2E%2E/b",
    "encoded leading slash": "%2Fa",
    "encoded trailing slash": "a%2F",
    "encoded double slash": "a%2F%2Fb",
    "encoded nul": "a%00b",
    "encoded non-ascii": "caf%C3%A9",
    "encoded backslash": "a%5Cb",
    "over 255 characters": "a" * 256,
    "over 255 characters in components": "/".join(["abcdefghij"] * 24),
}

NAME_ENDPOINTS = [
    ("GET", "/v2/{name}/tags/list"),
    ("GET", "/v2/{name}/manifests/latest"),
    ("PUT", "/v2/{name}/manifests/latest"),
    ("DELETE", "/v2/{name}/manifests/" + A_DIGEST),
    ("GET", "/v2/{name}/blobs/" + A_DIGEST),
    ("DELETE", "/v2/{name}/blobs/" + A_DIGEST),
    ("POST", "/v2/{name}/blobs/uploads/"),
    ("POST", "/v2/{name}/blobs/uploads/?digest=" + A_DIGEST),
    ("GET", "/v2/{name}/referrers/" + A_DIGEST),
]


@pytest.mark.parametrize("name", INVALID_NAMES.values(), ids=INVALID_NAMES.keys())
def test_invalid_repository_name_returns_400_name_invalid(oci: Registry, name: str) -> None:
    for method, template in NAME_ENDPOINTS:
        body = b"hello world" if method in ("PUT", "POST") else None
        response = raw(oci, method, template.format(name=name), body=body)
        assert_raw_error(response, 400, "NAME_INVALID")
    head = raw(oci, "HEAD", f"/v2/{name}/manifests/latest")
    assert head.status == 400


def test_mount_from_an_invalid_name_starts_a_plain_upload(oci: Registry) -> None:
    repo = unique_repo("bad")
    for source in ("../../etc", "Upper", "a//b"):
        response = oci.request("POST", f"/v2/{repo}/blobs/uploads/", params={"mount": A_DIGEST, "from": source})
        assert response.status_code == 202
        assert urlsplit(response.headers["Location"]).path.startswith(f"/v2/{repo}/blobs/uploads/")


def test_encoded_slash_between_components_is_never_a_server_error(oci: Registry) -> None:
    response = raw(oci, "GET", "/v2/a%2Fb/tags/list")
    assert_raw_error(response, response.status)
    assert response.status in (400, 404)


def test_name_of_255_characters_is_valid(oci: Registry) -> None:
    name = "a" * 127 + "/" + "b" * 127
    assert_error(oci.tags(name), 404, "NAME_UNKNOWN")


# -- digests ---------------------------------------------------------------------------

INVALID_DIGESTS = {
    "too short": "sha256:abc",
    "too long": "sha256:" + "a" * 65,
    "one short": "sha256:" + "a" * 63,
    "upper-case hex": "sha256:" + "A" * 64,
    "non-hex": "sha256:" + "g" * 64,
    "unknown algorithm": "md5:" + "a" * 32,
    "upper-case algorithm": "SHA256:" + "a" * 64,
    "sha512 with sha256 length": "sha512:" + "a" * 64,
    "empty algorithm": ":" + "a" * 64,
    "empty hex": "sha256:",
    "encoded dot dot": "sha256:%2e%2e",
}


@pytest.mark.parametrize("digest", INVALID_DIGESTS.values(), ids=INVALID_DIGESTS.keys())
def test_invalid_digest_returns_400_digest_invalid(oci: Registry, image: Image, digest: str) -> None:
    repo = image.repo
    for method, target in [
        ("GET", f"/v2/{repo}/blobs/{digest}"),
        ("DELETE", f"/v2/{repo}/blobs/{digest}"),
        ("GET", f"/v2/{repo}/manifests/{digest}"),
        ("DELETE", f"/v2/{repo}/manifests/{digest}"),
        ("GET", f"/v2/{repo}/referrers/{digest}"),
    ]:
        assert_raw_error(raw(oci, method, target), 400, "DIGEST_INVALID")
    assert raw(oci, "HEAD", f"/v2/{repo}/blobs/{digest}").status == 400


@pytest.mark.parametrize("digest", INVALID_DIGESTS.values(), ids=INVALID_DIGESTS.keys())
def test_invalid_digest_on_upload_returns_400_and_writes_no_blob(oci: Registry, image: Image, digest: str) -> None:
    repo = image.repo
    location = oci.upload_location(repo)
    put = oci.request("PUT", location + "&digest=" + digest, data=b"data", headers={"Content-Type": OCTET_STREAM})
    assert_error(put, 400, "DIGEST_INVALID")
    post = oci.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data=b"data")
    assert_error(post, 400, "DIGEST_INVALID")
    manifest = oci.request("PUT", f"/v2/{repo}/manifests/{digest}", data=image.body,
                           headers={"Content-Type": OCI_MANIFEST})
    assert_error(manifest, 400, "DIGEST_INVALID")


def test_put_without_digest_returns_400(oci: Registry, image: Image) -> None:
    assert_error(oci.request("PUT", oci.upload_location(image.repo), data=b"x"), 400, "DIGEST_INVALID")


def test_digest_that_is_a_valid_tag_is_treated_as_a_tag(oci: Registry, image: Image) -> None:
    assert_error(oci.manifest(image.repo, "sha256" + "a" * 64), 404, "MANIFEST_UNKNOWN")


# -- Range and Content-Range -----------------------------------------------------------


@pytest.mark.parametrize("value", ["bytes=abc", "bytes=1-2-3", "bytes=0-1,3-4", "bytes", "bytes=--1",
                                   "bytes=99999999999999999999-", "bytes= 1-2x"])
def test_malformed_range_returns_416(oci: Registry, image: Image, value: str) -> None:
    response = oci.blob(image.repo, image.config_digest, headers={"Range": value})
    assert_error(response, 416)
    assert response.headers["Content-Range"] == f"bytes */{len(image.config)}"


@pytest.mark.parametrize("value", ["abc", "0-", "-5", "5-1", "0-4,5-6", "", "0-99999999999999999999",
                                   "bytes 0-4/x", "1-5"])
def test_malformed_or_misplaced_content_range_returns_416_and_keeps_the_session(
    oci: Registry, image: Image, value: str
) -> None:
    location = oci.upload_location(image.repo)
    response = oci.patch(location, b"hello", value)
    assert_error(response, 416, "BLOB_UPLOAD_INVALID")
    status = oci.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"


def test_body_shorter_than_content_length_returns_400_size_invalid(oci: Registry, image: Image) -> None:
    location = oci.upload_location(image.repo)
    target = urlsplit(location)
    response = send_truncated(oci.url, "PATCH", f"{target.path}?{target.query}", 100, b"only ten b")
    assert_raw_error(response, 400, "SIZE_INVALID")
    status = oci.get(location)
    assert status.status_code == 204  # the session survives; its Range says where to resume


def test_monolithic_put_shorter_than_content_length_stores_no_blob(oci: Registry, image: Image) -> None:
    location = urlsplit(oci.upload_location(image.repo))
    data = b"0123456789" * 10
    response = send_truncated(oci.url, "PUT", f"{location.path}?{location.query}&digest={sha256(data)}", 100,
                              data[:50])
    assert_raw_error(response, 400, "SIZE_INVALID")
    assert oci.blob(image.repo, sha256(data)).status_code == 404


# -- manifests -------------------------------------------------------------------------


def _image_doc(image: Image) -> dict:
    return json.loads(image.body)


BROKEN_JSON = {
    "not json": b"{not json",
    "empty": b"",
    "array": b"[]",
    "string": b'"manifest"',
    "null": b"null",
    "not utf-8": b"\xff\xfe\x00",
    "truncated": b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode(),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "nan": b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "x": NaN}',
}


@pytest.mark.parametrize("body", BROKEN_JSON.values(), ids=BROKEN_JSON.keys())
def test_broken_json_manifest_returns_400_manifest_invalid(oci: Registry, image: Image, body: bytes) -> None:
    assert_error(oci.put_manifest(image.repo, "broken", body), 400, "MANIFEST_INVALID")


def _mutations(image: Image) -> dict:
    def change(**fields) -> bytes:
        return canonical({**_image_doc(image), **fields})

    config = _image_doc(image)["config"]
    return {
        "schemaVersion as string": change(schemaVersion="2"),
        "schemaVersion 3": change(schemaVersion=3),
        "no config": canonical({k: v for k, v in _image_doc(image).items() if k != "config"}),
        "config not an object": change(config="sha256:abc"),
        "config digest invalid": change(config={**config, "digest": "sha256:nothex"}),
        "config size negative": change(config={**config, "size": -1}),
        "config size fractional": change(config={**config, "size": 1.5}),
        "config size boolean": change(config={**config, "size": True}),
        "config without mediaType": change(config={k: v for k, v in config.items() if k != "mediaType"}),
        "layers not a list": change(layers={"a": 1}),
        "layer not an object": change(layers=[1]),
        "annotations not strings": change(annotations={"a": 1}),
        "subject not an object": change(subject="sha256:abc"),
        "mediaType not a string": change(mediaType=5),
        "size differs from the blob": change(config={**config, "size": config["size"] + 1}),
        "index with layers but no manifests": canonical({"schemaVersion": 2, "mediaType": OCI_INDEX}),
    }


def test_manifest_with_wrong_field_types_returns_400_manifest_invalid(oci: Registry, image: Image) -> None:
    for label, body in _mutations(image).items():
        media_type = OCI_INDEX if b"image.index" in body else OCI_MANIFEST
        response = oci.put_manifest(image.repo, "mutated", body, media_type)
        assert response.status_code == 400, (label, response.text)
        assert_error(response, 400, "MANIFEST_INVALID")


SCHEMA1 = {"schemaVersion": 1, "name": "bad/schema1", "tag": "latest", "architecture": "amd64",
           "fsLayers": [{"blobSum": A_DIGEST}], "history": [{"v1Compatibility": "{}"}]}


@pytest.mark.parametrize("content_type, signed", [
    (DOCKER_SCHEMA1_SIGNED, True),
    ("application/vnd.docker.distribution.manifest.v1+json", False),
    (None, True),
    ("application/json", False),
])
def test_schema1_manifest_returns_400_manifest_invalid(oci: Registry, image: Image, content_type, signed) -> None:
    doc = dict(SCHEMA1)
    if signed:
        doc["signatures"] = [{"header": {"alg": "ES256"}, "signature": "abc", "protected": "abc"}]
    response = oci.put_manifest(image.repo, "schema1", canonical(doc), content_type)
    assert_error(response, 400, "MANIFEST_INVALID")


def test_unknown_manifest_media_type_returns_400_manifest_invalid(oci: Registry, image: Image) -> None:
    unknown = "application/vnd.example.unknown+json"
    doc = {**_image_doc(image), "mediaType": unknown}
    assert_error(oci.put_manifest(image.repo, "unknown", canonical(doc), unknown), 400, "MANIFEST_INVALID")
    no_type = {k: v for k, v in _image_doc(image).items() if k != "mediaType"}
    assert_error(oci.put_manifest(image.repo, "unknown", canonical(no_type), unknown), 400, "MANIFEST_INVALID")


def test_content_type_contradicting_the_body_returns_400(oci: Registry, image: Image) -> None:
    for content_type in (OCI_INDEX, DOCKER_MANIFEST):
        assert_error(oci.put_manifest(image.repo, "contra", image.body, content_type), 400, "MANIFEST_INVALID")


def test_manifest_referencing_missing_blobs_returns_400_manifest_blob_unknown(oci: Registry, image: Image) -> None:
    doc = _image_doc(image)
    missing_layer = {**doc, "layers": doc["layers"] + [descriptor(OCI_LAYER, b"never pushed")]}
    missing_config = {**doc, "config": descriptor(OCI_CONFIG, b"never pushed config")}
    for body in (canonical(missing_layer), canonical(missing_config)):
        assert_error(oci.put_manifest(image.repo, "missing", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert_error(oci.manifest(image.repo, "missing"), 404, "MANIFEST_UNKNOWN")


def test_manifest_referencing_a_blob_of_another_repository_returns_manifest_blob_unknown(
    oci: Registry, image: Image
) -> None:
    assert_error(oci.put_manifest(unique_repo("bad"), "elsewhere", image.body), 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_referencing_missing_manifest_returns_400_manifest_blob_unknown(oci: Registry, image: Image) -> None:
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.body)},
        {"mediaType": OCI_MANIFEST, "digest": A_DIGEST, "size": 11}]})
    assert_error(oci.put_manifest(image.repo, "index", index, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


def _padded_manifest(image: Image, size: int) -> bytes:
    """The image's manifest with an annotation padding it to exactly `size` bytes."""
    doc = {**_image_doc(image), "annotations": {"pad": ""}}
    bare = len(json.dumps(doc).encode())
    doc["annotations"]["pad"] = "x" * (size - bare)
    body = json.dumps(doc).encode()
    assert len(body) == size
    return body


def test_manifest_over_4_mib_returns_413(oci: Registry, image: Image) -> None:
    body = _padded_manifest(image, MAX_MANIFEST + 1)
    assert_error(oci.put_manifest(image.repo, "big", body), 413, "SIZE_INVALID")
    streamed = oci.request("PUT", f"/v2/{image.repo}/manifests/big", data=iter([body[:1 << 20], body[1 << 20:]]),
                           headers={"Content-Type": OCI_MANIFEST})
    assert_error(streamed, 413, "SIZE_INVALID")
    assert_error(oci.manifest(image.repo, "big"), 404, "MANIFEST_UNKNOWN")


def test_manifest_of_exactly_4_mib_is_accepted(oci: Registry, image: Image) -> None:
    body = _padded_manifest(image, MAX_MANIFEST)
    assert oci.push_manifest(image.repo, "fourmib", body) == sha256(body)


@pytest.mark.parametrize("tag", ["-leading-dash", ".leading-dot", "t" * 129, "a%2Fb", "%2e%2e", "tag%00"])
def test_invalid_tag_returns_a_4xx_spec_error(oci: Registry, image: Image, tag: str) -> None:
    response = raw(oci, "PUT", f"/v2/{image.repo}/manifests/{tag}", body=image.body,
                   headers={"Content-Type": OCI_MANIFEST})
    assert_raw_error(response, response.status)
    assert response.status in (400, 404)
    assert_raw_error(raw(oci, "GET", f"/v2/{image.repo}/manifests/{tag}"), 404)


def test_manifest_put_by_digest_not_matching_the_body_returns_400(oci: Registry, image: Image) -> None:
    assert_error(oci.put_manifest(image.repo, A_DIGEST, image.body), 400, "DIGEST_INVALID")


# -- upload session tokens -------------------------------------------------------------


def _split(location: str) -> tuple[str, str]:
    parts = urlsplit(location)
    token = parts.query.split("_state=", 1)[1]
    return parts.path, token


def _flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


def test_forged_upload_token_returns_404_blob_upload_unknown(oci: Registry, image: Image) -> None:
    path, token = _split(oci.upload_location(image.repo))
    payload, mac = token.split(".", 1)
    forged = [
        f"{payload}.{_flip(mac)}",  # signature tampered
        f"{_flip(payload)}.{mac}",  # payload tampered
        "garbage",
        "no.dots.here!",
        f"{payload}.",
        ".",
    ]
    for bad in forged:
        for method in ("PATCH", "PUT", "GET", "DELETE"):
            response = oci.request(method, f"{path}?_state={bad}&digest={A_DIGEST}", data=b"x")
            assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


def test_upload_token_of_another_upload_or_repository_returns_404(oci: Registry, image: Image) -> None:
    path_a, token_a = _split(oci.upload_location(image.repo))
    path_b, _ = _split(oci.upload_location(image.repo))
    other_repo = unique_repo("bad")
    upload_id = path_a.rsplit("/", 1)[1]
    for target in (f"{path_b}?_state={token_a}", f"/v2/{other_repo}/blobs/uploads/{upload_id}?_state={token_a}",
                   f"/v2/{other_repo}/blobs/uploads/{upload_id}"):
        assert_error(oci.request("PATCH", target, data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert oci.get(f"{path_a}?_state={token_a}").headers["Range"] == "0-0"  # untouched


def test_stale_upload_token_returns_416_with_the_real_range(oci: Registry, image: Image) -> None:
    stale = oci.upload_location(image.repo)
    fresh = oci.patch(stale, b"first chunk").headers["Location"]
    response = oci.patch(stale, b"second chunk")
    assert_error(response, 416)
    assert response.headers["Range"] == "0-10"
    assert oci.patch(fresh, b"second chunk").status_code == 202


def test_token_of_a_cancelled_upload_returns_404(oci: Registry, image: Image) -> None:
    location = oci.upload_location(image.repo)
    assert oci.delete(location).status_code == 204
    for method in ("PATCH", "PUT", "GET"):
        response = oci.request(method, location + f"&digest={A_DIGEST}", data=b"x")
        assert_error(response, 404, "BLOB_UPLOAD_UNKNOWN")


@pytest.mark.parametrize("upload_id", ["not-a-uuid", "%2e%2e", "..%2F..%2Fblobs",
                                       "1D0D3F52-3B55-4BD8-8B0C-2B1E4D7F00AA", "x" * 300])
def test_malformed_upload_id_returns_404(oci: Registry, image: Image, upload_id: str) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = raw(oci, method, f"/v2/{image.repo}/blobs/uploads/{upload_id}?digest={A_DIGEST}", body=b"x")
        assert_raw_error(response, 404, "BLOB_UPLOAD_UNKNOWN", "UNSUPPORTED")


# -- pagination, endpoints, methods ----------------------------------------------------


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "1e3", " 1"])
def test_invalid_pagination_n_returns_400(oci: Registry, image: Image, n: str) -> None:
    assert_error(oci.get("/v2/_catalog", params={"n": n}), 400)
    assert_error(oci.tags(image.repo, n=n), 400)


@pytest.mark.parametrize("target", ["/v2/_catalog/x", "/v3/", "/v2/a/unknown/thing", "/v2/a/tags/list/",
                                    "/v2/a/blobs/uploads/../../x", "/"])
def test_unknown_endpoint_returns_404_with_spec_error(oci: Registry, target: str) -> None:
    assert_raw_error(raw(oci, "GET", target), 404)


@pytest.mark.parametrize("method, template", [
    ("PUT", "/v2/{repo}/tags/list"),
    ("POST", "/v2/{repo}/blobs/{digest}"),
    ("PATCH", "/v2/{repo}/manifests/good"),
    ("DELETE", "/v2/_catalog"),
    ("POST", "/v2/"),
    ("PUT", "/v2/{repo}/referrers/{digest}"),
])
def test_method_not_allowed_returns_405_unsupported(oci: Registry, image: Image, method: str, template: str) -> None:
    response = oci.request(method, template.format(repo=image.repo, digest=image.digest), data=b"")
    assert_error(response, 405, "UNSUPPORTED")
    assert response.headers.get("Allow")


def test_good_content_is_unharmed_by_the_bad_requests(oci: Registry, image: Image) -> None:
    assert oci.manifest(image.repo, "good").content == image.body
    assert oci.blob(image.repo, image.config_digest).content == image.config


# -- nothing outside the layout --------------------------------------------------------

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")


def _check_repository_tree(repositories: Path) -> None:
    """Every directory on the way to a layout folder (`_xxx`) is a valid name component."""
    for path in repositories.rglob("*"):
        parts = path.relative_to(repositories).parts
        name_parts = []
        for part in parts:
            if part.startswith("_"):
                break
            name_parts.append(part)
        else:
            assert path.is_dir(), f"stray file in the repository tree: {path}"
        for part in name_parts:
            assert _COMPONENT.match(part), f"invalid name component on disk: {path}"
        assert len("/".join(name_parts)) <= 255, path


@backend_only("filesystem", "redis")
def test_no_file_exists_outside_the_registry_layout(oci: Registry, stratus: RunningRegistry) -> None:
    # a last round of hostile writes, then look at what is on disk
    for target in ("/v2/a/../../../escape/blobs/uploads/", "/v2/%2e%2e/%2e%2e/escape/blobs/uploads/",
                   "/v2/a/%2e%2e%2f%2e%2e%2fescape/blobs/uploads/", "/v2/..%2Fescape/manifests/latest"):
        response = raw(oci, "POST" if target.endswith("/") else "PUT", target, body=b"{}")
        assert 400 <= response.status < 500
        assert json.loads(response.body)["errors"][0]["code"] in SPEC_ERROR_CODES

    root = stratus.root
    allowed = {Path("docker"), Path("docker/registry"), Path("docker/registry/v2")}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        assert relative in allowed or relative.parts[:3] == ("docker", "registry", "v2"), f"outside layout: {path}"
    v2 = root / "docker" / "registry" / "v2"
    assert {p.name for p in v2.iterdir()} <= {"blobs", "repositories"}
    for blob_dir in (v2 / "blobs").glob("*/*/*"):
        assert re.fullmatch(r"[0-9a-f]{64,128}", blob_dir.name), blob_dir
    _check_repository_tree(v2 / "repositories")
    # and nothing beside the root either (the server's log lives there)
    for sibling in root.parent.iterdir():
        assert sibling == root or re.fullmatch(r"stratus-\d+\.log", sibling.name), f"stray: {sibling}"
