"""The filesystem driver's openat2 fast path for reads, and its realpath() fallback,
must agree: same bytes, same errors, same refusal to leave the root."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.context import Context
from chalicelib.storage import InvalidPathError, PathNotFoundError
from chalicelib.storage.filesystem import FilesystemDriver, beneath


@pytest.fixture(params=["openat2", "realpath"])
def driver(request, tmp_path: Path, monkeypatch) -> Iterator[FilesystemDriver]:
    root = tmp_path / "root"
    root.mkdir()
    if request.param == "realpath":
        monkeypatch.setattr(beneath, "_openat2", False)
        yield FilesystemDriver(str(root))
        return
    # Probed here by a real call, and checked after the test, so that this half cannot
    # quietly test the realpath() route twice: the driver turns openat2 off for good at
    # the first ENOSYS/EPERM (an old kernel, a seccomp filter), and loading the wrapper
    # does not call the system call.
    openat2 = beneath.load_openat2()
    if openat2 is False:
        pytest.skip("openat2 is not available here")
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(openat2(root_fd, b".", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        pytest.skip(f"openat2 is refused here: {exc}")
    finally:
        os.close(root_fd)
    monkeypatch.setattr(beneath, "_openat2", openat2)
    yield FilesystemDriver(str(root))
    assert beneath._openat2 is openat2, "openat2 was turned off during the test"


def test_reads_agree(driver: FilesystemDriver) -> None:
    ctx = Context()
    driver.put_content(ctx, "/a/b/link", b"sha256:" + b"0" * 64)
    assert driver.get_content(ctx, "/a/b/link") == b"sha256:" + b"0" * 64
    with driver.reader(ctx, "/a/b/link", 7) as f:
        assert f.read() == b"0" * 64
    driver.put_content(ctx, "/empty", b"")
    assert driver.get_content(ctx, "/empty") == b""


def test_missing_and_directories_are_not_found(driver: FilesystemDriver) -> None:
    ctx = Context()
    driver.put_content(ctx, "/dir/file", b"x")
    for path in ("/dir", "/nothing", "/dir/file/below"):
        with pytest.raises(PathNotFoundError):
            driver.get_content(ctx, path)
        with pytest.raises(PathNotFoundError):
            driver.reader(ctx, path)


def test_stat_agrees(driver: FilesystemDriver) -> None:
    ctx = Context()
    driver.put_content(ctx, "/dir/file", b"12345")
    info = driver.stat(ctx, "/dir/file")
    assert (info.path, info.size, info.is_dir) == ("/dir/file", 5, False)
    assert info.mod_time is not None and info.mod_time.tzinfo is not None
    info = driver.stat(ctx, "/dir")
    assert (info.path, info.size, info.is_dir) == ("/dir", 0, True)
    for path in ("/nothing", "/dir/nothing", "/dir/file/below"):
        with pytest.raises(PathNotFoundError):
            driver.stat(ctx, path)
    os.mkfifo(Path(driver.root_directory) / "dir" / "fifo")
    assert not driver.stat(ctx, "/dir/fifo").is_dir  # stat never opens it for reading: no hang


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_refused_directory_leaves_no_open_descriptor(driver: FilesystemDriver) -> None:
    driver.put_content(Context(), "/dir/file", b"x")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(PathNotFoundError):
            driver.reader(Context(), "/dir")
    assert len(os.listdir("/proc/self/fd")) == before


def test_relative_symlink_climbing_out_is_refused(driver: FilesystemDriver, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    root = Path(driver.root_directory)
    (root / "up").symlink_to("../secret")
    (root / "inside").symlink_to("dir")
    driver.put_content(Context(), "/dir/f", b"ok")
    with pytest.raises(InvalidPathError):
        driver.get_content(Context(), "/up")
    with pytest.raises(InvalidPathError):
        driver.reader(Context(), "/up")
    with pytest.raises(InvalidPathError):
        driver.stat(Context(), "/up")
    assert driver.get_content(Context(), "/inside/f") == b"ok"  # relative, within the root
    assert driver.stat(Context(), "/inside/f").size == 2


@pytest.mark.parametrize("size", [0, 1, 8191, 8192, 8193, 3 * 1024 * 1024 + 7])
def test_reads_of_every_size_are_whole(driver: FilesystemDriver, size: int) -> None:
    # small files come back from one read with no fstat (files.read_all); the sizes
    # around that first read's length, and a large one, must read whole all the same
    data = os.urandom(size)
    driver.put_content(Context(), "/sized/file", data)
    assert driver.get_content(Context(), "/sized/file") == data
