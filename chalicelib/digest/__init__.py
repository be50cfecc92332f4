"""Content digests (``sha256:<hex>``) and resumable SHA-2 hashers.

    from chalicelib.digest import Algorithm, Digest, DigestError, ResumableHasher, CANONICAL

Importing this package is cheap: libcrypto is loaded (once) when the first
hasher is created, and hashlib when a digest is first computed in one shot.
"""
from .algorithm import CANONICAL, Algorithm
from .digest import Digest
from .errors import DigestError, UnsupportedAlgorithmError
from .hasher import ResumableHasher

__all__ = [
    "CANONICAL",
    "Algorithm",
    "Digest",
    "DigestError",
    "ResumableHasher",
    "UnsupportedAlgorithmError",
]
