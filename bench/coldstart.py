"""What a Lambda cold start pays for the handler: importing app.py in a fresh interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .servers import ROOT

_PROBE = """\
import json, time
start = time.perf_counter()
import app
elapsed = time.perf_counter() - start
with open("/proc/self/status") as f:
    rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
print(json.dumps({"seconds": elapsed, "rss": rss}))
"""


@dataclass(frozen=True)
class ImportCost:
    seconds: float
    rss: int  # bytes resident once app.py is imported


def import_app(python: str = sys.executable, root: Path = ROOT) -> ImportCost:
    # -E -s: no PYTHON* variables or user site, as on a Lambda runtime
    out = subprocess.run(
        [python, "-E", "-s", "-c", _PROBE], cwd=str(root), capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"importing app.py failed:\n{out.stderr[-2000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    return ImportCost(doc["seconds"], doc["rss"])
