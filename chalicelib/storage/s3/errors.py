"""botocore exceptions -> storage errors, so nothing from boto3 crosses the protocol."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..base import PathNotFoundError, StorageError

NAME = "s3"
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def storage_error(path: str, exc: BaseException) -> StorageError:
    if is_not_found(exc):
        return PathNotFoundError(NAME, path)
    code = error_code(exc)
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return StorageError(NAME, path, f"{code}: {message}".rstrip(": "))
    return StorageError(NAME, path, f"{type(exc).__name__}: {exc}")


@contextmanager
def s3_errors(path: str) -> Iterator[None]:
    """Re-raise any boto3/botocore failure as a StorageError (PathNotFoundError on 404)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with the client

        if isinstance(exc, (ClientError, BotoCoreError)):  # S3 answers, connections, credentials
            raise storage_error(path, exc) from exc
        raise
