"""Opening a path beneath the root directory in one system call.

openat2(2) with RESOLVE_BENEATH resolves a path under a directory fd and refuses to
leave it; realpath() costs an lstat per component and a page of Python, which was
most of the time a link read took. Linux 5.6+; elsewhere, or under a seccomp filter
that denies it, open_beneath answers None and the driver checks with realpath().
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Any, Optional

from ..base import check_path
from .errors import NAME, os_errors, storage_error

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
BENEATH = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
O_PATH = getattr(os, "O_PATH", 0)  # Linux, as is openat2, the only user
_openat2: Any = None  # None: not probed yet; False: unavailable; else the function


def load_openat2() -> Any:
    """A function openat2(dirfd, path, flags, resolve=BENEATH) -> fd, or False where there is none."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError, ImportError):
        return False

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(OpenHow), ctypes.c_size_t]
    size = ctypes.sizeof(OpenHow)
    # one open_how per (flags, resolve), built once rather than per call: the kernel
    # only reads it, so threads share them
    hows: dict[tuple[int, int], Any] = {}

    def openat2(dirfd: int, path: bytes, flags: int, resolve: int = BENEATH) -> int:
        how = hows.get((flags, resolve))
        if how is None:
            how = hows.setdefault((flags, resolve), ctypes.pointer(OpenHow(flags, 0, resolve)))
        fd = syscall(_SYS_OPENAT2, dirfd, path, how, size)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(fd)

    return openat2


def open_beneath(root_directory: str, path: str, flags: int = os.O_RDONLY) -> Optional[int]:
    """An fd of path opened beneath root_directory (read-only, or O_PATH for stat),
    or None to take the realpath() route (openat2 unavailable, or the path goes
    through a symlink it will not follow: an absolute one, even into the root, or a
    magic link)."""
    global _openat2
    if _openat2 is None:
        _openat2 = load_openat2()
    if _openat2 is False:
        return None
    check_path(NAME, path)
    flags |= os.O_CLOEXEC
    try:
        # First the whole path with no symlink followed anywhere: check_path leaves no
        # "." or ".." and the root was resolved by realpath(), so what opens is under
        # the root. One system call where the root's open, openat2 and close were
        # three, each a GIL hand-off and thread switches under load (most of a blob
        # HEAD's CPU, docs/benchmarks.md). A symlink on the way (ELOOP) takes the
        # route below.
        return int(_openat2(_AT_FDCWD, (root_directory.rstrip("/") + path).encode(), flags, _RESOLVE_NO_SYMLINKS))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            _openat2 = False  # no openat2 here: never ask again
            return None
        if exc.errno != errno.ELOOP:
            raise storage_error(path, exc) from exc
    with os_errors(path):
        # opened per call, so a root removed and made again is seen as it is now
        root_fd = os.open(root_directory, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                return int(_openat2(root_fd, path[1:].encode(), flags))
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ELOOP):
                    return None
                raise
        finally:
            os.close(root_fd)
