"""Resumable hashing against hashlib: what saving the state per chunk costs.

The resumable run does what an upload does across requests: after every chunk
the state is saved, and the next chunk restores a hasher from those bytes.
Both are timed in this thread's CPU time: hashing is CPU-bound, and on a shared
machine wall time mostly measures who else got the core.
"""
from __future__ import annotations

import hashlib
import time

from chalicelib.digest import CANONICAL, ResumableHasher


def hashlib_seconds(data: memoryview, chunk: int) -> tuple[float, str]:
    start = time.thread_time()
    hasher = hashlib.sha256()
    for offset in range(0, len(data), chunk):
        hasher.update(data[offset:offset + chunk])
    return time.thread_time() - start, hasher.hexdigest()


def resumable_seconds(data: memoryview, chunk: int) -> tuple[float, str]:
    start = time.thread_time()
    state = None
    for offset in range(0, len(data), chunk):
        hasher = CANONICAL.hasher() if state is None else ResumableHasher.restore(CANONICAL, state)
        hasher.update(data[offset:offset + chunk])
        state = hasher.state()
    final = CANONICAL.hasher() if state is None else ResumableHasher.restore(CANONICAL, state)
    hex_ = final.digest().hex
    return time.thread_time() - start, hex_
