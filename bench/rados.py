"""Push and pull through `stratus serve` storing in Ceph RADOS.

A throwaway single-node cluster (tests/ceph_cluster.py: one monitor, one memstore
OSD on loopback) is started for the measure and stopped by pid afterwards. The
reference registry 2.8 has no RADOS driver, so these rows are Stratus alone; the
filesystem rows of the same run are the yardstick.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from . import servers


def unavailable_reason() -> Optional[str]:
    from tests.ceph_cluster import unavailable_reason as reason

    return reason()


@contextmanager
def stratus_on_rados(workdir: Path, workers: Optional[int], memstore_bytes: int) -> Iterator[servers.RunningServer]:
    from tests.ceph_cluster import ceph_cluster

    with ceph_cluster(workdir / "ceph", memstore_bytes=memstore_bytes) as ceph:
        storage = {
            "REGISTRY_STORAGE": "rados",
            "REGISTRY_STORAGE_RADOS_POOLNAME": ceph.pool,
            "REGISTRY_STORAGE_RADOS_CONFFILE": str(ceph.conffile),
        }
        with servers.stratus(workdir, workers, storage=storage, name="stratus-rados") as server:
            yield server
