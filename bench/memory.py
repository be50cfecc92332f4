"""Peak resident memory of a server's whole process tree, sampled from /proc.

A pre-forking server's memory is spread over a master and its workers, so the
sample is the sum of VmRSS over the tree (shared pages count once per process:
an upper bound, and what `ps` users see).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0  # the process ended between listing and reading


def tree_rss(pid: int) -> int:
    return sum(rss_bytes(p) for p in process_tree(pid))


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the live processes of pid's tree (for CPU per request:
    on a shared machine it varies far less than wall-clock rates do)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / _TICK


class PeakRSS:
    """Samples tree RSS every `interval` seconds in a thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        pids = process_tree(self.pid)
        refreshed = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 0.25:  # workers may be replaced
                pids, refreshed = process_tree(self.pid), time.monotonic()
            self.peak = max(self.peak, sum(rss_bytes(p) for p in pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))


def warm_guest_memory(nbytes: int) -> float:
    """Touch and free `nbytes` of memory; returns the seconds it took.

    This VM (Firecracker, virtio-balloon) backs guest memory on first touch, and
    seems to hand freed pages back to the hypervisor within seconds: a page-cache
    write into such a page faults in the hypervisor, which made writing 256 MiB
    take ~0.6 s instead of ~0.06 s, whichever registry was writing, and capped
    both at ~300 MB/s. Bare metal or a long-running host does not pay this, so
    the bench touches and frees memory right before each push, for both
    registries alike; `python -m bench --cold-memory` measures without it.
    """
    import mmap
    import time

    start = time.perf_counter()
    page = os.sysconf("SC_PAGE_SIZE")
    block = 256 << 20
    left = nbytes
    while left > 0:
        size = min(block, left)
        region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, size, page):
            region[offset] = 1
        region.close()  # freed pages go back to the guest's free lists, now backed
        left -= size
    return time.perf_counter() - start


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def concurrent_pushes(url: str, pid: int, pushes: int, size: int, label: str = "p") -> tuple[int, list[str]]:
    """Peak tree RSS (bytes) of the server `pid` while `pushes` clients each push a new
    `size`-byte blob in one monolithic PUT at once, and the failures (a refused push,
    503, is a result too). The blobs share all but their first 16 bytes, so the
    client's own memory does not grow with `pushes`."""
    import hashlib

    from . import client as registry_client

    tail = memoryview(os.urandom(size - 16))
    failures: list[str] = []

    def push(i: int) -> None:
        head = f"{label}-{i:06d}".encode().ljust(16, b"-")[:16]
        digest = hashlib.sha256(head)
        digest.update(tail)
        try:
            with registry_client.Client(url) as pusher:
                pusher.push_monolithic(f"bench/concurrent{i}", [memoryview(head), tail], size,
                                       "sha256:" + digest.hexdigest())
        except Exception as exc:
            failures.append(repr(exc)[:200])

    with PeakRSS(pid) as peak:
        threads = [threading.Thread(target=push, args=(i,)) for i in range(pushes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return peak.peak, failures


def main() -> None:
    """`python -m bench.memory`: peak RSS in concurrent pushes, Stratus beside the
    reference, without the hostile clients of the availability rows (issue 14)."""
    import argparse
    from pathlib import Path

    from . import servers

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--pushes", type=int, default=32)
    p.add_argument("--mib", type=int, default=64, help="size of each pushed blob")
    p.add_argument("--reps", type=int, default=3, help="bursts per server, each of new blobs")
    p.add_argument("--stratus-tree", help="serve Stratus from another checkout")
    p.add_argument("--no-reference", action="store_true")
    args = p.parse_args()
    tree = Path(args.stratus_tree) if args.stratus_tree else None
    MB = 1e6
    with servers.workspace() as work:
        runs = [("stratus", lambda: servers.stratus(work, tree=tree, name="stratus-memory"))]
        if not args.no_reference and servers.reference_available():
            runs.append(("reference", lambda: servers.reference(work, name="reference-memory")))
        for name, start in runs:
            with start() as server:
                time.sleep(0.5)
                line = [f"{name}: idle {tree_rss(server.pid) / MB:.1f} MB; peak in {args.pushes} x {args.mib} MiB:"]
                for rep in range(args.reps):
                    peak, failures = concurrent_pushes(server.url, server.pid, args.pushes, args.mib << 20, f"r{rep}")
                    line.append(f"{peak / MB:.1f}" + (f" ({len(failures)} failed: {failures[0]})" if failures else ""))
                line.append(f"; after: {tree_rss(server.pid) / MB:.1f} MB")
                print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
