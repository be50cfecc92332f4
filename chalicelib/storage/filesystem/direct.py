"""Upload data written with O_DIRECT where the filesystem takes it.

Through the page cache, a pushed blob's every page had to be allocated and copied
into, and on a VM whose memory the hypervisor backs on first touch that copy ran at
~400 MB/s and cost 0.6 s of CPU per 256 MiB; O_DIRECT moves the bytes from a warm
staging buffer at 1-2 GB/s for ~0.05 s of CPU. Written so, a new blob is not in the
cache, and its first pull read it from disk at 0.35-0.42x the reference's speed; so
each piece, once on disk, is read back into the cache (see prefetch), for ~50 ms of
kernel time per 256 MiB. storage.filesystem.directwrites: false writes through the
cache instead.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
from typing import Optional

from . import staging
from .errors import os_errors
from .writer import CachedFileWriter

DIRECT_ALIGN = 4096  # offsets, lengths and buffer addresses; covers 512 B and 4 KiB sectors
OPEN_FLAGS = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
# One POSIX_FADV_WILLNEED reads at most max(the device's readahead, its largest
# request) into the cache (Linux's force_page_cache_ra), so a 256 MiB range asked in
# one call got 8 MiB cached here; 512 KiB is at most that on common block devices.
_PREFETCH_WINDOW = 512 << 10


def prefetch(fd: int, offset: int, length: int) -> None:
    """Start reading [offset, offset+length) of the file into the page cache; returns
    before the reads finish.

    A blob written with O_DIRECT is not in the cache, and the first pull of it
    then allocated every page while serving it: 0.35-0.42x the reference's first
    pull, which found the blob cached by its own write. Read back right after it is
    written, a 256 MiB blob cost ~50 ms (~40 ms of CPU) and was all cached before
    the push ended, against 0.3-0.6 s of CPU to write it through the cache. Only an
    optimization: where the kernel refuses, the first pull reads from disk.
    """
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is None:
        return
    end = offset + length
    try:
        while offset < end:
            fadvise(fd, offset, min(_PREFETCH_WINDOW, end - offset), os.POSIX_FADV_WILLNEED)
            offset += _PREFETCH_WINDOW
    except OSError:
        pass


def enable_direct(fd: int) -> bool:
    """Turn O_DIRECT on for fd; False where the OS or filesystem cannot."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | direct)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True


def _disable_direct(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


class DirectFileWriter(CachedFileWriter):
    """Writes whole aligned blocks with O_DIRECT from a staging buffer.

    The file's last partial block is written through the page cache when the writer
    closes; the next writer reads it back and rewrites it whole, its old bytes first
    and unchanged, so a crash in between loses nothing that close() made durable.
    Where a direct write is refused (an unusual sector size), the rest goes through
    the page cache.
    """

    def __init__(self, path: str, full: str, fd: int, size: int, head: bytes) -> None:
        """`head`: the bytes of the file's last partial block, read before O_DIRECT."""
        super().__init__(path, full, fd, size)
        self._staging: Optional[mmap.mmap] = None
        self._staged = 0  # bytes in staging, which starts at file offset _block
        self._block = size - len(head)
        self._direct = True
        if head:
            self._stage(memoryview(head))

    def _stage(self, view: memoryview) -> int:
        """Copy as much of view as fits into staging; returns how much."""
        if self._staging is None:
            self._staging = staging.take()
        taken = min(len(view), len(self._staging) - self._staged)
        self._staging[self._staged:self._staged + taken] = view[:taken]
        self._staged += taken
        return taken

    def write(self, data: bytes) -> int:
        self._state.require_open()
        view = memoryview(data).cast("B")
        with os_errors(self._path):
            while view:
                taken = self._stage(view)
                view = view[taken:]
                self._size += taken
                if self._staging is not None and self._staged == len(self._staging):
                    self._write_staged(self._staged)
                    self._block += self._staged
                    self._staged = 0
        return len(data)

    def _write_staged(self, end: int, start: int = 0) -> None:
        """Write staging[start:end] at its place in the file (directly while it can),
        then have it read back into the page cache for the first pull."""
        assert self._staging is not None
        first = start
        with memoryview(self._staging) as staged:
            while start < end:
                try:
                    written = os.pwrite(self._fd, staged[start:end], self._block + start)
                except OSError as exc:
                    if self._direct and exc.errno == errno.EINVAL:
                        self._through_cache()  # an alignment this device refuses
                        continue
                    self._size = self._block + start  # what is surely in the file
                    self._staged = 0
                    raise
                start += written
                if self._direct and start % DIRECT_ALIGN:
                    self._through_cache()  # a short write left an unaligned offset
        prefetch(self._fd, self._block + first, end - first)  # cached parts cost nothing

    def _through_cache(self) -> None:
        _disable_direct(self._fd)
        self._direct = False

    def _flush(self) -> None:
        if not self._staged:
            return
        aligned = self._staged - self._staged % DIRECT_ALIGN
        self._write_staged(aligned)
        if aligned < self._staged:
            if self._direct:
                self._through_cache()  # the last partial block
            self._write_staged(self._staged, aligned)
        self._staged = 0

    def _release(self) -> None:
        if self._staging is not None:
            staging.give_back(self._staging)
            self._staging = None
