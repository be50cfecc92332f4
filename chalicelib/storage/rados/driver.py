"""RadosDriver: the StorageDriver protocol over the omap tree and striped files.

librados handles do not survive fork(): the cluster is connected lazily in each
process (``stratus serve`` forks gunicorn workers after building the driver), and
each thread gets its own I/O context because ``get_last_version`` is per context.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterator, Optional

from ...context import Context
from ..base import FileInfo, FileWriter, InvalidOffsetError, PathNotFoundError, StorageError, check_path
from . import omap
from .binding import import_rados, rados
from .errors import NotADirectory, Replaced, errors
from .layout import DEFAULT_CHUNK_SIZE, DIR, NAME, is_file, join, split, stripe
from .omap import RETRIES
from .stripes import Reader, new_file, read_meta, remove_data
from .writer import RadosWriter

CONNECT_TIMEOUT = 30


class RadosDriver:
    name = NAME

    def __init__(
        self,
        poolname: str,
        username: Optional[str] = None,
        conffile: Optional[str] = None,
        chunksize: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        import_rados()  # fail at start-up, with the install hint, not at the first request
        self.poolname = poolname
        self.username = username
        self.conffile = conffile
        self.chunksize = chunksize
        self._connect_lock = threading.Lock()
        self._cluster: Any = None
        self._cluster_pid = 0
        self._local = threading.local()

    # -- connection ------------------------------------------------------------------

    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {}
        if self.username:
            # The reference took "admin" for client.admin; accept the full name too.
            key = "name" if "." in self.username else "rados_id"
            kwargs[key] = self.username
        cluster = rados.Rados(**kwargs)
        try:
            cluster.conf_read_file(self.conffile)  # None: $CEPH_CONF, /etc/ceph/ceph.conf, ...
            cluster.conf_parse_env()  # CEPH_ARGS
            cluster.connect(timeout=CONNECT_TIMEOUT)
            if not cluster.pool_exists(self.poolname):
                raise StorageError(NAME, "/", f"pool {self.poolname!r} does not exist")
        except BaseException:
            try:
                cluster.shutdown()
            except Exception:
                pass
            raise
        return cluster

    def _io(self) -> Any:
        """This thread's I/O context on the pool, connecting this process if needed."""
        pid = os.getpid()
        local = self._local
        if getattr(local, "pid", None) == pid:
            return local.io
        with self._connect_lock:
            if self._cluster is None or self._cluster_pid != pid:
                # After fork the parent's handle has no threads behind it: drop it, unclosed.
                try:
                    self._cluster = self._connect()
                except rados.Error as exc:
                    raise StorageError(NAME, "/", f"cannot connect to Ceph: {exc}") from exc
                self._cluster_pid = pid
            cluster = self._cluster
        try:
            io = cluster.open_ioctx(self.poolname)
        except rados.Error as exc:
            raise StorageError(NAME, "/", f"cannot open pool {self.poolname!r}: {exc}") from exc
        local.io, local.pid = io, pid
        return io

    def close(self) -> None:
        """Disconnect this process (tests; a server just exits)."""
        with self._connect_lock:
            cluster, self._cluster = self._cluster, None
            self._local = threading.local()
        if cluster is not None and self._cluster_pid == os.getpid():
            cluster.shutdown()

    # -- files -------------------------------------------------------------------------

    def _file(self, io: Any, path: str) -> str:
        """The oid of the file at path; PathNotFoundError for nothing or a directory."""
        entry = omap.entry(io, *split(path))
        if not is_file(entry):
            raise PathNotFoundError(NAME, path)
        return entry.decode()

    def _file_info(self, io: Any, path: str, oid: str) -> FileInfo:
        meta = read_meta(io, oid, self.chunksize)
        _, mtime = io.stat(stripe(oid, 0))
        when = datetime.fromtimestamp(time.mktime(mtime), timezone.utc)
        return FileInfo(path=path, size=meta.size, mod_time=when, is_dir=False)

    def _remove_data(self, io: Any, oid: str) -> None:
        remove_data(io, oid, self.chunksize)

    # -- the StorageDriver protocol -----------------------------------------------------

    def get_content(self, ctx: Context, path: str) -> bytes:
        check_path(NAME, path)
        with errors(path):
            io = self._io()
            failed = None
            for _ in range(RETRIES):
                oid = self._file(io, path)
                if oid == failed:
                    raise PathNotFoundError(NAME, path, "its data is gone")
                try:
                    meta = read_meta(io, oid, self.chunksize)
                    return Reader(self._io, path, oid, meta, 0).read()
                except (rados.ObjectNotFound, Replaced):
                    failed = oid  # replaced while we read, so read the new version; or lost
            raise StorageError(NAME, path, "replaced too often while being read")

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        check_path(NAME, path)
        with errors(path, missing_is_not_found=False):
            io = self._io()
            oid = new_file(io, self.chunksize, bytes(content))
            try:
                old = omap.link(io, path, oid)
            except BaseException:
                self._remove_data(io, oid)
                raise
            if is_file(old):
                self._remove_data(io, old.decode())

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        check_path(NAME, path)
        if offset < 0:
            raise InvalidOffsetError(NAME, path, offset)
        with errors(path):
            io = self._io()
            oid = self._file(io, path)
            meta = read_meta(io, oid, self.chunksize)
        if offset > meta.size:
            raise InvalidOffsetError(NAME, path, offset)
        return Reader(self._io, path, oid, meta, offset)  # type: ignore[return-value]

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        check_path(NAME, path)
        with errors(path, missing_is_not_found=False):
            io = self._io()
            if append:
                for _ in range(RETRIES):
                    entry = omap.entry(io, *split(path))
                    if entry == DIR:
                        raise NotADirectory(NAME, path, f"{path} is a directory")
                    if entry is None:
                        raise PathNotFoundError(NAME, path)
                    resumed = RadosWriter.resume(self._io, path, entry.decode(), self.chunksize)
                    if resumed is not None:
                        return resumed
                    # deleted or replaced between lookup and lock: look again
            oid = new_file(io, self.chunksize)
            try:
                writer = RadosWriter(self._io, path, oid, self.chunksize)
                old = omap.link(io, path, oid)
            except BaseException:
                self._remove_data(io, oid)
                raise
            if is_file(old):
                self._remove_data(io, old.decode())
            return writer

    def stat(self, ctx: Context, path: str) -> FileInfo:
        check_path(NAME, path, allow_root=True)
        if path == "/":
            return FileInfo(path="/", is_dir=True)
        with errors(path):
            io = self._io()
            for _ in range(RETRIES):
                entry = omap.entry(io, *split(path))
                if entry is None:
                    raise PathNotFoundError(NAME, path)
                if entry == DIR:
                    return FileInfo(path=path, is_dir=True)
                try:
                    return self._file_info(io, path, entry.decode())
                except rados.ObjectNotFound:
                    continue  # replaced between lookup and stat
            raise PathNotFoundError(NAME, path)

    def list(self, ctx: Context, path: str) -> list[str]:
        check_path(NAME, path, allow_root=True)
        with errors(path):
            entries = omap.entries(self._io(), path)
        if not entries:
            # Empty directories do not exist here (delete prunes them); a file has no
            # directory object.
            if path == "/":
                return []
            raise PathNotFoundError(NAME, path)
        return sorted(join(path, name) for name in entries)

    def move(self, ctx: Context, source: str, dest: str) -> None:
        """Relink the file's oid from source to dest: two omap writes, no data copied.

        The source entry is taken out first, on the condition that it still names
        the oid read: a file put at source meanwhile is then moved instead, and a
        put that replaces source can never delete data that dest now refers to.
        """
        check_path(NAME, source)
        check_path(NAME, dest)
        with errors(source):
            io = self._io()
            oid = self._take_out(io, source, unlink=source != dest)
        if source == dest:
            return
        with errors(dest, missing_is_not_found=False):
            try:
                old = omap.link(io, dest, oid.decode())
            except BaseException:
                self._restore(io, source, dest, oid)
                raise
            omap.prune(io, split(source)[0])
            if is_file(old) and old != oid:
                self._remove_data(io, old.decode())

    def _take_out(self, io: Any, source: str, unlink: bool) -> bytes:
        """The oid of the file at source, its entry removed (if `unlink`) only while it
        still names that oid."""
        for _ in range(RETRIES):
            oid = omap.entry(io, *split(source))
            if oid == DIR:
                raise StorageError(NAME, source, "moving a directory is not supported")
            if oid is None:
                raise PathNotFoundError(NAME, source)
            if not unlink or omap.unlink(io, source, oid):
                return oid
        raise StorageError(NAME, source, "changed too often while being moved")

    def _restore(self, io: Any, source: str, dest: str, oid: bytes) -> None:
        """Undo a move that failed part-way, so that exactly one path names oid."""
        try:
            if omap.entry(io, *split(dest)) == oid:
                return  # linked after all (the error came later): the move happened
            if omap.entry(io, *split(source)) is None:
                omap.link(io, source, oid.decode())
                return
        except (StorageError, rados.Error):
            return  # cannot tell: better a leaked file than one deleted under a path
        self._remove_data(io, oid.decode())  # a new file took its place meanwhile

    def delete(self, ctx: Context, path: str) -> None:
        check_path(NAME, path)
        with errors(path):
            io = self._io()
            for _ in range(RETRIES):
                entry = omap.entry(io, *split(path))
                if entry is None:
                    raise PathNotFoundError(NAME, path)
                # Unlinked first: the whole file or tree disappears from view at once.
                if not omap.unlink(io, path, entry):
                    continue
                omap.prune(io, split(path)[0])
                if entry == DIR:
                    self._purge(io, path)
                else:
                    self._remove_data(io, entry.decode())
                return
            raise StorageError(NAME, path, "changed too often while being deleted")

    def _purge(self, io: Any, directory: str) -> None:
        """Remove an unlinked directory object, everything below it and their data."""
        for name, entry in (omap.entries(io, directory) or {}).items():
            if entry == DIR:
                self._purge(io, join(directory, name))
            elif is_file(entry):
                self._remove_data(io, entry.decode())
        try:
            io.remove_object(directory)
        except rados.ObjectNotFound:
            pass

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        check_path(NAME, path)
        return None  # no URL a client could use: the registry serves the bytes, with Range

    def walk(self, ctx: Context, path: str) -> Iterator[FileInfo]:
        check_path(NAME, path, allow_root=True)
        with errors(path):
            io = self._io()
            entries = omap.entries(io, path)
        if not entries:
            if path == "/":
                return iter(())
            raise PathNotFoundError(NAME, path, "not a directory")
        return self._walk(path, entries)

    def _walk(self, directory: str, entries: dict[str, bytes]) -> Iterator[FileInfo]:
        io = self._io()
        for name in sorted(entries):
            child = join(directory, name)
            entry = entries[name]
            if entry == DIR:
                with errors(child):
                    below = omap.entries(io, child)
                if below is None:
                    continue  # deleted while we walked: nothing is below it now
                yield FileInfo(path=child, is_dir=True)
                yield from self._walk(child, below)
            elif is_file(entry):
                try:
                    with errors(child):
                        info = self._file_info(io, child, entry.decode())
                except PathNotFoundError:
                    continue
                yield info
