"""`stratus serve --config x.yml` under granian with workers that are spawned, not forked
(multiprocessing's start method under Python 3.14 on Linux is not fork; granian then
spawns): each worker loads the same configuration file again, so what it says applies."""
from __future__ import annotations

import os
import sys

import requests

from .oci_client import Registry, random_bytes, unique_repo
from .servers import ROOT, free_port, process

# The CLI, with multiprocessing's start method set first, as Python 3.14 would have it.
SPAWNING_SERVE = (
    "import multiprocessing, sys\n"
    "multiprocessing.set_start_method('spawn')\n"
    "from chalicelib.adapters.cli import main\n"
    "main(sys.argv[1:])\n"
)


def test_spawned_granian_workers_apply_the_config_file(tmp_path):
    root = tmp_path / "from-config"
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        "http:\n  secret: spawn-secret\n  headers:\n    X-Registry-Config: [from-file]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "STRATUS_"))}
    env.update({"PYTHONPATH": str(ROOT), "STRATUS_SERVER": "granian"})
    port = free_port()
    argv = [sys.executable, "-c", SPAWNING_SERVE, "serve", "--config", str(config),
            "--addr", f"127.0.0.1:{port}", "--workers", "2"]
    with process(argv, port, env, log_path=tmp_path / "serve.log", cwd=ROOT, inherit_env=False):
        url = f"http://127.0.0.1:{port}"
        # new connections, so both workers answer some of them
        answers = [requests.get(f"{url}/v2/", headers={"Connection": "close"}, timeout=10) for _ in range(12)]
        assert all(a.status_code == 200 for a in answers)
        assert all(a.headers.get("X-Registry-Config") == "from-file" for a in answers), \
            [a.headers for a in answers]
        registry = Registry(url)
        repo = unique_repo("spawn")
        digest = registry.push_blob(repo, random_bytes(1000))
        registry.close()
    hex_digest = digest.split(":", 1)[1]
    assert (root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data").exists()
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log
