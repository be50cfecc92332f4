"""/debug/health on http.debug.addr, with the reference's health checks.

The storage check runs against a real S3 endpoint (a moto server this test starts,
stops and starts again on the same port): the registry turns unhealthy while the
storage is unreachable, answers its own requests 503 meanwhile, and is healthy again
once the storage answers. The other checks meet real files, sockets and HTTP servers.
"""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from chalicelib.debug_server import Check, file_probe, http_probe, tcp_probe

from .moto_server import MotoS3, moto_server_command
from .test_metrics import scrape, value
from .servers import free_port, process, stratus_server


@contextmanager
def moto_on(port: int, log: Path) -> Iterator[MotoS3]:
    with process([*moto_server_command(), "-H", "127.0.0.1", "-p", str(port)], port, log_path=log):
        yield MotoS3(f"http://127.0.0.1:{port}")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout}s")
        time.sleep(0.2)


def health(debug: str) -> requests.Response:
    return requests.get(f"{debug}/debug/health", timeout=30)


def test_debug_health_turns_unhealthy_while_storage_is_unreachable(tmp_path):
    moto_port = free_port()
    debug_port = free_port()
    debug = f"http://127.0.0.1:{debug_port}"
    s3 = moto_on(moto_port, tmp_path / "moto-1.log")
    moto = s3.__enter__()
    try:
        bucket = moto.create_bucket()
        env = {
            **moto.environment(bucket),
            "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}",
            "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
            "REGISTRY_HEALTH_STORAGEDRIVER_ENABLED": "true",
            "REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL": "500ms",
            "REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD": "1",
        }
        with stratus_server(tmp_path / "data", env) as url:
            first = health(debug)
            assert (first.status_code, first.json()) == (200, {})
            assert requests.get(f"{url}/v2/", timeout=30).status_code == 200

            s3.__exit__(None, None, None)  # the storage goes away
            s3 = None
            wait_until(lambda: health(debug).status_code == 503, "unhealthy")
            failing = health(debug).json()
            assert list(failing) == ["storagedriver_s3"] and failing["storagedriver_s3"]
            # the registry itself steps aside, as the reference's health handler does
            refused = requests.get(f"{url}/v2/", timeout=30)
            assert refused.status_code == 503
            assert refused.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert "/debug/health" in refused.json()["errors"][0]["detail"]
            # the failed probes are storage errors of the s3 driver
            assert value(scrape(f"{debug}/metrics"), "stratus_storage_errors_total", driver="s3", call="list") >= 1

            s3 = moto_on(moto_port, tmp_path / "moto-2.log")  # back, on the same endpoint
            moto = s3.__enter__()
            moto.create_bucket(bucket)
            wait_until(lambda: health(debug).status_code == 200, "healthy again")
            assert health(debug).json() == {}
            assert requests.get(f"{url}/v2/", timeout=30).status_code == 200
    finally:
        if s3 is not None:
            s3.__exit__(None, None, None)


def test_health_without_checks_is_always_healthy_and_other_paths_are_404(tmp_path):
    debug_port = free_port()
    with stratus_server(tmp_path / "data", {"REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}"}):
        debug = f"http://127.0.0.1:{debug_port}"
        assert (health(debug).status_code, health(debug).json()) == (200, {})
        assert requests.get(f"{debug}/v2/", timeout=10).status_code == 404
        assert requests.head(f"{debug}/debug/health", timeout=10).status_code == 200


def test_a_file_check_takes_the_registry_out_of_rotation(tmp_path):
    debug_port = free_port()
    marker = tmp_path / "out-of-rotation"
    env = {"REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}",
           "REGISTRY_HEALTH_FILE_0_FILE": str(marker), "REGISTRY_HEALTH_FILE_0_INTERVAL": "200ms"}
    with stratus_server(tmp_path / "data", env) as url:
        debug = f"http://127.0.0.1:{debug_port}"
        assert health(debug).status_code == 200
        marker.write_text("draining")
        wait_until(lambda: health(debug).status_code == 503, "unhealthy")
        assert health(debug).json() == {str(marker): "file exists"}
        assert requests.get(f"{url}/v2/", timeout=10).status_code == 503
        marker.unlink()
        wait_until(lambda: health(debug).status_code == 200, "healthy again")
        assert requests.get(f"{url}/v2/", timeout=10).status_code == 200


def test_stratus_serve_names_a_debug_address_it_cannot_bind(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"http.debug.addr 127.0.0.1:{port}"):
            with stratus_server(tmp_path / "data", {"REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{port}"}):
                pass


# -------------------------------------------------- thresholds, one probe at a time


def test_threshold_counts_failures_in_a_row_and_one_success_heals():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    addr = "127.0.0.1:%d" % listener.getsockname()[1]
    check = Check(addr, tcp_probe(addr, timeout=2), interval=10, threshold=2)
    check.run_once()
    assert check.error is None
    listener.close()  # nothing listens there now
    check.run_once()
    assert check.error is None  # one failure is under the threshold
    check.run_once()
    assert check.error is not None and check.failures == 2
    listener = socket.create_server(("127.0.0.1", int(addr.rsplit(":", 1)[1])))
    try:
        check.run_once()
        assert check.error is None and check.failures == 0
    finally:
        listener.close()


def test_file_probe(tmp_path):
    check = Check("f", file_probe(str(tmp_path / "f")), interval=10)
    check.run_once()
    assert check.error is None
    (tmp_path / "f").write_text("")
    check.run_once()
    assert check.error == "file exists"


@pytest.mark.parametrize("status, expected, healthy", [(200, 200, True), (503, 200, False), (204, 204, True)])
def test_http_probe_sends_head_with_headers_and_compares_the_status(status, expected, healthy):
    seen: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            seen.append((self.command, self.headers.get("Authorization", "")))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/ready"
        check = Check(uri, http_probe(uri, expected, 5, {"Authorization": ["Basic eDp5"]}), interval=10)
        check.run_once()
    finally:
        server.shutdown()
        server.server_close()
    assert (check.error is None) == healthy, check.error
    assert seen == [("HEAD", "Basic eDp5")]
