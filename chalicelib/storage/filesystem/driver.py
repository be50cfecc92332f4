"""The filesystem driver: each storage path is the file ``<rootdirectory><path>``."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import stat as stat_mode
from typing import Any, BinaryIO, Iterator, Optional

from ...context import Context
from ..base import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    check_path,
    is_component,
)
from .beneath import O_PATH, open_beneath
from .direct import DIRECT_ALIGN, OPEN_FLAGS as DIRECT_OPEN_FLAGS, DirectFileWriter, enable_direct
from .errors import NAME, os_errors, storage_error
from .files import (
    create_in,
    create_or_truncate,
    file_info,
    fsync_dir,
    pread_exactly,
    read_all,
    rmtree,
    unlink_quietly,
    write_all,
)
from .lock import lock_for_writing
from .writer import CachedFileWriter

log = logging.getLogger("stratus.storage.filesystem")

_COMPONENTS_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*\Z")  # "/"-joined names
# Temporary files carry "~", which no storage path component may contain: they can
# never be listed, walked or addressed, nor mistaken for a registry file (names
# starting with "." or "_" are valid components, so a prefix alone would not do).
_TEMP_PREFIX = ".stratus~tmp~"
_WRITE_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class FilesystemDriver:
    name = NAME

    def __init__(self, root_directory: str, max_threads: int = 100, direct_writes: bool = True) -> None:
        self.max_threads = max_threads
        # upload data bypasses the page cache (see direct.py); turned off by
        # the first file the filesystem refuses O_DIRECT for
        self.direct_writes = direct_writes
        # Resolved once, so that a root which is itself a symlink (a common mount
        # arrangement) is fine and the containment check compares resolved paths.
        self.root_directory = os.path.realpath(os.path.abspath(root_directory))
        self._base = self.root_directory.rstrip("/")  # "" when the root is "/"

    def _full(self, path: str, *, allow_root: bool = False) -> str:
        check_path(NAME, path, allow_root=allow_root)
        full = self._base + path if path != "/" else self.root_directory
        # check_path already confines the path lexically; a symlink planted inside
        # the root could still lead out of it. Resolving costs an lstat per part.
        if not self._inside_root(full):
            raise InvalidPathError(NAME, path, "resolves outside the root directory")
        return full

    def _open_beneath(self, path: str, flags: int = os.O_RDONLY) -> Optional[int]:
        """An fd of path beneath the root, or None to check it with realpath()."""
        return open_beneath(self.root_directory, path, flags)

    def get_content(self, ctx: Context, path: str) -> bytes:
        fd = self._open_beneath(path)
        with os_errors(path):
            if fd is None:
                fd = os.open(self._full(path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                return read_all(fd, path)
            finally:
                os.close(fd)

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        # Written aside and renamed over the target: readers see old or new, never part.
        full = self._full(path)
        directory = os.path.dirname(full)
        with os_errors(path, missing_is_not_found=False):
            temp = os.path.join(directory, _TEMP_PREFIX + secrets.token_hex(8))
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            fd = create_in(directory, lambda: os.open(temp, flags, 0o666))
            try:
                try:
                    write_all(fd, content)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temp, full)
            except BaseException:
                unlink_quietly(temp)
                raise
            fsync_dir(directory)

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        fd = self._open_beneath(path)
        fd_or_path: Any = self._full(path) if fd is None else fd
        if offset < 0:
            if fd is not None:
                os.close(fd)
            raise InvalidOffsetError(NAME, path, offset)
        with os_errors(path):
            try:
                f = open(fd_or_path, "rb")
            except BaseException as exc:
                # open() refuses a directory, an fd from openat2 included, and leaves
                # an fd it was given open.
                if fd is not None:
                    os.close(fd)
                if isinstance(exc, IsADirectoryError):
                    raise PathNotFoundError(NAME, path) from None
                raise
            try:
                if offset > os.fstat(f.fileno()).st_size:
                    raise InvalidOffsetError(NAME, path, offset)
                f.seek(offset)
            except BaseException:
                f.close()
                raise
            return f

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        full = self._full(path)
        directory = os.path.dirname(full)
        # O_APPEND would make the direct writer's pwrite()s land at the end, not at
        # their offsets (Linux), so it opens read-write and keeps the offsets itself.
        flags = DIRECT_OPEN_FLAGS if self.direct_writes else _WRITE_FLAGS
        if append:
            with os_errors(path):
                fd = os.open(full, flags)
                created = False
        else:
            with os_errors(path, missing_is_not_found=False):
                fd, created = create_in(directory, lambda: create_or_truncate(full, flags))
        with os_errors(path, missing_is_not_found=append):
            try:
                lock_for_writing(fd, path)
                size = os.fstat(fd).st_size
                if created:
                    fsync_dir(directory)  # so close() leaves a file a restart can find
                if self.direct_writes:
                    # read while the fd still goes through the cache: any length will do
                    head = pread_exactly(fd, size % DIRECT_ALIGN, size - size % DIRECT_ALIGN, path)
                    if enable_direct(fd):
                        return DirectFileWriter(path, full, fd, size, head)
            except BaseException:
                os.close(fd)
                raise
        if self.direct_writes:
            # the filesystem refused O_DIRECT (tmpfs before Linux 6.6, some FUSE or
            # network filesystems): write through the page cache from now on
            log.info("filesystem %s: no O_DIRECT here; uploads are written through the page cache",
                     self.root_directory)
            self.direct_writes = False
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            except BaseException:
                os.close(fd)
                raise
        return CachedFileWriter(path, full, fd, size)

    def stat(self, ctx: Context, path: str) -> FileInfo:
        # through openat2 like reads: realpath() costs an lstat per path component
        # before the stat itself. O_PATH opens any file type without blocking.
        fd = self._open_beneath(path, O_PATH) if path != "/" else None
        with os_errors(path):
            if fd is not None:
                try:
                    return file_info(path, os.fstat(fd))
                finally:
                    os.close(fd)
            try:
                return file_info(path, os.stat(self._full(path, allow_root=True)))
            except FileNotFoundError:
                if path == "/":  # a root not created yet is an empty registry
                    return FileInfo(path="/", is_dir=True)
                raise

    def list(self, ctx: Context, path: str) -> list[str]:
        # through openat2 like reads: realpath() was a sixth of a tags/list request
        fd = self._open_beneath(path) if path != "/" else None
        with os_errors(path):
            if fd is not None:
                try:
                    names = os.listdir(fd)
                finally:
                    os.close(fd)
            else:
                try:
                    names = os.listdir(self._full(path, allow_root=True))
                except FileNotFoundError:
                    if path == "/":
                        return []
                    raise
        prefix = "" if path == "/" else path
        # one regex over all names at once: a tags directory may hold thousands, and
        # a match per name was a fifth of a tags/list request
        if not _COMPONENTS_RE.match("/".join(names)):
            names = [name for name in names if is_component(name)]
        return [f"{prefix}/{name}" for name in names]

    def move(self, ctx: Context, source: str, dest: str) -> None:
        source_full = self._full(source)
        dest_full = self._full(dest)
        dest_dir = os.path.dirname(dest_full)
        with os_errors(source):
            os.lstat(source_full)  # before making dest's parents for a missing source
        with os_errors(dest, missing_is_not_found=False):
            try:
                create_in(dest_dir, lambda: os.replace(source_full, dest_full))
            except FileNotFoundError:
                if not os.path.lexists(source_full):  # moved or deleted meanwhile
                    raise PathNotFoundError(NAME, source) from None
                raise
            fsync_dir(dest_dir)

    def delete(self, ctx: Context, path: str) -> None:
        full = self._full(path)
        with os_errors(path):
            st = os.lstat(full)
            if stat_mode.S_ISDIR(st.st_mode):
                rmtree(full)
            else:
                os.unlink(full)  # a symlink goes, never what it points to

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        check_path(NAME, path)
        return None

    def walk(self, ctx: Context, path: str) -> Iterator[FileInfo]:
        # Checked now rather than at the first next(), so a bad path fails at the call.
        full = self._full(path, allow_root=True)
        with os_errors(path):
            try:
                st = os.stat(full)
            except FileNotFoundError:
                if path == "/":
                    return iter(())
                raise
        if not stat_mode.S_ISDIR(st.st_mode):
            raise PathNotFoundError(NAME, path, "not a directory")
        return self._walk(path, full)

    def _walk(self, path: str, full: str) -> Iterator[FileInfo]:
        prefix = "" if path == "/" else path
        try:
            with os.scandir(full) as scan:
                entries = sorted((e for e in scan if is_component(e.name)), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return  # deleted while we walked (GC, purging): nothing is below it now
        except OSError as exc:
            raise storage_error(path, exc) from exc
        for entry in entries:
            child = f"{prefix}/{entry.name}"
            if entry.is_symlink() and not self._inside_root(entry.path):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise storage_error(child, exc) from exc
            info = file_info(child, st)
            yield info
            if info.is_dir:
                yield from self._walk(child, entry.path)

    def _inside_root(self, full: str) -> bool:
        real = os.path.realpath(full)
        return real == self.root_directory or real.startswith(self._base + "/")
