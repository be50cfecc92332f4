"""The one client both registries are driven with: pushes, pulls, manifests.

Plain http.client over one keep-alive connection, bodies sent straight from
memory and received into a preallocated buffer, so the client costs the same
for both servers and as little as it can on a machine the servers share.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Union
from urllib.parse import urlencode, urljoin, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
PIECE = 1 << 20

Body = Union[bytes, memoryview, Iterable[memoryview]]


class RegistryError(RuntimeError):
    pass


def sha256_digest(data: Union[bytes, memoryview]) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Image:
    """A small image whose manifest the request-rate measures fetch."""

    repository: str
    tag: str
    manifest_digest: str
    layer_digest: str
    # HEAD is measured on an empty blob: wrk 4.1 waits for a body after a HEAD whose
    # Content-Length is not 0. The server's work (link read + stat) is the same.
    empty_digest: str


class Client:
    def __init__(self, base_url: str, timeout: float = 600.0, headers: Optional[dict] = None):
        """`headers` go with every request (an Authorization header, say)."""
        parts = urlsplit(base_url)
        self._headers = dict(headers or {})
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _path(self, url: str) -> str:
        """Path and query of a Location, which may be absolute or relative."""
        parts = urlsplit(urljoin(self.base_url + "/", url))
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def request(
        self,
        method: str,
        url: str,
        body: Optional[Body] = None,
        length: Optional[int] = None,
        headers: Optional[dict] = None,
        expect: Iterable[int] = (200,),
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """Send one request on the keep-alive connection; returns the response and body."""
        response = self.send(method, url, body, length, headers)
        data = response.read()
        if response.status not in tuple(expect):
            raise RegistryError(f"{method} {url} -> {response.status}: {data[:500]!r}")
        return response, data

    def send(
        self,
        method: str,
        url: str,
        body: Optional[Body] = None,
        length: Optional[int] = None,
        headers: Optional[dict] = None,
    ) -> http.client.HTTPResponse:
        reused = self._conn is not None and self._conn.sock is not None
        try:
            return self._send_once(method, url, body, length, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            # the server closed an idle keep-alive connection: one retry on a new one
            return self._send_once(method, url, body, length, headers)

    def _send_once(
        self,
        method: str,
        url: str,
        body: Optional[Body],
        length: Optional[int],
        headers: Optional[dict],
    ) -> http.client.HTTPResponse:
        conn = self._connection()
        conn.putrequest(method, self._path(url), skip_accept_encoding=True)
        if body is not None and length is None:
            length = memoryview(body).nbytes  # type: ignore[arg-type]
        if body is not None or method in ("PUT", "POST", "PATCH"):
            conn.putheader("Content-Length", str(length or 0))
        for key, value in {**self._headers, **(headers or {})}.items():
            conn.putheader(key, value)
        try:
            conn.endheaders()
            if body is not None:
                pieces = [body] if isinstance(body, (bytes, bytearray, memoryview)) else body
                for piece in pieces:
                    conn.send(piece)
            return conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            self.close()
            raise

    # -- pushes --------------------------------------------------------------------

    def start_upload(self, repository: str) -> str:
        response, _ = self.request("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        return response.headers["Location"]

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})

    def push_monolithic(self, repository: str, body: Body, length: int, digest: str) -> None:
        """POST, then one PUT carrying the whole blob."""
        location = self.start_upload(repository)
        headers = {"Content-Type": "application/octet-stream"}
        self.request("PUT", self._with_digest(location, digest), body, length, headers, expect=(201,))

    def push_chunked(self, repository: str, data: memoryview, digest: str, chunk: int) -> None:
        """POST, a PATCH per chunk with its Content-Range, then an empty PUT."""
        location = self.start_upload(repository)
        view = memoryview(data)
        for start in range(0, len(view), chunk):
            piece = view[start:start + chunk]
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(piece) - 1}",
            }
            response, _ = self.request("PATCH", location, piece, len(piece), headers, expect=(202,))
            location = response.headers["Location"]
        self.request("PUT", self._with_digest(location, digest), expect=(201,))

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256_digest(data)
        self.push_monolithic(repository, data, len(data), digest)
        return digest

    # -- pulls ---------------------------------------------------------------------

    def pull(self, repository: str, digest: str, into: memoryview) -> float:
        """GET a blob into `into`; the seconds from sending the request to its last byte.
        The content is hashed after the clock stops (RegistryError on a mismatch): one
        core hashes SHA-256 at ~1.8 GB/s here, which capped both registries' pulls when
        it was done as the bytes arrived (see docs/benchmarks.md)."""
        start = time.perf_counter()
        response = self.send("GET", f"/v2/{repository}/blobs/{digest}")
        if response.status != 200:
            data = response.read()
            raise RegistryError(f"GET blob {digest} -> {response.status}: {data[:300]!r}")
        size = int(response.headers["Content-Length"])
        if size > len(into):
            raise RegistryError(f"blob of {size} bytes does not fit the {len(into)}-byte buffer")
        received = 0
        while received < size:
            n = response.readinto(into[received:min(size, received + 4 * PIECE)])
            if not n:
                raise RegistryError(f"connection closed after {received} of {size} bytes")
            received += n
        seconds = time.perf_counter() - start
        got = "sha256:" + hashlib.sha256(into[:size]).hexdigest()
        if got != digest:
            raise RegistryError(f"pulled content hashes to {got}, expected {digest}")
        return seconds

    # -- manifests -----------------------------------------------------------------

    def push_image(self, repository: str, tag: str, layer: bytes) -> Image:
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
        config_digest = self.push_blob(repository, config)
        layer_digest = self.push_blob(repository, layer)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
            }
        ).encode()
        self.request(
            "PUT", f"/v2/{repository}/manifests/{tag}", manifest, headers={"Content-Type": OCI_MANIFEST},
            expect=(201,),
        )
        empty_digest = self.push_blob(repository, b"")
        image = Image(repository, tag, sha256_digest(manifest), layer_digest, empty_digest)
        self.check_image(image, manifest)
        return image

    def check_image(self, image: Image, manifest: bytes) -> None:
        """The three requests the rate measures, answered right once before they are timed."""
        for reference in (image.tag, image.manifest_digest):
            response, body = self.request(
                "GET", f"/v2/{image.repository}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
            )
            if body != manifest or response.headers.get("Docker-Content-Digest") != image.manifest_digest:
                raise RegistryError(f"manifest {reference} came back different")
        for digest, size in ((image.layer_digest, None), (image.empty_digest, "0")):
            response, _ = self.request("HEAD", f"/v2/{image.repository}/blobs/{digest}")
            if response.headers.get("Docker-Content-Digest") != digest:
                raise RegistryError("blob HEAD without the right Docker-Content-Digest")
            if size is not None and response.headers.get("Content-Length") != size:
                raise RegistryError(f"HEAD of the empty blob says Content-Length {response.headers.get('Content-Length')}")


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start
