"""In-memory driver: a tree of dicts behind one lock, for tests and for
``REGISTRY_STORAGE=inmemory``.

Directories are implicit, as keys under a prefix in a bucket: one exists while a
file lies below it and disappears with its last file.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Iterator, Mapping, Optional, Union

from ..context import Context
from .base import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    PathNotFoundError,
    StorageError,
    check_path,
)
from .writer_state import WriterState

NAME = "inmemory"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _File:
    data: bytearray = field(default_factory=bytearray)
    mod_time: datetime = field(default_factory=_now)


@dataclass
class _Dir:
    children: dict[str, Union["_Dir", _File]] = field(default_factory=dict)
    mod_time: datetime = field(default_factory=_now)


_Node = Union[_Dir, _File]


def _parts(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def _join(parent: str, name: str) -> str:
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


class InMemoryDriver:
    name = NAME

    def __init__(self) -> None:
        # Re-entrant so that writers, which share it, may call back into the driver.
        self._lock = threading.RLock()
        self._root = _Dir()

    # -- tree helpers; callers hold the lock ------------------------------------

    def _find(self, path: str) -> Optional[_Node]:
        node: _Node = self._root
        for part in _parts(path):
            if not isinstance(node, _Dir) or part not in node.children:
                return None
            node = node.children[part]
        return node

    def _file(self, path: str) -> _File:
        node = self._find(path)
        if not isinstance(node, _File):
            raise PathNotFoundError(NAME, path)
        return node

    def _dir(self, path: str) -> _Dir:
        node = self._find(path)
        if not isinstance(node, _Dir):
            raise PathNotFoundError(NAME, path)
        return node

    def _parent_for(self, path: str) -> tuple[_Dir, str]:
        """The directory that will hold path, created as needed, and path's name."""
        *dirs, name = _parts(path)
        node = self._root
        for part in dirs:
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Dir()
                node.mod_time = _now()
            if not isinstance(child, _Dir):
                raise StorageError(NAME, path, "a parent is a file")
            node = child
        return node, name

    def _attach(self, path: str, node: _Node) -> None:
        parent, name = self._parent_for(path)
        if isinstance(parent.children.get(name), _Dir):
            raise StorageError(NAME, path, "is a directory")
        parent.children[name] = node
        parent.mod_time = _now()

    def _detach(self, path: str) -> _Node:
        """Remove path's node, then every directory the removal left empty."""
        parts = _parts(path)
        chain = [self._root]
        for part in parts[:-1]:
            child = chain[-1].children.get(part)
            if not isinstance(child, _Dir):
                raise PathNotFoundError(NAME, path)
            chain.append(child)
        node = chain[-1].children.pop(parts[-1], None)
        if node is None:
            raise PathNotFoundError(NAME, path)
        for depth in range(len(chain) - 1, 0, -1):
            chain[depth].mod_time = _now()
            if chain[depth].children:
                break
            del chain[depth - 1].children[parts[depth - 1]]
        chain[0].mod_time = _now()
        return node

    # -- the protocol ----------------------------------------------------------

    def get_content(self, ctx: Context, path: str) -> bytes:
        check_path(NAME, path)
        with self._lock:
            return bytes(self._file(path).data)

    def put_content(self, ctx: Context, path: str, content: bytes) -> None:
        check_path(NAME, path)
        new = _File(bytearray(content))  # copied outside the lock
        with self._lock:
            self._attach(path, new)

    def reader(self, ctx: Context, path: str, offset: int = 0) -> BinaryIO:
        check_path(NAME, path)
        with self._lock:
            data = self._file(path).data
            if offset < 0 or offset > len(data):
                raise InvalidOffsetError(NAME, path, offset)
            return io.BytesIO(bytes(data[offset:]))

    def writer(self, ctx: Context, path: str, append: bool = False) -> FileWriter:
        check_path(NAME, path)
        with self._lock:
            if append:
                node = self._file(path)
            else:
                node = _File()
                self._attach(path, node)
        return _MemoryWriter(self, path, node)

    def stat(self, ctx: Context, path: str) -> FileInfo:
        check_path(NAME, path, allow_root=True)
        with self._lock:
            node = self._find(path)
            if node is None:
                raise PathNotFoundError(NAME, path)
            return _info(path, node)

    def list(self, ctx: Context, path: str) -> list[str]:
        check_path(NAME, path, allow_root=True)
        with self._lock:
            return sorted(_join(path, name) for name in self._dir(path).children)

    def move(self, ctx: Context, source: str, dest: str) -> None:
        check_path(NAME, source)
        check_path(NAME, dest)
        with self._lock:
            node = self._find(source)
            if node is None:
                raise PathNotFoundError(NAME, source)
            if source == dest:
                return
            if dest.startswith(source + "/"):
                raise StorageError(NAME, dest, "cannot move a directory into itself")
            target = self._find(dest)
            if isinstance(target, _Dir):
                raise StorageError(NAME, dest, "is a directory")
            # Make dest's parents before detaching, so a failure leaves source in place.
            self._parent_for(dest)
            self._attach(dest, self._detach(source))

    def delete(self, ctx: Context, path: str) -> None:
        check_path(NAME, path)
        with self._lock:
            self._detach(path)

    def redirect_url(self, ctx: Context, method: str, path: str, expiry_seconds: int) -> Optional[str]:
        check_path(NAME, path)
        return None

    def walk(self, ctx: Context, path: str) -> Iterator[FileInfo]:
        check_path(NAME, path, allow_root=True)
        with self._lock:
            # A snapshot, so no lock is held while the caller works between items.
            return iter(list(_walk(path, self._dir(path))))


def _info(path: str, node: _Node) -> FileInfo:
    if isinstance(node, _Dir):
        return FileInfo(path=path, mod_time=node.mod_time, is_dir=True)
    return FileInfo(path=path, size=len(node.data), mod_time=node.mod_time)


def _walk(path: str, directory: _Dir) -> Iterator[FileInfo]:
    for name in sorted(directory.children):
        child_path, child = _join(path, name), directory.children[name]
        yield _info(child_path, child)
        if isinstance(child, _Dir):
            yield from _walk(child_path, child)


class _MemoryWriter:
    """Appends to the file's node itself, so readers and later writers see the bytes
    at once; like an open file descriptor, it keeps writing to the node after a move."""

    def __init__(self, driver: InMemoryDriver, path: str, node: _File) -> None:
        self._driver = driver
        self._path = path
        self._node = node
        self._state = WriterState(NAME, path)

    @property
    def size(self) -> int:
        return len(self._node.data)

    def write(self, data: bytes) -> int:
        self._state.require_open()
        with self._driver._lock:
            self._node.data += data
            self._node.mod_time = _now()
        return len(data)

    def commit(self) -> None:
        self._state.commit()  # every byte is in the node already

    def close(self) -> None:
        self._state.close()  # nothing to make durable

    def cancel(self) -> None:
        self._state.cancel()
        driver = self._driver
        with driver._lock:
            if driver._find(self._path) is self._node:
                driver._detach(self._path)


def from_parameters(params: Mapping[str, Any]) -> InMemoryDriver:
    if params:
        raise ValueError(f"storage.inmemory.{sorted(params)[0]}: unknown parameter; the inmemory driver takes none")
    return InMemoryDriver()
