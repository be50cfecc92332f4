"""The RADOS driver against a real single-node Ceph cluster started for this module.

The conformance suite, plus what is particular to RADOS: the omap directory
layout the reference registry used, striping at chunk boundaries, moves that copy
no data, writers in many processes, and a skopeo push and pull through
`stratus serve` storing in the pool. Skips with the reason when Ceph is missing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import PathNotFoundError, StorageError, create_driver  # noqa: E402
from tests.ceph_cluster import CephCluster, ceph_cluster, unavailable_reason  # noqa: E402
from tests.storage_suite import StorageDriverSuite, payload  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def ceph() -> Iterator[CephCluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # A short path of our own: admin sockets must fit in sockaddr_un (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="stratus-ceph-"))
    try:
        with ceph_cluster(directory / "c") as cluster:
            print(f"\nCeph cluster up in {cluster.start_seconds:.1f}s", file=sys.stderr)
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def make_driver(ceph: CephCluster, **extra: Any):
    return create_driver("rados", {"poolname": ceph.pool, "conffile": str(ceph.conffile), **extra})


@pytest.fixture(scope="module")
def rados_driver(ceph: CephCluster):
    driver = make_driver(ceph)
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def small_driver(ceph: CephCluster):
    """Stripes of 64 KiB, so boundaries are cheap to cross."""
    driver = make_driver(ceph, chunksize=64 * KiB)
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def io(ceph: CephCluster, rados_driver) -> Iterator[Any]:
    """A raw I/O context on the pool, to look at objects behind the driver's back."""
    from chalicelib.storage.rados import import_rados

    rados = import_rados()
    cluster = rados.Rados(conffile=str(ceph.conffile))
    cluster.connect(timeout=30)
    ioctx = cluster.open_ioctx(ceph.pool)
    yield ioctx
    ioctx.close()
    cluster.shutdown()


@pytest.fixture
def ctx() -> Context:
    return Context()


@pytest.fixture
def base(rados_driver, ctx) -> Iterator[str]:
    prefix = f"/rados-{uuid.uuid4().hex[:12]}"
    yield prefix
    try:
        rados_driver.delete(ctx, prefix)
    except PathNotFoundError:
        pass


class TestRadosDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self, rados_driver):
        return rados_driver


class TestRadosDriverSmallStripes(StorageDriverSuite):
    """The whole suite again with 64 KiB stripes: every test crosses boundaries."""

    @pytest.fixture
    def driver(self, small_driver):
        return small_driver
