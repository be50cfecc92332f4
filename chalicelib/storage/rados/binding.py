"""librados's Python binding, imported on first use (even from a virtualenv).

The driver's modules name it as ``rados`` (``from .binding import rados``): a stand-in
that loads the binding when an attribute is first asked for, so importing the
package costs nothing and a deployment without Ceph never loads it.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any

# Where Debian's python3-rados puts the binding: built for Debian's /usr/bin/python3.
DEBIAN_DIST_PACKAGES = (Path("/usr/lib/python3/dist-packages"),)

_module: Any = None  # the binding, once import_rados() has loaded it


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
    global _module
    if _module is not None:
        return _module
    try:
        import rados as module  # type: ignore[import-not-found]
    except ImportError:
        module = _load_debian_binding()
    _module = module
    return module


def is_loaded() -> bool:
    """Whether the binding was imported, so an exception may be one of its errors."""
    return _module is not None


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


class _Binding:
    """``rados.X`` is the binding's X, imported on first use."""

    def __getattr__(self, name: str) -> Any:
        return getattr(import_rados(), name)


rados: Any = _Binding()
