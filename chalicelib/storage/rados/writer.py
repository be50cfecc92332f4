"""Appending to a file's stripes, one writer at a time per file, across processes.

An appending writer holds an exclusive RADOS lock on the file's first stripe, so
two requests can never interleave bytes in one upload; it expires on its own if
the process dies.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Optional

from ..base import StorageError
from ..writer_state import WriterState
from . import omap
from .binding import rados
from .errors import errors
from .layout import NAME, SIZE_XATTR, encode_size, now, split, stripe
from .stripes import read_meta, remove_data

LOCK_NAME = "stratus.writer"
LOCK_SECONDS = 60  # a writer renews it while writing; a dead process's lock lapses
_LOCK_MAY_RENEW = 1  # LIBRADOS_LOCK_FLAG_RENEW: re-take a lock this cookie holds


class RadosWriter:
    """Appends to a file's stripes; ``close()`` leaves it for a later writer anywhere.

    Bytes are buffered up to the end of the current stripe, then written with one
    op; the size xattr is raised after the bytes it covers are stored, so a reader
    or a later writer never sees a size beyond the data. The writer holds the
    file's lock from open to close/commit/cancel. `io` gives the calling thread's
    I/O context.
    """

    def __init__(self, io: Callable[[], Any], path: str, oid: str, chunk: int):
        self._io = io
        self._path = path
        self._oid = oid
        self._chunk = chunk
        self._stored = 0  # bytes stored and covered by the size xattr
        self._buffer = bytearray()
        self._cookie = uuid.uuid4().hex
        self._locked_at = 0.0
        self._state = WriterState(NAME, path)
        self._lock(renew=False)

    @classmethod
    def resume(cls, io: Callable[[], Any], path: str, oid: str, chunk: int) -> Optional["RadosWriter"]:
        """A writer at the end of an existing file, or None if it vanished meanwhile.

        `chunk` is the configured stripe size, which a file written by the reference
        (no stripe-size xattr) has.
        """
        writer = cls(io, path, oid, chunk)  # locked before the size is read: nobody moves it on
        ioctx = io()
        try:
            meta = read_meta(ioctx, oid, chunk)
        except rados.ObjectNotFound:
            # Deleted between lookup and lock; locking recreated an empty stripe.
            remove_data(ioctx, oid, chunk)
            return None
        writer._chunk = meta.chunk
        writer._stored = meta.size
        return writer

    @property
    def size(self) -> int:
        return self._stored + len(self._buffer)

    def _lock(self, renew: bool) -> None:
        try:
            self._io().lock_exclusive(
                stripe(self._oid, 0), LOCK_NAME, self._cookie, "stratus upload writer",
                LOCK_SECONDS, _LOCK_MAY_RENEW if renew else 0,
            )
        except rados.ObjectBusy:
            raise StorageError(NAME, self._path, "another writer is appending to this file") from None
        except rados.Error as exc:
            raise StorageError(NAME, self._path, f"cannot lock for writing: {exc}") from exc
        self._locked_at = time.monotonic()

    def _unlock(self) -> None:
        try:
            self._io().unlock(stripe(self._oid, 0), LOCK_NAME, self._cookie)
        except rados.Error:
            pass  # gone with the file, or lapsed: nobody waits for it either way

    def write(self, data: bytes) -> int:
        self._state.require_open()
        view = memoryview(data)
        while view:
            room = self._chunk - self.size % self._chunk
            piece = view[:room]
            self._buffer += piece
            view = view[len(piece):]
            if self.size % self._chunk == 0:
                self._flush()
        return len(data)

    def _flush(self) -> None:
        if not self._buffer:
            return
        if time.monotonic() - self._locked_at > LOCK_SECONDS / 3:
            self._lock(renew=True)
        index, within = divmod(self._stored, self._chunk)
        data = bytes(self._buffer)
        new_size = self._stored + len(data)
        with errors(self._path, missing_is_not_found=False):
            io = self._io()
            first = stripe(self._oid, 0)
            with rados.WriteOpCtx() as op:
                if index == 0:
                    op.write(data, within)
                else:
                    io.write(stripe(self._oid, index), data, within)
                op.set_xattr(SIZE_XATTR, encode_size(new_size))
                io.operate_write_op(op, first, now())
        self._stored = new_size
        self._buffer.clear()

    def commit(self) -> None:
        with self._state.committing():
            self._flush()
        self._unlock()

    def close(self) -> None:
        if not self._state.close():
            return
        try:
            self._flush()
        finally:
            self._unlock()

    def cancel(self) -> None:
        self._state.cancel()
        self._buffer.clear()
        with errors(self._path):
            io = self._io()
            if omap.unlink(io, self._path, self._oid.encode()):
                omap.prune(io, split(self._path)[0])
            remove_data(io, self._oid, self._chunk)  # the lock goes with the first stripe
