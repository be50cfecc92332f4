"""The digest algorithms Stratus supports, and what each one is made of."""
from __future__ import annotations

import enum

from .errors import UnsupportedAlgorithmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:  # pragma: no cover
    from .digest import Digest
    from .hasher import ResumableHasher

# FIPS 180-4 initial hash values (section 5.3): the first bits of the fractional
# parts of the square roots of the first 8 primes (SHA-256, SHA-512) and of the
# 9th to 16th primes (SHA-384).
_IV = {
    "sha256": (
        0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
        0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
    ),
    "sha384": (
        0xCBBB9D5DC1059ED8, 0x629A292A367CD507, 0x9159015A3070DD17, 0x152FECD8F70E5939,
        0x67332667FFC00B31, 0x8EB44A8768581511, 0xDB0C2E0D64F98FA7, 0x47B5481DBEFA4FA4,
    ),
    "sha512": (
        0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
        0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
    ),
}


class Algorithm(enum.Enum):
    """A digest algorithm, named as in a digest string (``sha256:<hex>``).

    Each member also carries the facts the hashers and the state codec need:
    ``digest_size`` (bytes), ``block_size`` (bytes), ``word_size`` (bytes of one
    hash word), ``state_magic`` (Go's MarshalBinary identifier) and
    ``initial_hash`` (the FIPS 180-4 IV).
    """

    SHA256 = ("sha256", 32, 64, 4, b"sha\x03")
    SHA384 = ("sha384", 48, 128, 8, b"sha\x04")
    SHA512 = ("sha512", 64, 128, 8, b"sha\x07")

    digest_size: int
    block_size: int
    word_size: int
    state_magic: bytes
    initial_hash: tuple[int, ...]

    _value_: str  # the name: members are made by __new__ from a tuple of their facts

    def __new__(cls, name: str, digest_size: int, block_size: int, word_size: int, magic: bytes) -> Algorithm:
        member = object.__new__(cls)
        member._value_ = name  # Algorithm("sha256") and .value == "sha256"
        member.digest_size = digest_size
        member.block_size = block_size
        member.word_size = word_size
        member.state_magic = magic
        member.initial_hash = _IV[name]
        return member

    def __str__(self) -> str:
        return self._value_

    # Ordered by strength (which is also the order of the names), so that
    # Digest, a dataclass with order=True, can be sorted.
    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Algorithm):
            return NotImplemented
        return self.digest_size < other.digest_size

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Algorithm):
            return NotImplemented
        return self.digest_size <= other.digest_size

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Algorithm):
            return NotImplemented
        return self.digest_size > other.digest_size

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Algorithm):
            return NotImplemented
        return self.digest_size >= other.digest_size

    @property
    def hex_size(self) -> int:
        """Length of the hex part of a digest: 64, 96 or 128."""
        return 2 * self.digest_size

    @property
    def state_size(self) -> int:
        """Length of a saved hasher state: 108 (sha256) or 204 (sha384, sha512)."""
        return len(self.state_magic) + 8 * self.word_size + self.block_size + 8

    @classmethod
    def parse(cls, name: str) -> Algorithm:
        """The algorithm called ``name`` (exactly, lower case); UnsupportedAlgorithmError otherwise."""
        try:
            return _BY_NAME[name]
        except (KeyError, TypeError):
            raise UnsupportedAlgorithmError(
                f"unsupported digest algorithm {name!r} (supported: {', '.join(_BY_NAME)})"
            ) from None

    def hasher(self) -> ResumableHasher:
        """A new resumable hasher for this algorithm."""
        from .hasher import ResumableHasher

        return ResumableHasher(self)

    def from_bytes(self, data: bytes | bytearray | memoryview) -> Digest:
        """The digest of ``data``, in one shot."""
        from .digest import Digest

        return Digest.from_bytes(data, self)


_BY_NAME = {algorithm.value: algorithm for algorithm in Algorithm}

CANONICAL = Algorithm.SHA256
"""The algorithm the registry uses for content it digests itself."""
