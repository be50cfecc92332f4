"""``storage.rados`` parameters: the reference's poolname, username, conffile, chunksize."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from .driver import RadosDriver
from .layout import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE

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
