"""Request rates measured by wrk, an external load generator in its own process."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

WRK = "wrk"

_SCRIPT = """\
wrk.method = "{method}"
{headers}
"""
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_ERRORS = re.compile(r"^\s+Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET_ERRORS = re.compile(r"^\s+Socket errors: (.*)$", re.M)
_REQUESTS = re.compile(r"^\s+(\d+) requests in", re.M)


class LoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()


def available() -> bool:
    return shutil.which(WRK) is not None


def version() -> str:
    if not available():
        return "not installed"
    out = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def _lua(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rate(
    base_url: str,
    scenario: Scenario,
    workdir: Path,
    connections: int = 16,
    threads: int = 2,
    seconds: float = 5.0,
) -> float:
    """Requests/s over `connections` keep-alive connections; LoadError on any failed request."""
    if not available():
        raise LoadError("wrk is not installed (scripts/install-system-deps.sh installs it)")
    script = workdir / f"wrk-{scenario.name}.lua"
    headers = "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in scenario.headers)
    script.write_text(_SCRIPT.format(method=scenario.method, headers=headers))
    duration = f"{max(1, round(seconds))}s"
    argv = [
        WRK, "-t", str(threads), "-c", str(connections), "-d", duration, "--timeout", "10s",
        "-s", str(script), base_url.rstrip("/") + scenario.path,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise LoadError(f"wrk failed ({out.returncode}):\n{text}")
    failed = _ERRORS.search(text)
    if failed and int(failed.group(1)):
        raise LoadError(f"{scenario.name}: {failed.group(1)} non-2xx responses:\n{text}")
    errors: Optional[re.Match] = _SOCKET_ERRORS.search(text)
    if errors:
        raise LoadError(f"{scenario.name}: socket errors {errors.group(1)}:\n{text}")
    match = _RATE.search(text)
    if not match:
        raise LoadError(f"no Requests/sec in wrk output:\n{text}")
    return float(match.group(1))
