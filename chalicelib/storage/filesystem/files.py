"""File and directory operations the driver and its writers build on: create with
missing parents, durable directory entries, whole reads and writes, tree removal."""
from __future__ import annotations

import errno
import os
import shutil
import stat as stat_mode
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

from ..base import FileInfo, PathNotFoundError, StorageError
from .errors import NAME

_CREATE_ATTEMPTS = 3
T = TypeVar("T")


def file_info(path: str, st: os.stat_result) -> FileInfo:
    is_dir = stat_mode.S_ISDIR(st.st_mode)
    return FileInfo(path=path, size=0 if is_dir else st.st_size,
                    mod_time=datetime.fromtimestamp(st.st_mtime, timezone.utc), is_dir=is_dir)


def fsync_dir(directory: str) -> None:
    """Make a new or renamed directory entry durable; some filesystems cannot."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def create_in(directory: str, create: Callable[[], T]) -> T:
    """Create, making directory and its parents when they are missing; retried because
    a concurrent delete (upload purging, GC) may remove fresh parents before the file
    lands. The directory usually exists (rewritten links, hash states, every PATCH),
    so create is tried first: makedirs costs three system calls even then."""
    try:
        return create()
    except FileNotFoundError:
        pass
    for attempt in range(_CREATE_ATTEMPTS):
        os.makedirs(directory, 0o777, exist_ok=True)
        try:
            return create()
        except FileNotFoundError:
            if attempt == _CREATE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def create_or_truncate(full: str, flags: int) -> tuple[int, bool]:
    """Open a new empty file; returns (fd, whether the file was created)."""
    try:
        return os.open(full, flags | os.O_CREAT | os.O_EXCL, 0o666), True
    except FileExistsError:
        return os.open(full, flags | os.O_TRUNC), False


def unlink_quietly(full: str) -> None:
    try:
        os.unlink(full)
    except OSError:
        pass


def rmtree(full: str) -> None:
    """Remove a tree, ignoring entries that a concurrent delete removed first."""

    def ignore_missing(func: Any, name: str, exc: Any) -> None:
        error = exc if isinstance(exc, BaseException) else exc[1]
        if not isinstance(error, FileNotFoundError):
            raise error

    if sys.version_info >= (3, 12):
        shutil.rmtree(full, onexc=ignore_missing)
    else:
        shutil.rmtree(full, onerror=ignore_missing)


# Most reads are of files smaller than this (links, hash states); one read that
# comes back short is the whole file, so they need no fstat first (one system call
# less, and each one is a GIL hand-off under load, see docs/benchmarks.md).
_FIRST_READ = 8192


def read_all(fd: int, path: str) -> bytes:
    """The whole file behind fd; plain os.read, as Python's file objects cost more
    than the read itself for the small files (links, states) that are most reads."""
    try:
        data = os.read(fd, _FIRST_READ)
    except IsADirectoryError:
        raise PathNotFoundError(NAME, path) from None
    if len(data) < _FIRST_READ:  # a regular file reads short only at its end
        return data
    rest = max(os.fstat(fd).st_size - len(data), 0)
    pieces = [data, os.read(fd, rest + 1)]
    if len(pieces[1]) <= rest:
        return b"".join(pieces)
    while pieces[-1]:  # it grew since fstat: read on to the end
        pieces.append(os.read(fd, 1 << 20))
    return b"".join(pieces)


def write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def pread_exactly(fd: int, length: int, offset: int, path: str) -> bytes:
    if not length:
        return b""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise StorageError(NAME, path, "file shrank while being opened for appending")
    return data
