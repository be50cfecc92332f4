"""The RADOS driver against a real single-node Ceph cluster started for this module.

The conformance suite, plus what is particular to RADOS: the omap directory
layout the reference registry used, striping at chunk boundaries, moves that copy
no data, writers in many processes, and a skopeo push and pull through
`stratus serve` storing in the pool. Skips with the reason when Ceph is missing.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import PathNotFoundError, StorageError, create_driver  # noqa: E402
from tests.ceph_cluster import CephCluster, ceph_cluster, unavailable_reason  # noqa: E402
from tests.storage_suite import StorageDriverSuite, payload  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def ceph() -> Iterator[CephCluster]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # A short path of our own: admin sockets must fit in sockaddr_un (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="stratus-ceph-"))
    try:
        with ceph_cluster(directory / "c") as cluster:
            print(f"\nCeph cluster up in {cluster.start_seconds:.1f}s", file=sys.stderr)
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def make_driver(ceph: CephCluster, **extra: Any):
    return create_driver("rados", {"poolname": ceph.pool, "conffile": str(ceph.conffile), **extra})


@pytest.fixture(scope="module")
def rados_driver(ceph: CephCluster):
    driver = make_driver(ceph)
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def small_driver(ceph: CephCluster):
    """Stripes of 64 KiB, so boundaries are cheap to cross."""
    driver = make_driver(ceph, chunksize=64 * KiB)
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def io(ceph: CephCluster, rados_driver) -> Iterator[Any]:
    """A raw I/O context on the pool, to look at objects behind the driver's back."""
    from chalicelib.storage.rados import import_rados

    rados = import_rados()
    cluster = rados.Rados(conffile=str(ceph.conffile))
    cluster.connect(timeout=30)
    ioctx = cluster.open_ioctx(ceph.pool)
    yield ioctx
    ioctx.close()
    cluster.shutdown()


@pytest.fixture
def ctx() -> Context:
    return Context()


@pytest.fixture
def base(rados_driver, ctx) -> Iterator[str]:
    prefix = f"/rados-{uuid.uuid4().hex[:12]}"
    yield prefix
    try:
        rados_driver.delete(ctx, prefix)
    except PathNotFoundError:
        pass


class TestRadosDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self, rados_driver):
        return rados_driver


class TestRadosDriverSmallStripes(StorageDriverSuite):
    """The whole suite again with 64 KiB stripes: every test crosses boundaries."""

    @pytest.fixture
    def driver(self, small_driver):
        return small_driver


# -- helpers --------------------------------------------------------------------------------


def omap(io: Any, oid: str) -> dict[str, bytes]:
    from chalicelib.storage.rados import import_rados

    rados = import_rados()
    with rados.ReadOpCtx() as op:
        values, _ = io.get_omap_vals(op, "", "", 10000)
        io.operate_read_op(op, oid)
        return {key: value or b"" for key, value in values}


def oid_of(io: Any, path: str) -> str:
    parent, _, name = path.rpartition("/")
    entry = omap(io, parent or "/")[name]
    assert entry.startswith(b"blob:"), entry
    return entry.decode()


def stripes(ceph: CephCluster, oid: str) -> list[str]:
    names = [n for n in ceph.object_names() if n.startswith(oid + "-")]
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))


def size_xattr(size: int) -> bytes:
    return size.to_bytes(8, "little") + b"\0\0"


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


# -- layout ---------------------------------------------------------------------------------


def test_layout_is_the_reference_drivers(rados_driver, io, ctx, base) -> None:
    rados_driver.put_content(ctx, f"{base}/a/b/file", b"hello")
    assert omap(io, "/")[base[1:]] == b""
    assert omap(io, base) == {"a": b""}
    assert omap(io, f"{base}/a") == {"b": b""}
    oid = oid_of(io, f"{base}/a/b/file")
    uuid.UUID(oid[len("blob:"):])
    assert io.read(f"{oid}-0") == b"hello"
    assert io.get_xattr(f"{oid}-0", "total-size") == size_xattr(5)


def test_reads_a_pool_written_by_the_reference_driver(small_driver, io, ceph, ctx, base) -> None:
    # As registry:2's driver wrote it: omap entries, stripes of chunksize, a 10-byte
    # total-size xattr, and none of Stratus's own xattrs.
    chunk = small_driver.chunksize
    data = payload(2 * chunk + 100)
    oid = f"blob:{uuid.uuid4()}"
    for index in range(3):
        io.write_full(f"{oid}-{index}", data[index * chunk:(index + 1) * chunk])
    io.set_xattr(f"{oid}-0", "total-size", size_xattr(len(data)))
    from chalicelib.storage.rados import import_rados

    rados = import_rados()
    entries = [("/", base[1:], b""), (base, "repo", b""), (f"{base}/repo", "data", oid.encode())]
    for directory, name, value in entries:
        with rados.WriteOpCtx() as op:
            io.set_omap(op, (name,), (value,))
            io.operate_write_op(op, directory)

    path = f"{base}/repo/data"
    assert small_driver.get_content(ctx, path) == data
    assert small_driver.stat(ctx, path).size == len(data)
    with small_driver.reader(ctx, path, chunk - 3) as stream:
        assert stream.read(6) == data[chunk - 3:chunk + 3]
    assert [i.path for i in small_driver.walk(ctx, base)] == [f"{base}/repo", path]
    writer = small_driver.writer(ctx, path, append=True)
    assert writer.size == len(data)
    writer.write(b"more")
    writer.commit()
    assert small_driver.get_content(ctx, path) == data + b"more"
    small_driver.delete(ctx, base)
    assert stripes(ceph, oid) == []
    assert base not in ceph.object_names()


def test_delete_removes_empty_directory_objects(rados_driver, ceph, ctx, base) -> None:
    rados_driver.put_content(ctx, f"{base}/keep/f", b"1")
    rados_driver.put_content(ctx, f"{base}/a/b/c/f", b"2")
    rados_driver.delete(ctx, f"{base}/a/b/c/f")
    names = set(ceph.object_names())
    assert {f"{base}/a", f"{base}/a/b", f"{base}/a/b/c"}.isdisjoint(names)
    assert {base, f"{base}/keep"} <= names
    assert rados_driver.list(ctx, base) == [f"{base}/keep"]
    rados_driver.delete(ctx, f"{base}/keep")
    assert not any(n == base or n.startswith(base + "/") for n in ceph.object_names())


def test_delete_tree_removes_every_object_below(rados_driver, ceph, io, ctx, base) -> None:
    paths = [f"{base}/t/a", f"{base}/t/b/c", f"{base}/t/b/d/e"]
    for path in paths:
        rados_driver.put_content(ctx, path, payload(5 * MiB))  # two stripes each
    oids = [oid_of(io, path) for path in paths]
    rados_driver.delete(ctx, f"{base}/t")
    names = ceph.object_names()
    assert not [n for n in names if any(n.startswith(oid) for oid in oids)]
    assert not [n for n in names if n.startswith(f"{base}/")]


# -- striping -------------------------------------------------------------------------------

C = 64 * KiB  # small_driver's stripe size


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C - 1, 2 * C, 2 * C + 1, 3 * C + 5])
def test_put_stripes_at_chunk_boundaries(small_driver, ceph, io, ctx, base, size: int) -> None:
    data = payload(size)
    path = f"{base}/f"
    small_driver.put_content(ctx, path, data)
    oid = oid_of(io, path)
    names = stripes(ceph, oid)
    assert len(names) == max(1, math.ceil(size / C))
    for index, name in enumerate(names):
        assert io.stat(name)[0] == len(data[index * C:(index + 1) * C])
    assert io.get_xattr(f"{oid}-0", "total-size") == size_xattr(size)
    assert small_driver.stat(ctx, path).size == size
    assert small_driver.get_content(ctx, path) == data
    for offset in sorted({0, 1, C - 1, C, C + 1, 2 * C, size - 1, size} - {-1}):
        if 0 <= offset <= size:
            with small_driver.reader(ctx, path, offset) as stream:
                assert stream.read() == data[offset:]


@pytest.mark.parametrize(
    "sessions",
    [[C], [C, C], [C - 1, 1, C], [1, C - 1, C + 1, 2 * C - 1], [C + 1, C - 1, 3 * C]],
    ids=["one-stripe", "two-exact", "fill-then-exact", "mixed", "spill"],
)
def test_appends_across_sessions_spill_into_new_stripes(small_driver, ceph, io, ctx, base, sessions) -> None:
    path = f"{base}/_uploads/u/data"
    chunks = [payload(size, seed=i) for i, size in enumerate(sessions)]
    written = 0
    for i, chunk in enumerate(chunks):
        writer = small_driver.writer(ctx, path, append=i > 0)
        assert writer.size == written
        for j in range(0, len(chunk), 10_000):  # a PATCH body arrives in pieces
            writer.write(chunk[j:j + 10_000])
        writer.close()
        written += len(chunk)
        assert small_driver.stat(ctx, path).size == written
    oid = oid_of(io, path)
    assert len(stripes(ceph, oid)) == math.ceil(written / C)  # no empty stripe past the end
    data = b"".join(chunks)
    assert small_driver.get_content(ctx, path) == data
    for offset in range(0, written + 1, C // 2):
        with small_driver.reader(ctx, path, offset) as stream:
            assert stream.read(C + 7) == data[offset:offset + C + 7]


def test_file_keeps_its_stripe_size_when_the_config_changes(small_driver, rados_driver, ctx, base) -> None:
    data = payload(3 * C + 11)
    small_driver.put_content(ctx, f"{base}/f", data)
    assert rados_driver.get_content(ctx, f"{base}/f") == data
    writer = rados_driver.writer(ctx, f"{base}/f", append=True)
    writer.write(payload(C, seed=9))
    writer.commit()
    assert small_driver.get_content(ctx, f"{base}/f") == data + payload(C, seed=9)


def test_default_chunk_size_is_4_mib(rados_driver, ceph, io, ctx, base) -> None:
    assert rados_driver.chunksize == 4 * MiB
    rados_driver.put_content(ctx, f"{base}/f", payload(4 * MiB + 1))
    names = stripes(ceph, oid_of(io, f"{base}/f"))
    assert [io.stat(name)[0] for name in names] == [4 * MiB, 1]


# -- move -----------------------------------------------------------------------------------


def test_move_rewrites_omap_entries_only(rados_driver, ceph, io, ctx, base) -> None:
    source = f"{base}/_uploads/u/data"
    dest = f"{base}/blobs/sha256/ab/abcd/data"
    data = payload(10 * MiB)
    rados_driver.put_content(ctx, source, data)
    oid = oid_of(io, source)
    before = ceph.object_names()
    data_objects = [n for n in before if n.startswith("blob:")]
    mtimes = {name: io.stat(name) for name in stripes(ceph, oid)}
    assert len(mtimes) == 3

    rados_driver.move(ctx, source, dest)

    after = ceph.object_names()
    assert [n for n in after if n.startswith("blob:")] == data_objects  # nothing copied or added
    assert {name: io.stat(name) for name in stripes(ceph, oid)} == mtimes  # nothing rewritten
    assert oid_of(io, dest) == oid
    # The source's now-empty directories went, the destination's came: same count
    # of objects apart from directories.
    gone = {f"{base}/_uploads", f"{base}/_uploads/u"}
    new = {f"{base}/blobs", f"{base}/blobs/sha256", f"{base}/blobs/sha256/ab", f"{base}/blobs/sha256/ab/abcd"}
    assert set(after) == (set(before) - gone) | new
    assert len(after) == len(before) - len(gone) + len(new)
    assert rados_driver.get_content(ctx, dest) == data


def test_move_over_a_file_removes_its_stripes(rados_driver, ceph, io, ctx, base) -> None:
    rados_driver.put_content(ctx, f"{base}/dst", payload(9 * MiB))
    old = oid_of(io, f"{base}/dst")
    rados_driver.put_content(ctx, f"{base}/src", b"new")
    rados_driver.move(ctx, f"{base}/src", f"{base}/dst")
    assert stripes(ceph, old) == []
    assert rados_driver.get_content(ctx, f"{base}/dst") == b"new"


def test_move_below_a_file_fails_and_changes_nothing(rados_driver, ctx, base) -> None:
    rados_driver.put_content(ctx, f"{base}/f", b"file")
    rados_driver.put_content(ctx, f"{base}/src", b"src")
    with pytest.raises(StorageError) as info:
        rados_driver.move(ctx, f"{base}/src", f"{base}/f/below")
    assert not isinstance(info.value, PathNotFoundError)
    assert rados_driver.get_content(ctx, f"{base}/src") == b"src"
    assert rados_driver.get_content(ctx, f"{base}/f") == b"file"
    assert sorted(rados_driver.list(ctx, base)) == [f"{base}/f", f"{base}/src"]


def test_files_and_directories_do_not_replace_each_other(rados_driver, ctx, base) -> None:
    rados_driver.put_content(ctx, f"{base}/d/f", b"x")
    for operation in (
        lambda: rados_driver.put_content(ctx, f"{base}/d", b"y"),
        lambda: rados_driver.writer(ctx, f"{base}/d"),
        lambda: rados_driver.writer(ctx, f"{base}/d", append=True),
        lambda: rados_driver.put_content(ctx, f"{base}/d/f/g", b"y"),
    ):
        with pytest.raises(StorageError) as info:
            operation()
        assert not isinstance(info.value, PathNotFoundError)
    assert rados_driver.list(ctx, f"{base}/d") == [f"{base}/d/f"]
    assert rados_driver.get_content(ctx, f"{base}/d/f") == b"x"


# -- writers across requests and processes ----------------------------------------------------

WRITER_SCRIPT = """
    import sys
    from chalicelib.context import Context
    from chalicelib.storage import create_driver
    pool, conffile, path, text = sys.argv[1:5]
    driver = create_driver("rados", {"poolname": pool, "conffile": conffile, "chunksize": 65536})
    writer = driver.writer(Context(), path, append=True)
    print(writer.size)
    writer.write(text.encode() * 5000)
    writer.close()
"""


def test_append_continues_a_file_written_by_another_process(small_driver, ceph, ctx, base) -> None:
    path = f"{base}/_uploads/u/data"
    small_driver.writer(ctx, path).close()  # as POST creates an upload; PATCHes append
    written = 0
    for text in ["first;", "second;"]:  # each ends mid-stripe: the next one fills it up
        result = run_python(WRITER_SCRIPT, ceph.pool, str(ceph.conffile), path, text)
        assert result.returncode == 0, result.stderr
        assert int(result.stdout) == written
        written += len(text) * 5000
    writer = small_driver.writer(ctx, path, append=True)
    assert writer.size == written == 65_000
    writer.write(b"!")
    writer.commit()
    assert small_driver.get_content(ctx, path) == b"first;" * 5000 + b"second;" * 5000 + b"!"


def test_one_appending_writer_at_a_time(rados_driver, ctx, base) -> None:
    path = f"{base}/upload"
    first = rados_driver.writer(ctx, path)
    first.write(b"abc")
    with pytest.raises(StorageError, match="another writer"):
        rados_driver.writer(ctx, path, append=True)
    first.close()
    second = rados_driver.writer(ctx, path, append=True)
    assert second.size == 3
    second.write(b"def")
    second.commit()  # commit releases the lock without close()
    third = rados_driver.writer(ctx, path, append=True)
    assert third.size == 6
    third.cancel()
    with pytest.raises(PathNotFoundError):
        rados_driver.stat(ctx, path)


def test_other_processes_wait_for_no_lock_after_close(small_driver, ceph, ctx, base) -> None:
    path = f"{base}/u"
    writer = small_driver.writer(ctx, path)
    writer.write(b"x" * 10)
    writer.close()
    result = run_python(WRITER_SCRIPT, ceph.pool, str(ceph.conffile), path, "y")
    assert result.returncode == 0, result.stderr
    assert small_driver.stat(ctx, path).size == 5010


def test_entry_whose_data_is_gone_reads_as_missing(rados_driver, ceph, io, ctx, base) -> None:
    path = f"{base}/_uploads/u/data"
    rados_driver.put_content(ctx, path, b"lost")
    oid = oid_of(io, path)
    io.remove_object(f"{oid}-0")  # as if removed behind the registry's back
    with pytest.raises(PathNotFoundError):
        rados_driver.stat(ctx, path)
    with pytest.raises(PathNotFoundError):
        rados_driver.get_content(ctx, path)
    writer = rados_driver.writer(ctx, path, append=True)  # starts the file afresh
    assert writer.size == 0
    writer.write(b"new")
    writer.commit()
    assert rados_driver.get_content(ctx, path) == b"new"
    assert stripes(ceph, oid) == []


CONCURRENT_SCRIPT = """
    import sys
    from chalicelib.context import Context
    from chalicelib.storage import create_driver
    pool, conffile, base, who = sys.argv[1:5]
    driver = create_driver("rados", {"poolname": pool, "conffile": conffile})
    ctx = Context()
    for i in range(15):
        driver.put_content(ctx, f"{base}/shared/{who}-{i}", who.encode())
        driver.put_content(ctx, f"{base}/shared/new-{who}-{i}/f", who.encode())
        writer = driver.writer(ctx, f"{base}/shared/w-{who}-{i}")
        writer.write(b"w")
        writer.close()
        if who == "churn":
            # empties race/d (and race) again and again while others write below it
            driver.put_content(ctx, f"{base}/race/d/tmp", b"t")
            driver.delete(ctx, f"{base}/race/d/tmp")
        else:
            driver.put_content(ctx, f"{base}/race/d/{who}-{i}", b"k")
"""


def test_concurrent_writers_in_many_processes_keep_every_entry(rados_driver, ceph, ctx, base) -> None:
    who = ["p0", "p1", "p2", "churn"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CONCURRENT_SCRIPT), ceph.pool, str(ceph.conffile), base,
             name],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
        )
        for name in who
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    expected = sorted(
        f"{base}/shared/{prefix}{name}-{i}"
        for name in who for i in range(15) for prefix in ("", "new-", "w-")
    )
    assert sorted(rados_driver.list(ctx, f"{base}/shared")) == expected
    kept = sorted(f"{base}/race/d/{name}-{i}" for name in who[:3] for i in range(15))
    assert sorted(rados_driver.list(ctx, f"{base}/race/d")) == kept
    walked = {info.path for info in rados_driver.walk(ctx, base) if not info.is_dir}
    assert set(kept) <= walked and set(expected) - {p for p in expected if "/new-" in p} <= walked


def test_concurrent_threads_creating_sibling_directories(rados_driver, ctx, base) -> None:
    def put(i: int) -> None:
        rados_driver.put_content(ctx, f"{base}/repositories/r{i % 5}/_layers/sha256/h{i}/link", b"sha256:x")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(40)))
    repositories = sorted(rados_driver.list(ctx, f"{base}/repositories"))
    assert repositories == [f"{base}/repositories/r{i}" for i in range(5)]
    links = [i.path for i in rados_driver.walk(ctx, base) if not i.is_dir]
    assert len(links) == 40


def test_get_content_during_replacement_sees_whole_versions(small_driver, ctx, base) -> None:
    path = f"{base}/f"
    versions = [payload(3 * C + 1, seed=1), payload(2 * C, seed=2)]
    small_driver.put_content(ctx, path, versions[0])
    stop = threading.Event()

    def overwrite() -> None:
        i = 0
        while not stop.is_set():
            small_driver.put_content(ctx, path, versions[i % 2])
            i += 1

    thread = threading.Thread(target=overwrite)
    thread.start()
    try:
        for _ in range(40):
            assert small_driver.get_content(ctx, path) in versions
    finally:
        stop.set()
        thread.join()


# -- configuration --------------------------------------------------------------------------


def test_registry_storage_rados_selects_the_driver(ceph) -> None:
    from chalicelib.config import load_config
    from chalicelib.storage.rados import RadosDriver

    config = load_config(None, {
        "REGISTRY_STORAGE": "rados",
        "REGISTRY_STORAGE_RADOS_POOLNAME": ceph.pool,
        "REGISTRY_STORAGE_RADOS_CONFFILE": str(ceph.conffile),
        "REGISTRY_STORAGE_RADOS_CHUNKSIZE": "1048576",
    })
    driver = create_driver(config.storage.driver, config.storage.parameters)
    assert isinstance(driver, RadosDriver)
    assert (driver.poolname, driver.chunksize, driver.username) == (ceph.pool, MiB, None)
    driver.put_content(Context(), "/config-check/f", b"ok")
    driver.delete(Context(), "/config-check")
    driver.close()


@pytest.mark.parametrize(
    "params, key",
    [
        ({}, "poolname"),
        ({"poolname": ""}, "poolname"),
        ({"poolname": 7}, "poolname"),
        ({"poolname": "p", "chunksize": 0}, "chunksize"),
        ({"poolname": "p", "chunksize": "4MB"}, "chunksize"),
        ({"poolname": "p", "chunksize": 1 << 30}, "chunksize"),
        ({"poolname": "p", "chunksize": True}, "chunksize"),
        ({"poolname": "p", "username": ["a"]}, "username"),
        ({"poolname": "p", "rootdirectory": "/x"}, "rootdirectory"),
    ],
)
def test_bad_parameters_name_the_key(ceph, params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^storage\.rados\.{key}: "):
        create_driver("rados", params)


def test_unreachable_pool_is_a_storage_error(ceph, ctx) -> None:
    driver = make_driver(ceph, poolname="no-such-pool")
    with pytest.raises(StorageError, match="no-such-pool"):
        driver.stat(ctx, "/x")


def test_missing_binding_says_how_to_install_it(monkeypatch, tmp_path: Path) -> None:
    from chalicelib.storage.rados import binding as module

    monkeypatch.setitem(sys.modules, "rados", None)  # `import rados` now fails
    monkeypatch.setattr(module, "_module", None)
    monkeypatch.setattr(module, "DEBIAN_DIST_PACKAGES", (tmp_path,))
    with pytest.raises(module.RadosUnavailableError, match=r"apt-get install python3-rados"):
        create_driver("rados", {"poolname": "p"})


def test_binding_is_loaded_from_debian_without_its_other_packages(ceph) -> None:
    result = run_python("""
        import sys
        try:
            import rados
            print("importable")
        except ImportError:
            from chalicelib.storage.rados import import_rados
            module = import_rados()
            assert module.__file__.startswith("/usr/lib/python3/dist-packages/"), module.__file__
            assert not any("dist-packages" in p for p in sys.path), sys.path
            print("loaded")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("loaded", "importable")


# -- end to end: skopeo through `stratus serve` on RADOS ---------------------------------------


def write_oci_layout(directory: Path, tag: str, files: dict[str, bytes]) -> dict[str, Any]:
    """A one-layer OCI image layout made by hand; returns its manifest."""
    import gzip
    import hashlib
    import io as bytes_io
    import tarfile

    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    tar_buffer = bytes_io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, bytes_io.BytesIO(data))
    diff = tar_buffer.getvalue()
    layer = put(gzip.compress(diff, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    config = put(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(diff).hexdigest()}"]},
    }).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer],
    }
    descriptor = put(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return {**manifest, "digest": descriptor["digest"]}


@pytest.fixture
def rados_registry(ceph: CephCluster, tmp_path: Path) -> Iterator[str]:
    """`stratus serve` with two workers storing in the pool with 1 MiB stripes."""
    from tests.servers import free_port, wait_for_port, stop

    port = free_port()
    # Only our REGISTRY_* settings: `make test` exports a filesystem root, and a
    # second storage driver in the configuration is an error.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update({
        "REGISTRY_STORAGE": "rados",
        "REGISTRY_STORAGE_RADOS_POOLNAME": ceph.pool,
        "REGISTRY_STORAGE_RADOS_CONFFILE": str(ceph.conffile),
        "REGISTRY_STORAGE_RADOS_CHUNKSIZE": str(MiB),
        "REGISTRY_HTTP_SECRET": "test-secret",
        "PYTHONPATH": str(REPO),
    })
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}", "--workers", "2"]
    log = tmp_path / "stratus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_port(port, 30, proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_round_trip_through_stratus_serve(rados_registry, rados_driver, tmp_path: Path, ctx) -> None:
    import hashlib

    import requests

    source = tmp_path / "source"
    files = {"hello.txt": b"hello from ceph\n", "random.bin": payload(3 * MiB + 7)}
    manifest = write_oci_layout(source, "latest", files)
    layer = manifest["layers"][0]
    assert layer["size"] > 3 * MiB  # spans four 1 MiB stripes
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    skopeo = ["skopeo", "--policy", str(policy), "--insecure-policy"]
    repo = f"team/app-{uuid.uuid4().hex[:8]}"
    remote = f"docker://{rados_registry}/{repo}:1.0"

    def run(*argv: str) -> str:
        result = subprocess.run([*skopeo, *argv], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("copy", "--dest-tls-verify=false", f"oci:{source}:latest", remote)
    inspected = json.loads(run("inspect", "--tls-verify=false", "--raw", remote))
    assert inspected["layers"][0]["digest"] == layer["digest"]

    copy = tmp_path / "copy"
    run("copy", "--src-tls-verify=false", remote, f"oci:{copy}:latest")
    index = json.loads((copy / "index.json").read_text())
    assert index["manifests"][0]["digest"] == manifest["digest"]  # pushed and pulled unchanged
    for descriptor in [manifest["config"], layer]:
        hex_ = descriptor["digest"].split(":", 1)[1]
        pulled = (copy / "blobs" / "sha256" / hex_).read_bytes()
        assert hashlib.sha256(pulled).hexdigest() == hex_
        assert pulled == (source / "blobs" / "sha256" / hex_).read_bytes()

    # In the pool, where registry:2 would put it, striped; served with Range across a stripe edge.
    hex_ = layer["digest"].split(":", 1)[1]
    data_path = f"/docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"
    assert rados_driver.stat(ctx, data_path).size == layer["size"]
    # Finished uploads leave no empty directory objects behind.
    repository = f"/docker/registry/v2/repositories/{repo}"
    assert sorted(rados_driver.list(ctx, repository)) == [f"{repository}/_layers", f"{repository}/_manifests"]
    whole = (source / "blobs" / "sha256" / hex_).read_bytes()
    response = requests.get(
        f"http://{rados_registry}/v2/{repo}/blobs/{layer['digest']}",
        headers={"Range": f"bytes={MiB - 10}-{MiB + 9}"}, timeout=30,
    )
    assert response.status_code == 206
    assert response.content == whole[MiB - 10:MiB + 10]
    assert response.headers["ETag"] == f'"{layer["digest"]}"'
