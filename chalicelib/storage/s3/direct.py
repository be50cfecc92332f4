"""Direct writes on S3: a file's parts go to presigned UploadPart URLs of its own
multipart upload, never through us.

``begin_direct`` starts a multipart upload on the file's key (created with the
metadata ``stratus-direct-part-size``) and stores the pending tail as usual, empty,
naming that upload and carrying the same mark. The mark makes the writer refuse to
append (DirectFileError), so bytes come only through part URLs. ``assemble_direct``
completes the upload: the object that replaces the tail keeps the mark (it came
with CreateMultipartUpload) and has no pending metadata, which is how "assembled"
is told from "collecting parts". ``move`` copies with REPLACE, so the mark never
reaches the destination.

A presigned UploadPart URL names the bucket, key, uploadId and partNumber in its
signed query: it can write that one part of that one upload and nothing else.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ...context import Context
from ..base import DirectFile, InvalidOffsetError, PartURL, StorageError, StoredPart
from .bucket import META_DIRECT, Bucket, Pending
from .errors import NAME, s3_errors
from .params import MAX_PART_SIZE, MIN_PART_SIZE

MAX_PARTS = 10_000


def direct_info(response: dict) -> Optional[DirectFile]:
    """What a HEAD or GET of a file says about its direct mode; None for an ordinary file."""
    metadata = response.get("Metadata") or {}
    text = metadata.get(META_DIRECT)
    if text is None:
        return None
    try:
        part_size = int(text)
    except ValueError:
        return None
    if Pending.from_metadata(metadata) is not None:
        return DirectFile(part_size)
    return DirectFile(part_size, assembled=True, size=int(response.get("ContentLength", 0)))


class S3DirectWrites:
    """The DirectWriteDriver half of S3Driver."""

    direct_kind = "s3-multipart"
    direct_part_size_range = (MIN_PART_SIZE, MAX_PART_SIZE)
    direct_max_parts = MAX_PARTS

    bucket: Bucket
    _key: Callable[[str], str]

    def _direct_head(self, path: str) -> tuple[dict, Optional[DirectFile]]:
        head = self.bucket.head(self._key(path))
        return head, direct_info(head)

    def _direct_upload_id(self, path: str) -> str:
        head, info = self._direct_head(path)
        pending = Pending.from_metadata(head.get("Metadata"))
        if info is None or info.assembled or pending is None or not pending.upload_id:
            raise StorageError(NAME, path, "file is not collecting direct parts")
        return pending.upload_id

    def begin_direct(self, ctx: Context, path: str, part_size: int) -> DirectFile:
        key = self._key(path)
        with s3_errors(path):
            head, info = self._direct_head(path)
            if info is not None:
                return info
            pending = Pending.from_metadata(head.get("Metadata"))
            size = int(head.get("ContentLength", 0)) + (pending.parts_size if pending else 0)
            if size:
                raise InvalidOffsetError(NAME, path, size)
            mark = {META_DIRECT: str(part_size)}
            upload_id = self.bucket.create_upload(key, mark)
            self.bucket.put(key, b"", {**Pending(upload_id).metadata(), **mark})
            if pending is not None and pending.upload_id:  # an empty upload begun by a writer
                self.bucket.abort(key, pending.upload_id)
        return DirectFile(part_size)

    def direct_file(self, ctx: Context, path: str) -> Optional[DirectFile]:
        with s3_errors(path):
            return self._direct_head(path)[1]

    def presign_parts(self, ctx: Context, path: str, numbers: list[int], expiry_seconds: int) -> list[PartURL]:
        key = self._key(path)
        with s3_errors(path):
            upload_id = self._direct_upload_id(path)
            client = self.bucket.client
            return [
                PartURL(number, "PUT", client.generate_presigned_url(
                    "upload_part", ExpiresIn=int(expiry_seconds),
                    Params={"Bucket": self.bucket.name, "Key": key, "UploadId": upload_id, "PartNumber": number},
                ))
                for number in numbers
            ]

    def stored_parts(self, ctx: Context, path: str) -> list[StoredPart]:
        with s3_errors(path):
            upload_id = self._direct_upload_id(path)
            listed = self.bucket.list_parts(self._key(path), upload_id)
        return [StoredPart(number, size) for number, (_, size) in sorted(listed.items())]

    def assemble_direct(self, ctx: Context, path: str, count: int) -> int:
        key = self._key(path)
        with s3_errors(path):
            upload_id = self._direct_upload_id(path)
            listed = self.bucket.list_parts(key, upload_id)
            missing = [n for n in range(1, count + 1) if n not in listed]
            if missing:
                raise StorageError(NAME, path, f"direct parts missing: {missing[:5]}")
            parts = [{"PartNumber": n, "ETag": listed[n][0]} for n in range(1, count + 1)]
            self.bucket.complete(key, upload_id, parts)
        return sum(listed[n][1] for n in range(1, count + 1))

    def read_range(self, ctx: Context, path: str, offset: int, length: int) -> bytes:
        with s3_errors(path):
            response: Any = self.bucket.get(self._key(path), f"bytes={offset}-{offset + length - 1}")
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        if len(data) != length:
            raise StorageError(NAME, path, f"read {len(data)} of {length} bytes at {offset}")
        return data
