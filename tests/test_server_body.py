"""Request bodies read straight from the socket by `stratus serve` (server._SocketBody).

Raw sockets, so the body can arrive in pieces, share a packet with the headers, be
followed by a pipelined request, or stop short when the client goes away.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
from urllib.parse import urlsplit

import requests

from tests.conftest import RunningRegistry, backend_only


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _read_response(sock: socket.socket, buffered: bytes = b"", head: bool = False) -> tuple[int, dict, bytes]:
    """One response (status, headers, bytes after its body); a HEAD's has none."""
    data = buffered
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed; got {data!r}"
        data += piece
    header_block, rest = data.split(b"\r\n\r\n", 1)
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head else int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return status, headers, rest[length:]


def _start_upload(url: str, name: str) -> str:
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", timeout=30)
    assert response.status_code == 202, response.text
    return urlsplit(response.headers["Location"]).path + "?" + urlsplit(response.headers["Location"]).query


def test_body_sent_in_pieces_then_pipelined_request_on_same_connection(registry_url: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = _start_upload(registry_url, "body/pieces")
    put = (
        f"PUT {location}&digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    head = f"HEAD /v2/body/pieces/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with _connect(registry_url) as sock:
        sock.sendall(put + data[:100])  # some body in the headers' packet
        time.sleep(0.05)
        for start in range(100, len(data), 700_001):
            sock.sendall(data[start:start + 700_001])
            time.sleep(0.01)
        sock.sendall(head)  # pipelined behind the body
        status, headers, rest = _read_response(sock)
        assert status == 201, headers
        status, headers, _ = _read_response(sock, rest, head=True)
        assert status == 200
        assert headers["docker-content-digest"] == digest
        assert headers["content-length"] == str(len(data))
    pulled = requests.get(f"{registry_url}/v2/body/pieces/blobs/{digest}", timeout=30)
    assert pulled.content == data


def test_client_leaving_mid_chunk_keeps_what_arrived_and_server_serves_on(registry_url: str) -> None:
    location = _start_upload(registry_url, "body/short")
    sent = os.urandom(200_000)
    with _connect(registry_url) as sock:
        sock.sendall(
            (
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(sent) * 4}\r\n\r\n"
            ).encode()
            + sent
        )
        time.sleep(0.2)
    time.sleep(0.2)
    status = requests.get(f"{registry_url}{location}", timeout=30)
    assert status.status_code == 204
    assert status.headers["Range"] in ("0-0", f"0-{len(sent) - 1}")
    assert requests.get(f"{registry_url}/v2/", timeout=30).status_code == 200


def test_refused_chunk_body_arriving_late_keeps_the_connection(registry_url: str) -> None:
    """A chunk refused before it is read (unknown upload) must not cost the connection,
    even when its body arrives after the headers, as urllib3 sends it."""
    body = os.urandom(50_000)
    with _connect(registry_url) as sock:
        for _ in range(3):
            sock.sendall(
                (
                    "PATCH /v2/body/late/blobs/uploads/6b9fe12c-dfc6-4d0c-a926-4b54e325bf8e HTTP/1.1\r\n"
                    f"Host: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
            )
            time.sleep(0.05)
            sock.sendall(body)
            status, headers, rest = _read_response(sock)
            assert status == 404 and rest == b"", (headers, rest[:200])
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = _read_response(sock)
        assert status == 200


def _wait_until_locked(path, timeout: float = 60.0) -> None:
    """Until a process holds a flock on the file at path, as the filesystem driver's
    writer does for as long as it appends: read from /proc/locks, never by taking a
    lock, which the writer would find taken. The timeout only bounds a hang."""
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            inode = f":{path.stat().st_ino} "
            with open("/proc/locks") as locks:
                if any(" FLOCK " in line and inode in line for line in locks):
                    return
        assert time.monotonic() < deadline, f"nobody took the writer's lock on {path}"
        time.sleep(0.005)


@backend_only("filesystem", "redis")
def test_a_second_patch_while_a_chunk_is_being_written_is_refused_and_the_first_completes(
    registry_url: str, stratus: RunningRegistry,
) -> None:
    location = _start_upload(registry_url, "body/racing")
    upload_id = urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1]
    data_file = stratus.root / "docker/registry/v2/repositories/body/racing/_uploads" / upload_id / "data"
    chunk = os.urandom(3 << 20)
    with _connect(registry_url) as sock:
        sock.sendall(
            (
                f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: 0-{len(chunk) - 1}\r\nContent-Length: {len(chunk)}\r\n\r\n"
            ).encode()
            + chunk[:1 << 20]
        )
        _wait_until_locked(data_file)  # the first PATCH now holds the upload's writer
        second = requests.patch(
            f"{registry_url}{location}", data=b"intruder", timeout=30,
            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-7"},
        )
        assert second.status_code == 503, second.text
        assert second.json()["errors"][0]["code"] == "UNKNOWN"
        sock.sendall(chunk[1 << 20:])
        status, headers, _ = _read_response(sock)
        assert status == 202, headers
        assert headers["range"] == f"0-{len(chunk) - 1}"
    digest = "sha256:" + hashlib.sha256(chunk).hexdigest()
    after = urlsplit(headers["location"])  # absolute, on the Host the raw request named
    put = requests.put(f"{registry_url}{after.path}?{after.query}&digest={digest}", timeout=30)
    assert put.status_code == 201, put.text
    assert requests.get(f"{registry_url}/v2/body/racing/blobs/{digest}", timeout=30).content == chunk


def test_only_files_with_a_descriptor_go_to_the_servers_file_wrapper(tmp_path) -> None:
    import io

    from chalicelib.api import FileBody, Response
    from chalicelib.adapters.server import wsgi_app

    class Api:
        def __init__(self, file):
            self.file = file

        def handle(self, request):
            return Response(200, [("Content-Length", "3")], FileBody(self.file, 3))

    wrapped = []

    def file_wrapper(file, block):
        wrapped.append(file)
        return iter([b"sendfile"])

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v2/", "wsgi.input": io.BytesIO(),
               "wsgi.file_wrapper": file_wrapper}
    on_disk = tmp_path / "blob"
    on_disk.write_bytes(b"abcdef")
    with open(on_disk, "rb") as real:
        assert list(wsgi_app(Api(real))(dict(environ), lambda *a: None)) == [b"sendfile"]
    assert len(wrapped) == 1

    class NetworkStream(io.RawIOBase):  # like the S3, Azure and RADOS readers
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:3] = b"abc"
            return 3

    assert list(wsgi_app(Api(NetworkStream()))(dict(environ), lambda *a: None)) == [b"abc"]
    assert len(wrapped) == 1  # streamed in pieces, up to Content-Length only


def test_small_responses_pipelined_then_connection_close_arrive_whole(registry_url: str) -> None:
    # a small body leaves in one write with its head (server_uvicorn.Cork): each
    # response must still arrive whole and in order, and "Connection: close" must
    # still close the connection once the last one is out
    requests_ = (
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v2/body/cork/manifests/missing HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with _connect(registry_url) as sock:
        sock.sendall(requests_)
        # each body is read by its Content-Length: one short or late would misalign the next
        status, headers, rest = _read_response(sock)
        assert status == 200
        status, headers, rest = _read_response(sock, rest)
        assert status == 404
        assert headers["content-type"] == "application/json" and int(headers["content-length"]) > 0
        status, headers, rest = _read_response(sock, rest)
        assert status == 200
        assert rest == b""
        assert sock.recv(1) == b"", "the connection stayed open after Connection: close"
