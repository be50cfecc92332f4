"""The saved-state codec: Go's crypto/sha256 and crypto/sha512 MarshalBinary layout.

The reference registry stores a hasher's state at
``_uploads/<uuid>/hashstates/<alg>/<offset>`` in this layout, so an upload begun
by registry:2 can be resumed by Stratus and the other way round. Big-endian::

    sha256: b"sha\\x03" + 8 x uint32 h + 64-byte block  + uint64 length  (108 bytes)
    sha384: b"sha\\x04" + 8 x uint64 h + 128-byte block + uint64 length  (204 bytes)
    sha512: b"sha\\x07" + 8 x uint64 h + 128-byte block + uint64 length  (204 bytes)

``h`` is the chaining value after the last full block, the block holds the
``length % block_size`` bytes not yet compressed (then zeros), and ``length``
counts every byte hashed.
"""
from __future__ import annotations

import struct

from .algorithm import Algorithm
from .errors import DigestError

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    State = tuple[tuple[int, ...], bytes, int]
    """(h words, pending bytes, length in bytes): what a backend exports and imports."""

# Go pads every SHA-2 message with its bit length as a 64-bit number (len << 3),
# so a state past 2**61 bytes means nothing: it can only be a corrupt one.
MAX_LENGTH = (1 << 61) - 1

_LAYOUT = {
    algorithm: struct.Struct(f">4s8{'I' if algorithm.word_size == 4 else 'Q'}{algorithm.block_size}sQ")
    for algorithm in Algorithm
}

# Go's identifiers, to say what a misfiled state is instead of just "wrong".
_GO_KINDS = {
    b"md5\x01": "md5",
    b"sha\x01": "sha1",
    b"sha\x02": "sha224",
    b"sha\x03": "sha256",
    b"sha\x04": "sha384",
    b"sha\x05": "sha512/224",
    b"sha\x06": "sha512/256",
    b"sha\x07": "sha512",
}


def encode(algorithm: Algorithm, h: tuple[int, ...], pending: bytes, length: int) -> bytes:
    """The saved state of a hasher whose chaining value is ``h``, with ``pending``
    bytes not yet compressed, after ``length`` bytes."""
    # "s" pads the block with zeros, as Go does.
    return _LAYOUT[algorithm].pack(algorithm.state_magic, *h, pending, length)


def decode(algorithm: Algorithm, state: bytes) -> State:
    """Split a saved state into (h, pending, length); DigestError if it is not one.

    Like Go, the bytes of the block past ``length % block_size`` are ignored.
    """
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise TypeError(f"a hash state is bytes, not {type(state).__name__}")
    state = bytes(state)
    what = f"invalid {algorithm} hash state"
    if not state:
        raise DigestError(f"{what}: empty")
    magic = state[:4]
    if magic != algorithm.state_magic:
        kind = _GO_KINDS.get(magic)
        found = f"the identifier of a {kind} state" if kind else f"identifier {magic!r}"
        raise DigestError(f"{what}: starts with {found}, expected {algorithm.state_magic!r}")
    if len(state) != algorithm.state_size:
        raise DigestError(f"{what}: {len(state)} bytes, expected {algorithm.state_size}")
    _, *h, block, length = _LAYOUT[algorithm].unpack(state)
    if length > MAX_LENGTH:
        raise DigestError(f"{what}: length {length} is beyond what SHA-2 can hash")
    return tuple(h), block[: length % algorithm.block_size], length
