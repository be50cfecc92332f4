"""SHA-256/384/512 in pure Python: the fallback when libcrypto cannot be used.

It is about a thousand times slower than libcrypto and exists for correctness
only (and so that the tests can prove both backends save identical states).
"""
from __future__ import annotations

import struct

from .algorithm import Algorithm

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from .state import State

    Words = tuple[int, ...]
    Data = bytes | bytearray | memoryview

BACKEND = "python"

# FIPS 180-4 section 4.2: the first bits of the fractional parts of the cube
# roots of the first 64 (SHA-256) and 80 (SHA-512) primes.
_K256 = (
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
)
_K512 = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_unpack256 = struct.Struct(">16I").unpack_from
_unpack512 = struct.Struct(">16Q").unpack_from


# Rotations are written as (x >> n | x << (w - n)) and masked once after the sum:
# the bits above the word never reach the low bits of an addition.


def _compress256(h: Words, data: Data, offset: int, K: Words = _K256, M: int = _M32) -> Words:
    w = list(_unpack256(data, offset))
    for t in range(16, 64):
        x = w[t - 15]
        y = w[t - 2]
        w.append(
            (
                w[t - 16]
                + w[t - 7]
                + ((x >> 7 | x << 25) ^ (x >> 18 | x << 14) ^ (x >> 3))
                + ((y >> 17 | y << 15) ^ (y >> 19 | y << 13) ^ (y >> 10))
            )
            & M
        )
    a, b, c, d, e, f, g, hh = h
    for k, wt in zip(K, w):
        t1 = (
            hh
            + ((e >> 6 | e << 26) ^ (e >> 11 | e << 21) ^ (e >> 25 | e << 7))
            + (g ^ (e & (f ^ g)))
            + k
            + wt
        )
        t2 = ((a >> 2 | a << 30) ^ (a >> 13 | a << 19) ^ (a >> 22 | a << 10)) + ((a & b) | (c & (a | b)))
        hh = g
        g = f
        f = e
        e = (d + t1) & M
        d = c
        c = b
        b = a
        a = (t1 + t2) & M
    return (
        (h[0] + a) & M, (h[1] + b) & M, (h[2] + c) & M, (h[3] + d) & M,
        (h[4] + e) & M, (h[5] + f) & M, (h[6] + g) & M, (h[7] + hh) & M,
    )


def _compress512(h: Words, data: Data, offset: int, K: Words = _K512, M: int = _M64) -> Words:
    w = list(_unpack512(data, offset))
    for t in range(16, 80):
        x = w[t - 15]
        y = w[t - 2]
        w.append(
            (
                w[t - 16]
                + w[t - 7]
                + ((x >> 1 | x << 63) ^ (x >> 8 | x << 56) ^ (x >> 7))
                + ((y >> 19 | y << 45) ^ (y >> 61 | y << 3) ^ (y >> 6))
            )
            & M
        )
    a, b, c, d, e, f, g, hh = h
    for k, wt in zip(K, w):
        t1 = (
            hh
            + ((e >> 14 | e << 50) ^ (e >> 18 | e << 46) ^ (e >> 41 | e << 23))
            + (g ^ (e & (f ^ g)))
            + k
            + wt
        )
        t2 = ((a >> 28 | a << 36) ^ (a >> 34 | a << 30) ^ (a >> 39 | a << 25)) + ((a & b) | (c & (a | b)))
        hh = g
        g = f
        f = e
        e = (d + t1) & M
        d = c
        c = b
        b = a
        a = (t1 + t2) & M
    return (
        (h[0] + a) & M, (h[1] + b) & M, (h[2] + c) & M, (h[3] + d) & M,
        (h[4] + e) & M, (h[5] + f) & M, (h[6] + g) & M, (h[7] + hh) & M,
    )


_COMPRESS = {
    Algorithm.SHA256: _compress256,
    Algorithm.SHA384: _compress512,
    Algorithm.SHA512: _compress512,
}


class Engine:
    """A running hash: chaining value, pending bytes, length."""

    __slots__ = ("_algorithm", "_compress", "_h", "_pending", "_length")
    backend = BACKEND

    def __init__(self, algorithm: Algorithm, h: Words, pending: bytes | bytearray, length: int) -> None:
        self._algorithm = algorithm
        self._compress: Callable[[Words, Data, int], Words] = _COMPRESS[algorithm]
        self._h = tuple(h)
        self._pending = bytearray(pending)
        self._length = length

    def update(self, data: Data) -> None:
        if isinstance(data, str):
            raise TypeError("Strings must be encoded before hashing")
        view = memoryview(data)
        if not view.c_contiguous or view.format not in ("B", "b", "c") or view.ndim != 1:
            view = memoryview(view.tobytes())
        n = len(view)
        if not n:
            return
        self._length += n
        size = self._algorithm.block_size
        compress = self._compress
        h = self._h
        pending = self._pending
        if pending:
            take = size - len(pending)
            pending += view[:take]
            if len(pending) < size:
                return
            h = compress(h, pending, 0)
            pending.clear()
            view = view[take:]
        end = len(view) - len(view) % size
        for offset in range(0, end, size):
            h = compress(h, view, offset)
        pending += view[end:]
        self._h = h

    @property
    def length(self) -> int:
        return self._length

    def copy(self) -> Engine:
        return Engine(self._algorithm, self._h, self._pending, self._length)

    def finalize(self) -> bytes:
        """The digest so far; this engine is left as it was."""
        algorithm = self._algorithm
        size = algorithm.block_size
        length_field = 2 * algorithm.word_size  # 8 bytes for sha256, 16 for sha512
        zeros = (size - length_field - 1 - self._length) % size
        padding = b"\x80" + bytes(zeros) + (self._length << 3).to_bytes(length_field, "big")
        scratch = self.copy()
        scratch.update(padding)
        word = "I" if algorithm.word_size == 4 else "Q"
        return struct.pack(f">8{word}", *scratch._h)[: algorithm.digest_size]

    def export(self) -> State:
        return self._h, bytes(self._pending), self._length


def new(algorithm: Algorithm) -> Engine:
    return Engine(algorithm, algorithm.initial_hash, b"", 0)


def from_parts(algorithm: Algorithm, h: Words, pending: bytes, length: int) -> Engine:
    return Engine(algorithm, h, pending, length)
