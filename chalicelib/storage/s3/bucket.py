"""The S3 requests the driver and its writers are made of, over one bucket.

Everything here speaks keys, not storage paths; errors are left to the caller,
which knows the path to name in a StorageError.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

from .client import client_for
from .errors import error_code
from .light import LightReads, WrongRegion, reads_for
from .params import MAX_PART_SIZE, MIN_PART_SIZE, S3Parameters

CONTENT_TYPE = "application/octet-stream"
LIST_MAX = 1000
DELETE_MAX = 1000  # keys per DeleteObjects request

# User metadata that marks an object as the pending tail of a file still being
# written (see writer.py). Lower case: S3 folds metadata keys.
META_PARTS = "stratus-parts"
META_PARTS_SIZE = "stratus-parts-size"
META_UPLOAD = "stratus-upload-id"
# The part size of a file written through presigned UploadPart URLs (see driver.py):
# on its pending tail while parts arrive, and on the assembled object, since the
# multipart upload is created with it.
META_DIRECT = "stratus-direct-part-size"


@dataclass(frozen=True)
class Pending:
    """What a pending-tail object says about its file: the multipart upload holding
    the bytes before the tail, if any, and how many parts and bytes it holds."""

    upload_id: Optional[str] = None
    parts: int = 0
    parts_size: int = 0

    def metadata(self) -> dict[str, str]:
        meta = {META_PARTS: str(self.parts), META_PARTS_SIZE: str(self.parts_size)}
        if self.upload_id:
            meta[META_UPLOAD] = self.upload_id
        return meta

    @classmethod
    def from_metadata(cls, metadata: Optional[dict]) -> Optional["Pending"]:
        if not metadata or META_PARTS_SIZE not in metadata:
            return None
        try:
            return cls(metadata.get(META_UPLOAD) or None, int(metadata.get(META_PARTS, "0")),
                       int(metadata[META_PARTS_SIZE]))
        except ValueError:
            return None


def copy_ranges(size: int, part_size: int, *, last_may_be_short: bool = True) -> list[tuple[int, int]]:
    """Inclusive byte ranges of at most part_size covering [0, size).

    When more parts will follow (last_may_be_short=False), a short remainder is
    folded into the range before it, since only an upload's last part may be
    under 5 MiB.
    """
    if not last_may_be_short:
        part_size = min(part_size, MAX_PART_SIZE - MIN_PART_SIZE)
    ranges = [(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)]
    if not last_may_be_short and len(ranges) > 1 and ranges[-1][1] - ranges[-1][0] + 1 < MIN_PART_SIZE:
        ranges[-2:] = [(ranges[-2][0], ranges[-1][1])]
    return ranges


class Bucket:
    def __init__(self, params: S3Parameters):
        self.params = params
        self.name = params.bucket

    @property
    def client(self) -> Any:
        return client_for(self.params.connection, self.params.log_level)

    @property
    def reads(self) -> Optional[LightReads]:
        """The botocore-free reader (light.py) where it reads as the client would, else None."""
        if self.params.log_level != "off":  # botocore's request logging was asked for
            return None
        return reads_for(self.params)

    def write_args(self) -> dict[str, Any]:
        """Arguments every request that creates an object carries."""
        p = self.params
        args: dict[str, Any] = {"ContentType": CONTENT_TYPE}
        if p.encrypt or p.key_id:
            args["ServerSideEncryption"] = "aws:kms" if p.key_id else "AES256"
            if p.key_id:
                args["SSEKMSKeyId"] = p.key_id
        if p.storage_class:
            args["StorageClass"] = p.storage_class
        if p.object_acl:
            args["ACL"] = p.object_acl
        return args

    # -- objects ---------------------------------------------------------------------

    def head(self, key: str) -> dict:
        reads = self.reads
        if reads is not None:
            try:
                return reads.head(key)
            except WrongRegion:
                pass  # the client's redirector finds the bucket's region
        return self.client.head_object(Bucket=self.name, Key=key)

    def get(self, key: str, range_: Optional[str] = None) -> dict:
        reads = self.reads
        if reads is not None:
            try:
                return reads.get(key, range_)
            except WrongRegion:
                pass
        kwargs = {"Range": range_} if range_ else {}
        return self.client.get_object(Bucket=self.name, Key=key, **kwargs)

    def presign(self, method: str, key: str, expires: int) -> Optional[str]:
        """A URL for GET or HEAD of key, valid for expires seconds; None for other methods."""
        operation = {"GET": "get_object", "HEAD": "head_object"}.get(method.upper())
        if operation is None:
            return None
        reads = self.reads
        if reads is not None:
            return reads.presign(method.upper(), key, expires)
        return self.client.generate_presigned_url(
            operation, Params={"Bucket": self.name, "Key": key}, ExpiresIn=int(expires))

    def put(self, key: str, body: bytes, metadata: Optional[dict[str, str]] = None) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body, Metadata=metadata or {}, **self.write_args())

    def delete_one(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def delete_many(self, keys: list[str]) -> list[str]:
        """Delete keys in batches; returns the error descriptions of keys that stayed."""
        errors: list[str] = []
        for i in range(0, len(keys), DELETE_MAX):
            batch = [{"Key": k} for k in keys[i:i + DELETE_MAX]]
            response = self.client.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})
            errors += [f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}" for e in response.get("Errors", [])]
        return errors

    def list_pages(self, prefix: str, delimiter: Optional[str] = None, max_keys: int = LIST_MAX):
        """Pages of ListObjectsV2, fetched as they are consumed."""
        reads = self.reads
        if reads is not None:
            try:
                yield from reads.list_pages(prefix, delimiter, max_keys)
                return
            except WrongRegion:
                pass  # raised by the first page, before any was yielded
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        while True:
            page = self.client.list_objects_v2(**kwargs)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def copy(self, source: str, dest: str, size: int) -> None:
        """Server-side copy: one request up to the threshold, parallel part copies above."""
        if size <= min(self.params.copy_threshold, MAX_PART_SIZE) or size == 0:
            self.client.copy_object(
                Bucket=self.name, Key=dest, CopySource={"Bucket": self.name, "Key": source},
                MetadataDirective="REPLACE", **self.write_args(),
            )
            return
        upload_id = self.create_upload(dest)
        try:
            parts = self.copy_parts(source, dest, upload_id, copy_ranges(size, self.params.copy_chunk_size), 1)
            self.complete(dest, upload_id, parts)
        except BaseException:
            self.abort(dest, upload_id)
            raise

    # -- multipart uploads -----------------------------------------------------------

    def create_upload(self, key: str, metadata: Optional[dict[str, str]] = None) -> str:
        extra: dict[str, Any] = {"Metadata": metadata} if metadata else {}
        return self.client.create_multipart_upload(
            Bucket=self.name, Key=key, **self.write_args(), **extra)["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        response = self.client.upload_part(Bucket=self.name, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        return response["ETag"]

    def copy_parts(self, source: str, dest: str, upload_id: str, ranges: list[tuple[int, int]],
                   first_number: int) -> list[dict]:
        """UploadPartCopy of each range, in a bounded pool whose threads end with the call."""

        def copy_one(numbered: tuple[int, tuple[int, int]]) -> dict:
            number, (start, end) = numbered
            response = self.client.upload_part_copy(
                Bucket=self.name, Key=dest, UploadId=upload_id, PartNumber=number,
                CopySource={"Bucket": self.name, "Key": source}, CopySourceRange=f"bytes={start}-{end}",
            )
            return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        numbered = list(enumerate(ranges, start=first_number))
        workers = min(len(numbered), self.params.copy_max_concurrency, self.params.connection.max_pool_connections)
        if workers <= 1:
            return [copy_one(n) for n in numbered]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stratus-s3-copy") as pool:
            return list(pool.map(copy_one, numbered))

    def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        """part number -> (ETag, size) of every part uploaded so far."""
        parts: dict[int, tuple[str, int]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.name, "Key": key, "UploadId": upload_id, "MaxParts": LIST_MAX}
        while True:
            page = self.client.list_parts(**kwargs)
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = (part["ETag"], int(part["Size"]))
            if not page.get("IsTruncated"):
                return parts
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def complete(self, key: str, upload_id: str, parts: list[dict]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.name, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": sorted(parts, key=lambda p: p["PartNumber"])},
        )

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except Exception as exc:
            if error_code(exc) not in ("NoSuchUpload", "404"):
                raise

    def uploads_under(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of every multipart upload in progress whose key starts with prefix."""
        found: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {"Bucket": self.name, "Prefix": prefix}
        while True:
            page = self.client.list_multipart_uploads(**kwargs)
            found += [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]
            if not page.get("IsTruncated"):
                return found
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")
