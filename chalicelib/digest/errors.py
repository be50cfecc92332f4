"""The errors of the digest package: both are ValueErrors, so a caller that maps
bad client input to an OCI ``DIGEST_INVALID`` error can catch either."""
from __future__ import annotations


class DigestError(ValueError):
    """A digest string, algorithm name or saved hash state that cannot be used.

    The message names the offending value and what was expected of it.
    """


class UnsupportedAlgorithmError(DigestError):
    """A well-formed algorithm name that Stratus does not implement (md5, blake3, ...)."""
