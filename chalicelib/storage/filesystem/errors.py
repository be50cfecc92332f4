"""OS errors turned into storage errors, so no raw OSError crosses the protocol."""
from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator

from ..base import PathNotFoundError, StorageError

NAME = "filesystem"


def storage_error(path: str, exc: OSError, *, missing_is_not_found: bool = True) -> StorageError:
    if missing_is_not_found and exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFoundError(NAME, path)
    return StorageError(NAME, path, exc.strerror or str(exc))


@contextmanager
def os_errors(path: str, *, missing_is_not_found: bool = True) -> Iterator[None]:
    """Re-raise OSError as a StorageError.

    When creating, a missing or non-directory parent is a failure to store, not a
    missing path, hence missing_is_not_found=False.
    """
    try:
        yield
    except OSError as exc:
        raise storage_error(path, exc, missing_is_not_found=missing_is_not_found) from exc
