"""How librados errors become the StorageErrors of the driver protocol."""
from __future__ import annotations

from typing import Any, Literal, Optional

from ..base import PathNotFoundError, StorageError
from .binding import is_loaded, rados
from .layout import NAME


class NotADirectory(StorageError):
    """A path below a file, or a file path that is a directory."""


class Replaced(PathNotFoundError):
    """A stripe vanished under a reader: the file was replaced or deleted."""


def errno_of(exc: BaseException) -> Optional[int]:
    return getattr(exc, "errno", None)


class errors:
    """Re-raise librados errors as StorageErrors naming the path.

    A missing object means a missing path only where the caller says so; while
    creating, it is a failure to store.
    """

    def __init__(self, path: str, missing_is_not_found: bool = True):
        self.path = path
        self.missing_is_not_found = missing_is_not_found

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> Literal[False]:
        # Without the binding loaded, nothing raised can be one of its errors.
        if exc is None or isinstance(exc, StorageError) or not is_loaded():
            return False
        if isinstance(exc, rados.ObjectNotFound) and self.missing_is_not_found:
            raise PathNotFoundError(NAME, self.path) from exc
        if isinstance(exc, (rados.Error, ValueError)):
            raise StorageError(NAME, self.path, str(exc) or type(exc).__name__) from exc
        return False
