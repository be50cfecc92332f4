"""Appendable S3 files that survive the process that wrote them.

A file being written is two things in the bucket:

* an S3 multipart upload on the file's own key, holding its first bytes in parts
  of at least 5 MiB (created only once that much has been written), and
* a *pending tail* object at the file's key itself: the bytes after the last part
  (always under 5 MiB), with user metadata naming the multipart upload, its part
  count and the bytes in its parts.

``close()`` uploads the buffer as a part when it reaches 5 MiB, else stores it as
the tail, so any process continues with one GET of the tail (no listing). A Lambda
request carries at most ~4.4 MiB, so short chunks are the rule: they wait in the
tail and are folded into the next part. ``commit()`` uploads the tail as the last
part and completes the upload, which replaces the tail object with the whole file
at the same key; a file that never reached 5 MiB is simply PUT. ``stat`` of a
pending file is one HEAD (parts size + tail length).

The tail's metadata is the source of truth: a part uploaded by a writer that died
before storing its new tail is overwritten by the next writer (same part number).
"""
from __future__ import annotations

from typing import Optional

from ..base import DirectFileError, StorageError
from ..writer_state import WriterState
from .bucket import Bucket, Pending, copy_ranges
from .direct import direct_info
from .errors import NAME, is_not_found, s3_errors
from .params import MIN_PART_SIZE


class S3FileWriter:
    def __init__(self, bucket: Bucket, path: str, key: str, pending: Pending, tail: bytes = b"",
                 *, base_size: int = 0, dirty: bool = False, finished: bool = False):
        self._bucket = bucket
        self._path = path
        self._key = key
        self._upload_id = pending.upload_id
        self._parts = pending.parts
        self._parts_size = pending.parts_size
        self._etags: dict[int, str] = {}  # parts uploaded by this writer
        self._buffer = bytearray(tail)
        # An append to a finished file of at least 5 MiB: its bytes become the
        # upload's first parts (copied server-side) once something is appended.
        self._base_size = base_size
        self._dirty = dirty  # whether close() has something to make durable
        self._finished = finished  # opened over a file that was already committed
        self._state = WriterState(NAME, path)

    @property
    def size(self) -> int:
        return self._parts_size + self._base_size + len(self._buffer)

    def write(self, data: bytes) -> int:
        self._state.require_open()
        if not data:
            return 0
        self._buffer += data
        self._dirty = True
        chunk = self._bucket.params.chunk_size
        if len(self._buffer) >= chunk:
            with s3_errors(self._path):
                while len(self._buffer) >= chunk:
                    self._upload_part(bytes(self._buffer[:chunk]))
                    del self._buffer[:chunk]
        return len(data)

    def close(self) -> None:
        if not self._state.close() or not self._dirty:
            return
        with s3_errors(self._path):
            if len(self._buffer) >= MIN_PART_SIZE:
                self._upload_part(bytes(self._buffer))
                self._buffer.clear()
            elif self._base_size:
                self._start_upload()
            self._bucket.put(self._key, bytes(self._buffer), self._pending().metadata())

    def commit(self) -> None:
        # Committed only once S3 has the whole file. The last part, which may be short,
        # is recorded nowhere before that, so a close() after a failed commit stores
        # the tail as it was and the file stays appendable (that part is overwritten).
        with self._state.committing(), s3_errors(self._path):
            if self._finished and not self._dirty:
                return  # appended nothing to a finished file: it is as it was
            if self._upload_id is None and not self._base_size:
                self._bucket.put(self._key, bytes(self._buffer))  # never reached a part: one PUT
                return
            upload_id = self._start_upload()
            parts = self._completed_parts(upload_id)
            if self._buffer or self._parts == 0:
                number = self._parts + 1
                etag = self._bucket.upload_part(self._key, upload_id, number, bytes(self._buffer))
                parts.append({"PartNumber": number, "ETag": etag})
            self._bucket.complete(self._key, upload_id, parts)

    def cancel(self) -> None:
        self._state.cancel()
        with s3_errors(self._path):
            if self._upload_id is not None:
                self._bucket.abort(self._key, self._upload_id)
            self._bucket.delete_one(self._key)

    # -- internals ---------------------------------------------------------------------

    def _pending(self) -> Pending:
        return Pending(self._upload_id, self._parts, self._parts_size)

    def _start_upload(self) -> str:
        """The multipart upload's id, created on first use."""
        if self._upload_id is not None:
            return self._upload_id
        upload_id = self._upload_id = self._bucket.create_upload(self._key)
        if self._base_size:
            ranges = copy_ranges(self._base_size, self._bucket.params.copy_chunk_size, last_may_be_short=False)
            copied = self._bucket.copy_parts(self._key, self._key, upload_id, ranges, 1)
            self._etags.update((p["PartNumber"], p["ETag"]) for p in copied)
            self._parts, self._parts_size, self._base_size = len(copied), self._base_size, 0
        return upload_id

    def _upload_part(self, body: bytes) -> None:
        upload_id = self._start_upload()
        number = self._parts + 1
        self._etags[number] = self._bucket.upload_part(self._key, upload_id, number, body)
        self._parts, self._parts_size = number, self._parts_size + len(body)

    def _completed_parts(self, upload_id: str) -> list[dict]:
        numbers = range(1, self._parts + 1)
        etags = dict(self._etags)
        if len(etags) < self._parts:  # parts of earlier writers: ask S3 for their ETags
            listed = self._bucket.list_parts(self._key, upload_id)
            missing = [n for n in numbers if n not in listed]
            if missing:
                raise StorageError(NAME, self._path, f"multipart upload lost parts {missing[:5]}")
            # parts past ours were left by a writer that died before storing its tail
            if sum(listed[n][1] for n in numbers) != self._parts_size:
                raise StorageError(NAME, self._path, "multipart upload parts do not add up to the file")
            etags = {n: etags.get(n, listed[n][0]) for n in numbers}
        return [{"PartNumber": n, "ETag": etags[n]} for n in numbers]


def open_for_append(bucket: Bucket, path: str, key: str) -> Optional[S3FileWriter]:
    """A writer at the end of the file at key; None when there is no file."""
    try:
        response = bucket.get(key)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise
    body = response["Body"]
    length = int(response.get("ContentLength", 0))
    direct = direct_info(response)
    if direct is not None:  # its bytes come through part URLs only
        body.close()
        raise DirectFileError(NAME, path, direct)
    pending = Pending.from_metadata(response.get("Metadata"))
    if pending is None and length >= MIN_PART_SIZE:
        body.close()  # a finished file this long is continued by server-side copy, not read
        return S3FileWriter(bucket, path, key, Pending(), base_size=length, finished=True)
    try:
        tail = body.read()
    finally:
        body.close()
    if pending is None:  # a short finished file: its bytes become the tail
        return S3FileWriter(bucket, path, key, Pending(), tail, finished=True)
    return S3FileWriter(bucket, path, key, pending, tail)
