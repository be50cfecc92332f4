"""Filesystem driver: storage paths are files under a root directory.

A path maps onto ``<rootdirectory><path>`` exactly as in the reference registry's
filesystem driver, so a directory written by registry:2
(``/var/lib/registry/docker/registry/v2/...``) is served unchanged, and the other
way round.

driver.py holds the driver; beneath.py the openat2 path resolution; writer.py and
direct.py the page-cache and O_DIRECT upload writers, staging.py the latter's
buffers, writeback.py and lock.py the sync_file_range and flock calls they make.
"""
from __future__ import annotations

from typing import Any, Mapping

from .driver import FilesystemDriver
from .errors import NAME
from .params import DEFAULT_ROOT_DIRECTORY, FilesystemParameters, parse_parameters

__all__ = [
    "DEFAULT_ROOT_DIRECTORY",
    "NAME",
    "FilesystemDriver",
    "FilesystemParameters",
    "from_parameters",
    "parse_parameters",
]


def from_parameters(params: Mapping[str, Any]) -> FilesystemDriver:
    p = parse_parameters(params)
    return FilesystemDriver(p.root_directory, p.max_threads, p.direct_writes)
