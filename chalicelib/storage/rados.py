"""Ceph RADOS driver: the registry stored straight in a RADOS pool, no gateway between.

The layout is the reference registry's RADOS driver's, so both read each other's pools:

* Every directory is an object named by its path (``/``, ``/docker``,
  ``/docker/registry`` ...) whose omap maps each child's name to ``blob:<uuid>``
  (a file) or to an empty value (a sub-directory).
* A file's bytes are striped over objects ``blob:<uuid>-0``, ``-1`` ... of
  ``chunksize`` bytes each; its total size is the ``total-size`` xattr of the
  first stripe (a little-endian uint64 padded to 10 bytes, as the reference wrote it).

So a move rewrites two omap entries and copies no data, and a file is replaced by
linking a new uuid, never by rewriting stripes a reader may be reading.

Concurrency. Every omap change is one RADOS write operation guarded by
``omap_cmp`` (compare-and-swap on the entry) or ``assert_version`` (an empty
directory object is removed only if nothing was added since it was seen empty),
so writers in one directory never lose each other's entries. Parents are linked
bottom-up after the entry, and a directory pruner re-links a directory it finds
recreated, so a file written while its parent is being pruned stays reachable.
An appending writer holds an exclusive RADOS lock on the file's first stripe, so
two requests can never interleave bytes in one upload; it expires on its own if
the process dies.

librados handles do not survive fork(): the cluster is connected lazily in each
process (``stratus serve`` forks gunicorn workers after building the driver), and
each thread gets its own I/O context because ``get_last_version`` is per context.
"""
from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import math
import os
import struct
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Optional

from ..context import Context
from .base import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    PathNotFoundError,
    StorageError,
    check_path,
)

NAME = "rados"
DEFAULT_CHUNK_SIZE = 4 << 20  # the reference's default stripe size
MAX_CHUNK_SIZE = 64 << 20  # a stripe is written in one op; the OSD refuses ops over 90 MiB
BLOB_PREFIX = "blob:"
SIZE_XATTR = "total-size"  # the reference's name and encoding
CHUNK_XATTR = "stratus.chunksize"  # ours: a file keeps its stripe size if the config changes
LOCK_NAME = "stratus.writer"
LOCK_SECONDS = 60  # a writer renews it while writing; a dead process's lock lapses
CONNECT_TIMEOUT = 30
_RETRIES = 20
_PAGE = 1000  # omap entries per read
_DIR = b""
_INIT_KEY = "~stratus~"  # "~" is in no path component, so it can never be an entry
_LOCK_MAY_RENEW = 1  # LIBRADOS_LOCK_FLAG_RENEW: re-take a lock this cookie holds

# Where Debian's python3-rados puts the binding: built for Debian's /usr/bin/python3.
DEBIAN_DIST_PACKAGES = (Path("/usr/lib/python3/dist-packages"),)

rados: Any = None  # the librados binding, imported by import_rados() on first use


class RadosUnavailableError(ImportError):
    """The librados Python binding cannot be imported."""


def import_rados() -> Any:
    """Import librados's Python binding, even from a virtualenv.

    Debian ships it only as python3-rados, for its own /usr/bin/python3, so a venv
    (or a pyenv CPython of the same minor version) cannot see it. Rather than put
    all of Debian's dist-packages on sys.path, which would let its other packages
    shadow or leak into the venv, this loads that one extension module, and only
    when its file name carries this interpreter's ABI tag (e.g. cpython-311).
    """
    global rados
    if rados is not None:
        return rados
    try:
        import rados as module  # type: ignore[import-not-found]
    except ImportError:
        module = _load_debian_binding()
    rados = module
    return module


def _load_debian_binding() -> Any:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for directory in DEBIAN_DIST_PACKAGES:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = directory / f"rados{suffix}"
            if not candidate.is_file():
                continue
            spec = importlib.util.spec_from_file_location("rados", candidate)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules["rados"] = module
            try:
                spec.loader.exec_module(module)
            except ImportError as exc:
                del sys.modules["rados"]
                raise RadosUnavailableError(f"storage.rados: cannot load {candidate}: {exc}") from exc
            return module
    raise RadosUnavailableError(
        "storage.rados: the librados Python binding is not installed; on Debian or Ubuntu run "
        f"`apt-get install python3-rados` (Stratus loads it from {DEBIAN_DIST_PACKAGES[0]} even in a "
        f"virtualenv, when that Python is {version} like this one), elsewhere install your "
        f"distribution's python3-rados for Python {version}"
    )


# -- small helpers ------------------------------------------------------------------------


def _split(path: str) -> tuple[str, str]:
    """Directory object and entry name of a path: "/a/b" -> ("/a", "b")."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def _join(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def _stripe(oid: str, index: int) -> str:
    return f"{oid}-{index}"


def _encode_size(size: int) -> bytes:
    # The reference wrote binary.LittleEndian.PutUint64 into a MaxVarintLen64 (10) buffer.
    return struct.pack("<Q", size) + b"\0\0"


def _decode_size(raw: bytes) -> int:
    if len(raw) not in (8, 10):
        raise ValueError(f"{SIZE_XATTR} xattr has {len(raw)} bytes")
    return struct.unpack_from("<Q", raw)[0]


def _is_file(entry: Optional[bytes]) -> bool:
    return entry is not None and entry.startswith(BLOB_PREFIX.encode())


def _omap(values: Any) -> dict[str, bytes]:
    """An omap iterator's pairs; the binding gives None for an empty value."""
    return {key: value or b"" for key, value in values}


def _errno(exc: BaseException) -> Optional[int]:
    return getattr(exc, "errno", None)


def _now() -> int:
    # operate_write_op's mtime=0 does not mean "now" in this binding: it stores 0.
    return int(time.time())


class _NotADirectory(StorageError):
    """A path below a file, or a file path that is a directory."""


class _Meta:
    __slots__ = ("size", "chunk")

    def __init__(self, size: int, chunk: int):
        self.size = size
        self.chunk = chunk


# -- the driver ----------------------------------------------------------------------------


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

    # -- omap: the directory tree ------------------------------------------------------

    def _entry(self, io: Any, directory: str, name: str) -> Optional[bytes]:
        """directory[name], or None when either is missing."""
        with rados.ReadOpCtx() as op:
            values, _ = io.get_omap_vals_by_keys(op, (name,))
            try:
                io.operate_read_op(op, directory)
            except rados.ObjectNotFound:
                return None
            return _omap(values).get(name)

    def _entries(self, io: Any, directory: str) -> Optional[dict[str, bytes]]:
        """Every entry of a directory object, or None when it does not exist."""
        entries: dict[str, bytes] = {}
        after = ""
        while True:
            with rados.ReadOpCtx() as op:
                values, _ = io.get_omap_vals(op, after, "", _PAGE)
                try:
                    io.operate_read_op(op, directory)
                except rados.ObjectNotFound:
                    return None if not entries else entries
                page = _omap(values)
            entries.update(page)
            if len(page) < _PAGE:
                return entries
            after = max(page)

    def _swap(self, io: Any, path: str, value: bytes) -> Optional[bytes]:
        """Set path's entry to value atomically; returns the entry it replaced.

        A file value never replaces a directory entry, and a directory value never
        replaces a file entry (_NotADirectory). The write is conditional on the entry
        still holding what was read, so of two racing writers neither is lost
        unnoticed: the loser reads again and replaces the winner's value.
        """
        directory, name = _split(path)
        for _ in range(_RETRIES):
            try:
                with rados.ReadOpCtx() as op:
                    values, _ = io.get_omap_vals_by_keys(op, (name,))
                    io.operate_read_op(op, directory)
                    old = _omap(values).get(name)
            except rados.ObjectNotFound:
                self._create_directory_object(io, directory)
                continue
            if old is not None and (old == _DIR) != (value == _DIR):
                what = "a directory" if old == _DIR else "a file"
                raise _NotADirectory(NAME, path, f"{path} is {what}")
            if old == value:
                return old
            with rados.WriteOpCtx() as op:
                # A missing key compares equal to "": that only lets a directory entry
                # created in this instant be replaced, which the check above refuses.
                op.omap_cmp(name, (old or _DIR).decode())
                io.set_omap(op, (name,), (value,))
                try:
                    io.operate_write_op(op, directory, _now())
                except rados.ObjectNotFound:
                    continue
                except rados.Error as exc:
                    if _errno(exc) == errno.ECANCELED:
                        continue
                    raise
            return old
        raise StorageError(NAME, path, "too many concurrent changes to the directory")

    def _create_directory_object(self, io: Any, directory: str) -> None:
        """An empty directory object that omap_cmp accepts.

        omap_cmp answers ENOENT on an object that never had an omap, so a key is set
        and removed in the same op: the object then has an (empty) omap. A pruner
        may remove it again before we use it; the caller then comes round again.
        """
        with rados.WriteOpCtx() as op:
            io.set_omap(op, (_INIT_KEY,), (b"",))
            io.remove_omap_keys(op, (_INIT_KEY,))
            io.operate_write_op(op, directory, _now())

    def _unlink(self, io: Any, path: str, expected: bytes) -> bool:
        """Remove path's entry if it still holds `expected`."""
        directory, name = _split(path)
        with rados.WriteOpCtx() as op:
            op.omap_cmp(name, expected.decode())
            io.remove_omap_keys(op, (name,))
            try:
                io.operate_write_op(op, directory, _now())
            except rados.ObjectNotFound:
                return False
            except rados.Error as exc:
                if _errno(exc) == errno.ECANCELED:
                    return False
                raise
        return True

    def _link(self, io: Any, path: str, oid: str) -> Optional[bytes]:
        """Point path at oid, creating its parents; returns the oid it replaced.

        Parents are linked bottom-up, after the entry, each only if missing: the walk
        stops at the first one present. A file on the way up means the path lies
        below a file; the entry is then taken back out and nothing else changed.
        """
        old = self._swap(io, path, oid.encode())
        directory = _split(path)[0]
        try:
            self._ensure_directory(io, directory)
        except _NotADirectory:
            self._unlink(io, path, oid.encode())
            self._prune(io, directory)
            raise
        return old

    def _ensure_directory(self, io: Any, directory: str) -> None:
        while directory != "/":
            if self._swap(io, directory, _DIR) == _DIR:
                return  # it was there, so its ancestors are too
            directory = _split(directory)[0]

    def _prune(self, io: Any, directory: str) -> None:
        """Remove empty directory objects from `directory` upwards.

        An object is removed only at the version at which it was seen empty. After
        unlinking it from its parent, a directory that has meanwhile been recreated
        (a writer's entry landed after the removal) is linked again, so the writer's
        file never becomes unreachable.
        """
        while True:
            with rados.ReadOpCtx() as op:
                values, _ = io.get_omap_vals(op, "", "", 1)
                try:
                    io.operate_read_op(op, directory)
                except rados.ObjectNotFound:
                    pass  # someone pruned it already; still make sure of its entry
                else:
                    if _omap(values):
                        return
                    version = io.get_last_version()
                    with rados.WriteOpCtx() as remove:
                        remove.assert_version(version)
                        remove.remove()
                        try:
                            io.operate_write_op(remove, directory, _now())
                        except rados.ObjectNotFound:
                            pass
                        except rados.Error as exc:
                            if _errno(exc) in (errno.ERANGE, errno.EOVERFLOW):
                                return  # changed since it was empty: someone uses it
                            raise
            if directory == "/":
                return
            parent = _split(directory)[0]
            self._unlink(io, directory, _DIR)
            if self._object_exists(io, directory):
                self._ensure_directory(io, directory)
                return
            directory = parent

    def _object_exists(self, io: Any, oid: str) -> bool:
        try:
            io.stat(oid)
            return True
        except rados.ObjectNotFound:
            return False

    # -- stripes: the file data --------------------------------------------------------

    def _meta(self, io: Any, oid: str) -> _Meta:
        """Size and stripe size of a file; ObjectNotFound when its data is gone."""
        attrs = dict(io.get_xattrs(_stripe(oid, 0)))
        raw = attrs.get(SIZE_XATTR)
        if raw is None:
            raise rados.ObjectNotFound(f"{oid} has no {SIZE_XATTR}")
        chunk = attrs.get(CHUNK_XATTR)
        return _Meta(_decode_size(raw), int(chunk) if chunk else self.chunksize)

    def _new_file(self, io: Any, content: bytes = b"") -> str:
        """Write content to a fresh oid; the first stripe, with the size, goes last."""
        oid = BLOB_PREFIX + str(uuid.uuid4())
        chunk = self.chunksize
        view = memoryview(content)
        for index in range(1, math.ceil(len(content) / chunk)):
            io.write_full(_stripe(oid, index), bytes(view[index * chunk:(index + 1) * chunk]))
        with rados.WriteOpCtx() as op:
            op.write_full(bytes(view[:chunk]))
            op.set_xattr(SIZE_XATTR, _encode_size(len(content)))
            op.set_xattr(CHUNK_XATTR, str(chunk).encode())
            io.operate_write_op(op, _stripe(oid, 0), _now())
        return oid

    def _remove_data(self, io: Any, oid: str) -> None:
        try:
            meta = self._meta(io, oid)
            count = max(1, math.ceil(meta.size / meta.chunk))
        except (rados.ObjectNotFound, ValueError):
            count = 1
        # One past the end too: a writer that died between writing a stripe and
        # recording the new size leaves it there.
        for index in [*range(count, 0, -1), 0]:
            try:
                io.remove_object(_stripe(oid, index))
            except rados.ObjectNotFound:
                pass

    def _file(self, io: Any, path: str) -> str:
        """The oid of the file at path; PathNotFoundError for nothing or a directory."""
        entry = self._entry(io, *_split(path))
        if not _is_file(entry):
            raise PathNotFoundError(NAME, path)
        return entry.decode()

    def _file_info(self, io: Any, path: str, oid: str) -> FileInfo:
        meta = self._meta(io, oid)
        _, mtime = io.stat(_stripe(oid, 0))
        when = datetime.fromtimestamp(time.mktime(mtime), timezone.utc)
        return FileInfo(path=path, size=meta.size, mod_time=when, is_dir=False)

    # -- the StorageDriver protocol -----------------------------------------------------

    def get_content(self, ctx: Context, path: str) -> bytes:
        check_path(NAME, path)
        with _errors(path):
            io = self._io()
            failed = None
            for _ in range(_RETRIES):
                oid = self._file(io, path)
                if oid == failed:
                    raise PathNotFoundError(NAME, path, "its data is gone")
                try:
                    meta = self._meta(io, oid)
                    return _Reader(self, path, oid, meta, 0).read()
                except (rados.ObjectNotFound, _Replaced):
                    failed = oid  # replaced while we read, so read the new version; or lost
            raise StorageError(NAME, path, "replaced too often while being read")

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        check_path(NAME, path)
        with _errors(path, missing_is_not_found=False):
            io = self._io()
            oid = self._new_file(io, bytes(content))
            try:
                old = self._link(io, path, oid)
            except BaseException:
                self._remove_data(io, oid)
                raise
            if _is_file(old):
                self._remove_data(io, old.decode())

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        check_path(NAME, path)
        if offset < 0:
            raise InvalidOffsetError(NAME, path, offset)
        with _errors(path):
            io = self._io()
            oid = self._file(io, path)
            meta = self._meta(io, oid)
        if offset > meta.size:
            raise InvalidOffsetError(NAME, path, offset)
        return _Reader(self, path, oid, meta, offset)  # type: ignore[return-value]

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        check_path(NAME, path)
        with _errors(path, missing_is_not_found=False):
            io = self._io()
            if append:
                for _ in range(_RETRIES):
                    entry = self._entry(io, *_split(path))
                    if entry == _DIR:
                        raise _NotADirectory(NAME, path, f"{path} is a directory")
                    if entry is None:
                        raise PathNotFoundError(NAME, path)
                    writer = _Writer.resume(self, path, entry.decode())
                    if writer is not None:
                        return writer
                    # deleted or replaced between lookup and lock: look again
            oid = self._new_file(io)
            try:
                writer = _Writer(self, path, oid)
                old = self._link(io, path, oid)
            except BaseException:
                self._remove_data(io, oid)
                raise
            if _is_file(old):
                self._remove_data(io, old.decode())
            return writer

    def stat(self, ctx: Context, path: str) -> FileInfo:
        check_path(NAME, path, allow_root=True)
        if path == "/":
            return FileInfo(path="/", is_dir=True)
        with _errors(path):
            io = self._io()
            for _ in range(_RETRIES):
                entry = self._entry(io, *_split(path))
                if entry is None:
                    raise PathNotFoundError(NAME, path)
                if entry == _DIR:
                    return FileInfo(path=path, is_dir=True)
                try:
                    return self._file_info(io, path, entry.decode())
                except rados.ObjectNotFound:
                    continue  # replaced between lookup and stat
            raise PathNotFoundError(NAME, path)

    def list(self, ctx: Context, path: str) -> list[str]:
        check_path(NAME, path, allow_root=True)
        with _errors(path):
            entries = self._entries(self._io(), path)
        if not entries:
            # Empty directories do not exist here (delete prunes them); a file has no
            # directory object.
            if path == "/":
                return []
            raise PathNotFoundError(NAME, path)
        return sorted(_join(path, name) for name in entries)

    def move(self, ctx: Context, source: str, dest: str) -> None:
        """Relink the file's oid from source to dest: two omap writes, no data copied.

        The source entry is taken out first, on the condition that it still names
        the oid read: a file put at source meanwhile is then moved instead, and a
        put that replaces source can never delete data that dest now refers to.
        """
        check_path(NAME, source)
        check_path(NAME, dest)
        with _errors(source):
            io = self._io()
            for _ in range(_RETRIES):
                oid = self._entry(io, *_split(source))
                if oid == _DIR:
                    raise StorageError(NAME, source, "moving a directory is not supported")
                if oid is None:
                    raise PathNotFoundError(NAME, source)
                if source == dest or self._unlink(io, source, oid):
                    break
            else:
                raise StorageError(NAME, source, "changed too often while being moved")
        if source == dest:
            return
        with _errors(dest, missing_is_not_found=False):
            try:
                old = self._link(io, dest, oid.decode())
            except BaseException:
                self._restore(io, source, dest, oid)
                raise
            self._prune(io, _split(source)[0])
            if _is_file(old) and old != oid:
                self._remove_data(io, old.decode())

    def _restore(self, io: Any, source: str, dest: str, oid: bytes) -> None:
        """Undo a move that failed part-way, so that exactly one path names oid."""
        try:
            if self._entry(io, *_split(dest)) == oid:
                return  # linked after all (the error came later): the move happened
            if self._entry(io, *_split(source)) is None:
                self._link(io, source, oid.decode())
                return
        except (StorageError, rados.Error):
            return  # cannot tell: better a leaked file than one deleted under a path
        self._remove_data(io, oid.decode())  # a new file took its place meanwhile

    def delete(self, ctx: Context, path: str) -> None:
        check_path(NAME, path)
        with _errors(path):
            io = self._io()
            for _ in range(_RETRIES):
                entry = self._entry(io, *_split(path))
                if entry is None:
                    raise PathNotFoundError(NAME, path)
                # Unlinked first: the whole file or tree disappears from view at once.
                if not self._unlink(io, path, entry):
                    continue
                self._prune(io, _split(path)[0])
                if entry == _DIR:
                    self._purge(io, path)
                else:
                    self._remove_data(io, entry.decode())
                return
            raise StorageError(NAME, path, "changed too often while being deleted")

    def _purge(self, io: Any, directory: str) -> None:
        """Remove an unlinked directory object, everything below it and their data."""
        for name, entry in (self._entries(io, directory) or {}).items():
            if entry == _DIR:
                self._purge(io, _join(directory, name))
            elif _is_file(entry):
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
        with _errors(path):
            io = self._io()
            entries = self._entries(io, path)
        if not entries:
            if path == "/":
                return iter(())
            raise PathNotFoundError(NAME, path, "not a directory")
        return self._walk(path, entries)

    def _walk(self, directory: str, entries: dict[str, bytes]) -> Iterator[FileInfo]:
        io = self._io()
        for name in sorted(entries):
            child = _join(directory, name)
            entry = entries[name]
            if entry == _DIR:
                with _errors(child):
                    below = self._entries(io, child)
                if below is None:
                    continue  # deleted while we walked: nothing is below it now
                yield FileInfo(path=child, is_dir=True)
                yield from self._walk(child, below)
            elif _is_file(entry):
                try:
                    with _errors(child):
                        info = self._file_info(io, child, entry.decode())
                except PathNotFoundError:
                    continue
                yield info


class _Replaced(PathNotFoundError):
    """A stripe vanished under a reader: the file was replaced or deleted."""


class _errors:
    """Re-raise librados errors as StorageErrors naming the path.

    A missing object means a missing path only where the caller says so; while
    creating, it is a failure to store.
    """

    def __init__(self, path: str, missing_is_not_found: bool = True):
        self.path = path
        self.missing_is_not_found = missing_is_not_found

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> bool:
        if exc is None or isinstance(exc, StorageError) or rados is None:
            return False
        if isinstance(exc, rados.ObjectNotFound) and self.missing_is_not_found:
            raise PathNotFoundError(NAME, self.path) from exc
        if isinstance(exc, (rados.Error, ValueError)):
            raise StorageError(NAME, self.path, str(exc) or type(exc).__name__) from exc
        return False


class _Reader:
    """Bytes of a file from an offset, read stripe by stripe.

    Deliberately not an io.RawIOBase: it has no fileno(), so the server streams
    exactly the requested range through read() instead of offering it to sendfile.
    """

    def __init__(self, driver: RadosDriver, path: str, oid: str, meta: _Meta, offset: int):
        self._driver = driver
        self._path = path
        self._oid = oid
        self._size = meta.size
        self._chunk = meta.chunk
        self._offset = offset
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._offset, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise InvalidOffsetError(NAME, self._path, base + offset)
        self._offset = base + offset
        return self._offset

    def read(self, size: Optional[int] = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed reader")
        end = self._size if size is None or size < 0 else min(self._size, self._offset + size)
        pieces = []
        io = self._driver._io()
        while self._offset < end:
            index, within = divmod(self._offset, self._chunk)
            length = min(end - self._offset, self._chunk - within)
            try:
                piece = io.read(_stripe(self._oid, index), length, within)
            except rados.ObjectNotFound as exc:
                raise _Replaced(NAME, self._path, f"stripe {index} is gone") from exc
            if len(piece) != length:
                raise _Replaced(NAME, self._path, f"stripe {index} is shorter than the size says")
            pieces.append(piece)
            self._offset += length
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Writer:
    """Appends to a file's stripes; ``close()`` leaves it for a later writer anywhere.

    Bytes are buffered up to the end of the current stripe, then written with one
    op; the size xattr is raised after the bytes it covers are stored, so a reader
    or a later writer never sees a size beyond the data. The writer holds the
    file's lock from open to close/commit/cancel.
    """

    def __init__(self, driver: RadosDriver, path: str, oid: str):
        self._driver = driver
        self._path = path
        self._oid = oid
        self._chunk = driver.chunksize
        self._stored = 0  # bytes stored and covered by the size xattr
        self._buffer = bytearray()
        self._cookie = uuid.uuid4().hex
        self._locked_at = 0.0
        self._state = "open"  # -> committed | closed | cancelled
        self._lock(renew=False)

    @classmethod
    def resume(cls, driver: RadosDriver, path: str, oid: str) -> Optional["_Writer"]:
        """A writer at the end of an existing file, or None if it vanished meanwhile."""
        writer = cls(driver, path, oid)  # locked before the size is read: nobody moves it on
        io = driver._io()
        try:
            meta = driver._meta(io, oid)
        except rados.ObjectNotFound:
            # Deleted between lookup and lock; locking recreated an empty stripe.
            driver._remove_data(io, oid)
            return None
        writer._chunk = meta.chunk
        writer._stored = meta.size
        return writer

    @property
    def size(self) -> int:
        return self._stored + len(self._buffer)

    def _lock(self, renew: bool) -> None:
        io = self._driver._io()
        try:
            io.lock_exclusive(
                _stripe(self._oid, 0), LOCK_NAME, self._cookie, "stratus upload writer",
                LOCK_SECONDS, _LOCK_MAY_RENEW if renew else 0,
            )
        except rados.ObjectBusy:
            raise StorageError(NAME, self._path, "another writer is appending to this file") from None
        except rados.Error as exc:
            raise StorageError(NAME, self._path, f"cannot lock for writing: {exc}") from exc
        self._locked_at = time.monotonic()

    def _unlock(self) -> None:
        try:
            self._driver._io().unlock(_stripe(self._oid, 0), LOCK_NAME, self._cookie)
        except rados.Error:
            pass  # gone with the file, or lapsed: nobody waits for it either way

    def _require_open(self) -> None:
        if self._state != "open":
            raise StorageError(NAME, self._path, f"writer already {self._state}")

    def write(self, data: bytes) -> int:
        self._require_open()
        view = memoryview(data)
        while view:
            room = self._chunk - self.size % self._chunk
            piece = view[:room]
            self._buffer += piece
            view = view[len(piece):]
            if self.size % self._chunk == 0:
                self._flush()
        return len(data)

    def _flush(self) -> None:
        if not self._buffer:
            return
        if time.monotonic() - self._locked_at > LOCK_SECONDS / 3:
            self._lock(renew=True)
        index, within = divmod(self._stored, self._chunk)
        data = bytes(self._buffer)
        new_size = self._stored + len(data)
        with _errors(self._path, missing_is_not_found=False):
            io = self._driver._io()
            first = _stripe(self._oid, 0)
            with rados.WriteOpCtx() as op:
                if index == 0:
                    op.write(data, within)
                else:
                    io.write(_stripe(self._oid, index), data, within)
                op.set_xattr(SIZE_XATTR, _encode_size(new_size))
                io.operate_write_op(op, first, _now())
        self._stored = new_size
        self._buffer.clear()

    def commit(self) -> None:
        self._require_open()
        self._flush()
        self._state = "committed"
        self._unlock()

    def close(self) -> None:
        if self._state != "open":
            return  # closing twice, or after commit/cancel, is harmless
        self._state = "closed"
        try:
            self._flush()
        finally:
            self._unlock()

    def cancel(self) -> None:
        self._require_open()
        self._state = "cancelled"
        self._buffer.clear()
        driver = self._driver
        with _errors(self._path):
            io = driver._io()
            if driver._unlink(io, self._path, self._oid.encode()):
                driver._prune(io, _split(self._path)[0])
            driver._remove_data(io, self._oid)  # the lock goes with the first stripe


# -- configuration ---------------------------------------------------------------------------

_PARAMETERS = ("poolname", "username", "conffile", "chunksize")


def _optional_string(params: Mapping[str, Any], key: str) -> Optional[str]:
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError(f"storage.rados.{key}: expected a string, got {value!r}")
    return value


def _chunksize(params: Mapping[str, Any]) -> int:
    value = params.get("chunksize", DEFAULT_CHUNK_SIZE)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"storage.rados.chunksize: expected a number of bytes from 1 to {MAX_CHUNK_SIZE}, got {value!r}"
        )
    return value


def from_parameters(params: Mapping[str, Any]) -> RadosDriver:
    unknown = sorted(set(params) - set(_PARAMETERS), key=str)
    if unknown:
        raise ValueError(
            f"storage.rados.{unknown[0]}: unknown parameter; the rados driver takes "
            "poolname, username, conffile and chunksize"
        )
    poolname = _optional_string(params, "poolname")
    if poolname is None:
        raise ValueError("storage.rados.poolname: required; name the Ceph pool to store the registry in")
    return RadosDriver(
        poolname=poolname,
        username=_optional_string(params, "username"),
        conffile=_optional_string(params, "conffile"),
        chunksize=_chunksize(params),
    )
