"""The StorageDriver protocol every backend implements.

Paths are absolute, slash-separated and rooted at the driver's root (for example
``/docker/registry/v2/blobs/sha256/ab/abcd.../data``); each component matches
``[A-Za-z0-9._-]+`` and the root is ``/``. A driver maps them onto its own
namespace (a directory, a key prefix, RADOS omaps). Every call takes the request
Context first so that tracing and logging follow the request into the backend.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Iterator, Optional, Protocol, runtime_checkable

from ..context import Context

# \Z, not $: "$" also matches before a trailing newline, which let "/a\n" through.
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+\Z")
_COMPONENT_RE = re.compile(r"[A-Za-z0-9._-]+\Z")
_DOT_COMPONENT_RE = re.compile(r"/\.\.?(?=/|\Z)")  # a "." or ".." component


class StorageError(Exception):
    """Base class of driver errors; drivers raise these, never backend exceptions."""

    def __init__(self, driver: str, path: str, detail: str = ""):
        self.driver = driver
        self.path = path
        self.detail = detail
        super().__init__(f"{driver}: {detail or type(self).__name__}: {path}")


class PathNotFoundError(StorageError):
    """Nothing is stored at the path."""


class InvalidPathError(StorageError):
    """The path is not a valid storage path (relative, '..', bad characters)."""


class InvalidOffsetError(StorageError):
    """A read or append started beyond the end of the file."""

    def __init__(self, driver: str, path: str, offset: int):
        self.offset = offset
        super().__init__(driver, path, f"invalid offset {offset}")


class UnsupportedMethodError(StorageError):
    """The driver cannot do this (e.g. redirect_url on a filesystem)."""


def check_path(driver: str, path: str, *, allow_root: bool = False) -> None:
    """Reject anything that is not an absolute path of plain components.

    Components may contain dots but never equal '.' or '..', so a path can never
    climb out of the driver's root.
    """
    if allow_root and path == "/":
        return
    # the search only for a path with "/." in it (rare): every storage call checks its
    # path, and splitting it for the dot test was most of this function's cost
    if not _PATH_RE.match(path) or ("/." in path and _DOT_COMPONENT_RE.search(path)):
        raise InvalidPathError(driver, path, "invalid path")


def is_component(name: str) -> bool:
    """Whether name can be one component of a storage path.

    Drivers listing a backend use it to hide entries no storage path can name
    (temporary files, "lost+found", keys written by other tools).
    """
    return _COMPONENT_RE.match(name) is not None and name not in (".", "..")


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int = 0
    mod_time: Optional[datetime] = None
    is_dir: bool = False


class FileWriter(Protocol):
    """An appendable file being written, possibly across many requests.

    ``close()`` makes what was written durable so that a later
    ``writer(path, append=True)`` (maybe in another process) continues it;
    ``commit()`` finishes the file so that it can be read and moved; ``cancel()``
    removes it. ``size`` counts every byte of the file, including bytes written
    by earlier writers.
    """

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> int: ...

    def close(self) -> None: ...

    def commit(self) -> None: ...

    def cancel(self) -> None: ...


@runtime_checkable
class StorageDriver(Protocol):
    name: str

    def get_content(self, ctx: Context, path: str) -> bytes:
        """The whole file; PathNotFoundError when absent. Meant for small files."""
        ...

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        """Store the file atomically: readers see the old content or the new, never part."""
        ...

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        """A readable stream from offset; InvalidOffsetError past the end.

        The caller closes it. Drivers over local files return a real file object so
        the server can hand it to sendfile.
        """
        ...

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        """A writer over a new empty file, or (append) at the end of an existing one.

        Appending to a file that does not exist raises PathNotFoundError rather
        than starting one: an upload cancelled or purged meanwhile must not come
        back to life, and the caller learns that without a separate stat.
        """
        ...

    def stat(self, ctx: Context, path: str) -> FileInfo:
        """FileInfo of a file or directory; PathNotFoundError when absent."""
        ...

    def list(self, ctx: Context, path: str) -> list[str]:
        """Full paths of the direct children of a directory, in no set order."""
        ...

    def move(self, ctx: Context, source: str, dest: str) -> None:
        """Move a file, replacing dest atomically and creating its parents."""
        ...

    def delete(self, ctx: Context, path: str) -> None:
        """Remove a file or a directory and all below it; PathNotFoundError when absent."""
        ...

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        """A URL a client may fetch the file from directly, or None to serve it ourselves."""
        ...

    def walk(self, ctx: Context, path: str) -> Iterator[FileInfo]:
        """Every file and directory below path, depth first, parents before children."""
        ...


# -- direct writes: a file whose parts the client sends straight to the backend ------------


class DirectFileError(StorageError):
    """The file is being written through presigned part URLs; it cannot be appended to.

    ``info`` is what the backend says about it, so the caller need not ask again.
    """

    def __init__(self, driver: str, path: str, info: "DirectFile"):
        self.info = info
        super().__init__(driver, path, "file is written through presigned part URLs")


@dataclass(frozen=True)
class DirectFile:
    """A file in direct mode: part i holds bytes [(i-1)*part_size, i*part_size).

    ``assembled`` once its parts were joined into one readable file of ``size`` bytes
    (0 before).
    """

    part_size: int
    assembled: bool = False
    size: int = 0


@dataclass(frozen=True)
class StoredPart:
    number: int
    size: int


@dataclass(frozen=True)
class PartURL:
    """Where a client sends one part: `method` to `url` with these headers and the part as body."""

    number: int
    method: str
    url: str
    headers: dict = field(default_factory=dict)


@runtime_checkable
class DirectWriteDriver(Protocol):
    """What a driver offers to let clients write a file's bytes without passing them through us.

    The file at `path` must exist and be empty when `begin_direct` puts it in direct
    mode; from then on the driver refuses ``writer(path, append=True)`` with
    DirectFileError, so bytes can only arrive through part URLs. ``delete`` of the file
    (or a directory above it) also discards parts not yet assembled.
    """

    direct_kind: str  # "s3-multipart" | "azure-blocks": how the part URLs are used
    direct_part_size_range: tuple[int, int]  # smallest and largest part size the backend takes
    direct_max_parts: int

    def begin_direct(self, ctx: Context, path: str, part_size: int) -> DirectFile:
        """Put the empty file at path in direct mode (InvalidOffsetError if it is not empty)."""
        ...

    def direct_file(self, ctx: Context, path: str) -> Optional[DirectFile]:
        """The file's direct-mode state, None for an ordinary file; PathNotFoundError when absent."""
        ...

    def presign_parts(self, ctx: Context, path: str, numbers: list[int], expiry_seconds: int) -> list[PartURL]:
        """A write-only URL for each part number, valid for expiry_seconds, for this file only."""
        ...

    def stored_parts(self, ctx: Context, path: str) -> list[StoredPart]:
        """The parts received so far, by number."""
        ...

    def assemble_direct(self, ctx: Context, path: str, count: int) -> int:
        """Join parts 1..count (already checked) into the file, which stays in direct mode
        but becomes readable; returns its size."""
        ...

    def read_range(self, ctx: Context, path: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a readable file, in one request."""
        ...


def direct_writes(driver: Any) -> DirectWriteDriver:
    """The driver's direct-write capability; UnsupportedMethodError for drivers without it."""
    if not isinstance(getattr(driver, "direct_kind", None), str):
        raise UnsupportedMethodError(getattr(driver, "name", "?"), "/", "presigned part uploads")
    return driver
