"""An upstream for the pull-through cache tests: the reference registry (Debian's
docker-registry 2.8) on a free loopback port over a directory of its own, open, behind
htpasswd or behind a token server, with its access log kept so a test can count what
the cache asked it for. Stopped by pid however the test ends."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import bcrypt
import requests
import yaml

from .clients_servers import REFERENCE_REGISTRY, clean_env, isolated_process
from .servers import free_port

USER, PASSWORD = "mirror", "mirror-secret"
_REQUEST_LINE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/[^ ?"]*)[^"]*" (\d{3})')


@dataclass
class Upstream:
    url: str
    root: Path
    log_path: Path
    auth: Optional[tuple[str, str]] = None  # (user, password) a pusher uses
    port: int = 0
    extra: dict = field(default_factory=dict)

    def requests(self, method: str, path_part: str = "") -> list[str]:
        """Paths of the requests with this method (containing path_part) it has served."""
        text = self.log_path.read_text(errors="replace")
        return [m.group(2) for m in _REQUEST_LINE.finditer(text) if m.group(1) == method and path_part in m.group(2)]

    def statuses(self, status: int) -> int:
        """How many requests it answered with this status."""
        text = self.log_path.read_text(errors="replace")
        return sum(1 for m in _REQUEST_LINE.finditer(text) if m.group(3) == str(status))

    def blob_gets(self, digest: str) -> int:
        return len(self.requests("GET", f"/blobs/{digest}"))


def _config(root: Path, port: int, auth: Optional[dict]) -> Path:
    tree = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "upstream-secret"},
    }
    if auth:
        tree["auth"] = auth
    path = root.parent / f"upstream-{port}.yml"
    path.write_text(yaml.safe_dump(tree))
    return path


def htpasswd_auth(directory: Path) -> dict:
    path = directory / "upstream.htpasswd"
    path.write_bytes(f"{USER}:".encode() + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)) + b"\n")
    return {"htpasswd": {"realm": "upstream", "path": str(path)}}


@contextmanager
def reference_upstream(directory: Path, auth: Optional[dict] = None, port: Optional[int] = None,
                       credentials: Optional[tuple[str, str]] = None) -> Iterator[Upstream]:
    """The reference registry storing under directory/data; same port and data when
    started again on them (to stop an upstream and bring it back)."""
    root = directory / "data"
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = directory / f"upstream-{port}.log"
    argv = [REFERENCE_REGISTRY, "serve", str(_config(root, port, auth))]
    with isolated_process(argv, port, clean_env({}), log_path):
        url = f"http://127.0.0.1:{port}"
        response = requests.get(url + "/v2/", timeout=10)
        assert response.status_code in (200, 401), response.text
        yield Upstream(url, root, log_path, credentials, port)
