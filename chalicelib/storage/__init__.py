"""Storage drivers: a path-addressed file store with no knowledge of OCI."""
from .base import (
    FileInfo,
    FileWriter,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    StorageDriver,
    StorageError,
    UnsupportedMethodError,
)
from .factory import create_driver

__all__ = [
    "FileInfo",
    "FileWriter",
    "InvalidOffsetError",
    "InvalidPathError",
    "PathNotFoundError",
    "StorageDriver",
    "StorageError",
    "UnsupportedMethodError",
    "create_driver",
]
