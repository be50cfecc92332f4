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
from .errors import NAME, os_errors

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
O_PATH = getattr(os, "O_PATH", 0)  # Linux, as is openat2, the only user
_openat2: Any = None  # None: not probed yet; False: unavailable; else the function


def load_openat2() -> Any:
    """A function openat2(dirfd, path, flags) -> fd, or False where there is none."""
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
    resolve = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
    size = ctypes.sizeof(OpenHow)

    def openat2(dirfd: int, path: bytes, flags: int) -> int:
        how = OpenHow(flags, 0, resolve)
        fd = syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), size)
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
    with os_errors(path):
        # opened per call, so a root removed and made again is seen as it is now
        root_fd = os.open(root_directory, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                return int(_openat2(root_fd, path[1:].encode(), flags))
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ELOOP):
                    return None
                if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                    _openat2 = False  # no openat2 here: never ask again
                    return None
                raise
        finally:
            os.close(root_fd)
