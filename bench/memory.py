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
