"""copy_body: a large body is hashed on a second thread; the hash must still match the
bytes written, whole or cut short."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from chalicelib.digest import CANONICAL
from chalicelib.registry.errors import SizeInvalidError
from chalicelib.registry.uploads import HASH_BEHIND_MIN, copy_body


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, piece: bytes) -> int:
        self.data += piece
        return len(piece)


class _Stalling(io.RawIOBase):
    """Gives `limit` bytes of data, then fails like a client that went away."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = io.BytesIO(data[:limit])

    def read(self, size: int = -1) -> bytes:
        piece = self._data.read(size)
        if not piece:
            raise ConnectionResetError("client went away")
        return piece


@pytest.mark.parametrize("size", [0, 1000, HASH_BEHIND_MIN - 1, HASH_BEHIND_MIN, 3 * HASH_BEHIND_MIN + 12345])
def test_hash_matches_bytes_written(size: int) -> None:
    data = os.urandom(size)
    writer, hasher = _Writer(), CANONICAL.hasher()
    assert copy_body(io.BytesIO(data), size, writer, hasher) == size
    assert bytes(writer.data) == data
    assert hasher.digest().hex == hashlib.sha256(data).hexdigest()


def test_unknown_length_is_hashed_behind_too() -> None:
    data = os.urandom(2 * HASH_BEHIND_MIN + 7)
    writer, hasher = _Writer(), CANONICAL.hasher()
    assert copy_body(io.BytesIO(data), None, writer, hasher) == len(data)
    assert hasher.digest().hex == hashlib.sha256(data).hexdigest()


def test_failed_read_leaves_hasher_at_bytes_written() -> None:
    data = os.urandom(3 * HASH_BEHIND_MIN)
    writer, hasher = _Writer(), CANONICAL.hasher()
    with pytest.raises(ConnectionResetError):
        copy_body(_Stalling(data, HASH_BEHIND_MIN + 5000), len(data), writer, hasher)
    assert hasher.length == len(writer.data) == HASH_BEHIND_MIN + 5000
    assert hasher.digest().hex == hashlib.sha256(bytes(writer.data)).hexdigest()


def test_short_body_is_size_invalid_after_hashing_what_came() -> None:
    data = os.urandom(HASH_BEHIND_MIN + 10)
    writer, hasher = _Writer(), CANONICAL.hasher()
    with pytest.raises(SizeInvalidError):
        copy_body(io.BytesIO(data), len(data) + 100, writer, hasher)
    assert hasher.length == len(data)


def test_without_hasher_only_writes() -> None:
    data = os.urandom(HASH_BEHIND_MIN * 2)
    writer = _Writer()
    assert copy_body(io.BytesIO(data), len(data), writer, None) == len(data)
    assert bytes(writer.data) == data
