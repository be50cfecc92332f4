"""Domain errors, each carrying the OCI error code it is reported with.

The api layer maps a code to its HTTP status; nothing here knows about HTTP.
"""
from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    code = "UNKNOWN"
    message = "unknown error"

    def __init__(self, detail: Any = None, message: str | None = None):
        self.detail = detail
        if message is not None:
            self.message = message
        super().__init__(f"{self.code}: {self.message}" + (f" ({detail})" if detail else ""))


class BlobUnknownError(RegistryError):
    code = "BLOB_UNKNOWN"
    message = "blob unknown to registry"


class BlobUploadInvalidError(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    message = "blob upload invalid"


class BlobUploadUnknownError(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    message = "blob upload unknown to registry"


class DigestInvalidError(RegistryError):
    code = "DIGEST_INVALID"
    message = "provided digest did not match uploaded content"


class ManifestBlobUnknownError(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    message = "manifest references a manifest or blob unknown to registry"


class ManifestInvalidError(RegistryError):
    code = "MANIFEST_INVALID"
    message = "manifest invalid"


class ManifestUnknownError(RegistryError):
    code = "MANIFEST_UNKNOWN"
    message = "manifest unknown to registry"


class NameInvalidError(RegistryError):
    code = "NAME_INVALID"
    message = "invalid repository name"


class NameUnknownError(RegistryError):
    code = "NAME_UNKNOWN"
    message = "repository name not known to registry"


class SizeInvalidError(RegistryError):
    code = "SIZE_INVALID"
    message = "provided length did not match content length"


class UnsupportedError(RegistryError):
    code = "UNSUPPORTED"
    message = "the operation is unsupported"


class DeniedError(RegistryError):
    code = "DENIED"
    message = "requested access to the resource is denied"


class UnauthorizedError(RegistryError):
    code = "UNAUTHORIZED"
    message = "authentication required"


class TooManyRequestsError(RegistryError):
    code = "TOOMANYREQUESTS"
    message = "too many requests"


class TagInvalidError(ManifestInvalidError):
    """The spec has no tag code; a bad tag makes the manifest reference invalid."""

    message = "invalid tag"


class PaginationNumberInvalidError(UnsupportedError):
    message = "invalid number of results requested"


class RangeInvalidError(BlobUploadInvalidError):
    """Sent as 416: the client resumes from the Range the response carries."""

    message = "requested range not satisfiable"


class ReadOnlyError(UnsupportedError):
    message = "the registry is in read-only mode"
