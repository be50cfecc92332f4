"""One writer per file at a time, across threads and processes (flock)."""
from __future__ import annotations

import errno
import fcntl

from ..base import StorageError
from .errors import NAME


def lock_for_writing(fd: int, path: str) -> None:
    """Two PATCHes of one upload racing would interleave their bytes under hash states
    that each describe only their own. The kernel drops the lock with the last fd,
    even on a crash."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StorageError(NAME, path, "another writer is appending to this file") from None
    except OSError as exc:
        # no lock manager (an NFS mount with nolock): write unlocked, as registry:2 does
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise
