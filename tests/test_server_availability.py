"""`stratus serve` under slow and hostile clients (issue 14).

Raw sockets on loopback play the hostile clients: uploads whose headers promise a
body that never comes (or stops), downloads nobody reads, connections that never
finish their headers. Each test asserts that other clients are answered
promptly meanwhile, and that the server's timeouts (configured short here) close
the stalled connections. Every loop is bounded by a deadline.
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import time
from contextlib import ExitStack
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from tests.servers import stratus_server

TIMEOUT = 4.0  # every http.timeout of the servers below, in seconds
TIMEOUTS = {
    "REGISTRY_HTTP_TIMEOUT_READHEADER": f"{TIMEOUT:g}s",
    "REGISTRY_HTTP_TIMEOUT_READ": f"{TIMEOUT:g}s",
    "REGISTRY_HTTP_TIMEOUT_WRITE": f"{TIMEOUT:g}s",
    "REGISTRY_HTTP_TIMEOUT_IDLE": f"{TIMEOUT + 2:g}s",
}
PROMPT = 1.0  # issue 14's acceptance: every normal request answered within this
BLOB_SIZE = 24 << 20  # more than loopback's socket buffers hold, so a GET not read blocks
REPO = "avail/app"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Target:
    def __init__(self, url: str, blob: str, manifest: str):
        self.url = url
        parts = urlsplit(url)
        self.addr = (parts.hostname, parts.port)
        self.blob = blob
        self.manifest = manifest


def _push_image(url: str) -> tuple[str, str]:
    """A blob of BLOB_SIZE and a manifest tagged `v1` pointing at it."""
    data = os.urandom(BLOB_SIZE)
    blob = _sha256(data)
    config = b"{}"
    for content in (data, config):
        start = requests.post(f"{url}/v2/{REPO}/blobs/uploads/", timeout=30)
        assert start.status_code == 202, start.text
        location = urlsplit(start.headers["Location"])
        put = requests.put(f"{url}{location.path}?{location.query}&digest={_sha256(content)}", data=content,
                           headers={"Content-Type": "application/octet-stream"}, timeout=60)
        assert put.status_code == 201, put.text
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _sha256(config), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob, "size": BLOB_SIZE}],
    }).encode()
    put = requests.put(f"{url}/v2/{REPO}/manifests/v1", data=manifest,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=30)
    assert put.status_code == 201, put.text
    return blob, _sha256(manifest)


def _server(tmp_path_factory: pytest.TempPathFactory, extra: dict[str, str]) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("availability")
    with stratus_server(root, {**TIMEOUTS, **extra}) as url:
        yield Target(url, *_push_image(url))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _server(tmp_path_factory, {})


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from _server(tmp_path_factory, {"REGISTRY_HTTP_MAXCONCURRENTUPLOADS": "3"})


# -- hostile clients --------------------------------------------------------------------


def _connect(target: Target, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: a small window
    sock.settimeout(10)
    sock.connect(target.addr)
    return sock


def _upload_path(target: Target) -> str:
    start = requests.post(f"{target.url}/v2/{REPO}/blobs/uploads/", timeout=10)
    assert start.status_code == 202, start.text
    location = urlsplit(start.headers["Location"])
    return f"{location.path}?{location.query}"


def _stalled_upload(stack: ExitStack, target: Target, path: str, sent: bytes = b"") -> socket.socket:
    """A PATCH whose headers promise 1 MiB, of which only `sent` ever comes."""
    sock = stack.enter_context(_connect(target))
    sock.sendall((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {1 << 20}\r\n\r\n").encode() + sent)
    return sock


def _unread_download(stack: ExitStack, target: Target, read_first: int = 0) -> socket.socket:
    """A GET of the big blob that reads `read_first` bytes of the response, then nothing."""
    sock = stack.enter_context(_connect(target, rcvbuf=4096))
    sock.sendall(f"GET /v2/{REPO}/blobs/{target.blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = 0
    while got < read_first:
        piece = sock.recv(min(65536, read_first - got))
        assert piece, "the server closed a download that was being read"
        got += len(piece)
    return sock


def _normal_requests(target: Target, count: int = 20) -> list[float]:
    """Seconds each of `count` GET /v2/ and manifest GETs took (inf when not answered)."""
    times = []
    failures = 0
    with requests.Session() as session:
        for i in range(count):
            url = f"{target.url}/v2/" if i % 2 else f"{target.url}/v2/{REPO}/manifests/v1"
            start = time.monotonic()
            try:
                response = session.get(url, timeout=2 * PROMPT,
                                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
            times.append(time.monotonic() - start if ok else float("inf"))
            if not ok:
                failures += 1
                if failures >= 3:  # the server is not answering: do not wait out all of them
                    break
    return times


def _none_closed(socks: list[socket.socket]) -> bool:
    """Whether none of socks has seen an answer or the end yet (the stall is still on)."""
    readable, _, _ = select.select(socks, [], [], 0)
    return not readable


def _wait_closed(socks: list[socket.socket], within: float) -> list[socket.socket]:
    """Read and drop whatever comes until each sock ends (EOF or reset); the ones still open."""
    open_socks = list(socks)
    deadline = time.monotonic() + within
    while open_socks and time.monotonic() < deadline:
        readable, _, _ = select.select(open_socks, [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        for sock in readable:
            try:
                ended = not sock.recv(1 << 20)
            except OSError:  # reset
                ended = True
            if ended:
                open_socks.remove(sock)
    return open_socks


def _drain_length(sock: socket.socket, within: float) -> tuple[int, bool]:
    """(bytes read, whether the connection ended) reading until the end or `within` passes."""
    got = 0
    deadline = time.monotonic() + within
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except OSError:
            return got, True
        if not piece:
            return got, True
        got += len(piece)
    return got, False


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _assert_prompt(times: list[float], what: str) -> None:
    assert len(times) == 20 and max(times) < PROMPT, (
        f"with {what} open, {sum(t < PROMPT for t in times)} of 20 normal requests were answered within "
        f"{PROMPT} s (slowest {max(times):.2f} s; {times})"
    )


# -- tests -----------------------------------------------------------------------------


def test_stalled_uploads_and_unread_downloads_do_not_stop_other_clients(target: Target) -> None:
    """Issue 14's acceptance: 64 stalled uploads and 16 unread downloads open, 20 normal
    requests all answered within 1 s; then the timeouts close every stalled connection."""
    paths = [_upload_path(target) for _ in range(32)]
    with ExitStack() as stack:
        opened = time.monotonic()
        # 32 that send nothing after their headers, 32 that stop after 1000 bytes of body
        silent = [_stalled_upload(stack, target, path) for path in paths[:16]]
        silent += [_stalled_upload(stack, target, f"/v2/{REPO}/blobs/uploads/") for _ in range(16)]
        stopped = [_stalled_upload(stack, target, path, os.urandom(1000)) for path in paths[16:]]
        downloads = [_unread_download(stack, target) for _ in range(16)]
        time.sleep(0.3)  # let the server take them all in
        times = _normal_requests(target)
        measured_within = time.monotonic() - opened
        _assert_prompt(times, "64 stalled uploads and 16 unread downloads")
        assert measured_within < TIMEOUT and _none_closed(silent + stopped), (
            "the stalls must still be on while the normal requests are measured"
        )
        left = _wait_closed(silent + stopped, within=TIMEOUT + 15)
        assert not left, f"{len(left)} of 64 stalled uploads still open 15 s past the read timeout"
        _sleep_until(opened + TIMEOUT + 3)  # reading earlier would un-stall the downloads
        for sock in downloads:
            got, ended = _drain_length(sock, within=TIMEOUT + 15)
            assert ended and got < BLOB_SIZE, (
                f"an unread download was not cut by the write timeout ({got} of {BLOB_SIZE} bytes, ended={ended})"
            )
    # and the server still serves a whole blob afterwards
    pulled = requests.get(f"{target.url}/v2/{REPO}/blobs/{target.blob}", timeout=60)
    assert pulled.status_code == 200 and _sha256(pulled.content) == target.blob


def test_client_that_stops_reading_mid_blob_is_cut_and_others_are_served(target: Target) -> None:
    with ExitStack() as stack:
        opened = time.monotonic()
        readers = [_unread_download(stack, target, read_first=1 << 20) for _ in range(12)]
        times = _normal_requests(target)
        assert time.monotonic() - opened < TIMEOUT
        _assert_prompt(times, "12 downloads stopped mid-blob")
        _sleep_until(opened + TIMEOUT + 3)
        for sock in readers:
            got, ended = _drain_length(sock, within=TIMEOUT + 15)
            assert ended and got + (1 << 20) < BLOB_SIZE, (got, ended)


def test_connections_that_never_finish_their_headers_are_closed(target: Target) -> None:
    with ExitStack() as stack:
        opened = time.monotonic()
        idle = [stack.enter_context(_connect(target)) for _ in range(40)]  # connect, say nothing
        partial = []
        for _ in range(40):  # half a request line, then nothing
            sock = stack.enter_context(_connect(target))
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            partial.append(sock)
        times = _normal_requests(target)
        assert time.monotonic() - opened < TIMEOUT
        _assert_prompt(times, "80 connections with unfinished headers")
        left = _wait_closed(idle + partial, within=TIMEOUT + 15)
        assert not left, f"{len(left)} of 80 connections without complete headers still open"


def test_upload_limit_answers_503_with_retry_after_and_an_oci_error(limited: Target) -> None:
    paths = [_upload_path(limited) for _ in range(4)]
    with ExitStack() as stack:
        # three uploads under way (their first bytes arrived, the rest does not)
        stalled = [_stalled_upload(stack, limited, path, os.urandom(1000)) for path in paths[:3]]
        time.sleep(0.3)
        start = time.monotonic()
        refused = requests.patch(f"{limited.url}{paths[3]}", data=os.urandom(5000),
                                 headers={"Content-Type": "application/octet-stream"}, timeout=5)
        elapsed = time.monotonic() - start
        assert refused.status_code == 503, refused.text
        assert elapsed < PROMPT
        assert int(refused.headers["Retry-After"]) > 0
        error = refused.json()["errors"][0]
        assert error["code"] and error["message"]
        assert requests.get(f"{limited.url}/v2/", timeout=PROMPT).status_code == 200  # pulls go on
        assert not _wait_closed(stalled, within=TIMEOUT + 15)
    # the slots are free again once the timeouts closed the stalled ones
    accepted = requests.patch(f"{limited.url}{paths[3]}", data=os.urandom(5000),
                              headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert accepted.status_code == 202, accepted.text


def test_query_with_10000_parameters_gets_an_oci_error(target: Target) -> None:
    query = "&".join(f"p{i}=1" for i in range(10000))
    for path in ("/v2/", f"/v2/{REPO}/tags/list"):
        response = requests.get(f"{target.url}{path}?{query}", timeout=10)
        assert response.status_code in (400, 414), response.status_code
        assert response.headers["Content-Type"].startswith("application/json")
        error = response.json()["errors"][0]
        assert error["code"] and error["message"]
    # one parameter too many for the app (the target itself is short enough to parse)
    query = "&".join(f"n={i}" for i in range(5000))
    response = requests.get(f"{target.url}/v2/{REPO}/tags/list?{query}", timeout=10)
    assert response.status_code == 414 and response.json()["errors"][0]["code"]
