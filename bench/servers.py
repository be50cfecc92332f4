"""The two registries under test, each over a fresh directory on a free loopback port.

Every server runs in its own session (process group) and is stopped by that pid,
never by name, so a benchmark cannot touch a registry it did not start.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

# the same process handling as the tests: free loopback ports, stop by process group
from tests.servers import free_port, process

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_BINARY = "docker-registry"


@dataclass(frozen=True)
class RunningServer:
    name: str  # "stratus" | "reference"
    url: str
    pid: int  # the session leader; its process tree is the server
    root: Path
    log: Path


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before serving:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # serving, with access control on
                return
            time.sleep(0.05)
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer /v2/ within {timeout}s")


@contextmanager
def _run(
    name: str, argv: Sequence[str], port: int, root: Path, workdir: Path, env: Optional[Mapping[str, str]] = None,
    cwd: Path = ROOT,
) -> Iterator[RunningServer]:
    log = workdir / f"{name}.log"
    with process(argv, port, env, log_path=log, cwd=cwd, timeout=60.0) as proc:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, proc, log)
        yield RunningServer(name, url, proc.pid, root, log)


@contextmanager
def stratus(
    workdir: Path, workers: Optional[int] = None, tree: Optional[Path] = None,
    storage: Optional[Mapping[str, str]] = None, name: str = "stratus",
    environment: Optional[Mapping[str, str]] = None,
) -> Iterator[RunningServer]:
    """`stratus serve` as a user runs it: production defaults, filesystem storage
    unless `storage` gives REGISTRY_STORAGE* variables for another driver.

    `tree` serves another checkout's chalicelib (an older commit, for before/after).
    """
    tree = Path(tree).resolve() if tree else ROOT
    root = workdir / f"{name}-data"
    root.mkdir()
    port = free_port()
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}"]
    if workers:
        argv += ["--workers", str(workers)]
    env = {
        **(storage or {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root)}),
        "REGISTRY_HTTP_SECRET": "bench-secret",
        "REGISTRY_LOG_LEVEL": "error",
        "PYTHONPATH": str(tree),
        **(environment or {}),
    }
    with _run(name, argv, port, root, workdir, env, cwd=tree) as server:
        yield server


REFERENCE_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  secret: bench-secret
{extra}"""


def reference_available() -> bool:
    return shutil.which(REFERENCE_BINARY) is not None


@contextmanager
def reference(workdir: Path, extra_config: str = "", name: str = "reference") -> Iterator[RunningServer]:
    """The reference registry (Debian docker-registry) with its packaged defaults,
    minus access logging, which Stratus does not do by default either; `extra_config`
    is YAML for more top-level sections (auth, say)."""
    binary = shutil.which(REFERENCE_BINARY)
    if binary is None:
        raise RuntimeError("docker-registry is not installed (scripts/install-system-deps.sh installs it)")
    root = workdir / f"{name}-data"
    root.mkdir()
    port = free_port()
    config = workdir / f"{name}.yml"
    config.write_text(REFERENCE_CONFIG.format(root=root, port=port, extra=extra_config))
    with _run(name, [binary, "serve", str(config)], port, root, workdir) as server:
        yield server


@contextmanager
def workspace(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stratus-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def reference_version() -> str:
    binary = shutil.which(REFERENCE_BINARY)
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).strip().replace(binary, REFERENCE_BINARY, 1)
