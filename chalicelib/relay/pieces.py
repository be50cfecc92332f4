"""Cutting the bytes a client sends into pieces spooled to disk.

A piece is what goes to the upstream in one request: a direct-upload part, or one
chunked PATCH. Each is written to a file of its own as it arrives (the page cache holds
it, not the relay's heap), so a piece can be sent while the next one is read, re-sent
after a failed attempt, and held back while a resumed upload is being recognised.
The SHA-256 of everything before a piece's end is taken as it passes, for the journal.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

from ..registry.errors import BlobUploadInvalidError

# The most a read from the client asks for: one buffer per request in flight.
READ_SIZE = 1 << 20


@dataclass
class Piece:
    start: int
    length: int
    path: Path
    sha256: str  # of the blob's bytes [0, end)

    @property
    def end(self) -> int:
        return self.start + self.length

    def reader(self, start: int, end: int) -> "FileRange":
        """Bytes [start, end) of the blob, which lie in this piece."""
        return FileRange(self.path, start - self.start, end - start)

    def discard(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class FileRange:
    """A read-only stream of `length` bytes of a file from `offset`, re-readable from the
    start (rewind) so a failed request can be sent again."""

    def __init__(self, path: Path, offset: int, length: int):
        self.path, self.offset, self.length = path, offset, length
        self._file: Optional[Any] = None
        self._left = length

    def rewind(self) -> None:
        self.close()
        self._left = self.length

    def read(self, size: Optional[int] = -1) -> bytes:
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
            self._file.seek(self.offset)
        if size is None or size < 0 or size > self._left:
            size = self._left
        data = self._file.read(size) if size else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Spooler:
    """The bytes of one upload, in order, cut at `piece_size` from `start`.

    Pieces end every piece_size bytes (so direct-upload parts line up with part numbers);
    `marks` are further offsets at which the prefix hash is wanted (resume checkpoints).
    """

    def __init__(self, directory: Path, tag: str, piece_size: int, start: int = 0, hashing: bool = True):
        self.directory = directory
        self.tag = tag
        self.piece_size = piece_size
        self.offset = start  # bytes taken from the client so far
        self.hasher = hashlib.sha256() if hashing else None
        self.wanted: set[int] = set()
        self.marks: dict[int, str] = {}
        self._file: Optional[BinaryIO] = None
        self._piece_start = start
        self._count = 0

    @property
    def pending(self) -> int:
        """Bytes taken since the last piece was cut."""
        return self.offset - self._piece_start

    def prefix_hash(self) -> str:
        return self.hasher.hexdigest() if self.hasher is not None else ""

    def _next_stop(self) -> int:
        end = (self._piece_start // self.piece_size + 1) * self.piece_size
        later = [m for m in self.wanted if m > self.offset]
        return min([end, *later])

    def _open(self) -> BinaryIO:
        self._count += 1
        self._path = self.directory / f"{self.tag}-{self._count}"
        self._file = open(self._path, "wb")  # buffered: a raw write may be partial
        return self._file

    def feed(self, body: Any, length: Optional[int]) -> Iterator[Piece]:
        """Read body (length bytes, or to its end) and yield each piece as it fills."""
        received = 0
        while length is None or received < length:
            want = min(READ_SIZE, self._next_stop() - self.offset)
            if length is not None:
                want = min(want, length - received)
            data = body.read(want)
            if not data:
                if length is not None:
                    raise BlobUploadInvalidError(
                        {"expected": length, "received": received},
                        message="request body ended before its Content-Length",
                    )
                return
            n = len(data)
            received += n
            file = self._file if self._file is not None else self._open()
            file.write(data)
            if self.hasher is not None:
                self.hasher.update(data)
            self.offset += n
            if self.offset in self.wanted and self.hasher is not None:
                self.marks[self.offset] = self.hasher.hexdigest()
            if self.offset % self.piece_size == 0:
                yield self._close(file)

    def _close(self, file: BinaryIO) -> Piece:
        """Cut the piece being written to `file` (self._file)."""
        file.close()
        self._file = None
        piece = Piece(self._piece_start, self.offset - self._piece_start, self._path, self.prefix_hash())
        self._piece_start = self.offset
        return piece

    def take_partial(self) -> Optional[Piece]:
        """The bytes after the last full piece, as a (short) piece of their own."""
        if self._file is None:
            return None
        return self._close(self._file)

    def close(self) -> None:
        """Drop a partial piece (the upload is abandoned)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                self._path.unlink()
            except FileNotFoundError:
                pass
