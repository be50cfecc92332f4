"""The shared `stratus serve` fixture, and the hooks that make a skip for a missing
component a failure under CI=true (tests/components.py).

STRATUS_TEST_BACKEND chooses what it runs on, so the HTTP suites (tests/test_api_*)
run unchanged against every deployment shape: `filesystem` (default), `s3` (moto
server), `azure` (Azurite), `rados` (a throwaway Ceph cluster), `redis`
(filesystem with the Redis descriptor cache). `make test-backends` runs them all.

On s3 and azure the server serves blob bytes itself (storage.redirect.disable), since
these suites check the registry's own GET headers; the 307s to presigned and SAS
URLs have tests of their own beside each driver.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import pytest

from . import components, oci_conformance
from .azurite import azurite  # noqa: F401  (a session fixture of the azure tests)
from .moto_server import moto_s3  # noqa: F401  (a fixture the s3 backend requests)
from .oci_conformance import oci_conformance_binary  # noqa: F401  (requires_conformance's fixture)
from .servers import stratus_server

if TYPE_CHECKING:
    from .oci_client import Registry

BACKEND = os.environ.get("STRATUS_TEST_BACKEND", "filesystem")
BACKENDS = ("filesystem", "s3", "azure", "rados", "redis")
NO_REDIRECT = {"REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}


@dataclass(frozen=True)
class RunningRegistry:
    url: str
    root: Path  # the filesystem root of the server's storage, or of its logs on other backends
    backend: str = "filesystem"

    @property
    def on_filesystem(self) -> bool:
        return self.backend in ("filesystem", "redis")


def _backend_environment(
    backend: str, stack: ExitStack, workspace: Path, request: pytest.FixtureRequest
) -> dict[str, str]:
    if backend == "filesystem":
        return {}
    if backend == "s3":
        moto = request.getfixturevalue("moto_s3")
        return {**moto.environment(moto.create_bucket()), **NO_REDIRECT}
    if backend == "azure":
        from .azurite import NO_AZURITE, available, azurite_blob

        components.require("Azurite", None if available() else NO_AZURITE)
        emulator = stack.enter_context(azurite_blob(workspace / "azurite"))
        return {**emulator.environment(emulator.new_container()), **NO_REDIRECT}
    if backend == "rados":
        from .ceph_cluster import ceph_cluster, require_ceph

        require_ceph()
        ceph = stack.enter_context(ceph_cluster(workspace / "ceph"))
        return {
            "REGISTRY_STORAGE": "rados",
            "REGISTRY_STORAGE_RADOS_POOLNAME": ceph.pool,
            "REGISTRY_STORAGE_RADOS_CONFFILE": str(ceph.conffile),
        }
    if backend == "redis":
        from .redis_server import HAVE_REDIS, NO_REDIS, redis_server

        components.require("redis-server", None if HAVE_REDIS else NO_REDIS)
        redis = stack.enter_context(redis_server(workspace / "redis"))
        return {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis.addr}
    raise pytest.UsageError(f"STRATUS_TEST_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")


@pytest.fixture(scope="session")
def stratus(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningRegistry]:
    """One `stratus serve` on the chosen backend, shared by the session."""
    workspace = tmp_path_factory.mktemp("stratus")
    root = workspace / "data"
    root.mkdir()
    with ExitStack() as stack:
        env = _backend_environment(BACKEND, stack, tmp_path_factory.mktemp("backend"), request)
        with stratus_server(root, env) as url:
            yield RunningRegistry(url, root, BACKEND)


@pytest.fixture(scope="session")
def registry_url(stratus: RunningRegistry) -> str:
    return stratus.url


@pytest.fixture(scope="module")
def oci(registry_url: str) -> Iterator["Registry"]:
    """An OCI client of the shared server (tests/oci_client.py)."""
    from .oci_client import Registry

    client = Registry(registry_url)
    yield client
    client.close()


def backend_only(*backends: str) -> Optional[pytest.MarkDecorator]:
    """Skip a test that inspects storage directly when the suite runs on another backend."""
    return components.not_applicable(BACKEND not in backends, f"inspects {'/'.join(backends)} storage")


# -- missing components: a skip, or under CI=true a failure (tests/components.py) -----------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{components.MARK}(component, missing): see tests/components.py")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """components.needs() marks: skip (fail under CI) before any fixture starts a server."""
    for mark in item.iter_markers(components.MARK):
        components.require(*mark.args)


def _skip_message(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def _fail_skip_under_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under CI=true a skip is a failure unless it is components.not_applicable(): a
    skip that bypassed require() (a bare pytest.skip, a skipif mark) is caught here."""
    if not (components.under_ci() and report.skipped and not hasattr(report, "wasxfail")):
        return
    message = _skip_message(report)
    if not components.is_accepted_skip(message):
        report.outcome = "failed"
        report.longrepr = f"CI=true: skips are failures unless not applicable here; skipped with: {message}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Every conformance run of this session, and a loud line when the suite is missing."""
    write = terminalreporter.write_line
    for result in oci_conformance.results:
        write(result.line(), green=result.failed == 0, red=result.failed != 0)
    if oci_conformance.not_run:
        banner = "!" * 100
        for line in (banner, f"OCI CONFORMANCE SUITE NOT RUN: {oci_conformance.not_run[0]}", banner):
            write(line, red=True, bold=True)
