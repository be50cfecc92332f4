"""The life of a FileWriter: open, then exactly one of committed, closed or cancelled.

Every driver's writer keeps one ``WriterState`` and asks it before acting, so the
rules of the FileWriter protocol live here once:

* ``write``, ``commit`` and ``cancel`` need an open writer; after any of the three
  endings they raise WriterNotOpenError ("writer already committed", ...).
* ``close`` ends an open writer and is harmless afterwards (closing twice, or after
  commit or cancel), as for any Python file: callers close in ``finally`` blocks.
* ``commit`` counts only once the driver has finished the file (``committing()``):
  a commit that raised leaves the writer open, so a later ``close()`` still makes
  its bytes durable and releases what it holds (a lock, a file descriptor).
* ``cancel`` ends the writer before the driver removes the file, so a cancel that
  fails half way is not followed by writes into a file that is going away.

Typical use in a writer::

    def write(self, data):
        self._state.require_open()
        ...

    def commit(self):
        with self._state.committing():
            self._flush()

    def close(self):
        if self._state.close():
            self._flush()

    def cancel(self):
        self._state.cancel()
        self._remove_file()
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

from .base import StorageError

State = Literal["open", "committed", "closed", "cancelled"]


class WriterNotOpenError(StorageError):
    """The writer was already committed, closed or cancelled."""

    def __init__(self, driver: str, path: str, state: State):
        self.state = state
        super().__init__(driver, path, f"writer already {state}")


class WriterState:
    """Where one writer of the file at `path` (for driver `driver`) is in its life."""

    def __init__(self, driver: str, path: str) -> None:
        self._driver = driver
        self._path = path
        self._state: State = "open"

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    def require_open(self) -> None:
        """WriterNotOpenError unless the writer is open."""
        if self._state != "open":
            raise WriterNotOpenError(self._driver, self._path, self._state)

    @contextmanager
    def committing(self) -> Iterator[None]:
        """open -> committed, once the block (the driver finishing the file) succeeds.

        WriterNotOpenError before the block runs when the writer is not open.
        """
        self.require_open()
        yield
        self._state = "committed"

    def commit(self) -> None:
        """open -> committed at once, for a writer with nothing left to finish."""
        with self.committing():
            pass

    def close(self) -> bool:
        """open -> closed; True if this call closed the writer and the driver should now
        make its bytes durable, False if it had already ended (nothing to do)."""
        if self._state != "open":
            return False
        self._state = "closed"
        return True

    def cancel(self) -> None:
        """open -> cancelled, before the driver removes the file; WriterNotOpenError
        when the writer is not open."""
        self.require_open()
        self._state = "cancelled"
