"""OCI error responses: the spec's JSON body and the status each code is sent with."""
from __future__ import annotations

import json
from typing import Any, Optional

from ..registry.errors import RegistryError
from .http import JSON, Response

STATUS = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    "UNKNOWN": 500,
}


def error_body(code: str, message: str, detail: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return json.dumps({"errors": [error]}).encode()


def error_response(
    code: str,
    message: str,
    detail: Any = None,
    status: Optional[int] = None,
    headers: Optional[list[tuple[str, str]]] = None,
) -> Response:
    body = error_body(code, message, detail)
    return Response(
        status=status or STATUS.get(code, 500),
        headers=[("Content-Type", JSON), ("Content-Length", str(len(body)))] + list(headers or []),
        body=body,
    )


def from_registry_error(exc: RegistryError, status: Optional[int] = None) -> Response:
    return error_response(exc.code, exc.message, exc.detail, status)


class HTTPError(Exception):
    """Raised inside handlers for a response that is not a domain error (e.g. 413, 416)."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None, headers=None):
        self.response = error_response(code, message, detail, status, headers)
        super().__init__(f"{status} {code}: {message}")
