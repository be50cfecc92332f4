"""The pull-through cache's errors, importable without its HTTP client (the api maps them)."""
from __future__ import annotations

from ..errors import DigestInvalidError, RegistryError, UnsupportedError


class UpstreamUnavailableError(RegistryError):
    """Nothing cached, and the upstream could not be asked (sent as 503)."""

    code = "UNKNOWN"
    message = "the upstream registry is unavailable and nothing is cached"


class UpstreamContentError(DigestInvalidError):
    """The upstream's bytes do not match the digest they were asked by (sent as 502)."""

    message = "the upstream registry sent content that does not match its digest; nothing was stored"


class PushToMirrorError(UnsupportedError):
    """Pushes and deletes in a mirrored repository: the reference proxy's UNSUPPORTED (405)."""

    message = "The operation is unsupported."
