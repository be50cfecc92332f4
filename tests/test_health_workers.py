"""Health checks gate requests answered in worker processes too: the checks run in the
process that started them, the workers (forked by granian, gunicorn or uvicorn with
--workers 2, or spawned by granian) read what the checks publish, so a failing check
takes every worker out of rotation and a passing one puts it back."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from .servers import ROOT, free_port, process
from .test_server_spawn import SPAWNING_SERVE


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout}s"
        time.sleep(0.2)


def _statuses(url: str) -> set[int]:
    """GET /v2/ on new connections, so every worker answers some."""
    return {requests.get(f"{url}/v2/", headers={"Connection": "close"}, timeout=10).status_code for _ in range(10)}


@pytest.mark.parametrize("server, workers, spawn", [
    ("granian", 1, False), ("granian", 2, True), ("gunicorn", 2, False), ("uvicorn", 2, False),
])
def test_a_failing_check_gates_every_worker(tmp_path: Path, server: str, workers: int, spawn: bool):
    marker = tmp_path / "out-of-rotation"
    port, debug_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "STRATUS_"))}
    env.update({"PYTHONPATH": str(ROOT), "STRATUS_SERVER": server, "REGISTRY_HTTP_SECRET": "s",
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "data"),
                "REGISTRY_HTTP_DEBUG_ADDR": f"127.0.0.1:{debug_port}",
                "REGISTRY_HEALTH_FILE_0_FILE": str(marker), "REGISTRY_HEALTH_FILE_0_INTERVAL": "200ms"})
    serve = ["serve", "--addr", f"127.0.0.1:{port}", "--workers", str(workers)]
    argv = [sys.executable, "-c", SPAWNING_SERVE, *serve] if spawn else [sys.executable, "-m", "chalicelib", *serve]
    with process(argv, port, env, log_path=tmp_path / "serve.log", cwd=ROOT, inherit_env=False):
        url = f"http://127.0.0.1:{port}"
        assert _statuses(url) == {200}
        marker.write_text("draining")
        _wait_until(lambda: _statuses(url) == {503}, "503 from every worker")
        marker.unlink()
        _wait_until(lambda: _statuses(url) == {200}, "200 from every worker again")
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log
