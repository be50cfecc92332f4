"""Blob uploads that survive stateless requests.

Everything an upload needs between requests is in storage: the bytes at
_uploads/<id>/data, the start time, and the hasher state after each write at
hashstates/<alg>/<offset>, so any process can take the next chunk and resume
hashing at native speed without re-reading what was written.
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from datetime import datetime, timezone
from typing import BinaryIO, Optional

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import CANONICAL, Algorithm, Digest, DigestError, ResumableHasher
from ..storage import FileWriter, PathNotFoundError, StorageDriver, UnsupportedMethodError, paths
from ..storage.base import DirectFile, DirectFileError
from .blobs import BlobStore, LinkedBlobStore
from .errors import (
    BlobUploadInvalidError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
    SizeInvalidError,
)

log = logging.getLogger("stratus.uploads")

READ_SIZE = 1 << 20
# Bodies at least this long are hashed on a second thread (see copy_body)
HASH_BEHIND_MIN = 4 * READ_SIZE
_HASH_BEHIND_DEPTH = 2  # pieces in flight: bounds the memory a push holds (2 MiB; 4 gave no speed)
_UPLOAD_ID_LENGTH = 36


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def valid_upload_id(upload_id: str) -> bool:
    try:
        return len(upload_id) == _UPLOAD_ID_LENGTH and str(uuid.UUID(upload_id)) == upload_id
    except ValueError:
        return False


def read_body(stream: BinaryIO, length: Optional[int], sink) -> int:
    """Copy a request body into sink(bytes) in bounded pieces; returns the bytes copied.

    A body shorter than its declared length means the client went away mid-chunk.
    """
    copied = 0
    while length is None or copied < length:
        want = READ_SIZE if length is None else min(READ_SIZE, length - copied)
        piece = stream.read(want)
        if not piece:
            break
        sink(piece)
        copied += len(piece)
    if length is not None and copied != length:
        raise SizeInvalidError(f"body ended after {copied} of {length} bytes")
    return copied


class _Behind:
    """A thread applying `apply` to each queued piece, in order, at most `depth` behind."""

    def __init__(self, apply, name: str, depth: int = _HASH_BEHIND_DEPTH):
        self._apply = apply
        self._pieces: queue.Queue = queue.Queue(depth)
        self.failure: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            piece = self._pieces.get()
            if piece is None:
                return
            if self.failure is None:
                try:
                    self._apply(piece)
                except BaseException as exc:  # surfaced on the request thread
                    self.failure = exc

    def put(self, piece: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self._pieces.put(piece)

    def finish(self) -> None:
        self._pieces.put(None)
        self._thread.join()


def copy_body(body: BinaryIO, length: Optional[int], writer: FileWriter, hasher: Optional[ResumableHasher]) -> int:
    """Copy a request body into writer, hashing it; returns the bytes copied.

    Receiving, writing and hashing a piece all release the GIL, so a large body is
    written and hashed on two threads of their own while this one receives the next
    pieces: a push then takes about as long as the slowest of the three rather than
    their sum (writing into a fresh page cache was the slowest, here). Both threads
    are drained before this returns or raises, so the hasher has seen exactly the
    bytes written, unless a write failed (then hasher.length says so).
    """
    if hasher is None or (length is not None and length < HASH_BEHIND_MIN):

        def write_and_hash(piece: bytes) -> None:
            writer.write(piece)
            if hasher is not None:
                hasher.update(piece)

        return read_body(body, length, write_and_hash)

    stages = [_Behind(writer.write, "write-behind"), _Behind(hasher.update, "hash-behind")]

    def sink(piece: bytes) -> None:
        for stage in stages:
            stage.put(piece)

    try:
        copied = read_body(body, length, sink)
    finally:
        for stage in stages:
            stage.finish()
    for stage in stages:
        if stage.failure is not None:
            raise stage.failure
    return copied


class DirectModeError(BlobUploadInvalidError):
    """The upload's bytes come through part URLs (direct_uploads.py): no PATCH or PUT body."""

    def __init__(self, upload_id: str, info: DirectFile):
        self.info = info
        super().__init__(upload_id, message="upload is in direct mode: its bytes come only through its part URLs")


class BlobUpload:
    """One upload session of one repository."""

    def __init__(
        self, uploads: "BlobUploads", upload_id: str, started_at: str, size: int,
        writer: Optional[FileWriter] = None,
    ):
        self._uploads = uploads
        self.id = upload_id
        self.started_at = started_at
        self.size = size
        self._writer = writer  # the fresh writer create() left open, taken by the first write

    @property
    def _driver(self) -> StorageDriver:
        return self._uploads.driver

    @property
    def driver(self) -> StorageDriver:
        return self._uploads.driver

    @property
    def data_path(self) -> str:
        return paths.upload_data(self._uploads.name, self.id)

    _data_path = data_path

    def state_path(self, algorithm: Algorithm, offset: int) -> str:
        return paths.upload_hash_state(self._uploads.name, self.id, algorithm.value, offset)

    _state_path = state_path

    def write(
        self, ctx: Context, body: BinaryIO, length: Optional[int], start: Optional[int] = None
    ) -> int:
        """Append a chunk; `start` (from Content-Range) must be the current size."""
        writer = self._open_writer(ctx, start)
        hasher = self._resume_hasher(ctx, writer.size)
        try:
            copy_body(body, length, writer, hasher)
        finally:
            self._checkpoint(ctx, writer, hasher)
        return self.size

    def commit(
        self, ctx: Context, expected: Digest, body: Optional[BinaryIO] = None, length: Optional[int] = None,
        start: Optional[int] = None,
    ) -> BlobDescriptor:
        """Finish the upload as blob `expected`: verify, move into place, link."""
        writer = self._open_writer(ctx, start)
        hasher = self._resume_hasher(ctx, writer.size) if expected.algorithm is CANONICAL else None
        if body is not None and (length is None or length > 0):
            try:
                copy_body(body, length, writer, hasher)
            except BaseException:
                self._checkpoint(ctx, writer, hasher)
                raise
        self.size = writer.size
        early = hasher.digest() if hasher is not None else None
        if early is not None and early != expected:
            # Refused before the file is finished: an S3 multipart upload is aborted,
            # never completed, and nothing reaches a blob path.
            writer.cancel()
            self._remove(ctx)
            raise DigestInvalidError(f"digest {expected} does not match uploaded content {early}")
        writer.commit()
        writer.close()
        actual = early if early is not None else self._digest_from_data(ctx, expected.algorithm)
        if actual != expected:
            self.cancel(ctx)
            raise DigestInvalidError(f"digest {expected} does not match uploaded content {actual}")
        return self.finish(ctx, BlobDescriptor(digest=expected, size=self.size))

    def finish(self, ctx: Context, descriptor: BlobDescriptor) -> BlobDescriptor:
        """The verified, committed data becomes the blob, linked here; the upload goes."""
        self._uploads.blobs.move_into_place(ctx, self._data_path, descriptor)
        self._uploads.linked.link(ctx, descriptor)
        self._remove(ctx)
        return descriptor

    def cancel(self, ctx: Context) -> None:
        try:
            self._driver.writer(ctx, self._data_path, append=True).cancel()
        except (PathNotFoundError, DirectFileError):
            pass  # a direct-mode file goes with its directory, parts and all
        self._remove(ctx)

    def remove(self, ctx: Context) -> None:
        """Delete the upload's directory (a multipart upload or staged blocks with it)."""
        self._remove(ctx)

    def nearest_state(self, ctx: Context, algorithm: Algorithm, size: int) -> tuple[ResumableHasher, int]:
        """The stored hasher state at the largest offset not past size (a fresh hasher at 0)."""
        return self._nearest_state(ctx, algorithm, size)

    # -- internals -------------------------------------------------------------------

    def _open_writer(self, ctx: Context, start: Optional[int]) -> FileWriter:
        """The upload's writer at its end; `start`, if given, must be where that is.

        Opening it is also the existence check: appending to a missing file is
        PathNotFoundError in every driver, so a PATCH or PUT needs no stat first.
        """
        writer, self._writer = self._writer, None
        if writer is None:
            try:
                writer = self._driver.writer(ctx, self._data_path, append=True)
            except PathNotFoundError:
                raise BlobUploadUnknownError(self.id) from None
            except DirectFileError as exc:
                raise DirectModeError(self.id, exc.info) from None
        self.size = writer.size
        if start is not None and start != self.size:
            writer.close()
            raise RangeInvalidError(f"chunk starts at {start}, upload is at {self.size}")
        return writer

    def _checkpoint(self, ctx: Context, writer: FileWriter, hasher: Optional[ResumableHasher]) -> None:
        writer.close()
        self.size = writer.size
        if hasher is not None and hasher.length == self.size:
            self._driver.put_content(ctx, self._state_path(hasher.algorithm, self.size), hasher.state())

    def _resume_hasher(
        self, ctx: Context, size: int, algorithm: Algorithm = CANONICAL
    ) -> Optional[ResumableHasher]:
        """The hasher at `size`; None when it can only be rebuilt from the data at commit."""
        if size == 0:
            return algorithm.hasher()
        try:
            return ResumableHasher.restore(algorithm, self._driver.get_content(ctx, self._state_path(algorithm, size)))
        except (PathNotFoundError, DigestError):
            pass
        hasher, offset = self._nearest_state(ctx, algorithm, size)
        log.info("upload %s: no hash state at %d, hashing from %d", self.id, size, offset)
        try:
            self._hash_stored(ctx, hasher, offset, size)
        except UnsupportedMethodError:
            # S3 cannot read the parts of an upload in progress; commit hashes the file
            log.info("upload %s: stored data unreadable until commit; digest computed then", self.id)
            return None
        return hasher

    def _nearest_state(self, ctx: Context, algorithm: Algorithm, size: int) -> tuple[ResumableHasher, int]:
        directory = paths.upload_hash_states(self._uploads.name, self.id, algorithm.value)
        try:
            entries = self._driver.list(ctx, directory)
        except PathNotFoundError:
            entries = []
        offsets = sorted(
            (int(p.rsplit("/", 1)[1]) for p in entries if p.rsplit("/", 1)[1].isdigit()), reverse=True
        )
        for offset in offsets:
            if offset > size:
                continue
            try:
                state = self._driver.get_content(ctx, self._state_path(algorithm, offset))
                return ResumableHasher.restore(algorithm, state), offset
            except (PathNotFoundError, DigestError):
                continue
        return algorithm.hasher(), 0

    def _hash_stored(self, ctx: Context, hasher: ResumableHasher, start: int, end: int) -> None:
        if start >= end:
            return
        with self._driver.reader(ctx, self._data_path, start) as reader:
            remaining = end - start
            while remaining:
                piece = reader.read(min(READ_SIZE, remaining))
                if not piece:
                    raise BlobUploadInvalidError("upload data is shorter than recorded")
                hasher.update(piece)
                remaining -= len(piece)

    def _digest_from_data(self, ctx: Context, algorithm: Algorithm) -> Digest:
        hasher = algorithm.hasher()
        self._hash_stored(ctx, hasher, 0, self.size)
        return hasher.digest()

    def _remove(self, ctx: Context) -> None:
        try:
            self._driver.delete(ctx, paths.upload_dir(self._uploads.name, self.id))
        except PathNotFoundError:
            pass


class BlobUploads:
    def __init__(self, driver: StorageDriver, name: str, blobs: BlobStore, linked: LinkedBlobStore):
        self.driver = driver
        self.name = name
        self.blobs = blobs
        self.linked = linked

    def create(self, ctx: Context, keep_writer: bool = False) -> BlobUpload:
        """A new upload; `keep_writer` for one written at once (a single POST): its
        first write or commit goes on with the fresh writer instead of closing it
        and opening it again to append (an empty object and a HEAD, on S3)."""
        upload_id = str(uuid.uuid4())
        started_at = now_rfc3339()
        try:
            self.driver.put_content(ctx, paths.upload_started_at(self.name, upload_id), started_at.encode())
            writer = self.driver.writer(ctx, paths.upload_data(self.name, upload_id), append=False)
        except BaseException:
            # a full disk can fail either step: leave no upload behind that holds only startedat
            try:
                self.driver.delete(ctx, paths.upload_dir(self.name, upload_id))
            except Exception as exc:  # PathNotFoundError when nothing was made; else purging finds it
                log.debug("upload %s not removed after a failed start: %s", upload_id, exc)
            raise
        if not keep_writer:
            writer.close()
        return BlobUpload(self, upload_id, started_at, 0, writer if keep_writer else None)

    def get(
        self, ctx: Context, upload_id: str, started_at: Optional[str] = None, stat: bool = True
    ) -> BlobUpload:
        """The upload, with its size when `stat`; without, its size is learned (and
        its existence checked) when a writer opens it, saving a storage round trip."""
        if not valid_upload_id(upload_id):
            raise BlobUploadUnknownError(upload_id)
        size = 0
        if stat:
            try:
                size = self.driver.stat(ctx, paths.upload_data(self.name, upload_id)).size
            except PathNotFoundError:
                raise BlobUploadUnknownError(upload_id) from None
        if started_at is None:
            try:
                started_at = self.driver.get_content(ctx, paths.upload_started_at(self.name, upload_id)).decode()
            except PathNotFoundError:
                raise BlobUploadUnknownError(upload_id) from None
        return BlobUpload(self, upload_id, started_at, size)
