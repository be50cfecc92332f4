"""http.draintimeout: on SIGTERM `stratus serve` stops accepting and lets an upload in
flight finish. The client sends the body slowly, SIGTERM arrives mid-body, the rest
follows, and the upload is answered and stored; a client that stalls past the drain
timeout is cut and the server exits."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from .oci_client import random_bytes, unique_repo
from .servers import ROOT, free_port, process


def _start(url: str, repo: str) -> str:
    started = requests.post(f"{url}/v2/{repo}/blobs/uploads/", timeout=10)
    assert started.status_code == 202
    location = urlsplit(started.headers["Location"])
    return f"{location.path}?{location.query}"


def _head(method: str, target: str, port: int, length: int) -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _status(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        piece = sock.recv(4096)
        if not piece:
            raise ConnectionError(f"closed before an answer: {answer!r}")
        answer += piece
    return int(answer.split(b" ", 2)[1])


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


def _stored(root: Path, digest: str) -> bytes:
    hex_digest = digest.split(":", 1)[1]
    return (root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data").read_bytes()


def _serve(tmp_path: Path, port: int, drain: str, workers: int = 1, server: str = "uvicorn"):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "STRATUS_"))}
    env.update({"PYTHONPATH": str(ROOT), "REGISTRY_HTTP_SECRET": "test-secret", "STRATUS_SERVER": server,
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "data"),
                "REGISTRY_HTTP_DRAINTIMEOUT": drain})
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}", "--workers", str(workers)]
    return process(argv, port, env, log_path=tmp_path / "serve.log", cwd=ROOT, inherit_env=False)


@pytest.mark.parametrize("method, workers, server", [
    ("PUT", 1, "uvicorn"), ("PATCH", 1, "uvicorn"), ("PUT", 2, "uvicorn"), ("PUT", 1, "granian"), ("PUT", 2, "gunicorn"),
])
def test_an_upload_in_flight_at_sigterm_completes(tmp_path, method, workers, server):
    port = free_port()
    data = random_bytes(3 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo = unique_repo("drain")
    with _serve(tmp_path, port, "30s", workers, server) as proc:
        url = f"http://127.0.0.1:{port}"
        target = _start(url, repo)
        if method == "PUT":
            target += f"&digest={digest}"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_head(method, target, port, len(data)) + data[:1 << 20])
            time.sleep(0.5)  # the server is inside the request, reading its body
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            # it stops accepting ... (gunicorn's workers keep the listening socket open until
            # they exit, so the kernel still queues connections there, served by nobody)
            while server != "gunicorn" and not _refuses_connections(port):
                assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
                time.sleep(0.1)
            time.sleep(0.5)
            assert proc.poll() is None  # ... but stays to finish this upload
            for offset in range(1 << 20, len(data), 256 << 10):  # the rest, slowly
                sock.sendall(data[offset:offset + (256 << 10)])
                time.sleep(0.05)
            assert _status(sock) == (201 if method == "PUT" else 202)
        assert proc.wait(20) is not None  # and then it exits
    if method == "PUT":
        assert _stored(tmp_path / "data", digest) == data
    else:  # the chunk is in the upload's data, whole
        uploads = tmp_path / "data/docker/registry/v2/repositories" / repo / "_uploads"
        (upload,) = list(uploads.iterdir())
        assert (upload / "data").read_bytes() == data


def test_an_upload_stalled_past_draintimeout_is_cut_and_the_server_exits(tmp_path):
    port = free_port()
    with _serve(tmp_path, port, "1s") as proc:
        url = f"http://127.0.0.1:{port}"
        target = _start(url, unique_repo("drain"))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(_head("PATCH", target, port, 1 << 20) + b"x" * 1000)
            time.sleep(0.5)
            signalled = time.monotonic()
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)  # http.timeout.read (60 s) is not what ends it
            except subprocess.TimeoutExpired:
                pytest.fail("the server did not exit after its drain timeout")
            assert time.monotonic() - signalled < 10
            sock.settimeout(5)
            try:  # an OCI error saying why, or the connection gone; never a 500
                answer = sock.recv(4096)
            except ConnectionResetError:
                answer = b""
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer
        log = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in log, log
