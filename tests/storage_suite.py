"""Conformance tests for any StorageDriver.

Subclass ``StorageDriverSuite`` in a ``test_*.py`` module and provide a ``driver``
fixture; every ``test_*`` method here then runs against that driver. The suite
checks protocol behaviour only, so S3, Azure and RADOS drivers reuse it unchanged.
Each test works below its own random prefix (the ``base`` fixture) and removes it
afterwards, so the suite can run against a shared bucket.
"""
from __future__ import annotations

import posixpath
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

import pytest

from chalicelib.context import Context
from chalicelib.storage.base import (
    FileInfo,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    StorageDriver,
    StorageError,
    check_path,
)

KiB = 1024
MiB = 1024 * KiB

# Templates; "{base}" is the test's prefix and "{rel}" the same without its "/".
INVALID_PATHS = [
    "",
    "relative",
    "{rel}/x",
    " {base}/x",
    "{base}/",
    "{base}//x",
    "{base}/.",
    "{base}/..",
    "{base}/./x",
    "{base}/../x",
    "{base}/x/..",
    "{base}/x/../../y",
    "{base}/ä",
    "{base}/a b",
    "{base}/x\n",
    "{base}/x\\y",
    "{base}/x\x00y",
    "{base}/x?y",
    "{base}/x%2fy",
    "{base}/x*",
]

# Unusual but valid components, including ones the registry layout relies on.
ODD_NAMES = [".hidden", "_layers", "..x", "a-b_c.d", "-", "9"]


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset, so a shifted copy shows."""
    return random.Random(seed * 7919 + size).randbytes(size)


def assert_depth_first(infos: list[FileInfo], root: str) -> None:
    """Every entry's parent came earlier and every subtree is contiguous."""
    open_dirs = [root]
    for info in infos:
        parent = posixpath.dirname(info.path)
        while open_dirs and open_dirs[-1] != parent:
            open_dirs.pop()
        assert open_dirs, f"{info.path} is not directly below an open directory in depth-first order"
        if info.is_dir:
            open_dirs.append(info.path)


class StorageDriverSuite:
    """Protocol conformance; subclasses provide the ``driver`` fixture."""

    @pytest.fixture
    def driver(self) -> StorageDriver:  # pragma: no cover - subclasses override
        raise NotImplementedError("provide a `driver` fixture")

    @pytest.fixture
    def ctx(self) -> Context:
        return Context()

    @pytest.fixture
    def base(self, driver: StorageDriver, ctx: Context) -> Iterable[str]:
        prefix = f"/stratus-suite-{uuid.uuid4().hex[:16]}"
        yield prefix
        try:
            driver.delete(ctx, prefix)
        except PathNotFoundError:
            pass

    # -- helpers -----------------------------------------------------------------

    @staticmethod
    def write_session(driver: StorageDriver, ctx: Context, path: str, chunks: list[bytes], *,
                      append: bool, commit: bool, expect_start: int) -> None:
        writer = driver.writer(ctx, path, append=append)
        try:
            assert writer.size == expect_start
            for chunk in chunks:
                assert writer.write(chunk) == len(chunk)
            assert writer.size == expect_start + sum(map(len, chunks))
            if commit:
                writer.commit()
        finally:
            writer.close()

    # -- identity ----------------------------------------------------------------

    def test_driver_satisfies_protocol(self, driver: StorageDriver) -> None:
        assert isinstance(driver, StorageDriver)
        assert isinstance(driver.name, str) and driver.name

    # -- put / get -----------------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 100, 64 * KiB + 1, 5 * MiB + 17])
    def test_put_get_round_trip(self, driver, ctx, base, size: int) -> None:
        data = payload(size)
        driver.put_content(ctx, f"{base}/f", data)
        got = driver.get_content(ctx, f"{base}/f")
        assert type(got) is bytes
        assert got == data

    def test_put_get_all_byte_values(self, driver, ctx, base) -> None:
        data = bytes(range(256)) * 4
        driver.put_content(ctx, f"{base}/bin", data)
        assert driver.get_content(ctx, f"{base}/bin") == data

    def test_put_creates_missing_parents(self, driver, ctx, base) -> None:
        path = f"{base}/a/b/c/d/e"
        driver.put_content(ctx, path, b"deep")
        assert driver.get_content(ctx, path) == b"deep"

    def test_overwrite_replaces_whole_content(self, driver, ctx, base) -> None:
        path = f"{base}/f"
        driver.put_content(ctx, path, payload(1000, seed=1))
        driver.put_content(ctx, path, b"short")
        assert driver.get_content(ctx, path) == b"short"
        assert driver.stat(ctx, path).size == 5
        driver.put_content(ctx, path, b"")
        assert driver.get_content(ctx, path) == b""

    @pytest.mark.parametrize("name", ODD_NAMES)
    def test_unusual_valid_names(self, driver, ctx, base, name: str) -> None:
        path = f"{base}/{name}/{name}"
        driver.put_content(ctx, path, name.encode())
        assert driver.get_content(ctx, path) == name.encode()
        assert driver.list(ctx, base) == [f"{base}/{name}"]
        assert driver.list(ctx, f"{base}/{name}") == [path]

    def test_get_missing_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError) as info:
            driver.get_content(ctx, f"{base}/missing")
        assert info.value.path == f"{base}/missing"
        assert isinstance(info.value, StorageError)

    def test_get_below_missing_directory_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, f"{base}/no/such/dir/file")

    def test_get_directory_is_path_not_found(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/d/f", b"x")
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, f"{base}/d")
        with pytest.raises(PathNotFoundError):
            driver.reader(ctx, f"{base}/d").close()

    def test_prefix_of_a_file_is_not_a_file(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/abc", b"x")
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, f"{base}/ab")
        with pytest.raises(PathNotFoundError):
            driver.stat(ctx, f"{base}/ab")

    # -- invalid paths ---------------------------------------------------------------

    @pytest.mark.parametrize("template", INVALID_PATHS)
    def test_invalid_paths_are_rejected_everywhere(self, driver, ctx, base, template: str) -> None:
        bad = template.format(base=base, rel=base[1:])
        source = f"{base}/source"
        driver.put_content(ctx, source, b"keep")
        operations: dict[str, Callable[[], object]] = {
            "get_content": lambda: driver.get_content(ctx, bad),
            "put_content": lambda: driver.put_content(ctx, bad, b"x"),
            "reader": lambda: driver.reader(ctx, bad).close(),
            "writer": lambda: driver.writer(ctx, bad).cancel(),
            "writer(append)": lambda: driver.writer(ctx, bad, append=True).cancel(),
            "stat": lambda: driver.stat(ctx, bad),
            "list": lambda: driver.list(ctx, bad),
            "move from": lambda: driver.move(ctx, bad, f"{base}/dest"),
            "move to": lambda: driver.move(ctx, source, bad),
            "delete": lambda: driver.delete(ctx, bad),
            "walk": lambda: list(driver.walk(ctx, bad)),
            "redirect_url": lambda: driver.redirect_url(ctx, "GET", bad, 60),
        }
        for name, operation in operations.items():
            with pytest.raises(InvalidPathError):
                operation()
                pytest.fail(f"{name} accepted {bad!r}")
        assert driver.list(ctx, base) == [source]
        assert driver.get_content(ctx, source) == b"keep"

    def test_root_is_not_a_file_path(self, driver, ctx, base) -> None:
        for operation in (
            lambda: driver.get_content(ctx, "/"),
            lambda: driver.put_content(ctx, "/", b"x"),
            lambda: driver.reader(ctx, "/"),
            lambda: driver.writer(ctx, "/"),
            lambda: driver.delete(ctx, "/"),
            lambda: driver.move(ctx, "/", f"{base}/x"),
            lambda: driver.move(ctx, f"{base}/x", "/"),
        ):
            with pytest.raises(InvalidPathError):
                operation()

    # -- reader ------------------------------------------------------------------------

    @pytest.mark.parametrize("offset", [0, 1, 500, 999, 1000])
    def test_reader_at_offset(self, driver, ctx, base, offset: int) -> None:
        data = payload(1000)
        driver.put_content(ctx, f"{base}/f", data)
        with driver.reader(ctx, f"{base}/f", offset) as stream:
            assert stream.read() == data[offset:]

    def test_reader_default_offset_is_zero(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"hello")
        with driver.reader(ctx, f"{base}/f") as stream:
            assert stream.read() == b"hello"

    def test_reader_streams_large_file_in_pieces(self, driver, ctx, base) -> None:
        data = payload(5 * MiB + 5)
        driver.put_content(ctx, f"{base}/big", data)
        offset = 3 * MiB + 1
        pieces = []
        with driver.reader(ctx, f"{base}/big", offset) as stream:
            while piece := stream.read(64 * KiB):
                assert len(piece) <= 64 * KiB
                pieces.append(piece)
        assert b"".join(pieces) == data[offset:]

    @pytest.mark.parametrize("size", [0, 10])
    def test_reader_past_end_is_invalid_offset(self, driver, ctx, base, size: int) -> None:
        driver.put_content(ctx, f"{base}/f", payload(size))
        with pytest.raises(InvalidOffsetError) as info:
            driver.reader(ctx, f"{base}/f", size + 1)
        assert info.value.offset == size + 1
        assert info.value.path == f"{base}/f"

    def test_reader_negative_offset_is_invalid(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"abc")
        with pytest.raises(InvalidOffsetError):
            driver.reader(ctx, f"{base}/f", -1)

    def test_reader_missing_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError):
            driver.reader(ctx, f"{base}/missing")
        with pytest.raises(PathNotFoundError):
            driver.reader(ctx, f"{base}/missing", 10)

    # -- writer --------------------------------------------------------------------------

    def test_writer_tracks_size_and_returns_lengths(self, driver, ctx, base) -> None:
        writer = driver.writer(ctx, f"{base}/f")
        try:
            assert writer.size == 0
            assert writer.write(b"abc") == 3
            assert writer.write(b"") == 0
            assert writer.write(b"de") == 2
            assert writer.size == 5
            writer.commit()
        finally:
            writer.close()
        assert driver.get_content(ctx, f"{base}/f") == b"abcde"

    def test_writer_many_pieces(self, driver, ctx, base) -> None:
        rng = random.Random(42)
        pieces = [payload(rng.randrange(0, 5000), seed=i) for i in range(300)]
        self.write_session(driver, ctx, f"{base}/f", pieces, append=False, commit=True, expect_start=0)
        assert driver.get_content(ctx, f"{base}/f") == b"".join(pieces)

    def test_writer_one_large_write(self, driver, ctx, base) -> None:
        data = payload(11 * MiB + 3)
        self.write_session(driver, ctx, f"{base}/f", [data], append=False, commit=True, expect_start=0)
        assert driver.stat(ctx, f"{base}/f").size == len(data)
        assert driver.get_content(ctx, f"{base}/f") == data

    def test_writer_creates_missing_parents(self, driver, ctx, base) -> None:
        path = f"{base}/x/y/z/data"
        self.write_session(driver, ctx, path, [b"abc"], append=False, commit=True, expect_start=0)
        assert driver.get_content(ctx, path) == b"abc"

    def test_append_to_a_missing_file_is_not_found_and_creates_nothing(self, driver, ctx, base) -> None:
        for path in (f"{base}/never/data", f"{base}/gone/data"):
            if path.endswith("gone/data"):
                self.write_session(driver, ctx, path, [b"abc"], append=False, commit=False, expect_start=0)
                driver.delete(ctx, f"{base}/gone")
            with pytest.raises(PathNotFoundError):
                driver.writer(ctx, path, append=True)
            with pytest.raises(PathNotFoundError):
                driver.stat(ctx, path)

    def test_close_then_append_in_new_writer(self, driver, ctx, base) -> None:
        path = f"{base}/upload/data"
        first, second = payload(1000, seed=1), payload(777, seed=2)
        self.write_session(driver, ctx, path, [first], append=False, commit=False, expect_start=0)
        self.write_session(driver, ctx, path, [second], append=True, commit=True, expect_start=1000)
        assert driver.stat(ctx, path).size == 1777
        assert driver.get_content(ctx, path) == first + second

    @pytest.mark.parametrize("chunk_size", [1, MiB, 7 * MiB], ids=["1B", "1MiB", "7MiB"])
    def test_append_across_sessions(self, driver, ctx, base, chunk_size: int) -> None:
        path = f"{base}/upload/data"
        chunks = [payload(chunk_size, seed=i) for i in range(3)]
        written = 0
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            self.write_session(driver, ctx, path, [chunk], append=i > 0, commit=last, expect_start=written)
            written += len(chunk)
        assert driver.stat(ctx, path).size == written
        assert driver.get_content(ctx, path) == b"".join(chunks)

    def test_append_across_sessions_of_mixed_sizes(self, driver, ctx, base) -> None:
        path = f"{base}/upload/data"
        sizes = [1, 7 * MiB, 1, MiB, 5 * MiB + 3, 2]
        chunks = [payload(size, seed=i) for i, size in enumerate(sizes)]
        written = 0
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            # Several writes per session, as a chunked PATCH body arrives in pieces.
            pieces = [chunk[j:j + 3 * MiB] for j in range(0, len(chunk), 3 * MiB)]
            self.write_session(driver, ctx, path, pieces, append=i > 0, commit=last, expect_start=written)
            written += len(chunk)
        assert driver.stat(ctx, path).size == written
        assert driver.get_content(ctx, path) == b"".join(chunks)

    def test_commit_then_read(self, driver, ctx, base) -> None:
        path = f"{base}/f"
        data = payload(4096)
        self.write_session(driver, ctx, path, [data[:100], data[100:]], append=False, commit=True, expect_start=0)
        assert driver.get_content(ctx, path) == data
        with driver.reader(ctx, path, 100) as stream:
            assert stream.read() == data[100:]
        info = driver.stat(ctx, path)
        assert info.size == len(data) and not info.is_dir

    def test_committed_file_can_be_moved(self, driver, ctx, base) -> None:
        data = payload(3000)
        self.write_session(driver, ctx, f"{base}/upload", [data], append=False, commit=True, expect_start=0)
        driver.move(ctx, f"{base}/upload", f"{base}/blob")
        assert driver.get_content(ctx, f"{base}/blob") == data

    def test_cancel_removes_file(self, driver, ctx, base) -> None:
        path = f"{base}/f"
        writer = driver.writer(ctx, path)
        writer.write(b"doomed")
        writer.cancel()
        writer.close()
        with pytest.raises(PathNotFoundError):
            driver.stat(ctx, path)
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, path)

    def test_cancel_removes_bytes_of_earlier_sessions(self, driver, ctx, base) -> None:
        path = f"{base}/upload/data"
        self.write_session(driver, ctx, path, [b"first"], append=False, commit=False, expect_start=0)
        writer = driver.writer(ctx, path, append=True)
        assert writer.size == 5
        writer.write(b"second")
        writer.cancel()
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, path)

    def test_writer_without_append_truncates_stored_file(self, driver, ctx, base) -> None:
        path = f"{base}/f"
        driver.put_content(ctx, path, payload(100))
        self.write_session(driver, ctx, path, [b"new"], append=False, commit=True, expect_start=0)
        assert driver.get_content(ctx, path) == b"new"

    def test_writer_without_append_discards_earlier_session(self, driver, ctx, base) -> None:
        path = f"{base}/upload/data"
        self.write_session(driver, ctx, path, [payload(1000)], append=False, commit=False, expect_start=0)
        self.write_session(driver, ctx, path, [b"restart"], append=False, commit=True, expect_start=0)
        assert driver.get_content(ctx, path) == b"restart"

    @pytest.mark.parametrize("finish", ["commit", "close", "cancel"])
    def test_finished_writer_refuses_writes(self, driver, ctx, base, finish: str) -> None:
        writer = driver.writer(ctx, f"{base}/f")
        writer.write(b"x")
        getattr(writer, finish)()
        with pytest.raises(StorageError):
            writer.write(b"y")
        writer.close()

    @pytest.mark.parametrize("finish", ["commit", "cancel"])
    def test_closed_writer_refuses_to_finish_again(self, driver, ctx, base, finish: str) -> None:
        writer = driver.writer(ctx, f"{base}/f")
        writer.write(b"x")
        writer.close()
        with pytest.raises(StorageError):
            getattr(writer, finish)()

    def test_close_is_idempotent(self, driver, ctx, base) -> None:
        writer = driver.writer(ctx, f"{base}/f")
        writer.write(b"abc")
        writer.commit()
        writer.close()
        writer.close()
        assert driver.get_content(ctx, f"{base}/f") == b"abc"

    # -- stat ---------------------------------------------------------------------------

    def test_stat_file(self, driver, ctx, base) -> None:
        path = f"{base}/dir/f"
        driver.put_content(ctx, path, payload(1234))
        info = driver.stat(ctx, path)
        assert isinstance(info, FileInfo)
        assert (info.path, info.size, info.is_dir) == (path, 1234, False)
        assert isinstance(info.mod_time, datetime) and info.mod_time.tzinfo is not None
        assert abs(info.mod_time - datetime.now(timezone.utc)) < timedelta(minutes=10)

    def test_stat_empty_file(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/empty", b"")
        info = driver.stat(ctx, f"{base}/empty")
        assert (info.size, info.is_dir) == (0, False)

    def test_stat_directory(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/dir/sub/f", b"x")
        for path in (base, f"{base}/dir", f"{base}/dir/sub"):
            info = driver.stat(ctx, path)
            assert info.is_dir and info.path == path
            # Buckets have no directory times; where a driver gives one it must be aware.
            assert info.mod_time is None or info.mod_time.tzinfo is not None

    def test_stat_missing_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError) as info:
            driver.stat(ctx, f"{base}/missing")
        assert info.value.path == f"{base}/missing"

    def test_stat_root_is_a_directory(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"x")
        assert driver.stat(ctx, "/").is_dir

    # -- list -----------------------------------------------------------------------------

    def test_list_children_with_full_paths(self, driver, ctx, base) -> None:
        for path in ("a", "a-b", "a.b", "b/c", "b/d/e", "b/d/f", "_c/x"):
            driver.put_content(ctx, f"{base}/{path}", b"x")
        assert sorted(driver.list(ctx, base)) == [f"{base}/{name}" for name in ["_c", "a", "a-b", "a.b", "b"]]
        assert sorted(driver.list(ctx, f"{base}/b")) == [f"{base}/b/c", f"{base}/b/d"]
        assert sorted(driver.list(ctx, f"{base}/b/d")) == [f"{base}/b/d/e", f"{base}/b/d/f"]

    def test_list_entries_are_valid_paths(self, driver, ctx, base) -> None:
        for name in ODD_NAMES:
            driver.put_content(ctx, f"{base}/{name}", b"x")
        children = driver.list(ctx, base)
        assert sorted(children) == sorted(f"{base}/{name}" for name in ODD_NAMES)
        for child in children:
            check_path("suite", child)
            assert driver.stat(ctx, child).size == 1

    def test_list_does_not_cross_into_prefix_siblings(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/d/x", b"1")
        driver.put_content(ctx, f"{base}/d-2/y", b"2")
        driver.put_content(ctx, f"{base}/dd", b"3")
        assert driver.list(ctx, f"{base}/d") == [f"{base}/d/x"]

    def test_list_root_includes_prefix(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"x")
        root = driver.list(ctx, "/")
        assert base in root
        assert all(path.count("/") == 1 for path in root)

    def test_list_missing_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError):
            driver.list(ctx, f"{base}/missing")

    def test_list_file_is_path_not_found(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"x")
        with pytest.raises(PathNotFoundError):
            driver.list(ctx, f"{base}/f")

    def test_the_proxy_lease_elects_one_holder_on_this_driver(self, driver, ctx, base) -> None:
        """The pull-through cache's lease (registry/proxy/lease.py) is an election built on
        put_content, list and delete; it holds on a driver whose list shows what was just
        written. Contenders as separate processes would be: a lease object each."""
        import os
        import threading

        from chalicelib.registry.proxy.lease import StorageLease

        key = "sha256:" + os.urandom(32).hex()  # the lease folder is the registry's, not under base
        contenders = [StorageLease(driver, ttl=30.0) for _ in range(8)]
        held: list = [None] * len(contenders)
        barrier = threading.Barrier(len(contenders))

        def contend(i: int) -> None:
            barrier.wait()
            held[i] = contenders[i].acquire(ctx, key)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        holders = [h for h in held if h is not None]
        assert len(holders) == 1
        assert contenders[0].busy(ctx, key)
        holders[0].release()
        assert not contenders[0].busy(ctx, key)
        try:
            assert driver.list(ctx, StorageLease.folder(key)) == []  # the losers withdrew
        except PathNotFoundError:
            pass  # a folder with no file left is gone (S3, Azure, in memory)

    # -- move --------------------------------------------------------------------------------

    def test_move_to_new_path_creates_parents(self, driver, ctx, base) -> None:
        data = payload(10 * KiB)
        driver.put_content(ctx, f"{base}/src/f", data)
        driver.put_content(ctx, f"{base}/src/sibling", b"stay")
        driver.move(ctx, f"{base}/src/f", f"{base}/dst/a/b/f")
        assert driver.get_content(ctx, f"{base}/dst/a/b/f") == data
        with pytest.raises(PathNotFoundError):
            driver.stat(ctx, f"{base}/src/f")
        assert driver.get_content(ctx, f"{base}/src/sibling") == b"stay"

    def test_move_overwrites_existing_file(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/src", b"new")
        driver.put_content(ctx, f"{base}/dst", payload(5000))
        driver.move(ctx, f"{base}/src", f"{base}/dst")
        assert driver.get_content(ctx, f"{base}/dst") == b"new"
        assert driver.stat(ctx, f"{base}/dst").size == 3
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, f"{base}/src")

    def test_move_large_file_is_identical(self, driver, ctx, base) -> None:
        data = payload(6 * MiB + 1)
        driver.put_content(ctx, f"{base}/src", data)
        driver.move(ctx, f"{base}/src", f"{base}/blobs/data")
        assert driver.get_content(ctx, f"{base}/blobs/data") == data

    def test_move_missing_source_is_path_not_found(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/dst", b"untouched")
        with pytest.raises(PathNotFoundError) as info:
            driver.move(ctx, f"{base}/missing", f"{base}/dst")
        assert info.value.path == f"{base}/missing"
        assert driver.get_content(ctx, f"{base}/dst") == b"untouched"
        with pytest.raises(PathNotFoundError):
            driver.move(ctx, f"{base}/missing", f"{base}/new/dst")
        with pytest.raises(PathNotFoundError):
            driver.stat(ctx, f"{base}/new/dst")

    # -- delete --------------------------------------------------------------------------------

    def test_delete_file_leaves_siblings(self, driver, ctx, base) -> None:
        for name in ("f", "f2", "f-x", "g"):
            driver.put_content(ctx, f"{base}/d/{name}", name.encode())
        driver.delete(ctx, f"{base}/d/f")
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, f"{base}/d/f")
        assert sorted(driver.list(ctx, f"{base}/d")) == [f"{base}/d/{n}" for n in ("f-x", "f2", "g")]
        with pytest.raises(PathNotFoundError):
            driver.delete(ctx, f"{base}/d/f")

    def test_delete_directory_tree(self, driver, ctx, base) -> None:
        tree = ["t/a", "t/b/c", "t/b/d/e", "t/_x/y"]
        siblings = ["t2/a", "t-x", "tt/a", "u"]
        for path in tree + siblings:
            driver.put_content(ctx, f"{base}/{path}", path.encode())
        driver.delete(ctx, f"{base}/t")
        for path in tree:
            with pytest.raises(PathNotFoundError):
                driver.get_content(ctx, f"{base}/{path}")
        with pytest.raises(PathNotFoundError):
            driver.stat(ctx, f"{base}/t")
        for path in siblings:
            assert driver.get_content(ctx, f"{base}/{path}") == path.encode()
        assert f"{base}/t" not in driver.list(ctx, base)
        with pytest.raises(PathNotFoundError):
            driver.delete(ctx, f"{base}/t")

    def test_delete_missing_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError) as info:
            driver.delete(ctx, f"{base}/missing")
        assert info.value.path == f"{base}/missing"

    # -- walk -------------------------------------------------------------------------------------

    def test_walk_is_complete_and_depth_first(self, driver, ctx, base) -> None:
        files = {
            "r/f": 1, "r/a-b/x": 2, "r/a.b": 3, "r/a/c": 4, "r/a/d/e": 5, "r/a/d/f": 0,
            "r/_layers/sha256/l/link": 7, "r/.hidden": 8, "r/z/y/x/w": 9, "r2/outside": 10,
        }
        for path, size in files.items():
            driver.put_content(ctx, f"{base}/{path}", payload(size))
        root = f"{base}/r"
        infos = list(driver.walk(ctx, root))

        expected_files = {f"{base}/{p}": s for p, s in files.items() if p.startswith("r/")}
        expected_dirs = set()
        for path in expected_files:
            while (path := posixpath.dirname(path)) != root:
                expected_dirs.add(path)
        paths = [info.path for info in infos]
        assert len(paths) == len(set(paths)), "walk yielded a path twice"
        assert {i.path for i in infos if i.is_dir} == expected_dirs
        assert {i.path: i.size for i in infos if not i.is_dir} == expected_files
        assert_depth_first(infos, root)

    def test_walk_root_of_prefix(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/one", b"1")
        driver.put_content(ctx, f"{base}/d/two", b"22")
        infos = list(driver.walk(ctx, base))
        assert [(i.path, i.is_dir) for i in infos if i.path == base] == []
        assert {(i.path, i.is_dir) for i in infos} == {
            (f"{base}/one", False), (f"{base}/d", True), (f"{base}/d/two", False)}
        assert_depth_first(infos, base)

    def test_walk_missing_is_path_not_found(self, driver, ctx, base) -> None:
        with pytest.raises(PathNotFoundError):
            list(driver.walk(ctx, f"{base}/missing"))

    def test_walk_file_is_path_not_found(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"x")
        with pytest.raises(PathNotFoundError):
            list(driver.walk(ctx, f"{base}/f"))

    # -- concurrency ---------------------------------------------------------------------------------

    def test_concurrent_put_into_one_directory_keeps_all(self, driver, ctx, base) -> None:
        def put(thread: int) -> None:
            for i in range(4):
                driver.put_content(ctx, f"{base}/d/t{thread}-{i}", payload(2000 + i, seed=thread))

        with ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(put, t) for t in range(8)]:
                future.result()
        expected = sorted(f"{base}/d/t{t}-{i}" for t in range(8) for i in range(4))
        assert sorted(driver.list(ctx, f"{base}/d")) == expected
        for t in range(8):
            for i in range(4):
                assert driver.get_content(ctx, f"{base}/d/t{t}-{i}") == payload(2000 + i, seed=t)

    def test_concurrent_put_to_one_path_leaves_one_whole_version(self, driver, ctx, base) -> None:
        path = f"{base}/contended"
        versions = [payload(64 * KiB + t, seed=t) for t in range(8)]
        with ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(driver.put_content, ctx, path, v) for v in versions]:
                future.result()
        assert driver.get_content(ctx, path) in versions

    def test_readers_never_see_partial_put(self, driver, ctx, base) -> None:
        path = f"{base}/f"
        versions = [payload(256 * KiB, seed=1), payload(128 * KiB, seed=2)]
        driver.put_content(ctx, path, versions[0])
        done = threading.Event()

        def overwrite() -> None:
            try:
                for i in range(20):
                    driver.put_content(ctx, path, versions[i % 2])
            finally:
                done.set()

        thread = threading.Thread(target=overwrite)
        thread.start()
        try:
            reads = 0
            while not done.is_set() or reads < 5:
                assert driver.get_content(ctx, path) in versions
                reads += 1
        finally:
            thread.join()

    # -- redirect --------------------------------------------------------------------------------------

    def test_redirect_url_is_none_or_url(self, driver, ctx, base) -> None:
        driver.put_content(ctx, f"{base}/f", b"x")
        url = driver.redirect_url(ctx, "GET", f"{base}/f", 1200)
        assert url is None or (isinstance(url, str) and url.startswith(("http://", "https://")))
