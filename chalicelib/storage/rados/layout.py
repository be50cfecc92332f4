"""The reference registry's RADOS layout: object names, omap values and the size xattr.

What is written here is read by registry:2's driver and the other way round, so
these encodings must not change.
"""
from __future__ import annotations

import struct
import time
from typing import Any, Optional, TypeGuard

NAME = "rados"
DEFAULT_CHUNK_SIZE = 4 << 20  # the reference's default stripe size
MAX_CHUNK_SIZE = 64 << 20  # a stripe is written in one op; the OSD refuses ops over 90 MiB
BLOB_PREFIX = "blob:"
SIZE_XATTR = "total-size"  # the reference's name and encoding
CHUNK_XATTR = "stratus.chunksize"  # ours: a file keeps its stripe size if the config changes
DIR = b""  # the omap value of a sub-directory; a file's is its oid


def split(path: str) -> tuple[str, str]:
    """Directory object and entry name of a path: "/a/b" -> ("/a", "b")."""
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def join(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


def stripe(oid: str, index: int) -> str:
    return f"{oid}-{index}"


def encode_size(size: int) -> bytes:
    # The reference wrote binary.LittleEndian.PutUint64 into a MaxVarintLen64 (10) buffer.
    return struct.pack("<Q", size) + b"\0\0"


def decode_size(raw: bytes) -> int:
    if len(raw) not in (8, 10):
        raise ValueError(f"{SIZE_XATTR} xattr has {len(raw)} bytes")
    return struct.unpack_from("<Q", raw)[0]


def is_file(entry: Optional[bytes]) -> TypeGuard[bytes]:
    return entry is not None and entry.startswith(BLOB_PREFIX.encode())


def omap_values(values: Any) -> dict[str, bytes]:
    """An omap iterator's pairs; the binding gives None for an empty value."""
    return {key: value or b"" for key, value in values}


def now() -> int:
    """The mtime to pass to operate_write_op."""
    # operate_write_op's mtime=0 does not mean "now" in this binding: it stores 0.
    return int(time.time())
