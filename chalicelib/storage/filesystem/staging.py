"""The page-aligned staging buffers the O_DIRECT writer copies request bytes into.

A few warm buffers are kept for the next writers: a fresh mapping's pages are
faulted in on first touch, which on a VM whose memory the hypervisor backs lazily
is what made writing through the page cache slow in the first place.
"""
from __future__ import annotations

import mmap

PIECE = 1 << 20  # staging buffer size: one pwrite per MiB
POOL_MAX = 8  # warm buffers kept for the next writers
pool: list[mmap.mmap] = []


def take() -> mmap.mmap:
    # an anonymous mapping is page-aligned, as O_DIRECT needs; list.pop is atomic
    try:
        return pool.pop()
    except IndexError:
        return mmap.mmap(-1, PIECE)


def give_back(buffer: mmap.mmap) -> None:
    if len(pool) < POOL_MAX:
        pool.append(buffer)
    else:
        buffer.close()
