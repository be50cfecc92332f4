"""A throwaway single-node Ceph cluster on loopback, for tests of the RADOS driver.

One monitor and one memstore OSD run in the foreground of their own process
groups, with every file (config, monmap, data, logs, sockets, pids) in a temp dir;
authentication is off and nothing listens beyond 127.0.0.1. Stopping kills the two
daemons by pid, so a test run never touches a Ceph that was there before it.

    with ceph_cluster(tmp_path) as cluster:
        driver = from_parameters({"poolname": cluster.pool, "conffile": str(cluster.conffile)})

Every `ceph`/`rados` command runs under `timeout`: without a manager some of them
wait forever for an answer that never comes.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .components import require
from .servers import free_port, stop

DAEMONS = ("ceph-mon", "ceph-osd", "monmaptool", "ceph", "rados", "timeout")
COMMAND_TIMEOUT = 30  # seconds for one CLI call; a healthy cluster answers in one or two

# Tuned for a fast start on one machine: memstore (no disk format), no replicas, one
# placement group, monitors proposing changes at once rather than batching them per
# second, and no monitor shutdown when the test machine's disk runs low.
CONFIG = """\
[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{port}
public_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_crit = 0
mon_data_avail_warn = 0
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 1
osd_pool_default_pgp_num = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
osd_objectstore = memstore
memstore_device_bytes = {memstore_bytes}
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
run_dir = {dir}/run
admin_socket = {dir}/run/$name.asok
pid_file = {dir}/run/$name.pid
log_file = {dir}/log/$name.log
mon_cluster_log_file = {dir}/log/cluster.log
mon_data = {dir}/mon/$name
osd_data = {dir}/osd/$name
keyring = /dev/null
# A client op against a dead OSD fails after this long instead of hanging a test.
rados_osd_op_timeout = 60
rados_mon_op_timeout = 30
client_mount_timeout = 30
"""


class CephUnavailable(RuntimeError):
    """Ceph's daemons or the librados binding are missing (tests call require_ceph() first)."""


@dataclass
class CephCluster:
    directory: Path
    conffile: Path
    pool: str
    mon_pid: int
    osd_pid: int
    start_seconds: float  # from nothing to a pool that takes writes

    def run(self, *argv: str, timeout: int = COMMAND_TIMEOUT) -> str:
        return _run([*argv[:1], "-c", str(self.conffile), *argv[1:]], timeout)

    def object_names(self) -> list[str]:
        """Every object in the pool (`rados ls`), for tests that count objects."""
        return sorted(self.run("rados", "-p", self.pool, "ls").split())


def unavailable_reason() -> Optional[str]:
    """Why a cluster cannot be started here, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        how = "run `make system-deps` as root" if os.geteuid() == 0 else "needs root to install"
        return f"Ceph is not installed ({', '.join(missing)} missing; {how})"
    from chalicelib.storage.rados import RadosUnavailableError, import_rados

    try:
        import_rados()
    except RadosUnavailableError as exc:
        return str(exc)
    return None


def require_ceph() -> None:
    """In a test or fixture: skip when Ceph is missing, or fail under CI=true."""
    require("Ceph", unavailable_reason())


def _run(argv: Sequence[str], timeout: int = COMMAND_TIMEOUT) -> str:
    # `timeout` ends the command (and -k kills it) even if it ignores SIGTERM; the
    # subprocess timeout is the backstop should `timeout` itself get stuck.
    full = ["timeout", "-k", "5", str(timeout), *argv]
    result = subprocess.run(full, capture_output=True, text=True, timeout=timeout + 15)
    if result.returncode != 0:
        why = "timed out" if result.returncode == 124 else f"exited with {result.returncode}"
        raise RuntimeError(f"{' '.join(argv)} {why}: {result.stderr.strip()[-2000:]}")
    return result.stdout


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL or a crash,
    so no daemon outlives a run that never reached its teardown (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )


def _log_tail(directory: Path) -> str:
    tails = []
    for log in sorted((directory / "log").glob("*")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        tails.append(f"--- {log.name}\n" + "\n".join(lines))
    return "\n".join(tails)


@contextmanager
def ceph_cluster(
    directory: Path, pool: str = "stratus", memstore_bytes: int = 4 << 30, timeout: float = 60.0
) -> Iterator[CephCluster]:
    """Start a mon and an OSD in `directory`, create `pool`, stop both afterwards."""
    reason = unavailable_reason()
    if reason:
        raise CephUnavailable(reason)
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "log", "mon", "osd"):
        (directory / sub).mkdir(exist_ok=True)
    fsid, port = str(uuid.uuid4()), free_port()
    conffile = directory / "ceph.conf"
    conffile.write_text(
        CONFIG.format(fsid=fsid, port=port, dir=directory, memstore_bytes=memstore_bytes)
    )
    conf = ["-c", str(conffile)]

    with ExitStack() as stack:
        try:
            monmap = directory / "monmap"
            address = f"[v2:127.0.0.1:{port}]"
            _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", address, str(monmap)])
            _run(["ceph-mon", *conf, "--mkfs", "-i", "a", "--monmap", str(monmap)])
            mon = _spawn(["ceph-mon", *conf, "-f", "-i", "a"], directory / "log" / "mon.stdout")
            stack.callback(stop, mon)

            osd_uuid = str(uuid.uuid4())
            osd_id = _run(["ceph", *conf, "osd", "new", osd_uuid]).strip()
            (directory / "osd" / f"osd.{osd_id}").mkdir()
            _run(["ceph-osd", *conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid])
            osd = _spawn(["ceph-osd", *conf, "-f", "-i", osd_id], directory / "log" / "osd.stdout")
            stack.callback(stop, osd)

            # The pool is created while the OSD boots; the first write then waits
            # for its placement group to become active.
            _run(["ceph", *conf, "osd", "pool", "create", pool, "1", "1", "replicated"])
            probe = directory / "probe"
            probe.write_bytes(b"ok")
            deadline = started + timeout
            while True:
                if mon.poll() is not None or osd.poll() is not None:
                    raise RuntimeError("a Ceph daemon exited during start-up")
                try:
                    remaining = max(1, int(deadline - time.monotonic()))
                    _run(["rados", *conf, "-p", pool, "put", "stratus-probe", str(probe)], min(remaining, 20))
                    _run(["rados", *conf, "-p", pool, "rm", "stratus-probe"])
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
        except Exception as exc:
            raise RuntimeError(f"Ceph did not start: {exc}\n{_log_tail(directory)}") from exc
        yield CephCluster(
            directory=directory,
            conffile=conffile,
            pool=pool,
            mon_pid=mon.pid,
            osd_pid=osd.pid,
            start_seconds=time.monotonic() - started,
        )
