"""The writer through the page cache: upload data where O_DIRECT is off or refused."""
from __future__ import annotations

import os

from ..writer_state import WriterState
from .errors import NAME, os_errors
from .writeback import WRITEBACK_EVERY, start_writeback


class CachedFileWriter:
    """Writes into the file through the page cache, so a later writer(append=True) in
    any process continues from what close() made durable."""

    def __init__(self, path: str, full: str, fd: int, size: int) -> None:
        self._path = path
        self._full = full
        self._fd = fd
        self._size = size
        self._written_back = size  # writeback started up to here
        self._state = WriterState(NAME, path)

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> int:
        self._state.require_open()
        view = memoryview(data)
        with os_errors(self._path):
            while view:
                written = os.write(self._fd, view)
                self._size += written  # stays true even if a later write fails
                view = view[written:]
        if self._size - self._written_back >= WRITEBACK_EVERY:
            start_writeback(self._fd, self._written_back, self._size - self._written_back)
            self._written_back = self._size
        return len(data)

    def _flush(self) -> None:
        """Hand what the writer still holds to the file (before an fsync)."""

    def _release(self) -> None:
        """Free what the writer holds besides its fd."""

    def commit(self) -> None:
        with self._state.committing(), os_errors(self._path):
            self._flush()
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return  # closing twice is harmless, as for any Python file
        fd = self._fd
        try:
            with os_errors(self._path):
                if self._state.close():
                    self._flush()
                    os.fsync(fd)
        finally:
            self._fd = -1
            os.close(fd)
            self._release()

    def cancel(self) -> None:
        self._state.cancel()
        fd, self._fd = self._fd, -1
        os.close(fd)
        self._release()
        with os_errors(self._path):
            try:
                os.unlink(self._full)
            except FileNotFoundError:
                pass
