"""The official OCI distribution-spec conformance suite, run against a registry URL.

Opt-in: STRATUS_OCI_CONFORMANCE names a built conformance binary (Go code from
opencontainers/distribution-spec, conformance/; not part of this repository).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CONFORMANCE = "STRATUS_OCI_CONFORMANCE"
requires_conformance = pytest.mark.skipif(
    not os.environ.get(CONFORMANCE), reason=f"set {CONFORMANCE}=<conformance binary>"
)


def run_oci_conformance(url: str, workdir: Path) -> subprocess.CompletedProcess:
    """Every workflow with automatic cross-mounting; prints the report's tail on failure."""
    env = {**os.environ, "OCI_ROOT_URL": url, "OCI_NAMESPACE": "conformance/repo",
           "OCI_CROSSMOUNT_NAMESPACE": "conformance/other", "OCI_AUTOMATIC_CROSSMOUNT": "1",
           "OCI_TEST_PULL": "1", "OCI_TEST_PUSH": "1", "OCI_TEST_CONTENT_DISCOVERY": "1",
           "OCI_TEST_CONTENT_MANAGEMENT": "1", "OCI_REPORT_DIR": str(workdir)}
    done = subprocess.run([os.environ[CONFORMANCE]], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        print(done.stdout[-6000:], done.stderr[-3000:])
    return done
