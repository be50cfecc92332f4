"""The filesystem driver: the conformance suite plus on-disk behaviour — the
registry:2 layout, atomic writes, crash leftovers and confinement to the root."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import (  # noqa: E402
    InvalidPathError,
    PathNotFoundError,
    StorageError,
    create_driver,
)
from chalicelib.storage.filesystem import (  # noqa: E402
    DEFAULT_ROOT_DIRECTORY,
    FilesystemDriver,
    from_parameters,
)
from tests.storage_suite import StorageDriverSuite  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
V2 = "/docker/registry/v2"
DIGEST = "sha256:" + "ab" * 32


class TestFilesystemDriver(StorageDriverSuite):
    """Uploads written with O_DIRECT (the default) and through the page cache."""

    @pytest.fixture(params=[True, False], ids=["direct", "cached"])
    def driver(self, request, tmp_path: Path) -> FilesystemDriver:
        return from_parameters({"rootdirectory": str(tmp_path / "root"), "directwrites": request.param})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def driver(root: Path) -> FilesystemDriver:
    return from_parameters({"rootdirectory": str(root)})


@pytest.fixture
def ctx() -> Context:
    return Context()


def tree(directory: Path) -> dict[str, bytes | None]:
    """Every entry below directory: file bytes, or None for a directory."""
    return {
        str(p.relative_to(directory)): None if p.is_dir() else p.read_bytes()
        for p in sorted(directory.rglob("*"))
    }


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# -- parameters ---------------------------------------------------------------------------


def test_factory_builds_filesystem_driver(root: Path) -> None:
    driver = create_driver("filesystem", {"rootdirectory": str(root)})
    assert isinstance(driver, FilesystemDriver) and driver.name == "filesystem"
    assert driver.root_directory == str(root.resolve())


def test_default_root_is_the_reference_registrys() -> None:
    assert DEFAULT_ROOT_DIRECTORY == "/var/lib/registry"
    assert from_parameters({}).root_directory == os.path.realpath("/var/lib/registry")


def test_relative_and_pathlike_roots_are_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert from_parameters({"rootdirectory": "data"}).root_directory == str(tmp_path.resolve() / "data")
    assert from_parameters({"rootdirectory": tmp_path / "p"}).root_directory == str(tmp_path.resolve() / "p")


@pytest.mark.parametrize("value", [5, None, "", "   ", ["/a"], True, {"a": 1}, "/a\x00b"])
def test_bad_rootdirectory_names_the_key(value) -> None:
    with pytest.raises(ValueError, match=r"storage\.filesystem\.rootdirectory"):
        from_parameters({"rootdirectory": value})


def test_maxthreads_is_accepted_like_the_reference(root: Path) -> None:
    assert from_parameters({"rootdirectory": str(root), "maxthreads": 200}).max_threads == 200
    assert from_parameters({"rootdirectory": str(root), "maxthreads": "150"}).max_threads == 150
    assert from_parameters({"rootdirectory": str(root), "maxthreads": 3}).max_threads == 25
    for bad in ("many", True, 2.5):
        with pytest.raises(ValueError, match=r"storage\.filesystem\.maxthreads"):
            from_parameters({"rootdirectory": str(root), "maxthreads": bad})


def test_unknown_parameter_names_the_key(root: Path) -> None:
    with pytest.raises(ValueError, match=r"storage\.filesystem\.rootdir\b"):
        from_parameters({"rootdir": str(root)})


# -- layout ---------------------------------------------------------------------------------


def test_paths_map_onto_the_registry_2_layout(driver, ctx, root: Path) -> None:
    hexa = DIGEST.split(":")[1]
    link = f"{V2}/repositories/library/app/_manifests/tags/latest/current/link"
    driver.put_content(ctx, link, DIGEST.encode())
    assert (root / link[1:]).read_bytes() == DIGEST.encode()

    upload = f"{V2}/repositories/library/app/_uploads/u-1/data"
    writer = driver.writer(ctx, upload)
    writer.write(b"layer")
    writer.commit()
    writer.close()
    assert (root / upload[1:]).read_bytes() == b"layer"

    blob = f"{V2}/blobs/sha256/{hexa[:2]}/{hexa}/data"
    driver.move(ctx, upload, blob)
    assert (root / blob[1:]).read_bytes() == b"layer"
    assert not (root / upload[1:]).exists()


def test_a_tree_written_by_registry_2_is_served_as_is(driver, ctx, root: Path) -> None:
    hexa = DIGEST.split(":")[1]
    files = {
        f"docker/registry/v2/blobs/sha256/{hexa[:2]}/{hexa}/data": b"{}",
        f"docker/registry/v2/repositories/app/_manifests/revisions/sha256/{hexa}/link": DIGEST.encode(),
        "docker/registry/v2/repositories/app/_manifests/tags/v1/current/link": DIGEST.encode(),
        "docker/registry/v2/repositories/app/_uploads/u/startedat": b"2024-01-01T00:00:00Z",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for name, data in files.items():
        assert driver.get_content(ctx, "/" + name) == data
    assert driver.list(ctx, f"{V2}/repositories/app") == [
        f"{V2}/repositories/app/_manifests", f"{V2}/repositories/app/_uploads"]
    walked = {i.path for i in driver.walk(ctx, V2) if not i.is_dir}
    assert walked == {"/" + name for name in files}


def test_delete_prunes_no_parent_directories(driver, ctx, root: Path) -> None:
    driver.put_content(ctx, "/a/b/f", b"x")
    driver.delete(ctx, "/a/b/f")
    assert (root / "a" / "b").is_dir()
    assert driver.list(ctx, "/a/b") == []
    assert driver.stat(ctx, "/a/b").is_dir


def test_files_get_the_permissions_registry_2_uses(driver, ctx, root: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    driver.put_content(ctx, "/d/put", b"x")
    driver.writer(ctx, "/d/written").close()
    for name in ("put", "written"):
        assert (root / "d" / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert (root / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_missing_root_directory_is_an_empty_registry(driver, ctx, root: Path) -> None:
    assert not root.exists()
    assert driver.list(ctx, "/") == []
    assert list(driver.walk(ctx, "/")) == []
    assert driver.stat(ctx, "/").is_dir
    driver.put_content(ctx, "/f", b"x")
    assert (root / "f").read_bytes() == b"x"
    assert driver.list(ctx, "/") == ["/f"]


def test_entries_that_are_not_storage_names_are_hidden(driver, ctx, root: Path) -> None:
    driver.put_content(ctx, "/d/ok", b"x")
    (root / "lost+found").mkdir()
    (root / "d" / "with space").write_bytes(b"x")
    assert driver.list(ctx, "/") == ["/d"]
    assert driver.list(ctx, "/d") == ["/d/ok"]
    assert [i.path for i in driver.walk(ctx, "/")] == ["/d", "/d/ok"]


# -- atomicity and durability --------------------------------------------------------------


def test_killed_put_leaves_old_content_and_an_invisible_temp(driver, ctx, root: Path) -> None:
    driver.put_content(ctx, "/d/f", b"old")
    result = run_python(f"""
        import os
        from chalicelib.context import Context
        from chalicelib.storage.filesystem import from_parameters
        os.replace = lambda *a, **k: os._exit(9)   # die between write and rename
        from_parameters({{"rootdirectory": {str(root)!r}}}).put_content(Context(), "/d/f", b"new" * 100000)
    """)
    assert result.returncode == 9, result.stderr
    leftovers = [p for p in (root / "d").iterdir() if p.name != "f"]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 300000
    assert driver.get_content(ctx, "/d/f") == b"old"
    assert driver.list(ctx, "/d") == ["/d/f"]
    assert [i.path for i in driver.walk(ctx, "/")] == ["/d", "/d/f"]
    driver.delete(ctx, "/d")
    assert not (root / "d").exists()


def test_put_fsyncs_before_rename(driver, ctx, monkeypatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    driver.put_content(ctx, "/f", b"data")
    assert calls[:2] == ["fsync", "replace"]


def test_failed_put_keeps_old_content_and_leaves_no_temp(driver, ctx, root: Path, monkeypatch) -> None:
    driver.put_content(ctx, "/d/f", b"old")

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageError, match="No space left") as info:
        driver.put_content(ctx, "/d/f", b"new")
    assert not isinstance(info.value, PathNotFoundError)
    monkeypatch.undo()
    assert sorted(p.name for p in (root / "d").iterdir()) == ["f"]
    assert driver.get_content(ctx, "/d/f") == b"old"


def test_commit_and_close_fsync(driver, ctx, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    writer = driver.writer(ctx, "/a/f")
    synced.clear()  # creating the file syncs its directory
    writer.write(b"x")
    writer.close()
    assert len(synced) == 1
    writer = driver.writer(ctx, "/a/f", append=True)
    writer.write(b"y")
    writer.commit()
    assert len(synced) == 2
    writer.close()


def test_append_continues_a_file_written_by_another_process(driver, ctx, root: Path) -> None:
    result = run_python(f"""
        from chalicelib.context import Context
        from chalicelib.storage.filesystem import from_parameters
        w = from_parameters({{"rootdirectory": {str(root)!r}}}).writer(Context(), "/u/data")
        w.write(b"from another process;")
        w.close()
    """)
    assert result.returncode == 0, result.stderr
    writer = driver.writer(ctx, "/u/data", append=True)
    assert writer.size == len(b"from another process;")
    writer.write(b" and this one")
    writer.commit()
    writer.close()
    assert driver.get_content(ctx, "/u/data") == b"from another process; and this one"


def test_reader_is_a_real_file_at_the_offset(driver, ctx) -> None:
    driver.put_content(ctx, "/f", b"0123456789")
    with driver.reader(ctx, "/f", 4) as stream:
        assert isinstance(stream, io.BufferedReader)
        assert stream.tell() == 4
        assert os.fstat(stream.fileno()).st_size == 10
        assert os.pread(stream.fileno(), 3, stream.tell()) == b"456"
        assert stream.read() == b"456789"


# -- errors -------------------------------------------------------------------------------------


def test_os_errors_become_storage_errors(driver, ctx, monkeypatch) -> None:
    driver.put_content(ctx, "/f", b"x")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "listdir", broken)
    monkeypatch.setattr(os, "stat", broken)
    monkeypatch.setattr(os, "fstat", broken)  # stat() through openat2
    monkeypatch.setattr(os, "lstat", broken)
    for operation in (
        lambda: driver.list(ctx, "/"),
        lambda: driver.stat(ctx, "/f"),
        lambda: driver.delete(ctx, "/f"),
        lambda: driver.move(ctx, "/f", "/g"),
    ):
        with pytest.raises(StorageError, match="Input/output error") as info:
            operation()
        assert type(info.value) is StorageError
    monkeypatch.undo()  # before pytest's output capture, which calls os.fstat


def test_write_errors_keep_size_honest(root: Path, ctx, monkeypatch) -> None:
    # the page-cache writer; tests/test_storage_filesystem_direct.py has the direct one's
    writer = FilesystemDriver(str(root), direct_writes=False).writer(ctx, "/f")
    real_write = os.write
    calls = iter([lambda fd, d: real_write(fd, d[:3]), None])

    def partial_then_full(fd, data):
        step = next(calls)
        if step is None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return step(fd, data)

    monkeypatch.setattr(os, "write", partial_then_full)
    with pytest.raises(StorageError):
        writer.write(b"abcdef")
    monkeypatch.undo()
    assert writer.size == 3
    writer.cancel()


def test_put_over_a_directory_is_a_storage_error(driver, ctx, root: Path) -> None:
    driver.put_content(ctx, "/d/f", b"x")
    with pytest.raises(StorageError):
        driver.put_content(ctx, "/d", b"y")
    with pytest.raises(StorageError):
        driver.writer(ctx, "/d")
    assert sorted(p.name for p in (root / "d").iterdir()) == ["f"]


def test_files_cannot_be_created_below_a_file(driver, ctx) -> None:
    driver.put_content(ctx, "/f", b"x")
    for operation in (
        lambda: driver.put_content(ctx, "/f/g", b"y"),
        lambda: driver.writer(ctx, "/f/g"),
        lambda: driver.move(ctx, "/f", "/f/g"),
    ):
        with pytest.raises(StorageError) as info:
            operation()
        assert not isinstance(info.value, PathNotFoundError)
    assert driver.get_content(ctx, "/f") == b"x"


def test_walk_survives_concurrent_deletion(driver, ctx) -> None:
    for path in ("/r/a/x", "/r/a/y/z", "/r/b/x", "/r/c"):
        driver.put_content(ctx, path, b"1")
    seen = []
    for info in driver.walk(ctx, "/r"):
        seen.append(info.path)
        if info.path == "/r/a":
            driver.delete(ctx, "/r/a")  # as GC or upload purging would, mid-walk
    assert seen == ["/r/a", "/r/b", "/r/b/x", "/r/c"]


# -- confinement ---------------------------------------------------------------------------------

HOSTILE_PATHS = [
    "../escape", "/../escape", "/a/../../escape", "/..", "//escape", "/a/./../../escape",
    "/%2e%2e/escape", "/a\x00b", "/escape\n", "/~/escape", "/$HOME", "/..\\escape",
    "/a/../../../../../../../../tmp/escape", "/\u2024\u2024/escape", "\\escape",
]


@pytest.mark.parametrize("hostile", HOSTILE_PATHS)
def test_hostile_paths_create_nothing_anywhere(driver, ctx, tmp_path: Path, hostile: str) -> None:
    driver.put_content(ctx, "/a/src", b"keep")
    before = tree(tmp_path)
    operations = [
        lambda: driver.put_content(ctx, hostile, b"x"),
        lambda: driver.writer(ctx, hostile).commit(),
        lambda: driver.writer(ctx, hostile, append=True).commit(),
        lambda: driver.move(ctx, "/a/src", hostile),
        lambda: driver.move(ctx, hostile, "/a/dst"),
        lambda: driver.delete(ctx, hostile),
        lambda: driver.get_content(ctx, hostile),
        lambda: driver.reader(ctx, hostile),
        lambda: driver.stat(ctx, hostile),
        lambda: driver.list(ctx, hostile),
        lambda: list(driver.walk(ctx, hostile)),
    ]
    for operation in operations:
        with pytest.raises(InvalidPathError):
            operation()
    assert tree(tmp_path) == before


@pytest.fixture
def outside(tmp_path: Path, root: Path) -> Path:
    """A directory outside the root, reachable through the symlink root/evil."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "secret").write_bytes(b"secret")
    root.mkdir()
    (root / "evil").symlink_to(target)
    (root / "evil-file").symlink_to(target / "secret")
    return target


def test_symlinks_out_of_the_root_are_refused(driver, ctx, outside: Path) -> None:
    driver.put_content(ctx, "/src", b"x")
    for operation in (
        lambda: driver.put_content(ctx, "/evil/new", b"x"),
        lambda: driver.writer(ctx, "/evil/new"),
        lambda: driver.move(ctx, "/src", "/evil/new"),
        lambda: driver.move(ctx, "/evil/secret", "/stolen"),
        lambda: driver.get_content(ctx, "/evil/secret"),
        lambda: driver.get_content(ctx, "/evil-file"),
        lambda: driver.reader(ctx, "/evil-file"),
        lambda: driver.list(ctx, "/evil"),
        lambda: driver.delete(ctx, "/evil/secret"),
        lambda: driver.delete(ctx, "/evil"),
        lambda: driver.put_content(ctx, "/evil-file", b"overwrite"),
    ):
        with pytest.raises(InvalidPathError):
            operation()
    assert tree(outside) == {"secret": b"secret"}
    walked = [i.path for i in driver.walk(ctx, "/")]
    assert walked == ["/src"]


def test_symlinks_within_the_root_are_followed(driver, ctx, root: Path) -> None:
    driver.put_content(ctx, "/real/f", b"x")
    (root / "alias").symlink_to(root / "real")
    assert driver.get_content(ctx, "/alias/f") == b"x"
    driver.delete(ctx, "/alias")  # removes the link, never what it points to
    assert (root / "real" / "f").read_bytes() == b"x"


def test_root_reached_through_a_symlink_works(tmp_path: Path, ctx) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "mount").symlink_to(tmp_path / "disk")
    driver = from_parameters({"rootdirectory": str(tmp_path / "mount")})
    driver.put_content(ctx, "/f", b"x")
    assert (tmp_path / "disk" / "f").read_bytes() == b"x"
    assert driver.list(ctx, "/") == ["/f"]
