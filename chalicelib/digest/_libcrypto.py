"""SHA-2 at native speed: OpenSSL's SHA256_* / SHA384_* / SHA512_* driven with ctypes.

hashlib cannot export or import a hasher's state, so we drive libcrypto's
low-level functions ourselves and read and write their context structs
(``SHA256_CTX``, ``SHA512_CTX`` in <openssl/sha.h>, unchanged since OpenSSL 0.9.8
and still exported by 1.1 and 3.x). The library is found and checked once, on
the first hasher, never at import: this module is imported lazily too.
"""
from __future__ import annotations

import ctypes
import struct
import sys
import threading

from .algorithm import Algorithm

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterator

    from .state import State

    Data = bytes | bytearray | memoryview

BACKEND = "libcrypto"

_c_uint32 = ctypes.c_uint32
_c_uint64 = ctypes.c_uint64


class _SHA256_CTX(ctypes.Structure):
    # h words native-endian; Nl/Nh: the message length in bits, low and high
    # 32-bit halves; data: the pending bytes, in input order; num: how many.
    _fields_ = [
        ("h", _c_uint32 * 8),
        ("Nl", _c_uint32),
        ("Nh", _c_uint32),
        ("data", ctypes.c_ubyte * 64),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class _SHA512_CTX(ctypes.Structure):
    # As above with 64-bit words; the bit count is 128 bits wide (Nh:Nl).
    _fields_ = [
        ("h", _c_uint64 * 8),
        ("Nl", _c_uint64),
        ("Nh", _c_uint64),
        ("u", ctypes.c_ubyte * 128),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class _Ops:
    """One algorithm's functions and the native layout of its context."""

    __slots__ = ("algorithm", "ctx_type", "init", "update", "final", "raw", "word_bits")

    def __init__(
        self, algorithm: Algorithm, lib: ctypes.CDLL, prefix: str, ctx_type: type[ctypes.Structure]
    ) -> None:
        ptr = ctypes.POINTER(ctx_type)
        self.algorithm = algorithm
        self.ctx_type = ctx_type
        self.init = getattr(lib, f"{prefix}_Init")
        self.init.argtypes = [ptr]
        self.init.restype = ctypes.c_int
        self.update = getattr(lib, f"{prefix}_Update")
        self.update.argtypes = [ptr, ctypes.c_void_p, ctypes.c_size_t]
        self.update.restype = ctypes.c_int
        self.final = getattr(lib, f"{prefix}_Final")
        self.final.argtypes = [ctypes.c_void_p, ptr]
        self.final.restype = ctypes.c_int
        word = "I" if algorithm.word_size == 4 else "Q"
        # "=": native byte order, standard sizes, no padding (the struct has none).
        self.raw = struct.Struct(f"=8{word}2{word}{algorithm.block_size}s2I")
        assert self.raw.size == ctypes.sizeof(ctx_type)
        self.word_bits = 8 * algorithm.word_size


# --- zero-copy access to any contiguous buffer -----------------------------
#
# ctypes passes bytes by pointer but wants a writable buffer for from_buffer();
# a read-only memoryview would need a copy. PyObject_GetBuffer gives the address
# of any buffer without copying, and holds it until PyBuffer_Release.


class _Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Py_buffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_Py_buffer)]
_release_buffer.restype = None
_PyBUF_SIMPLE = 0  # C-contiguous bytes; BufferError otherwise


class Engine:
    """A running libcrypto hash: a context struct and its algorithm's functions."""

    __slots__ = ("_ops", "_ctx", "_ref")
    backend = BACKEND

    def __init__(self, ops: _Ops, ctx: ctypes.Structure) -> None:
        self._ops = ops
        self._ctx = ctx
        self._ref = ctypes.byref(ctx)

    def update(self, data: Data) -> None:
        if type(data) is bytes:  # the common case: ctypes passes the pointer
            if data:
                self._ops.update(self._ref, data, len(data))
            return
        if isinstance(data, str):
            raise TypeError("Strings must be encoded before hashing")
        view = _Py_buffer()
        try:
            _get_buffer(data, view, _PyBUF_SIMPLE)
        except BufferError:  # not contiguous: hash a contiguous copy
            self.update(memoryview(data).tobytes())
            return
        try:
            if view.len:
                self._ops.update(self._ref, view.buf, view.len)
        finally:
            _release_buffer(view)

    @property
    def length(self) -> int:
        # the length in bits, as two words (ctypes reads a field as a plain int)
        high: int = self._ctx.Nh
        low: int = self._ctx.Nl
        return ((high << self._ops.word_bits) | low) >> 3

    def copy(self) -> Engine:
        return Engine(self._ops, self._ops.ctx_type.from_buffer_copy(self._ctx))

    def finalize(self) -> bytes:
        """The digest so far; the running context is left as it was."""
        ops = self._ops
        scratch = ops.ctx_type.from_buffer_copy(self._ctx)
        out = ctypes.create_string_buffer(64)
        ops.final(out, ctypes.byref(scratch))
        return out.raw[: ops.algorithm.digest_size]

    def export(self) -> State:
        ops = self._ops
        fields = ops.raw.unpack(bytes(self._ctx))
        nl, nh, block = fields[8], fields[9], fields[10]
        length = ((nh << ops.word_bits) | nl) >> 3
        return fields[:8], block[: length % ops.algorithm.block_size], length


# --- finding and checking the library ----------------------------------------

_lock = threading.Lock()
_loaded = False
_ops: dict[Algorithm, _Ops] = {}
_failure: str | None = None


def _candidates() -> Iterator[str]:
    """Library names to try, most likely (the one hashlib already loaded) first."""
    if sys.platform == "darwin":
        # Never the unversioned /usr/lib/libcrypto.dylib: loading it aborts the process.
        yield from ("libcrypto.3.dylib", "libcrypto.1.1.dylib")
        return
    if sys.platform == "win32":
        yield from ("libcrypto-3-x64.dll", "libcrypto-3.dll", "libcrypto-1_1-x64.dll", "libcrypto-1_1.dll")
        return
    yield from ("libcrypto.so.3", "libcrypto.so.1.1")
    import ctypes.util  # runs ldconfig: only when the usual names are missing

    found = ctypes.util.find_library("crypto")
    if found:
        yield found


def _bind(lib: ctypes.CDLL) -> dict[Algorithm, _Ops]:
    return {
        Algorithm.SHA256: _Ops(Algorithm.SHA256, lib, "SHA256", _SHA256_CTX),
        Algorithm.SHA384: _Ops(Algorithm.SHA384, lib, "SHA384", _SHA512_CTX),
        Algorithm.SHA512: _Ops(Algorithm.SHA512, lib, "SHA512", _SHA512_CTX),
    }


def _self_test(ops: dict[Algorithm, _Ops]) -> str | None:
    """Check our reading of the structs against known values; None if all is well.

    A fresh context must hold the FIPS IV (word order and endianness), 150 bytes
    in it must read back as length 150 with the last 150 % block bytes pending
    (bit count and buffer), and a context rebuilt from that export must finish
    with hashlib's digest (the way back).
    """
    import hashlib

    data = bytes(range(200))
    for algorithm, op in ops.items():
        ctx = op.ctx_type()
        if op.init(ctx) != 1:
            return f"{algorithm} init failed"
        engine = Engine(op, ctx)
        if engine.export() != (algorithm.initial_hash, b"", 0):
            return f"{algorithm} context does not start with the FIPS 180-4 initial hash"
        engine.update(data[:150])
        h, pending, length = engine.export()
        if length != 150 or pending != data[150 - 150 % algorithm.block_size : 150]:
            return f"{algorithm} context does not count bytes or keep pending bytes as expected"
        resumed = from_parts(algorithm, h, pending, length, op)
        resumed.update(data[150:])
        if resumed.finalize() != hashlib.new(algorithm.value, data).digest():
            return f"{algorithm} context rebuilt from its state does not finish with the right digest"
    return None


def _load() -> None:
    global _ops, _failure
    reasons = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
            ops = _bind(lib)
        except (OSError, AttributeError) as e:
            reasons.append(f"{name}: {e}")
            continue
        problem = _self_test(ops)
        if problem is None:
            _ops = ops
            _failure = None
            return
        reasons.append(f"{name}: {problem}")
    _failure = "; ".join(reasons) or "no libcrypto to try on this platform"


def available() -> bool:
    """True if libcrypto was found and passed the self-test (loaded on first call)."""
    global _loaded
    if not _loaded:
        with _lock:
            if not _loaded:
                _load()
                _loaded = True
    return bool(_ops)


def unavailable_reason() -> str | None:
    available()
    return _failure


def _require(algorithm: Algorithm) -> _Ops:
    if not available():
        raise RuntimeError(f"libcrypto digest backend unavailable: {_failure}")
    return _ops[algorithm]


def new(algorithm: Algorithm) -> Engine:
    op = _require(algorithm)
    ctx = op.ctx_type()
    op.init(ctx)
    return Engine(op, ctx)


def from_parts(
    algorithm: Algorithm, h: tuple[int, ...], pending: bytes, length: int, op: _Ops | None = None
) -> Engine:
    """An engine in the state (h, pending, length), as decoded by state.decode."""
    op = op or _require(algorithm)
    bits = length << 3
    mask = (1 << op.word_bits) - 1
    md_len = algorithm.digest_size
    raw = op.raw.pack(*h, bits & mask, bits >> op.word_bits, pending, len(pending), md_len)
    return Engine(op, op.ctx_type.from_buffer_copy(raw))
