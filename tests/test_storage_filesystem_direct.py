"""Upload data written with O_DIRECT by the filesystem driver: whole aligned blocks
from a staging buffer, the last partial block through the page cache and rewritten
by the next writer, a fallback where O_DIRECT is refused, and one writer per file.

These run on the test machine's real filesystem (tmp_path), where Linux takes
O_DIRECT (ext4, xfs, btrfs; tmpfs since 6.6); the fallback tests refuse it by hand.
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
from pathlib import Path

import pytest

from chalicelib.context import Context
from chalicelib.storage import StorageError
from chalicelib.storage.filesystem import FilesystemDriver, from_parameters, staging
from chalicelib.storage.filesystem.direct import DIRECT_ALIGN, DirectFileWriter
from chalicelib.storage.filesystem.writer import CachedFileWriter

ALIGN = DIRECT_ALIGN
PIECE = staging.PIECE


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def driver(root: Path) -> FilesystemDriver:
    d = from_parameters({"rootdirectory": str(root)})
    probe = d.writer(Context(), "/probe")
    probe.close()
    if not d.direct_writes:
        pytest.skip("this filesystem refuses O_DIRECT")
    return d


@pytest.fixture
def ctx() -> Context:
    return Context()


def has_direct(writer) -> bool:
    return bool(fcntl.fcntl(writer._fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_parameter_directwrites(root: Path) -> None:
    assert from_parameters({"rootdirectory": str(root)}).direct_writes is True
    for value, expected in ((False, False), ("false", False), ("True", True), (True, True), ("0", False), ("", True)):
        assert from_parameters({"rootdirectory": str(root), "directwrites": value}).direct_writes is expected
    for bad in ("nope", 1, [True]):
        with pytest.raises(ValueError, match=r"storage\.filesystem\.directwrites"):
            from_parameters({"rootdirectory": str(root), "directwrites": bad})


def test_unaligned_appends_by_many_writers_keep_every_byte(driver, ctx, root: Path) -> None:
    rng = random.Random(7)
    sizes = [1, ALIGN - 1, 2, ALIGN, ALIGN + 1, PIECE - 3, 5, PIECE, 2 * PIECE + 17, 0, 12345, 3 * ALIGN]
    expected = bytearray()
    driver.writer(ctx, "/up/data").close()
    for size in sizes:
        writer = driver.writer(ctx, "/up/data", append=True)
        assert isinstance(writer, DirectFileWriter) and has_direct(writer)
        assert writer.size == len(expected)
        # written in uneven pieces, as request bodies arrive
        data = rng.randbytes(size)
        at = 0
        while at < size:
            step = rng.choice([1, 100, ALIGN, 65536, PIECE + 1])
            writer.write(data[at:at + step])
            at += step
        expected += data
        assert writer.size == len(expected)
        writer.close()
        assert (root / "up" / "data").read_bytes() == expected
    final = driver.writer(ctx, "/up/data", append=True)
    final.commit()
    final.close()
    assert driver.get_content(ctx, "/up/data") == bytes(expected)


def test_whole_blocks_bypass_the_page_cache(driver, ctx, root: Path, monkeypatch) -> None:
    writes = []
    real_pwrite = os.pwrite

    def recording(fd, data, offset):
        writes.append((offset, len(data), bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", recording)
    writer = driver.writer(ctx, "/f")
    writer.write(b"x" * (2 * PIECE + ALIGN + 10))
    writer.close()
    assert writes == [
        (0, PIECE, True),
        (PIECE, PIECE, True),
        (2 * PIECE, ALIGN, True),  # the aligned part of what was left
        (2 * PIECE + ALIGN, 10, False),  # the partial block, through the cache
    ]
    writes.clear()
    writer = driver.writer(ctx, "/f", append=True)
    writer.write(b"y" * ALIGN)
    writer.close()
    # the partial block is read back and rewritten whole, with O_DIRECT
    assert writes == [(2 * PIECE + ALIGN, ALIGN, True), (2 * PIECE + 2 * ALIGN, 10, False)]
    assert (root / "f").read_bytes() == b"x" * (2 * PIECE + ALIGN + 10) + b"y" * ALIGN


def test_a_writer_dying_midway_leaves_the_closed_bytes_intact(driver, ctx, root: Path) -> None:
    first = os.urandom(5000)
    writer = driver.writer(ctx, "/f")
    writer.write(first)
    writer.close()
    writer = driver.writer(ctx, "/f", append=True)
    writer.write(os.urandom(3 * PIECE))  # three staging buffers went out, the first with the head block
    os.close(writer._fd)  # the process dies: no flush, no fsync, no close()
    writer._fd = -1
    data = (root / "f").read_bytes()
    assert data[:5000] == first
    assert len(data) == ALIGN + 3 * PIECE  # what reached the file; the staged rest died with the process
    # the next writer continues from the file as it is
    assert driver.writer(ctx, "/f", append=True).size == len(data)


def test_a_filesystem_refusing_o_direct_falls_back_to_the_page_cache(driver, ctx, root: Path, monkeypatch) -> None:
    real_fcntl = fcntl.fcntl

    def refuse_direct(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refuse_direct)
    writer = driver.writer(ctx, "/f")
    assert type(writer) is CachedFileWriter
    assert real_fcntl(writer._fd, fcntl.F_GETFL) & os.O_APPEND
    writer.write(b"abc")
    writer.close()
    assert driver.direct_writes is False  # remembered: later writers do not ask again
    writer = driver.writer(ctx, "/f", append=True)
    assert type(writer) is CachedFileWriter
    writer.write(b"def")
    writer.close()
    assert (root / "f").read_bytes() == b"abcdef"


def test_a_refused_direct_write_goes_through_the_cache(driver, ctx, root: Path, monkeypatch) -> None:
    real_pwrite = os.pwrite

    def refuse_direct(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # a device with larger sectors
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse_direct)
    data = os.urandom(PIECE + 3 * ALIGN + 1)
    writer = driver.writer(ctx, "/f")
    writer.write(data)
    writer.commit()
    writer.close()
    assert (root / "f").read_bytes() == data


def test_short_direct_write_continues_through_the_cache(driver, ctx, root: Path, monkeypatch) -> None:
    real_pwrite = os.pwrite
    shortened = []

    def short_once(fd, data, offset):
        if not shortened:
            shortened.append(offset)
            return real_pwrite(fd, data[:1000], offset)  # leaves an unaligned offset
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", short_once)
    data = os.urandom(2 * PIECE + 5)
    writer = driver.writer(ctx, "/f")
    writer.write(data)
    writer.close()
    assert (root / "f").read_bytes() == data


def test_write_errors_keep_size_honest(driver, ctx, root: Path, monkeypatch) -> None:
    writer = driver.writer(ctx, "/f")
    writer.write(b"a" * PIECE)  # out in the file
    real_pwrite = os.pwrite

    def disk_full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        writer.write(b"b" * PIECE)
    assert writer.size == PIECE  # what the file holds, not what was handed over
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    writer.close()
    assert (root / "f").stat().st_size == PIECE


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "cached"])
def test_one_writer_per_file(root: Path, ctx, direct: bool) -> None:
    driver = FilesystemDriver(str(root), direct_writes=direct)
    first = driver.writer(ctx, "/f")
    first.write(b"a")
    with pytest.raises(StorageError, match="another writer"):
        driver.writer(ctx, "/f", append=True)
    first.close()
    second = driver.writer(ctx, "/f", append=True)
    second.write(b"b")
    second.close()
    assert (root / "f").read_bytes() == b"ab"


def test_a_cancelled_writer_removes_the_file_and_returns_its_buffer(driver, ctx, root: Path) -> None:
    staging.pool.clear()
    writer = driver.writer(ctx, "/f")
    writer.write(b"z" * 10)
    writer.cancel()
    assert not (root / "f").exists()
    assert len(staging.pool) == 1
    writers = [driver.writer(ctx, f"/g{i}") for i in range(staging.POOL_MAX + 3)]
    for w in writers:
        w.write(b"q")
    for w in writers:
        w.close()
    assert len(staging.pool) == staging.POOL_MAX  # bounded


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "cached"])
def test_without_a_lock_manager_writers_go_unlocked(root: Path, ctx, monkeypatch, direct: bool) -> None:
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # NFS mounted with nolock

    monkeypatch.setattr(fcntl, "flock", no_locks)
    driver = FilesystemDriver(str(root), direct_writes=direct)
    writer = driver.writer(ctx, "/f")
    writer.write(b"abc")
    writer.close()
    assert (root / "f").read_bytes() == b"abc"


def test_concurrent_writers_on_threads_keep_their_own_bytes(driver, ctx, root: Path) -> None:
    import threading

    expected: dict[str, bytes] = {}
    failures: list[BaseException] = []

    def upload(index: int) -> None:
        try:
            rng = random.Random(index)
            path = f"/up{index}/data"
            driver.writer(ctx, path).close()
            data = bytearray()
            for _ in range(6):  # six PATCHes of uneven lengths
                writer = driver.writer(ctx, path, append=True)
                chunk = rng.randbytes(rng.randrange(1, 3 * PIECE))
                for at in range(0, len(chunk), 300_000):
                    writer.write(chunk[at:at + 300_000])
                writer.close()
                data += chunk
            expected[path] = bytes(data)
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for path, data in expected.items():
        assert (root / path.lstrip("/")).read_bytes() == data
    assert len(staging.pool) <= staging.POOL_MAX


def cached_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages of the file), by mincore(2)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // os.sysconf("SC_PAGE_SIZE"))
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vector), pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def test_bytes_written_directly_are_read_back_into_the_page_cache(driver, ctx, root: Path) -> None:
    # the first pull after a push finds the blob cached, as it would after a write
    # through the cache (issue 14, item 3)
    import time

    data = os.urandom(3 * PIECE + ALIGN + 100)
    writer = driver.writer(ctx, "/blob")
    writer.write(data)
    writer.commit()
    writer.close()
    deadline = time.monotonic() + 10  # the reads are asynchronous
    while True:
        cached, pages = cached_pages(root / "blob")
        if cached == pages or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert cached == pages
    assert (root / "blob").read_bytes() == data


def test_writers_beyond_the_first_few_stage_in_small_buffers(driver, ctx, root: Path) -> None:
    import gc

    gc.collect()  # writers other tests dropped unclosed give their large buffers' places back
    staging.pool.clear()
    count = staging.LARGE_AT_ONCE + 3
    writers = [driver.writer(ctx, f"/w{i}") for i in range(count)]
    for w in writers:
        w.write(b"a")
    # bounded whatever the number of uploads: 32 concurrent pushes held 32 MiB here before
    assert [len(w._staging) for w in writers] == \
        [staging.PIECE] * staging.LARGE_AT_ONCE + [staging.SMALL_PIECE] * 3
    data = os.urandom(3 * staging.SMALL_PIECE + 7)
    for w in writers:
        w.write(data)
        w.close()
    for i in range(count):
        assert (root / f"w{i}").read_bytes() == b"a" + data
    assert len(staging.pool) == staging.POOL_MAX
    again = driver.writer(ctx, "/again")
    again.write(b"b")
    assert len(again._staging) == staging.PIECE  # the large ones are free again
    again.close()
