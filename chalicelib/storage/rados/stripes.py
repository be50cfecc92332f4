"""File data: a file's bytes striped over objects ``<oid>-0``, ``-1`` ... of one stripe
size each, its total size in the ``total-size`` xattr of the first stripe."""
from __future__ import annotations

import math
import os
import uuid
from typing import Any, Callable, Optional

from ..base import InvalidOffsetError
from .binding import rados
from .errors import Replaced
from .layout import BLOB_PREFIX, CHUNK_XATTR, NAME, SIZE_XATTR, decode_size, encode_size, now, stripe


class Meta:
    __slots__ = ("size", "chunk")

    def __init__(self, size: int, chunk: int):
        self.size = size
        self.chunk = chunk


def read_meta(io: Any, oid: str, default_chunk: int) -> Meta:
    """Size and stripe size of a file; ObjectNotFound when its data is gone.

    A file without our stripe-size xattr (the reference wrote none) has stripes of
    `default_chunk`, the configured size.
    """
    attrs = dict(io.get_xattrs(stripe(oid, 0)))
    raw = attrs.get(SIZE_XATTR)
    if raw is None:
        raise rados.ObjectNotFound(f"{oid} has no {SIZE_XATTR}")
    chunk = attrs.get(CHUNK_XATTR)
    return Meta(decode_size(raw), int(chunk) if chunk else default_chunk)


def new_file(io: Any, chunk: int, content: bytes = b"") -> str:
    """Write content to a fresh oid; the first stripe, with the size, goes last."""
    oid = BLOB_PREFIX + str(uuid.uuid4())
    view = memoryview(content)
    for index in range(1, math.ceil(len(content) / chunk)):
        io.write_full(stripe(oid, index), bytes(view[index * chunk:(index + 1) * chunk]))
    with rados.WriteOpCtx() as op:
        op.write_full(bytes(view[:chunk]))
        op.set_xattr(SIZE_XATTR, encode_size(len(content)))
        op.set_xattr(CHUNK_XATTR, str(chunk).encode())
        io.operate_write_op(op, stripe(oid, 0), now())
    return oid


def remove_data(io: Any, oid: str, default_chunk: int) -> None:
    try:
        meta = read_meta(io, oid, default_chunk)
        count = max(1, math.ceil(meta.size / meta.chunk))
    except (rados.ObjectNotFound, ValueError):
        count = 1
    # One past the end too: a writer that died between writing a stripe and
    # recording the new size leaves it there.
    for index in [*range(count, 0, -1), 0]:
        try:
            io.remove_object(stripe(oid, index))
        except rados.ObjectNotFound:
            pass


class Reader:
    """Bytes of a file from an offset, read stripe by stripe.

    Deliberately not an io.RawIOBase: it has no fileno(), so the server streams
    exactly the requested range through read() instead of offering it to sendfile.
    `io` gives the calling thread's I/O context: a reader may be read from another
    thread than the one that opened it.
    """

    def __init__(self, io: Callable[[], Any], path: str, oid: str, meta: Meta, offset: int):
        self._io = io
        self._path = path
        self._oid = oid
        self._size = meta.size
        self._chunk = meta.chunk
        self._offset = offset
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._offset, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise InvalidOffsetError(NAME, self._path, base + offset)
        self._offset = base + offset
        return self._offset

    def read(self, size: Optional[int] = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed reader")
        end = self._size if size is None or size < 0 else min(self._size, self._offset + size)
        pieces = []
        io = self._io()
        while self._offset < end:
            index, within = divmod(self._offset, self._chunk)
            length = min(end - self._offset, self._chunk - within)
            try:
                piece = io.read(stripe(self._oid, index), length, within)
            except rados.ObjectNotFound as exc:
                raise Replaced(NAME, self._path, f"stripe {index} is gone") from exc
            if len(piece) != length:
                raise Replaced(NAME, self._path, f"stripe {index} is shorter than the size says")
            pieces.append(piece)
            self._offset += length
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
