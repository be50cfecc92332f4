"""The S3 storage driver: storage paths are keys of one bucket, as registry:2 lays them out.

A path maps onto the key ``<rootdirectory>/<path without its leading />`` exactly as
in the reference registry's s3-aws driver, so a bucket written by registry:2 is
served unchanged, and the other way round. Directories are key prefixes: they exist
while some key lies below them. Files being written are described in writer.py,
files written through presigned part URLs in direct.py.
"""
from __future__ import annotations

import io
from datetime import timezone
from typing import Any, BinaryIO, Iterator, Optional

from ...context import Context
from ..base import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    PathNotFoundError,
    StorageError,
    UnsupportedMethodError,
    check_path,
    is_component,
)
from .bucket import Bucket, Pending
from .client import requests
from .direct import S3DirectWrites
from .errors import NAME, error_code, is_not_found, s3_errors
from .params import S3Parameters
from .writer import S3FileWriter, open_for_append


class S3Driver(S3DirectWrites):
    name = NAME

    def __init__(self, params: S3Parameters):
        self.params = params
        self.bucket = Bucket(params)
        self._prefix = f"{params.root_directory}/" if params.root_directory else ""

    @property
    def may_be_eventually_consistent(self) -> bool:
        return self.params.may_be_eventually_consistent

    def thread_request_count(self) -> int:
        """S3 requests sent so far by the calling thread (traces note each call's share)."""
        return requests.thread_total()

    # -- paths <-> keys ------------------------------------------------------------------

    def _key(self, path: str) -> str:
        check_path(NAME, path)
        return self._prefix + path[1:]

    def _dir_prefix(self, path: str) -> str:
        """The prefix every key below directory path starts with."""
        check_path(NAME, path, allow_root=True)
        return self._prefix if path == "/" else self._prefix + path[1:] + "/"

    def _path(self, key: str) -> str:
        return "/" + key[len(self._prefix):]

    # -- protocol --------------------------------------------------------------------------

    def get_content(self, ctx: Context, path: str) -> bytes:
        with self.reader(ctx, path) as stream:
            return stream.read()

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        key = self._key(path)
        with s3_errors(path):
            self.bucket.put(key, bytes(content))

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        key = self._key(path)
        if offset < 0:
            raise InvalidOffsetError(NAME, path, offset)
        with s3_errors(path):
            try:
                response = self.bucket.get(key, f"bytes={offset}-" if offset else None)
            except Exception as exc:
                if error_code(exc) != "InvalidRange":
                    raise
                # past the end, or exactly at the end (S3 has no empty ranges)
                if offset == int(self.bucket.head(key)["ContentLength"]):
                    return _ObjectStream(None)  # type: ignore[return-value]
                raise InvalidOffsetError(NAME, path, offset) from None
        pending = Pending.from_metadata(response.get("Metadata"))
        if pending is not None and pending.parts:
            response["Body"].close()
            raise UnsupportedMethodError(NAME, path, "file is still being written; its parts cannot be read yet")
        return _ObjectStream(response["Body"], path)  # type: ignore[return-value]

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        key = self._key(path)
        if append:
            with s3_errors(path):
                writer = open_for_append(self.bucket, path, key)
            if writer is None:
                raise PathNotFoundError(NAME, path)
            return writer
        # A fresh file: nothing is sent until close() or commit(). A multipart upload
        # an earlier writer left at this key is orphaned, and aborted with its directory.
        return S3FileWriter(self.bucket, path, key, Pending(), dirty=True)

    def stat(self, ctx: Context, path: str) -> FileInfo:
        if path == "/":
            check_path(NAME, path, allow_root=True)
            return FileInfo(path="/", is_dir=True)
        key = self._key(path)
        with s3_errors(path):
            try:
                head = self.bucket.head(key)
            except Exception as exc:
                # 403: a missing key, to a role that may not list the bucket
                if not is_not_found(exc) and error_code(exc) != "403":
                    raise
            else:
                size = int(head["ContentLength"])
                pending = Pending.from_metadata(head.get("Metadata"))
                if pending is not None:
                    size += pending.parts_size
                return FileInfo(path=path, size=size, mod_time=_aware(head.get("LastModified")))
            # No such object: a directory if any key lies below it.
            page = next(self.bucket.list_pages(key + "/", max_keys=1))
            if page.get("KeyCount", len(page.get("Contents", []))) > 0:
                return FileInfo(path=path, is_dir=True)
        raise PathNotFoundError(NAME, path)

    def list(self, ctx: Context, path: str) -> list[str]:
        prefix = self._dir_prefix(path)
        children: list[str] = []
        with s3_errors(path):
            for page in self.bucket.list_pages(prefix, delimiter="/"):
                for item in page.get("Contents", []):
                    name = item["Key"][len(prefix):]
                    if is_component(name):
                        children.append(self._path(item["Key"]))
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(prefix):-1]
                    if is_component(name):
                        children.append(self._path(common["Prefix"][:-1]))
        if not children and path != "/":
            raise PathNotFoundError(NAME, path)
        return sorted(set(children))

    def move(self, ctx: Context, source: str, dest: str) -> None:
        source_key, dest_key = self._key(source), self._key(dest)
        with s3_errors(source):
            head = self.bucket.head(source_key)
        if Pending.from_metadata(head.get("Metadata")) is not None:
            raise StorageError(NAME, source, "cannot move a file that is still being written")
        with s3_errors(dest):
            self.bucket.copy(source_key, dest_key, int(head["ContentLength"]))
        with s3_errors(source):
            self.bucket.delete_one(source_key)

    def delete(self, ctx: Context, path: str) -> None:
        key = self._key(path)
        below = key + "/"
        with s3_errors(path):
            keys = [
                item["Key"]
                for page in self.bucket.list_pages(key)
                for item in page.get("Contents", [])
                if item["Key"] == key or item["Key"].startswith(below)
            ]
            if not keys:
                raise PathNotFoundError(NAME, path)
            errors = self.bucket.delete_many(keys)
            if errors:
                raise StorageError(NAME, path, f"could not delete {len(errors)} keys: {errors[0]}")
            # Files being written below (or at) path hold parts in multipart uploads.
            for upload_key, upload_id in self.bucket.uploads_under(key):
                if upload_key == key or upload_key.startswith(below):
                    self.bucket.abort(upload_key, upload_id)

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        key = self._key(path)
        with s3_errors(path):
            return self.bucket.presign(method, key, int(expiry_seconds))

    def walk(self, ctx: Context, path: str) -> Iterator[FileInfo]:
        prefix = self._dir_prefix(path)
        with s3_errors(path):
            pages = self.bucket.list_pages(prefix)
            first = next(pages)
        if not first.get("Contents") and path != "/":
            raise PathNotFoundError(NAME, path, "no such directory")
        return self._walk(path, first, pages)

    def _walk(self, path: str, first: dict, pages: Iterator[dict]) -> Iterator[FileInfo]:
        # Keys come sorted, so every subtree is contiguous: directories are those of
        # each key's parents not yet seen, which yields them before their children.
        root = "" if path == "/" else path
        open_dirs: list[str] = []
        page: Optional[dict] = first
        while page is not None:
            for item in page.get("Contents", []):
                child = self._path(item["Key"])
                relative = child[len(root):]
                parts = relative.split("/")[1:]
                if not parts or not all(is_component(p) for p in parts):
                    continue  # "folder/" markers and keys that are not storage paths
                dirs = [root + "/" + "/".join(parts[:i]) for i in range(1, len(parts))]
                common = 0
                while common < min(len(dirs), len(open_dirs)) and dirs[common] == open_dirs[common]:
                    common += 1
                for directory in dirs[common:]:
                    yield FileInfo(path=directory, is_dir=True)
                open_dirs = dirs
                yield FileInfo(path=child, size=int(item.get("Size", 0)), mod_time=_aware(item.get("LastModified")))
            with s3_errors(path):
                page = next(pages, None)


def _aware(moment: Any):
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class _ObjectStream(io.RawIOBase):
    """An S3 object body as a closable binary stream; no fileno, so servers copy it."""

    def __init__(self, body: Any, path: str = ""):
        super().__init__()
        self._body = body
        self._path = path

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._body is None:
            return b""
        with s3_errors(self._path):
            return self._body.read(None if size is None or size < 0 else size)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()
