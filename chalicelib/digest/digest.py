"""Digest: an algorithm and a hex string, as in ``sha256:<64 hex>``."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .algorithm import CANONICAL, Algorithm
from .errors import DigestError, UnsupportedAlgorithmError

# The OCI image-spec grammar for the algorithm part: components of [a-z0-9]
# joined by one of "+._-". A name that passes this but is not one of ours is
# unsupported rather than malformed.
_ALGORITHM_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_HEX = {algorithm: re.compile(f"[0-9a-f]{{{algorithm.hex_size}}}") for algorithm in Algorithm}


def _shown(s: str) -> str:
    """``s`` quoted for an error message, cut short: the input may come from a client."""
    if len(s) <= 100:
        return repr(s)
    return f"{s[:72]!r}... ({len(s)} characters)"


@dataclass(frozen=True, order=True)
class Digest:
    """A validated content digest. ``str(d)`` is ``"<algorithm>:<hex>"``."""

    algorithm: Algorithm
    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.algorithm, Algorithm):
            raise TypeError(f"Digest.algorithm must be an Algorithm, not {type(self.algorithm).__name__}")
        if not isinstance(self.hex, str) or _HEX[self.algorithm].fullmatch(self.hex) is None:
            shown = _shown(f"{self.algorithm}:{self.hex}")
            raise DigestError(
                f"invalid digest {shown}: hex part must be {self.algorithm.hex_size} lowercase hex characters"
            )

    @classmethod
    def parse(cls, s: str) -> Digest:
        """Parse ``"<algorithm>:<hex>"``; DigestError (UnsupportedAlgorithmError) says what is wrong."""
        if not isinstance(s, str):
            raise TypeError(f"a digest is parsed from a str, not {type(s).__name__}")
        if not s:
            raise DigestError("invalid digest '': empty string")
        name, colon, encoded = s.partition(":")
        if not colon:
            raise DigestError(f"invalid digest {_shown(s)}: expected '<algorithm>:<hex>'")
        if _ALGORITHM_GRAMMAR.fullmatch(name) is None:
            raise DigestError(
                f"invalid digest {_shown(s)}: algorithm {_shown(name)} must be lowercase letters"
                " and digits, optionally joined by '+', '.', '_' or '-'"
            )
        try:
            algorithm = Algorithm.parse(name)
        except UnsupportedAlgorithmError:
            raise UnsupportedAlgorithmError(
                f"invalid digest {_shown(s)}: unsupported algorithm {name!r}"
                f" (supported: {', '.join(a.value for a in Algorithm)})"
            ) from None
        if _HEX[algorithm].fullmatch(encoded) is None:
            raise DigestError(
                f"invalid digest {_shown(s)}: hex part must be {algorithm.hex_size} lowercase hex characters"
            )
        return cls(algorithm, encoded)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, algorithm: Algorithm = CANONICAL) -> Digest:
        """The digest of ``data``, in one shot (hashlib)."""
        import hashlib  # here, not at import: loading OpenSSL is a cold-start cost

        return cls(algorithm, getattr(hashlib, algorithm.value)(data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm.value}:{self.hex}"
