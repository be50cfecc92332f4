"""OS errors turned into storage errors, so no raw OSError crosses the protocol."""
from __future__ import annotations

import errno
from typing import Any, Optional

from ..base import PathNotFoundError, StorageError

NAME = "filesystem"


def storage_error(path: str, exc: OSError, *, missing_is_not_found: bool = True) -> StorageError:
    if missing_is_not_found and exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFoundError(NAME, path)
    return StorageError(NAME, path, exc.strerror or str(exc))


class os_errors:
    """Re-raise OSError as a StorageError (a `with` block).

    When creating, a missing or non-directory parent is a failure to store, not a
    missing path, hence missing_is_not_found=False. A class rather than a
    @contextmanager generator: every storage call enters one or two, and the
    generator's set-up was a few per cent of a blob HEAD's CPU.
    """

    __slots__ = ("path", "missing_is_not_found")

    def __init__(self, path: str, *, missing_is_not_found: bool = True):
        self.path = path
        self.missing_is_not_found = missing_is_not_found

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Optional[type], exc: Optional[BaseException], traceback: Any) -> None:
        # None: nothing is swallowed (and type checkers know the block may raise)
        if isinstance(exc, OSError):
            raise storage_error(self.path, exc, missing_is_not_found=self.missing_is_not_found) from exc
