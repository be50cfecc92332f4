"""The ``storage.filesystem`` parameters, checked with the key named in every error."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..params import boolean
from .errors import NAME

DEFAULT_ROOT_DIRECTORY = "/var/lib/registry"  # the reference registry's default
_KNOWN = {"rootdirectory", "maxthreads", "directwrites"}


@dataclass(frozen=True)
class FilesystemParameters:
    root_directory: str = DEFAULT_ROOT_DIRECTORY
    max_threads: int = 100
    direct_writes: bool = True


def parse_parameters(params: Mapping[str, Any]) -> FilesystemParameters:
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise ValueError(
            f"storage.filesystem.{unknown[0]}: unknown parameter; "
            "the filesystem driver takes rootdirectory, maxthreads and directwrites"
        )
    return FilesystemParameters(
        root_directory=_root_directory(params),
        max_threads=_max_threads(params),
        direct_writes=boolean(params, NAME, "directwrites", True),
    )


def _root_directory(params: Mapping[str, Any]) -> str:
    root = params.get("rootdirectory", DEFAULT_ROOT_DIRECTORY)
    if isinstance(root, os.PathLike):
        root = os.fspath(root)
    if not isinstance(root, str) or not root.strip() or "\x00" in root:
        raise ValueError(
            "storage.filesystem.rootdirectory: expected a directory path (a non-empty string), "
            f"got {root!r}"
        )
    return root


def _max_threads(params: Mapping[str, Any]) -> int:
    # Accepted so reference configs load unchanged; Python's blocking file I/O needs
    # no thread cap. Like the reference, values below its minimum of 25 are raised.
    value = params.get("maxthreads", 100)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"storage.filesystem.maxthreads: expected an integer, got {value!r}")
    return max(value, 25)
