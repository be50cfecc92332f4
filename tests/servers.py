"""Starting and stopping real servers for tests: free loopback ports, temp dirs, pids.

Every process started here is stopped by pid (its whole process group) even when
the test fails, and never listens beyond 127.0.0.1.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import HTTPServer
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import requests

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def serving(server: HTTPServer) -> Iterator[int]:
    """An in-process stand-in server answering on a thread of its own until the block
    ends, then shut down and closed; yields its port."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


@contextmanager
def process(
    argv: Sequence[str],
    port: int,
    env: Optional[Mapping[str, str]] = None,
    log_path: Optional[Path] = None,
    cwd: Optional[Path] = None,
    timeout: float = 30.0,
    inherit_env: bool = True,
) -> Iterator[subprocess.Popen]:
    """Run argv in its own process group until the block ends; yields once it listens.

    With inherit_env=False the process gets exactly env: nothing inherited may reconfigure it."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        list(argv),
        env={**(os.environ if inherit_env else {}), **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(cwd) if cwd else None,
        start_new_session=True,
    )
    try:
        try:
            wait_for_port(port, timeout, proc)
        except RuntimeError as exc:  # it exited: say why
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"{argv[0]}: {exc}\n{tail}") from None
        yield proc
    finally:
        stop(proc)
        if log_path:
            log.close()


@contextmanager
def stratus_server(
    root: Path,
    env: Optional[Mapping[str, str]] = None,
    config: Optional[Path] = None,
    workers: int = 1,
) -> Iterator[str]:
    """`stratus serve`, over the filesystem root unless env chooses another driver."""
    port = free_port()
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}", "--workers", str(workers)]
    if config:
        argv += ["--config", str(config)]
    env = dict(env or {})
    server_env = {
        "REGISTRY_HTTP_SECRET": "test-secret",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    if env.get("REGISTRY_STORAGE", "filesystem") == "filesystem":
        server_env.setdefault("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", str(root))
    with process(argv, port, server_env, log_path=root.parent / f"stratus-{port}.log", cwd=ROOT):
        url = f"http://127.0.0.1:{port}"
        requests.get(url + "/v2/", timeout=10)
        yield url
