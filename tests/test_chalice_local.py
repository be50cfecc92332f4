"""What the Lambda app in app.py must get right wherever it is served from HTTP: under
`chalice local` (greedy routes for repository names with slashes, bodies of any
Content-Type or none or a chunked one reaching the api unchanged, HEAD answers with
the GET's length) and behind the API Gateway + Lambda stand-in (tests/lambda_gateway.py)
as an HTTP API and as a REST API, which build real proxy events with the platform's
limits and base64 bodies. The same assertions hold through all three."""
from __future__ import annotations

import http.client
import json
from typing import Iterator, Optional
from urllib.parse import urlsplit

import pytest
import requests

from .clients_servers import chalice_local, needs_chalice
from .conftest import RunningRegistry
from .lambda_gateway import lambda_gateway
from .oci_client import OCI_MANIFEST, digest_of

NESTED = "org/team/project/sub/image"
ALL_BYTES = bytes(range(256)) * 64  # every byte value, so a text or base64 slip shows


@pytest.fixture(scope="module", params=[pytest.param("chalice-local", marks=needs_chalice),
                                        "lambda-http-api", "lambda-rest-api"])
def local(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    root = tmp_path_factory.mktemp(request.param) / "data"
    root.mkdir()
    if request.param == "chalice-local":
        with chalice_local(root) as url:
            yield RunningRegistry(url, root)
        return
    env = {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root), "REGISTRY_HTTP_SECRET": "test-secret"}
    mode = "http" if request.param == "lambda-http-api" else "rest"
    with lambda_gateway(env, mode, workdir=root.parent) as gateway:
        yield RunningRegistry(gateway.url, root)
        gateway.assert_nothing_over_the_limit_reached_the_function()


def raw_request(
    url: str, method: str, target: str, headers: dict[str, str], body: Optional[bytes] = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly these headers (http.client adds only Host and Content-Length)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def start_upload(url: str, name: str) -> str:
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", timeout=10)
    assert response.status_code == 202, response.text
    return response.headers["Location"]


def path_of(location: str) -> str:
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def push_blob(url: str, name: str, data: bytes) -> str:
    digest = digest_of(data)
    response = requests.post(
        f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data,
        headers={"Content-Type": "application/octet-stream"}, timeout=10,
    )
    assert response.status_code == 201, response.text
    return digest


def push_manifest(url: str, name: str, tag: str, layer: bytes) -> tuple[str, bytes]:
    config = b'{"architecture":"amd64","os":"linux"}'
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(url, name, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": push_blob(url, name, layer), "size": len(layer)}],
    }, indent=3).encode()
    response = requests.put(
        f"{url}/v2/{name}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST}, timeout=10
    )
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest_of(manifest)
    return digest_of(manifest), manifest


# -- repository names with several slashes -------------------------------------------


def test_a_repository_name_with_several_slashes_works_everywhere(local: RunningRegistry) -> None:
    url = local.url
    digest, manifest = push_manifest(url, NESTED, "1.0", ALL_BYTES)

    response = requests.get(f"{url}/v2/{NESTED}/manifests/1.0", headers={"Accept": OCI_MANIFEST}, timeout=10)
    assert response.status_code == 200
    assert response.content == manifest
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert response.headers["Docker-Content-Digest"] == digest

    blob = requests.get(f"{url}/v2/{NESTED}/blobs/{digest_of(ALL_BYTES)}", timeout=10)
    assert blob.status_code == 200 and blob.content == ALL_BYTES

    tags = requests.get(f"{url}/v2/{NESTED}/tags/list", timeout=10).json()
    assert tags == {"name": NESTED, "tags": ["1.0"]}
    assert NESTED in requests.get(f"{url}/v2/_catalog", timeout=10).json()["repositories"]
    referrers = requests.get(f"{url}/v2/{NESTED}/referrers/{digest}", timeout=10)
    assert referrers.status_code == 200 and referrers.json()["manifests"] == []

    location = start_upload(url, NESTED)
    assert urlsplit(location).path.startswith(f"/v2/{NESTED}/blobs/uploads/")
    assert requests.get(location, timeout=10).status_code == 204
    assert requests.delete(location, timeout=10).status_code == 204

    on_disk = local.root / "docker/registry/v2/repositories" / NESTED / "_manifests/tags/1.0/current/link"
    assert on_disk.read_bytes() == digest.encode()


def test_names_that_only_look_like_routes_are_still_names(local: RunningRegistry) -> None:
    """Path parts named like endpoints (`blobs`, `manifests`, `tags`) belong to the name."""
    name = "x/blobs/manifests/tags"
    digest, _ = push_manifest(local.url, name, "v1", b"layer of an oddly named repository")
    response = requests.head(
        f"{local.url}/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == digest


def test_an_invalid_name_is_an_oci_error_not_a_gateway_error(local: RunningRegistry) -> None:
    response = requests.get(f"{local.url}/v2/Upper/Case/tags/list", timeout=10)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "NAME_INVALID"
    response = requests.get(f"{local.url}/v2/some/repo/nonsense", timeout=10)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"]


# -- request bodies --------------------------------------------------------------------


def test_a_patch_without_content_type_reaches_the_upload(local: RunningRegistry) -> None:
    location = start_upload(local.url, NESTED)
    status, headers, _ = raw_request(local.url, "PATCH", path_of(location), {}, ALL_BYTES)
    assert status == 202
    assert headers["range"] == f"0-{len(ALL_BYTES) - 1}"
    put = path_of(headers["location"]) + f"&digest={digest_of(ALL_BYTES)}"
    status, headers, body = raw_request(local.url, "PUT", put, {"Content-Length": "0"})
    assert status == 201, body
    assert headers["docker-content-digest"] == digest_of(ALL_BYTES)


@pytest.mark.parametrize(
    "content_type",
    ["*/*", "application/json", "text/plain; charset=utf-8", "application/x-www-form-urlencoded"],
)
def test_a_binary_chunk_of_any_content_type_arrives_unchanged(
    local: RunningRegistry, content_type: str
) -> None:
    data = ALL_BYTES + content_type.encode()
    location = start_upload(local.url, "bodies/typed")
    response = requests.patch(location, data=data, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code == 202, response.text
    response = requests.put(response.headers["Location"], params={"digest": digest_of(data)}, timeout=10)
    assert response.status_code == 201, response.text
    blob = requests.get(f"{local.url}/v2/bodies/typed/blobs/{digest_of(data)}", timeout=10)
    assert blob.content == data


def test_a_chunked_request_body_is_read_and_the_connection_stays_usable(local: RunningRegistry) -> None:
    """Transfer-Encoding: chunked, as docker, podman and skopeo send streamed layers."""
    location = start_upload(local.url, "bodies/chunked")
    parts = urlsplit(local.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        pieces = [ALL_BYTES[:1000], ALL_BYTES[1000:1001], ALL_BYTES[1001:]]
        headers = {"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"}
        connection.request("PATCH", path_of(location), iter(pieces), headers, encode_chunked=True)
        response = connection.getresponse()
        response.read()
        assert response.status == 202
        assert response.getheader("Range") == f"0-{len(ALL_BYTES) - 1}"
        # the same connection carries the next request: nothing of the body was left behind
        put = path_of(response.getheader("Location")) + f"&digest={digest_of(ALL_BYTES)}"
        connection.request("PUT", put, body=b"", headers={"Content-Length": "0"})
        response = connection.getresponse()
        assert response.status == 201, response.read()
        response.read()
    finally:
        connection.close()


def test_a_monolithic_put_of_an_empty_blob(local: RunningRegistry) -> None:
    location = start_upload(local.url, "bodies/empty")
    status, _, body = raw_request(local.url, "PUT", path_of(location) + f"&digest={digest_of(b'')}", {})
    assert status == 201, body
    head = requests.head(f"{local.url}/v2/bodies/empty/blobs/{digest_of(b'')}", timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == "0"


# -- responses ---------------------------------------------------------------------------


def test_a_blob_head_has_the_blob_size_as_content_length(local: RunningRegistry) -> None:
    digest = push_blob(local.url, "heads/blob", ALL_BYTES)
    status, headers, body = raw_request(local.url, "HEAD", f"/v2/heads/blob/blobs/{digest}", {})
    assert status == 200
    assert int(headers["content-length"]) == len(ALL_BYTES)
    assert headers["docker-content-digest"] == digest
    assert headers["etag"] == f'"{digest}"'
    assert body == b""


def test_a_manifest_head_has_the_manifest_size_as_content_length(local: RunningRegistry) -> None:
    digest, manifest = push_manifest(local.url, "heads/manifest", "v1", b"a layer")
    for reference in ("v1", digest):
        response = requests.head(
            f"{local.url}/v2/heads/manifest/manifests/{reference}",
            headers={"Accept": OCI_MANIFEST}, timeout=10,
        )
        assert response.status_code == 200
        assert int(response.headers["Content-Length"]) == len(manifest)
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == digest


def test_an_unknown_blob_head_is_404_without_a_body(local: RunningRegistry) -> None:
    """Keep-alive clients read no body after HEAD: one would corrupt the next response."""
    parts = urlsplit(local.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("HEAD", f"/v2/heads/blob/blobs/{digest_of(b'never pushed')}")
        response = connection.getresponse()
        assert response.status == 404
        response.read()
        connection.request("GET", "/v2/")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b"{}"
    finally:
        connection.close()


def test_range_reads_and_conditional_gets(local: RunningRegistry) -> None:
    digest = push_blob(local.url, "reads/blob", ALL_BYTES)
    url = f"{local.url}/v2/reads/blob/blobs/{digest}"
    response = requests.get(url, headers={"Range": "bytes=100-355"}, timeout=10)
    assert response.status_code == 206
    assert response.content == ALL_BYTES[100:356]
    assert response.headers["Content-Range"] == f"bytes 100-355/{len(ALL_BYTES)}"
    response = requests.get(url, headers={"Range": f"bytes={len(ALL_BYTES)}-"}, timeout=10)
    assert response.status_code == 416
    response = requests.get(url, headers={"If-None-Match": f'"{digest}"'}, timeout=10)
    assert response.status_code == 304 and response.content == b""


def test_upload_locations_point_back_at_the_server(local: RunningRegistry) -> None:
    location = start_upload(local.url, "uploads/where")
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == local.url
    status = requests.get(location, timeout=10)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-0"
