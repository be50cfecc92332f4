"""Servers the client tests meet: `chalice local` running app.py, and the reference
registry (Debian's docker-registry 2.8) — each on a free loopback port over a
directory of its own or a shared one, stopped by pid however the test ends."""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import requests

from .components import needs
from .servers import ROOT, free_port, process

REFERENCE_REGISTRY = "/usr/bin/docker-registry"
REFERENCE_SECRET = "reference-secret"  # its http.secret, which signs its upload `_state` tokens
CHALICE = Path(sys.executable).parent / "chalice"

needs_reference = needs(
    "the reference registry",
    None if os.access(REFERENCE_REGISTRY, os.X_OK) else
    f"no {REFERENCE_REGISTRY} (Debian's docker-registry; scripts/install-system-deps.sh)",
)
needs_chalice = needs(
    "chalice", None if CHALICE.exists() or shutil.which("chalice") else "not installed (make venv)"
)


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without REGISTRY_* (`make test` exports
    REGISTRY_HTTP_ADDR and a storage root), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(extra)
    return env


@contextmanager
def isolated_process(argv: Sequence[str], port: int, env: Mapping[str, str], log_path: Path) -> Iterator[None]:
    """servers.process with exactly env (nothing inherited may reconfigure it), in the repository root."""
    with process(argv, port, env, log_path=log_path, cwd=ROOT, inherit_env=False):
        yield


def _ready(url: str) -> None:
    response = requests.get(url + "/v2/", timeout=10)
    assert response.status_code == 200, response.text


@contextmanager
def chalice_local(root: Path, secret: str = "test-secret") -> Iterator[str]:
    """`chalice local --stage local` in the repository root, storing under root; yields its URL."""
    port = free_port()
    chalice = str(CHALICE) if CHALICE.exists() else shutil.which("chalice")
    argv = [chalice, "local", "--stage", "local", "--host", "127.0.0.1", "--port", str(port),
            "--no-autoreload"]
    env = clean_env({
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root),
        "REGISTRY_HTTP_SECRET": secret,
        # stdout is a file: Python buffers it, so startup messages show only on exit
        "PYTHONUNBUFFERED": "1",
    })
    with isolated_process(argv, port, env, root.parent / f"chalice-{port}.log"):
        url = f"http://127.0.0.1:{port}"
        _ready(url)
        yield url


def reference_config(root: Path, port: int, secret: str = REFERENCE_SECRET) -> Path:
    path = root.parent / f"reference-{port}.yml"
    path.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        # upload purging would race the tests that look at _uploads
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n"
    )
    return path


@contextmanager
def reference_registry(root: Path, port: Optional[int] = None) -> Iterator[str]:
    """The reference registry serving the registry:2 tree at root; yields its URL.

    Started from its own config file on a free port: never the system service,
    which scripts/install-system-deps.sh stops.
    """
    port = port or free_port()
    config = reference_config(root, port)
    argv = [REFERENCE_REGISTRY, "serve", str(config)]
    with isolated_process(argv, port, clean_env({}), root.parent / f"reference-{port}.log"):
        url = f"http://127.0.0.1:{port}"
        _ready(url)
        yield url
