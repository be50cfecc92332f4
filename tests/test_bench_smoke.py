"""A smoke run of `python -m bench --quick`: tiny sizes, both registries, every measure.

It checks that the benchmark runs end to end and writes its report; it asserts no
time or rate (the benchmark is not a test).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


from .components import needs

ROOT = Path(__file__).resolve().parent.parent

_missing = [tool for tool in ("wrk", "docker-registry") if shutil.which(tool) is None]
pytestmark = needs(
    "wrk and docker-registry",
    f"{', '.join(_missing)} not installed (scripts/install-system-deps.sh)" if _missing else None,
)


def test_quick_bench_reports_every_row_for_both_registries(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--wrk-seconds", "1", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    text = output.read_text()
    for label in (
        "Push, monolithic", "Push, chunked", "Pull", "Manifest GET by tag", "Manifest GET by digest",
        "Blob HEAD", "Server RSS, peak during push", "Import app.py", "SHA-256, state saved every chunk",
    ):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] not in ("", "—"), row  # Stratus measured
    for label in ("Push, monolithic", "Pull", "Pull, first after push", "Manifest GET by tag", "Blob HEAD",
                  "Manifest GET by tag, bearer token"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        assert "×" in row, row  # the reference ran too, so there is a ratio
    # issue 12 (bench/relay.py): the relay's pushes with stratus serve on moto as the yardstick
    for label in ("Push of 12 MiB via stratus relay", "Relay peak RSS during the push, direct mode",
                  "Direct-upload verification on moto"):
        rows = [line for line in text.splitlines() if line.startswith(f"| {label}")]
        assert rows, label
        assert all([c.strip() for c in row.strip("|").split("|")][1] not in ("", "—") for row in rows), rows
    assert "direct mode (MB/s) " in text and "chunked mode (MB/s) " in text
    assert "### Machine" in text and "CPU:" in text


def test_report_keeps_hand_written_text(tmp_path: Path) -> None:
    from bench import report

    path = tmp_path / "b.md"
    path.write_text(f"# Title\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\n## History\nkept\n")
    report.write(path, f"{report.BEGIN}\nnew\n{report.END}")
    text = path.read_text()
    assert "new" in text and "old" not in text
    assert text.startswith("# Title") and text.rstrip().endswith("kept")
