"""Direct-to-storage uploads: the bytes of a blob go from the client straight into
the bucket through presigned part URLs, and the registry verifies them before
they become the blob (docs/direct-uploads.md).

An upload enters direct mode, while still empty, on its first request for part
URLs; its data file then takes bytes only through those URLs (the driver refuses
an ordinary append). Completion never trusts the client's digest: the parts are
checked (contiguous from 1, all but the last exactly one part size), joined into
the upload's data file, and read back with parallel ranged reads feeding the
resumable hasher. The hash state is stored at hashstates/<alg>/<offset> as it
goes, so a verification too long for one request stops after `verify_time` and
the next request (on any instance) continues from the last state; after a long
read-back the move into place (a server-side copy) gets a request of its own too.
Only a match moves the file into place; a mismatch removes the upload, parts and all.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from ..context import Context
from ..descriptor import BlobDescriptor
from ..digest import Digest, ResumableHasher
from ..storage import InvalidOffsetError, PathNotFoundError, StorageError
from ..storage.base import DirectFile, DirectWriteDriver, PartURL, StoredPart, direct_writes
from .errors import (
    BlobUploadInvalidError,
    BlobUploadUnknownError,
    DigestInvalidError,
    RangeInvalidError,
    SizeInvalidError,
)
from .uploads import BlobUpload

log = logging.getLogger("stratus.uploads.direct")

MiB = 1 << 20
MAX_URLS_PER_REQUEST = 100


@dataclass(frozen=True)
class DirectUploadOptions:
    part_size: int = 16 * MiB  # when the client proposes none
    expiry: int = 20 * 60  # seconds a part URL stays valid
    verify_time: float = 20.0  # seconds one completion request may spend reading back
    read_size: int = 16 * MiB  # bytes per ranged read (readers x read_size are in memory at most)
    readers: int = 8  # ranged reads in flight
    checkpoint_every: int = 512 * MiB  # bytes hashed between stored hash states


def kind(driver: Any) -> Optional[str]:
    """How the driver's part URLs are used ("s3-multipart", "azure-blocks"), None without them."""
    value = getattr(driver, "direct_kind", None)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PartsGrant:
    """What a request for part URLs answers."""

    kind: str
    part_size: int
    max_parts: int
    expires: datetime
    uploaded: list[StoredPart]
    parts: list[PartURL]


@dataclass(frozen=True)
class Verification:
    """Where a completion request got to: `descriptor` once the blob is in place,
    else `verified` of `size` bytes read back and hashed so far."""

    size: int
    verified: int
    descriptor: Optional[BlobDescriptor] = None

    @property
    def done(self) -> bool:
        return self.descriptor is not None


def contiguous_size(parts: list[StoredPart], part_size: int) -> int:
    """Bytes in the run of stored parts from part 1 on, each full but maybe the last."""
    size = 0
    for expected, part in enumerate(sorted(parts, key=lambda p: p.number), start=1):
        if part.number != expected:
            break
        size += part.size
        if part.size != part_size:
            break
    return size


def check_parts(parts: list[StoredPart], part_size: int) -> int:
    """The number of parts if they make one file (1..n, all but the last `part_size`)."""
    if not parts:
        raise BlobUploadInvalidError(message="no parts were uploaded")
    ordered = sorted(parts, key=lambda p: p.number)
    for expected, part in enumerate(ordered, start=1):
        if part.number != expected:
            raise BlobUploadInvalidError({"missing": expected}, message=f"part {expected} was not uploaded")
        last = expected == len(ordered)
        if (not last and part.size != part_size) or part.size == 0 or part.size > part_size:
            raise BlobUploadInvalidError(
                {"part": part.number, "size": part.size, "partSize": part_size},
                message=f"part {part.number} has {part.size} bytes; every part but the last must have {part_size}",
            )
    return len(ordered)


class DirectUpload:
    """Direct mode of one upload session."""

    def __init__(self, upload: BlobUpload, options: DirectUploadOptions):
        self.upload = upload
        self.options = options

    @property
    def _driver(self) -> DirectWriteDriver:
        return direct_writes(self.upload.driver)

    @property
    def _path(self) -> str:
        return self.upload.data_path

    def state(self, ctx: Context) -> Optional[DirectFile]:
        """The upload's direct mode, None when it is an ordinary upload."""
        driver = self.upload.driver
        if kind(driver) is None:
            return None
        try:
            return direct_writes(driver).direct_file(ctx, self._path)
        except PathNotFoundError:
            raise BlobUploadUnknownError(self.upload.id) from None

    def progress(self, ctx: Context, info: DirectFile) -> int:
        """Bytes received: the run of stored parts from part 1, or the assembled size."""
        if info.assembled:
            return info.size
        return contiguous_size(self._driver.stored_parts(ctx, self._path), info.part_size)

    # -- part URLs -------------------------------------------------------------------

    def grant(self, ctx: Context, first: int, last: int, part_size: Optional[int] = None) -> PartsGrant:
        """URLs for parts first..last, putting the (empty) upload in direct mode first if needed."""
        driver = self._driver
        if not 1 <= first <= last <= driver.direct_max_parts:
            raise BlobUploadInvalidError(
                {"first": first, "last": last, "maxParts": driver.direct_max_parts},
                message=f"part numbers run from 1 to {driver.direct_max_parts}",
            )
        if last - first + 1 > MAX_URLS_PER_REQUEST:
            raise BlobUploadInvalidError(
                {"requested": last - first + 1, "max": MAX_URLS_PER_REQUEST},
                message=f"at most {MAX_URLS_PER_REQUEST} part URLs per request",
            )
        info = self.state(ctx)
        if info is None:
            info = self._begin(ctx, driver, part_size if part_size is not None else self.options.part_size)
        elif part_size is not None and part_size != info.part_size:
            raise BlobUploadInvalidError(
                {"partSize": info.part_size}, message=f"this upload's part size is {info.part_size}"
            )
        if info.assembled:
            raise BlobUploadInvalidError(message="the parts were already assembled; finish with PUT")
        expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=self.options.expiry)
        urls = driver.presign_parts(ctx, self._path, list(range(first, last + 1)), self.options.expiry)
        uploaded = driver.stored_parts(ctx, self._path)
        return PartsGrant(driver.direct_kind, info.part_size, driver.direct_max_parts, expires, uploaded, urls)

    def _begin(self, ctx: Context, driver: DirectWriteDriver, part_size: int) -> DirectFile:
        low, high = driver.direct_part_size_range
        if not low <= part_size <= high:
            raise SizeInvalidError(
                {"partSize": part_size, "min": low, "max": high},
                message=f"part size must be between {low} and {high} bytes",
            )
        try:
            return driver.begin_direct(ctx, self._path, part_size)
        except InvalidOffsetError as exc:
            self.upload.size = exc.offset
            raise RangeInvalidError(
                {"size": exc.offset}, message="only an empty upload can take direct parts"
            ) from None
        except PathNotFoundError:
            raise BlobUploadUnknownError(self.upload.id) from None

    # -- completion ------------------------------------------------------------------

    def complete(self, ctx: Context, expected: Digest, info: DirectFile) -> Verification:
        """Assemble (once), read back and hash until verify_time is up; move into place on a match.

        One request does what fits in verify_time and says how far it got. Assembling
        (S3 CompleteMultipartUpload, Azure Put Block List) and moving into place (a
        server-side copy of the whole blob) can each take a while on a large blob, so
        once over half of verify_time has gone, what is left waits for the next request.
        """
        driver = self._driver
        started = time.monotonic()
        halftime = started + self.options.verify_time / 2
        size = info.size if info.assembled else self._assemble(ctx, driver, info)
        self.upload.size = size
        if not info.assembled and time.monotonic() > halftime:
            return Verification(size, 0)
        hasher, resumed_at = self._hash(ctx, driver, expected, size, started + self.options.verify_time)
        if hasher.length < size:
            return Verification(size, hasher.length)
        actual = hasher.digest()
        if actual != expected:
            self.upload.remove(ctx)
            raise DigestInvalidError(f"digest {expected} does not match uploaded content {actual}")
        if (resumed_at < size or not info.assembled) and time.monotonic() > halftime:
            self._save(ctx, hasher)  # the next request starts from the state at the end
            return Verification(size, size)
        return Verification(size, size, self.upload.finish(ctx, BlobDescriptor(digest=expected, size=size)))

    def _assemble(self, ctx: Context, driver: DirectWriteDriver, info: DirectFile) -> int:
        try:
            count = check_parts(driver.stored_parts(ctx, self._path), info.part_size)
            size = driver.assemble_direct(ctx, self._path, count)
        except StorageError:
            now = self.state(ctx)  # a PUT racing this one may have assembled it first
            if now is None or not now.assembled:
                raise
            return now.size
        log.info("upload %s: %d direct parts assembled, %d bytes", self.upload.id, count, size)
        return size

    def _hash(
        self, ctx: Context, driver: DirectWriteDriver, expected: Digest, size: int, deadline: float
    ) -> tuple[ResumableHasher, int]:
        """Hash the data from the last stored state on, with reads running ahead of the hasher;
        returns the hasher and the offset it resumed at.

        Reads are issued in order, up to `readers` in flight; each is hashed as soon as
        it and all before it have arrived. A read is issued only if, at the pace reads
        have arrived so far, it will arrive before the deadline, so a request ends close
        to it and no read is wasted. The first read goes alone and is always hashed, so
        every request makes progress however short verify_time is.
        """
        options = self.options
        hasher, offset = self.upload.nearest_state(ctx, expected.algorithm, size)
        saved = offset
        if offset < size:
            log.info("upload %s: verifying from %d of %d bytes", self.upload.id, offset, size)
        pool = ThreadPoolExecutor(max_workers=options.readers, thread_name_prefix="stratus-verify")
        inflight: deque[tuple[Future, float]] = deque()
        ahead = offset
        latency = 0.0  # how long a read takes to arrive, from the reads so far

        def read_next() -> None:
            nonlocal ahead
            length = min(options.read_size, size - ahead)
            inflight.append((pool.submit(driver.read_range, ctx, self._path, ahead, length), time.monotonic()))
            ahead += length

        try:
            if ahead < size:
                read_next()  # alone: its time tells how many more fit before the deadline
            while inflight:
                future, issued = inflight.popleft()
                piece = future.result()
                observed = time.monotonic() - issued
                # on the slow side: the latest read, or the average if that was longer
                latency = max(observed, (latency + observed) / 2)
                hasher.update(piece)
                if hasher.length - saved >= options.checkpoint_every:
                    saved = self._save(ctx, hasher)
                # a read issued now must arrive before the deadline; those in flight finish the request
                while ahead < size and len(inflight) < options.readers and time.monotonic() + latency < deadline:
                    read_next()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if saved < hasher.length < size:
            self._save(ctx, hasher)
        return hasher, offset

    def _save(self, ctx: Context, hasher: ResumableHasher) -> int:
        self.upload.driver.put_content(ctx, self.upload.state_path(hasher.algorithm, hasher.length), hasher.state())
        return hasher.length
