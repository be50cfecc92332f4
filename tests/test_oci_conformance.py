"""The official OCI distribution-spec conformance suite against the shared server.

Opt-in: STRATUS_OCI_CONFORMANCE names a built conformance binary (it is Go code
from opencontainers/distribution-spec, not part of this repository). With
STRATUS_TEST_BACKEND it runs on any backend, e.g.

    STRATUS_OCI_CONFORMANCE=/path/conformance.test STRATUS_TEST_BACKEND=rados \\
        .venv/bin/python -m pytest tests/test_oci_conformance.py
"""
from __future__ import annotations

from pathlib import Path

from .oci_conformance import requires_conformance, run_oci_conformance
from .conftest import RunningRegistry

pytestmark = requires_conformance


def test_official_conformance_suite_passes(stratus: RunningRegistry, tmp_path: Path) -> None:
    assert run_oci_conformance(stratus.url, tmp_path).returncode == 0
