"""http.net: unix: `stratus serve` on a unix socket, talked to over AF_UNIX with
http.client as a reverse proxy in front of it would."""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

import pytest

from .oci_client import random_bytes, unique_repo
from .servers import ROOT, stop


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _request(path: str, method: str, target: str, body: bytes = b"",
             headers: Optional[dict] = None) -> tuple[int, dict, bytes]:
    connection = UnixConnection(path)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # a short path: a unix socket's path is at most 107 bytes, pytest's tmp paths can be long
    directory = Path(tempfile.mkdtemp(prefix="stratus-uds-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_socket(path: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stratus serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {path}")


def _env(data: Path, path: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "STRATUS_"))}
    env.update({"PYTHONPATH": str(ROOT), "REGISTRY_HTTP_SECRET": "test-secret",
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(data),
                "REGISTRY_HTTP_NET": "unix", "REGISTRY_HTTP_ADDR": path, **extra})
    return env


@contextmanager
def unix_server(directory: Path, **extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    path = str(directory / "registry.sock")
    log = directory / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chalicelib", "serve"], cwd=ROOT,
                                env=_env(directory / "data", path, **extra), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_for_socket(path, proc, log)
            yield path, proc
        finally:
            stop(proc)


@pytest.mark.parametrize("server", ["uvicorn", "granian", "gunicorn"])
def test_unix_socket_serves_the_api_and_a_push(socket_dir, server):
    with unix_server(socket_dir, STRATUS_SERVER=server) as (path, _):
        status, headers, body = _request(path, "GET", "/v2/")
        assert status == 200 and headers["docker-distribution-api-version"] == "registry/2.0"
        repo = unique_repo("uds")
        data = random_bytes(200_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, _ = _request(path, "POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202
        location = urlsplit(headers["location"])
        status, headers, _ = _request(path, "PUT", f"{location.path}?{location.query}&digest={digest}", data,
                                      {"Content-Type": "application/octet-stream"})
        assert status == 201, headers
        status, headers, body = _request(path, "GET", f"/v2/{repo}/blobs/{digest}")
        assert status == 200 and body == data


def test_socket_file_is_removed_at_exit_and_a_stale_one_replaced(socket_dir):
    path = socket_dir / "registry.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a socket file nobody listens on, as a killed server leaves it
    stale.close()
    with unix_server(socket_dir) as (sock_path, proc):
        assert _request(sock_path, "GET", "/v2/")[0] == 200
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert not path.exists()


def test_a_socket_a_live_server_listens_on_is_not_taken_over(socket_dir):
    with unix_server(socket_dir) as (path, _):
        done = subprocess.run([sys.executable, "-m", "chalicelib", "serve"], cwd=ROOT,
                              env=_env(socket_dir / "data", path), capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "already listens" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert _request(path, "GET", "/v2/")[0] == 200  # the first one still serves
