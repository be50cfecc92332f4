"""Builds a storage driver by name, importing its module only when it is chosen.

A Lambda that stores in S3 must not pay for importing the Azure SDK or librados,
so drivers are named by module path and loaded on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from .base import StorageDriver

# name -> "module:callable"; the callable takes the driver's parameter mapping.
_DRIVERS: dict[str, str] = {
    "filesystem": "chalicelib.storage.filesystem:from_parameters",
    "inmemory": "chalicelib.storage.inmemory:from_parameters",
    "s3": "chalicelib.storage.s3:from_parameters",
    "azure": "chalicelib.storage.azure:from_parameters",
    "rados": "chalicelib.storage.rados:from_parameters",
}


class UnknownDriverError(ValueError):
    pass


def driver_names() -> list[str]:
    return sorted(_DRIVERS)


def create_driver(name: str, parameters: Mapping[str, Any] | None = None) -> StorageDriver:
    """Build the driver; parameter errors surface as ValueError naming the key."""
    try:
        module_name, _, attr = _DRIVERS[name].partition(":")
    except KeyError:
        raise UnknownDriverError(
            f"storage driver {name!r} is not known; choose one of {', '.join(driver_names())}"
        ) from None
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(dict(parameters or {}))
