"""ResumableHasher: a SHA-2 hasher whose state can be saved and restored.

Every chunk of an upload may arrive at a different, stateless function
invocation, so after each chunk the hasher's ``state()`` is stored next to the
upload and the next invocation ``restore()``s it. The state is Go's
MarshalBinary layout (see ``state.py``), shared with registry:2.

Two backends compute the same states: ``libcrypto`` (OpenSSL through ctypes,
native speed, the default) and ``python`` (a pure-Python fallback used, with a
warning, when libcrypto cannot be loaded). ``STRATUS_DIGEST_BACKEND`` or the
``backend`` argument chooses: ``auto`` (default), ``libcrypto`` or ``python``.
"""
from __future__ import annotations

import os
import threading

from . import state as _state
from .algorithm import CANONICAL, Algorithm
from .digest import Digest

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from .state import State

    class Engine(Protocol):
        """A running hash of one backend (``_libcrypto.Engine``, ``_purepy.Engine``)."""

        backend: str

        @property
        def length(self) -> int: ...
        def update(self, data: bytes | bytearray | memoryview) -> None: ...
        def copy(self) -> Engine: ...
        def finalize(self) -> bytes: ...
        def export(self) -> State: ...

    class Backend(Protocol):
        """A backend module: ``_libcrypto`` or ``_purepy``."""

        def new(self, algorithm: Algorithm) -> Engine: ...
        def from_parts(self, algorithm: Algorithm, h: tuple[int, ...], pending: bytes, length: int) -> Engine: ...

BACKEND_ENV = "STRATUS_DIGEST_BACKEND"
BACKENDS = ("auto", "libcrypto", "python")

_warned = False
_warn_lock = threading.Lock()


def _backend(name: str | None) -> Backend:
    """The backend module (``_libcrypto`` or ``_purepy``) that ``name`` selects."""
    name = (name or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if name == "python":
        from . import _purepy

        return _purepy
    if name not in ("auto", "libcrypto"):
        raise ValueError(f"unknown digest backend {name!r} (expected one of: {', '.join(BACKENDS)})")
    from . import _libcrypto

    if _libcrypto.available():
        return _libcrypto
    if name == "libcrypto":
        reason = _libcrypto.unavailable_reason()
        raise RuntimeError(f"digest backend 'libcrypto' requested but unavailable: {reason}")
    _warn_fallback(_libcrypto.unavailable_reason())
    from . import _purepy

    return _purepy


def _warn_fallback(reason: str | None) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    import logging  # only on this path: the fallback is rare

    logging.getLogger("stratus.digest").warning(
        "libcrypto SHA-2 functions unavailable (%s); hashing with the pure-Python"
        " fallback, which is about a thousand times slower",
        reason,
    )


def _algorithm(algorithm: Algorithm | str) -> Algorithm:
    if isinstance(algorithm, Algorithm):
        return algorithm
    if isinstance(algorithm, str):
        return Algorithm.parse(algorithm)
    raise TypeError(f"expected an Algorithm, not {type(algorithm).__name__}")


class ResumableHasher:
    """Hashes a stream whose state can be saved (``state()``) and resumed (``restore()``).

    Not safe for concurrent use from several threads.
    """

    __slots__ = ("_algorithm", "_engine")

    def __init__(self, algorithm: Algorithm | str = CANONICAL, *, backend: str | None = None) -> None:
        self._algorithm = _algorithm(algorithm)
        self._engine = _backend(backend).new(self._algorithm)

    @classmethod
    def restore(
        cls, algorithm: Algorithm | str, state: bytes, *, backend: str | None = None
    ) -> ResumableHasher:
        """The hasher that saved ``state``; DigestError if ``state`` is not an ``algorithm`` state."""
        algorithm = _algorithm(algorithm)
        h, pending, length = _state.decode(algorithm, state)
        return cls._wrap(algorithm, _backend(backend).from_parts(algorithm, h, pending, length))

    @classmethod
    def _wrap(cls, algorithm: Algorithm, engine: Engine) -> ResumableHasher:
        hasher = cls.__new__(cls)
        hasher._algorithm = algorithm
        hasher._engine = engine
        return hasher

    @property
    def algorithm(self) -> Algorithm:
        return self._algorithm

    @property
    def length(self) -> int:
        """Bytes hashed so far."""
        return self._engine.length

    @property
    def backend(self) -> str:
        """``"libcrypto"`` or ``"python"``."""
        return self._engine.backend

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` (bytes, bytearray, memoryview or any buffer; any size)."""
        self._engine.update(data)

    def digest(self) -> Digest:
        """The digest of everything hashed so far. Hashing may go on afterwards."""
        return Digest(self._algorithm, self._engine.finalize().hex())

    def state(self) -> bytes:
        """The saved state, in Go's crypto/sha256|sha512 MarshalBinary layout."""
        return _state.encode(self._algorithm, *self._engine.export())

    def copy(self) -> ResumableHasher:
        """An independent hasher in the same state."""
        return self._wrap(self._algorithm, self._engine.copy())

    __copy__ = copy

    def __repr__(self) -> str:
        return f"<ResumableHasher {self._algorithm} length={self.length} backend={self.backend}>"
