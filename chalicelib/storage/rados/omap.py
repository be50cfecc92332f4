"""The directory tree: one object per directory whose omap names its children.

Every change is one RADOS write operation guarded by ``omap_cmp`` (compare-and-swap
on the entry) or ``assert_version`` (an empty directory object is removed only if
nothing was added since it was seen empty), so writers in one directory never lose
each other's entries. Parents are linked bottom-up after the entry, and the pruner
re-links a directory it finds recreated, so a file written while its parent is
being pruned stays reachable.
"""
from __future__ import annotations

import errno
from typing import Any, Optional

from ..base import StorageError
from .binding import rados
from .errors import NotADirectory, errno_of
from .layout import DIR, NAME, now, omap_values, split

RETRIES = 20  # rounds of a compare-and-swap that lost to concurrent writers
_PAGE = 1000  # omap entries per read
_INIT_KEY = "~stratus~"  # "~" is in no path component, so it can never be an entry


def entry(io: Any, directory: str, name: str) -> Optional[bytes]:
    """directory[name], or None when either is missing."""
    with rados.ReadOpCtx() as op:
        values, _ = io.get_omap_vals_by_keys(op, (name,))
        try:
            io.operate_read_op(op, directory)
        except rados.ObjectNotFound:
            return None
        return omap_values(values).get(name)


def entries(io: Any, directory: str) -> Optional[dict[str, bytes]]:
    """Every entry of a directory object, or None when it does not exist."""
    found: dict[str, bytes] = {}
    after = ""
    while True:
        with rados.ReadOpCtx() as op:
            values, _ = io.get_omap_vals(op, after, "", _PAGE)
            try:
                io.operate_read_op(op, directory)
            except rados.ObjectNotFound:
                return None if not found else found
            page = omap_values(values)
        found.update(page)
        if len(page) < _PAGE:
            return found
        after = max(page)


def swap(io: Any, path: str, value: bytes) -> Optional[bytes]:
    """Set path's entry to value atomically; returns the entry it replaced.

    A file value never replaces a directory entry, and a directory value never
    replaces a file entry (NotADirectory). The write is conditional on the entry
    still holding what was read, so of two racing writers neither is lost
    unnoticed: the loser reads again and replaces the winner's value.
    """
    directory, name = split(path)
    for _ in range(RETRIES):
        try:
            with rados.ReadOpCtx() as op:
                values, _ = io.get_omap_vals_by_keys(op, (name,))
                io.operate_read_op(op, directory)
                old = omap_values(values).get(name)
        except rados.ObjectNotFound:
            _create_directory_object(io, directory)
            continue
        if old is not None and (old == DIR) != (value == DIR):
            what = "a directory" if old == DIR else "a file"
            raise NotADirectory(NAME, path, f"{path} is {what}")
        if old == value:
            return old
        with rados.WriteOpCtx() as op:
            # A missing key compares equal to "": that only lets a directory entry
            # created in this instant be replaced, which the check above refuses.
            op.omap_cmp(name, (old or DIR).decode())
            io.set_omap(op, (name,), (value,))
            try:
                io.operate_write_op(op, directory, now())
            except rados.ObjectNotFound:
                continue
            except rados.Error as exc:
                if errno_of(exc) == errno.ECANCELED:
                    continue
                raise
        return old
    raise StorageError(NAME, path, "too many concurrent changes to the directory")


def _create_directory_object(io: Any, directory: str) -> None:
    """An empty directory object that omap_cmp accepts.

    omap_cmp answers ENOENT on an object that never had an omap, so a key is set
    and removed in the same op: the object then has an (empty) omap. A pruner
    may remove it again before we use it; the caller then comes round again.
    """
    with rados.WriteOpCtx() as op:
        io.set_omap(op, (_INIT_KEY,), (b"",))
        io.remove_omap_keys(op, (_INIT_KEY,))
        io.operate_write_op(op, directory, now())


def unlink(io: Any, path: str, expected: bytes) -> bool:
    """Remove path's entry if it still holds `expected`."""
    directory, name = split(path)
    with rados.WriteOpCtx() as op:
        op.omap_cmp(name, expected.decode())
        io.remove_omap_keys(op, (name,))
        try:
            io.operate_write_op(op, directory, now())
        except rados.ObjectNotFound:
            return False
        except rados.Error as exc:
            if errno_of(exc) == errno.ECANCELED:
                return False
            raise
    return True


def link(io: Any, path: str, oid: str) -> Optional[bytes]:
    """Point path at oid, creating its parents; returns the oid it replaced.

    Parents are linked bottom-up, after the entry, each only if missing: the walk
    stops at the first one present. A file on the way up means the path lies
    below a file; the entry is then taken back out and nothing else changed.
    """
    old = swap(io, path, oid.encode())
    directory = split(path)[0]
    try:
        ensure_directory(io, directory)
    except NotADirectory:
        unlink(io, path, oid.encode())
        prune(io, directory)
        raise
    return old


def ensure_directory(io: Any, directory: str) -> None:
    while directory != "/":
        if swap(io, directory, DIR) == DIR:
            return  # it was there, so its ancestors are too
        directory = split(directory)[0]


def prune(io: Any, directory: str) -> None:
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
                if omap_values(values):
                    return
                version = io.get_last_version()
                with rados.WriteOpCtx() as remove:
                    remove.assert_version(version)
                    remove.remove()
                    try:
                        io.operate_write_op(remove, directory, now())
                    except rados.ObjectNotFound:
                        pass
                    except rados.Error as exc:
                        if errno_of(exc) in (errno.ERANGE, errno.EOVERFLOW):
                            return  # changed since it was empty: someone uses it
                        raise
        if directory == "/":
            return
        parent = split(directory)[0]
        unlink(io, directory, DIR)
        if _object_exists(io, directory):
            ensure_directory(io, directory)
            return
        directory = parent


def _object_exists(io: Any, oid: str) -> bool:
    try:
        io.stat(oid)
        return True
    except rados.ObjectNotFound:
        return False
