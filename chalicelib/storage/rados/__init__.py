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

Modules, one concern each: ``layout`` (names and encodings), ``binding`` (importing
librados), ``errors``, ``omap`` (the directory tree and its compare-and-swap
concurrency), ``stripes`` (file data and reading it), ``writer`` (appending under a
lock), ``driver`` (the StorageDriver protocol and connections), ``params``.
"""
from __future__ import annotations

from .binding import RadosUnavailableError, import_rados
from .driver import RadosDriver
from .params import from_parameters

__all__ = ["RadosDriver", "RadosUnavailableError", "from_parameters", "import_rados"]
