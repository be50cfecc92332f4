"""The machine and software a run was measured on, for the report."""
from __future__ import annotations

import os
import platform
import ssl
import subprocess
from importlib import metadata

from . import loadgen, servers


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=str(servers.ROOT), capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "chalicelib"],
            cwd=str(servers.ROOT), capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() + (" (chalicelib modified)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _server() -> str:
    """What `stratus serve` runs on here (STRATUS_SERVER, else the default)."""
    from chalicelib.adapters.server import DEFAULT_WORKERS, SERVERS

    name = (os.environ.get("STRATUS_SERVER") or SERVERS[0]).strip().lower()
    workers = os.environ.get("STRATUS_WORKERS") or DEFAULT_WORKERS.get(name, "?")
    return f"{name} {_package(name)}, {workers} worker(s) x 8 threads"


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def _filesystem(path: str) -> str:
    try:
        out = subprocess.run(["df", "-T", path], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[1].split()[1]
    except (OSError, IndexError):
        return "unknown"


def describe(workdir: str) -> list[tuple[str, str]]:
    return [
        ("CPU", _cpu_model()),
        ("Cores", str(os.cpu_count())),
        ("Memory", _memory()),
        ("Kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OpenSSL", ssl.OPENSSL_VERSION),
        ("Stratus", f"commit {_commit()}"),
        ("Stratus server", _server()),
        ("Reference", servers.reference_version()),
        ("Load generator", loadgen.version()),
        ("Storage", f"{_filesystem(workdir)} under {os.path.dirname(workdir)}"),
        ("Load average at the end (1, 5, 15 min)", _load()),
    ]
