"""botocore exceptions -> storage errors, so nothing from boto3 crosses the protocol."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from ..base import PathNotFoundError, StorageError

NAME = "s3"
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3RequestError(Exception):
    """A failed request of the botocore-free read path (light.py). It carries the
    `response` a botocore ClientError would, so one mapping serves both paths;
    without a code it is a transport failure, as botocore's BotoCoreError is."""

    def __init__(self, text: str, code: str = "", message: str = "", status: Optional[int] = None):
        super().__init__(text)
        self.code = code
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}} \
            if code else None


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
    except S3RequestError as exc:
        raise storage_error(path, exc) from exc
    except Exception as exc:
        if "botocore" not in sys.modules:  # nothing loaded it, so it cannot have raised this
            raise
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with the client

        if isinstance(exc, (ClientError, BotoCoreError)):  # S3 answers, connections, credentials
            raise storage_error(path, exc) from exc
        raise
