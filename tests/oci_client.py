"""A small OCI distribution client for the HTTP tests, in the protocol's words.

It speaks to a running `stratus serve` with `requests` the way a registry client
would (POST then PUT, chunked PATCHes, manifests by tag and digest), and adds
`raw_request` for the few requests `requests` would rewrite before sending
(dot segments in a path, a Content-Length that does not match the body).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union
from urllib.parse import urljoin, urlsplit

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCTET_STREAM = "application/octet-stream"

# The error codes of distribution-spec 1.1 ("Error Codes" table).
SPEC_ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
})

EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()


def sha256(data: bytes) -> str:
    return digest_of(data, "sha256")


def sha512(data: bytes) -> str:
    return digest_of(data, "sha512")


def unique_repo(prefix: str) -> str:
    """A repository name no other test uses, under a readable prefix."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def canonical(doc: Any) -> bytes:
    """Manifest bytes as a client would send them (indented, like the conformance suite)."""
    return json.dumps(doc, indent="\t").encode()


def error_codes(response: requests.Response) -> list[str]:
    body = response.json()
    assert isinstance(body.get("errors"), list) and body["errors"], body
    for error in body["errors"]:
        assert isinstance(error.get("message"), str), error
    return [error["code"] for error in body["errors"]]


def assert_error(response: requests.Response, status: int, *codes: str) -> None:
    """The response has `status` and a spec error body whose first code is one of `codes`."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    found = error_codes(response)
    assert set(found) <= SPEC_ERROR_CODES, found
    if codes:
        assert found[0] in codes, (found, codes)


def assert_client_error(status: int, body: bytes, headers: Mapping[str, str]) -> str:
    """A raw response is a 4xx whose JSON body carries a spec code; returns the code."""
    assert 400 <= status < 500, (status, body[:300])
    doc = json.loads(body)
    codes = [e["code"] for e in doc["errors"]]
    assert codes and set(codes) <= SPEC_ERROR_CODES, codes
    return codes[0]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


def raw_request(
    base_url: str,
    method: str,
    target: str,
    headers: Optional[Mapping[str, str]] = None,
    body: Union[bytes, Iterable[bytes], None] = None,
    skip_content_length: bool = False,
) -> RawResponse:
    """Send `target` byte for byte (no dot-segment removal, no re-encoding)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        sent = {k.lower() for k in (headers or {})}
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if isinstance(body, (bytes, bytearray)) and "content-length" not in sent and not skip_content_length:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if isinstance(body, (bytes, bytearray)):
            conn.send(body)
        elif body is not None:
            for piece in body:
                conn.send(piece)
        response = conn.getresponse()
        data = response.read()
        return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def send_truncated(base_url: str, method: str, target: str, declared_length: int, body: bytes) -> RawResponse:
    """Declare `declared_length` bytes, send fewer, then half-close: a client that went away."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = (f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {declared_length}\r\n\r\n")
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head_text, _, payload = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return RawResponse(status, headers, payload)


class Registry:
    """A thin client over one registry URL."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    # -- plumbing ------------------------------------------------------------------

    def absolute(self, location: str) -> str:
        return urljoin(self.url + "/", location)

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("allow_redirects", False)
        return self.session.request(method, self.absolute(path_or_url), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("HEAD", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    # -- blobs ---------------------------------------------------------------------

    def start_upload(self, repo: str, **params: str) -> requests.Response:
        return self.request("POST", f"/v2/{repo}/blobs/uploads/", params=params or None,
                            headers={"Content-Length": "0"})

    def upload_location(self, repo: str) -> str:
        response = self.start_upload(repo)
        assert response.status_code == 202, response.text
        return response.headers["Location"]

    def patch(self, location: str, chunk: bytes, content_range: Optional[str] = None) -> requests.Response:
        headers = {"Content-Type": OCTET_STREAM}
        if content_range is not None:
            headers["Content-Range"] = content_range
        return self.request("PATCH", location, data=chunk, headers=headers)

    def put_upload(self, location: str, digest: str, body: bytes = b"", **headers: str) -> requests.Response:
        return self.request("PUT", location, params={"digest": digest}, data=body,
                            headers={"Content-Type": OCTET_STREAM, **headers})

    def push_blob(self, repo: str, data: bytes, algorithm: str = "sha256") -> str:
        """Monolithic POST then PUT; returns the digest."""
        digest = digest_of(data, algorithm)
        response = self.put_upload(self.upload_location(repo), digest, data)
        assert response.status_code == 201, response.text
        return digest

    def blob(self, repo: str, digest: str, **kwargs: Any) -> requests.Response:
        return self.get(f"/v2/{repo}/blobs/{digest}", **kwargs)

    # -- manifests -----------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: Optional[str] = OCI_MANIFEST,
                     **kwargs: Any) -> requests.Response:
        headers = {"Content-Type": media_type} if media_type else {}
        return self.request("PUT", f"/v2/{repo}/manifests/{reference}", data=body, headers=headers, **kwargs)

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        response = self.put_manifest(repo, reference, body, media_type)
        assert response.status_code == 201, response.text
        return response.headers["Docker-Content-Digest"]

    def manifest(self, repo: str, reference: str, accept: str = OCI_MANIFEST, **kwargs: Any) -> requests.Response:
        headers = {"Accept": accept, **kwargs.pop("headers", {})}
        return self.get(f"/v2/{repo}/manifests/{reference}", headers=headers, **kwargs)

    def push_image(self, repo: str, tag: Optional[str] = None, layers: int = 1,
                   media_type: str = OCI_MANIFEST, **fields: Any) -> "Image":
        """Push a config, `layers` random layers and a manifest referencing them."""
        docker = media_type == DOCKER_MANIFEST
        config = canonical({"architecture": "amd64", "os": "linux", "author": uuid.uuid4().hex,
                            "rootfs": {"type": "layers", "diff_ids": []}})
        self.push_blob(repo, config)
        layer_blobs = [random_bytes(64 + i) for i in range(layers)]
        for layer in layer_blobs:
            self.push_blob(repo, layer)
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
            "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, b) for b in layer_blobs],
            **fields,
        }
        body = canonical(doc)
        digest = self.push_manifest(repo, tag or sha256(body), body, media_type)
        assert digest == sha256(body)
        return Image(repo, digest, body, media_type, config, layer_blobs)

    def push_empty_blob(self, repo: str) -> None:
        assert self.push_blob(repo, EMPTY_JSON) == EMPTY_JSON_DIGEST

    def push_referrer(self, repo: str, subject: "Image", artifact_type: Optional[str] = None,
                      config_media_type: str = OCI_EMPTY, annotations: Optional[dict] = None,
                      payload: Optional[bytes] = None) -> tuple[str, bytes, requests.Response]:
        """An artifact (image manifest) whose subject is `subject`; returns digest, body, response."""
        self.push_empty_blob(repo)
        payload = payload if payload is not None else random_bytes(32)
        self.push_blob(repo, payload)
        config = descriptor(config_media_type, EMPTY_JSON) if config_media_type == OCI_EMPTY else None
        if config is None:
            # config.mediaType stands for the artifact type: the config blob is the payload
            config = descriptor(config_media_type, payload)
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["config"] = config
        doc["layers"] = [descriptor(artifact_type or OCI_LAYER, payload)]
        doc["subject"] = {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.body)}
        if annotations:
            doc["annotations"] = annotations
        body = canonical(doc)
        digest = sha256(body)
        response = self.put_manifest(repo, digest, body, OCI_MANIFEST)
        return digest, body, response

    # -- discovery -----------------------------------------------------------------

    def tags(self, repo: str, **params: Any) -> requests.Response:
        return self.get(f"/v2/{repo}/tags/list", params=params or None)

    def referrers(self, repo: str, digest: str, **params: Any) -> requests.Response:
        return self.get(f"/v2/{repo}/referrers/{digest}", params=params or None)


@dataclass(frozen=True)
class Image:
    repo: str
    digest: str
    body: bytes
    media_type: str
    config: bytes
    layers: list

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def layer_digests(self) -> list[str]:
        return [sha256(layer) for layer in self.layers]


def next_link(response: requests.Response) -> Optional[str]:
    """The target of a `Link: <...>; rel="next"` header, or None."""
    link = response.headers.get("Link")
    if not link:
        return None
    target, _, params = link.partition(";")
    assert 'rel="next"' in params.replace(" ", ""), link
    target = target.strip()
    assert target.startswith("<") and target.endswith(">"), link
    return target[1:-1]
