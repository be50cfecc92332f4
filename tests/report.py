"""`make test`'s closing summary: one line per backend run, then every conformance run.

    python -m tests.report DIR

DIR holds a pytest junit XML file per run (`<backend>.xml`, written by --junitxml)
and conformance.jsonl (tests/oci_conformance.py appends a line per suite run). It only
reports: the pytest runs themselves fail on a failed test or a conformance run that
did not score 75 passed, 0 failed, 4 skipped (a strict xfail names a known gap).
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ORDER = ("filesystem", "s3", "azure", "rados", "redis")


def _order(path: Path) -> tuple[int, str]:
    name = path.stem
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def backend_lines(directory: Path) -> list[str]:
    lines = [f"{'backend':<12} {'tests':>6} {'passed':>7} {'failed':>7} {'errors':>7} {'skipped':>8} {'seconds':>8}"]
    for path in sorted(directory.glob("*.xml"), key=_order):
        root = ET.parse(path).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is None:
            lines.append(f"{path.stem:<12} (no test suite in {path.name})")
            continue
        tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        passed = tests - failures - errors - skipped
        lines.append(f"{path.stem:<12} {tests:>6} {passed:>7} {failures:>7} {errors:>7} {skipped:>8} "
                     f"{float(suite.get('time', 0)):>8.0f}")
    return lines


def conformance_lines(directory: Path) -> list[str]:
    from .oci_conformance import EXPECTED, ConformanceResult, missing_reason

    path = directory / "conformance.jsonl"
    runs = [ConformanceResult(**json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []
    expected = "{} passed, {} failed, {} skipped".format(*EXPECTED)
    lines = [run.line() + ("" if (run.passed, run.failed, run.skipped) == EXPECTED else f"   <- not {expected}")
             for run in runs]
    if not runs:
        lines.append(f"OCI CONFORMANCE SUITE NOT RUN: {missing_reason() or 'no conformance test ran'}")
    return lines


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else Path(".")
    print("\n== make test summary")
    print("\n".join(backend_lines(directory)))
    print("\n".join(conformance_lines(directory)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
