"""Starting writeback early with sync_file_range(2).

Writeback of a large file is started as it is written (SYNC_FILE_RANGE_WRITE, which
does not wait), every WRITEBACK_EVERY bytes, so the fsync that commit() and close()
owe finds the data mostly on disk already instead of writing it all then: on a
1 GB/s disk that was ~0.3 s of every 256 MiB push.
"""
from __future__ import annotations

import sys
from typing import Any

WRITEBACK_EVERY = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None  # None: not probed yet; False: unavailable


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, ImportError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing [offset, offset+length) out; never waits for it.
    Only an optimization: any failure leaves the fsync to do all the work."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = _load_sync_file_range()
    if _sync_file_range:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
