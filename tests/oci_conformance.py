"""The official OCI distribution-spec conformance suite, run against a registry URL.

The suite is a prebuilt Go binary (opencontainers/distribution-spec, conformance/;
see shared/tools/oci-conformance/README.md): `../shared/tools/oci-conformance/
conformance.test` beside the checkout, or the file STRATUS_OCI_CONFORMANCE names.
Without it a conformance test skips with a loud line, or fails under CI=true
(tests/components.py).

Every run must score exactly what a full pass scores with automatic cross-mounting
on: 75 passed, 0 failed, 4 skipped. Each result is printed at the end of the pytest
run (conftest.py) and, when STRATUS_TEST_REPORTS names a directory, appended to
conformance.jsonl there for `make test`'s summary (tests/report.py).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .components import require

CONFORMANCE = "STRATUS_OCI_CONFORMANCE"
ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT.parent / "shared" / "tools" / "oci-conformance" / "conformance.test"
COMPONENT = "the OCI conformance suite"
REPORTS = "STRATUS_TEST_REPORTS"
EXPECTED = (75, 0, 4)  # passed, failed, skipped: a full pass with automatic cross-mount
SUMMARY = re.compile(r"(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped")


@dataclass(frozen=True)
class ConformanceResult:
    label: str
    passed: int
    failed: int
    skipped: int
    seconds: float

    def line(self) -> str:
        return (f"OCI conformance {self.label}: {self.passed} passed, {self.failed} failed, "
                f"{self.skipped} skipped in {self.seconds:.1f}s")


results: list[ConformanceResult] = []  # this process's runs, for conftest's terminal summary
not_run: list[str] = []  # why a conformance test of this process could not run


def binary() -> Path:
    named = os.environ.get(CONFORMANCE)
    return Path(named) if named else BUNDLED


def missing_reason() -> Optional[str]:
    path = binary()
    if os.access(path, os.X_OK):
        return None
    how = f"{CONFORMANCE}={path}" if os.environ.get(CONFORMANCE) else f"{path} (or set {CONFORMANCE})"
    return f"no executable conformance binary at {how}; see shared/tools/oci-conformance/README.md"


@pytest.fixture(scope="session")
def oci_conformance_binary() -> Iterator[Path]:
    """The binary, or a skip (a failure under CI=true) before any server starts."""
    _require()
    yield binary()


def _require() -> None:
    reason = missing_reason()
    if reason:
        not_run.append(reason)
    require(COMPONENT, reason)


# Session-scoped, so it is set up before the module fixtures that start registries.
requires_conformance = pytest.mark.usefixtures("oci_conformance_binary")


def _label() -> str:
    """The calling test's id (its module names the deployment: s3, azure, functions...)."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].rsplit("/", 1)[-1] or "(no test)"


def _record(result: ConformanceResult) -> None:
    results.append(result)
    directory = os.environ.get(REPORTS)
    if directory:
        with open(Path(directory) / "conformance.jsonl", "a") as out:
            out.write(json.dumps(asdict(result)) + "\n")


def run_oci_conformance(url: str, workdir: Path, label: Optional[str] = None,
                        automatic_crossmount: bool = True) -> subprocess.CompletedProcess:
    """Every workflow; asserts 75 passed, 0 failed, 4 skipped.

    With automatic_crossmount, a mount without `from` must answer 201; without, 202 (the
    suite checks one or the other). OCI_USERNAME and OCI_PASSWORD, when set in this
    process, are the suite's credentials."""
    _require()
    env = {**os.environ, "OCI_ROOT_URL": url, "OCI_NAMESPACE": "conformance/repo",
           "OCI_CROSSMOUNT_NAMESPACE": "conformance/other",
           "OCI_AUTOMATIC_CROSSMOUNT": "1" if automatic_crossmount else "0",
           "OCI_TEST_PULL": "1", "OCI_TEST_PUSH": "1", "OCI_TEST_CONTENT_DISCOVERY": "1",
           "OCI_TEST_CONTENT_MANAGEMENT": "1", "OCI_HIDE_SKIPPED_WORKFLOWS": "0",
           "OCI_REPORT_DIR": str(workdir)}
    started = time.monotonic()
    done = subprocess.run([str(binary()), "-ginkgo.no-color"], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    seconds = time.monotonic() - started
    found = SUMMARY.search(done.stdout)
    tail = f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    assert found, f"no summary line from the conformance suite (exit {done.returncode}):\n{tail}"
    passed, failed, _pending, skipped = map(int, found.groups())
    result = ConformanceResult(label or _label(), passed, failed, skipped, round(seconds, 2))
    _record(result)
    print(result.line())
    assert (passed, failed, skipped) == EXPECTED, f"{result.line()}, expected {EXPECTED}:\n{tail}"
    assert done.returncode == 0, tail
    return done
