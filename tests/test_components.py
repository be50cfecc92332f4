"""A missing component skips a test, and fails it under CI=true (tests/components.py).

A throwaway test module runs in a pytest of its own, with this suite's conftest
hooks, once as a developer would run it and once as CI does.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''
import pytest

from tests.components import needs, not_applicable, require, skip_not_applicable
from tests.redis_server import NO_REDIS


@needs("redis-server", NO_REDIS)  # as requires_redis is when redis-server is missing
def test_marked():
    pass


def test_required_at_run_time():
    require("Ceph", "ceph-mon missing")


def test_a_bare_skip():
    pytest.skip("some helper skipped by itself")


@pytest.mark.skipif(True, reason="redis-server is not installed")
def test_a_plain_skipif():
    pass


@not_applicable(True, "inspects filesystem storage")
def test_not_applicable_mark():
    pass


def test_not_applicable_at_run_time():
    skip_not_applicable("the registry does not offer this")


@needs("present", None)
def test_present():
    pass


@pytest.mark.xfail(strict=True, reason="a known gap")
def test_expected_failure():
    assert False
'''

CONFTEST = '''
from tests.conftest import (  # noqa: F401  (the suite's hooks)
    pytest_configure, pytest_make_collect_report, pytest_runtest_makereport, pytest_runtest_setup,
)
'''


def run_probe(tmp_path: Path, ci: bool) -> dict[str, str]:
    """Each probe test's outcome: passed, skipped, failed (in the call) or error (in setup)."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    junit = tmp_path / "junit.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[case.get("name")] = {"skipped": "skipped", "failure": "failed", "error": "error"}.get(
            kinds[0] if kinds else "", "passed")
    return outcomes


def test_a_developer_run_skips_what_is_missing(tmp_path: Path) -> None:
    assert run_probe(tmp_path, ci=False) == {
        "test_marked": "skipped",
        "test_required_at_run_time": "skipped",
        "test_a_bare_skip": "skipped",
        "test_a_plain_skipif": "skipped",
        "test_not_applicable_mark": "skipped",
        "test_not_applicable_at_run_time": "skipped",
        "test_present": "passed",
        "test_expected_failure": "skipped",  # junit's word for an xfail
    }


def test_under_ci_a_missing_component_fails_and_only_not_applicable_skips(tmp_path: Path) -> None:
    assert run_probe(tmp_path, ci=True) == {
        "test_marked": "error",  # in setup, before any fixture starts a server
        "test_required_at_run_time": "failed",
        "test_a_bare_skip": "failed",
        "test_a_plain_skipif": "error",
        "test_not_applicable_mark": "skipped",
        "test_not_applicable_at_run_time": "skipped",
        "test_present": "passed",
        "test_expected_failure": "skipped",
    }
