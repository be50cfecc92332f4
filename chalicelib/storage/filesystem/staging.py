"""The page-aligned staging buffers the O_DIRECT writer copies request bytes into.

A lone push writes 1 MiB per pwrite: a direct write waits for the device, and
256 KiB pieces wrote 256 MiB at ~0.6x the speed of 1 MiB ones here. But every
concurrent push holds its buffer, which counted 32 MB of a server's 112 MB peak in
32 concurrent 64 MiB pushes; so only LARGE_AT_ONCE writers get a large buffer and
the rest a small one. Under that much concurrency the CPU, not one writer's wait
for the device, sets the pace.

The large buffers are kept warm for the next writers: a fresh mapping's pages are
faulted in on first touch, which on a VM whose memory the hypervisor backs lazily
is what made writing through the page cache slow in the first place.
"""
from __future__ import annotations

import mmap
import threading
import weakref

PIECE = 1 << 20  # a large buffer: one pwrite per MiB
SMALL_PIECE = 256 << 10  # for the writers beyond LARGE_AT_ONCE
LARGE_AT_ONCE = 4
POOL_MAX = LARGE_AT_ONCE  # warm large buffers kept; never more are out at once
pool: list[mmap.mmap] = []
# large buffers held by writers now; weak, so a writer dropped without close() does
# not keep its place
_large_out: "weakref.WeakSet[mmap.mmap]" = weakref.WeakSet()
_lock = threading.Lock()


def take() -> mmap.mmap:
    """A buffer of PIECE or SMALL_PIECE bytes; an anonymous mapping is page-aligned,
    as O_DIRECT needs."""
    with _lock:
        if len(_large_out) >= LARGE_AT_ONCE:
            return mmap.mmap(-1, SMALL_PIECE)
        buffer = pool.pop() if pool else mmap.mmap(-1, PIECE)
        _large_out.add(buffer)
        return buffer


def give_back(buffer: mmap.mmap) -> None:
    with _lock:
        if buffer in _large_out:
            _large_out.discard(buffer)
            if len(pool) < POOL_MAX:
                pool.append(buffer)
                return
    buffer.close()
