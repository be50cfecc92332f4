"""The S3 driver against a real S3 endpoint (moto server on loopback): the conformance
suite unchanged, plus what is particular to S3 — the registry:2 key layout, files
written across processes through multipart uploads and pending tails, server-side
moves, and the requests each operation costs."""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.adapters import server  # noqa: E402
from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import create_driver  # noqa: E402
from chalicelib.storage.s3 import S3Driver, from_parameters  # noqa: E402
from tests.moto_server import MotoS3  # noqa: E402
from tests.storage_suite import StorageDriverSuite  # noqa: E402


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


class TestS3Driver(StorageDriverSuite):
    @pytest.fixture
    def driver(self, moto_s3: MotoS3, bucket: str) -> S3Driver:
        return from_parameters(moto_s3.parameters(bucket))


def test_factory_builds_s3_driver(moto_s3: MotoS3, bucket: str) -> None:
    driver = create_driver("s3", moto_s3.parameters(bucket))
    assert isinstance(driver, S3Driver) and driver.name == "s3"


# -- S3 specifics ------------------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

import requests as http  # noqa: E402

from chalicelib.config import load_config  # noqa: E402
from chalicelib.storage import PathNotFoundError, StorageError, UnsupportedMethodError  # noqa: E402
from chalicelib.storage.s3 import client as s3_client  # noqa: E402
from chalicelib.storage.s3 import parse_parameters  # noqa: E402
from chalicelib.storage.s3.bucket import META_PARTS_SIZE  # noqa: E402
from tests.storage_suite import payload  # noqa: E402

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
V2 = "/docker/registry/v2"


@pytest.fixture
def ctx() -> Context:
    return Context()


@pytest.fixture
def s3(moto_s3: MotoS3):
    return moto_s3.client()


@pytest.fixture
def driver(moto_s3: MotoS3, bucket: str) -> S3Driver:
    return from_parameters(moto_s3.parameters(bucket))


@pytest.fixture
def base() -> str:
    return f"/t-{uuid.uuid4().hex[:12]}"


class Requests:
    """S3 requests sent by this process between two points, per operation."""

    def __init__(self) -> None:
        self._start = s3_client.requests.snapshot()

    def since(self) -> Counter:
        now = s3_client.requests.snapshot()
        now.subtract(self._start)
        return +now


def uploads_at(s3, bucket: str, key: str) -> list[str]:
    return [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
            if u["Key"] == key]


# -- layout ------------------------------------------------------------------------------


@pytest.mark.parametrize("root, prefix", [("", ""), ("/", ""), ("/reg/root/", "reg/root/"), ("reg", "reg/")])
def test_keys_follow_the_reference_layout(moto_s3, bucket, s3, ctx, root, prefix) -> None:
    driver = from_parameters(moto_s3.parameters(bucket, rootdirectory=root))
    digest_hex = uuid.uuid4().hex * 2
    path = f"{V2}/blobs/sha256/{digest_hex[:2]}/{digest_hex}/data"
    driver.put_content(ctx, path, b"layer")
    key = f"{prefix}docker/registry/v2/blobs/sha256/{digest_hex[:2]}/{digest_hex}/data"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"layer"
    driver.delete(ctx, path)


def test_serves_a_bucket_the_reference_registry_wrote(moto_s3, s3, ctx) -> None:
    bucket = moto_s3.create_bucket()
    digest = "sha256:" + "ab" * 32
    written = {  # keys as registry:2 writes them under rootdirectory /registry
        f"registry/docker/registry/v2/blobs/sha256/ab/{'ab' * 32}/data": b"{}",
        f"registry/docker/registry/v2/repositories/lib/app/_manifests/revisions/sha256/{'ab' * 32}/link": digest.encode(),
        "registry/docker/registry/v2/repositories/lib/app/_manifests/tags/v1/current/link": digest.encode(),
        "registry/docker/registry/v2/repositories/lib/app/_uploads/": b"",  # an empty "folder" object
    }
    for key, body in written.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    driver = from_parameters(moto_s3.parameters(bucket, rootdirectory="/registry"))
    assert driver.get_content(ctx, f"{V2}/repositories/lib/app/_manifests/tags/v1/current/link") == digest.encode()
    assert driver.list(ctx, f"{V2}/repositories/lib") == [f"{V2}/repositories/lib/app"]
    assert driver.list(ctx, f"{V2}/repositories/lib/app") == [
        f"{V2}/repositories/lib/app/_manifests", f"{V2}/repositories/lib/app/_uploads"]
    walked = [i.path for i in driver.walk(ctx, f"{V2}/repositories")]
    assert f"{V2}/repositories/lib/app/_manifests/tags/v1/current/link" in walked
    assert all(not p.endswith("/") for p in walked)
    assert driver.stat(ctx, f"{V2}/blobs/sha256/ab/{'ab' * 32}/data").size == 2


# -- files written across processes --------------------------------------------------------


def test_short_chunks_wait_in_a_pending_tail_without_a_multipart_upload(driver, ctx, s3, bucket, base) -> None:
    path = f"{base}/_uploads/u/data"
    key = path[1:]
    writer = driver.writer(ctx, path)
    writer.write(payload(3 * MiB))
    writer.close()
    assert uploads_at(s3, bucket, key) == []
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == 3 * MiB and head["Metadata"][META_PARTS_SIZE] == "0"
    assert driver.stat(ctx, path).size == 3 * MiB
    # a file that has no parts yet can be read: the tail is all of it
    assert driver.get_content(ctx, path) == payload(3 * MiB)


def test_tail_is_folded_into_a_part_once_it_reaches_5_mib(driver, ctx, s3, bucket, base) -> None:
    path = f"{base}/data"
    key = path[1:]
    chunks = [payload(3 * MiB, seed=1), payload(3 * MiB, seed=2), payload(1 * MiB, seed=3)]
    for i, chunk in enumerate(chunks):
        writer = driver.writer(ctx, path, append=i > 0)
        writer.write(chunk)
        writer.close()
    (upload_id,) = uploads_at(s3, bucket, key)
    parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)["Parts"]
    assert [p["Size"] for p in parts] == [6 * MiB]  # 3 + 3 became the first part
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == 1 * MiB  # the rest waits
    assert driver.stat(ctx, path).size == 7 * MiB
    with pytest.raises(UnsupportedMethodError):
        driver.reader(ctx, path)  # parts cannot be read before the upload completes
    writer = driver.writer(ctx, path, append=True)
    assert writer.size == 7 * MiB
    writer.commit()
    writer.close()
    assert uploads_at(s3, bucket, key) == []
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == 7 * MiB and head["Metadata"] == {}
    assert driver.get_content(ctx, path) == b"".join(chunks)


def test_another_process_continues_the_file(driver, ctx, moto_s3, bucket, base) -> None:
    path = f"{base}/data"
    first, second, third = payload(4 * MiB, seed=1), payload(4 * MiB, seed=2), payload(100, seed=3)
    writer = driver.writer(ctx, path)
    writer.write(first)
    writer.close()
    code = f"""
import json, sys
from chalicelib.context import Context
from chalicelib.storage.s3 import from_parameters
from tests.storage_suite import payload
driver = from_parameters(json.loads(sys.argv[1]))
writer = driver.writer(Context(), {path!r}, append=True)
assert writer.size == {len(first)}, writer.size
writer.write(payload(4 << 20, seed=2))
writer.close()
"""
    subprocess.run([sys.executable, "-c", code, json.dumps(moto_s3.parameters(bucket))],
                   cwd=REPO, check=True, timeout=60)
    writer = driver.writer(ctx, path, append=True)
    assert writer.size == 8 * MiB
    writer.write(third)
    writer.commit()
    assert driver.get_content(ctx, path) == first + second + third


def test_a_part_left_by_a_writer_that_died_is_overwritten(driver, ctx, s3, bucket, base) -> None:
    path = f"{base}/data"
    key = path[1:]
    chunks = [payload(6 * MiB, seed=1), payload(2 * MiB, seed=2), payload(5 * MiB, seed=3)]
    writer = driver.writer(ctx, path)
    writer.write(chunks[0])
    writer.close()  # part 1
    writer = driver.writer(ctx, path, append=True)
    writer.write(chunks[1])
    writer.close()  # tail of 2 MiB
    (upload_id,) = uploads_at(s3, bucket, key)
    # a writer uploaded part 2 and died before it stored its new tail
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=2, Body=payload(5 * MiB, seed=9))
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=3, Body=payload(5 * MiB, seed=8))
    writer = driver.writer(ctx, path, append=True)
    assert writer.size == 8 * MiB
    writer.write(chunks[2])
    writer.commit()
    assert driver.get_content(ctx, path) == b"".join(chunks)


def test_cancel_aborts_the_multipart_upload_and_removes_the_tail(driver, ctx, s3, bucket, base) -> None:
    path = f"{base}/data"
    writer = driver.writer(ctx, path)
    writer.write(payload(12 * MiB))  # one 10 MiB part, 2 MiB tail
    writer.close()
    assert len(uploads_at(s3, bucket, path[1:])) == 1
    driver.writer(ctx, path, append=True).cancel()
    assert uploads_at(s3, bucket, path[1:]) == []
    with pytest.raises(PathNotFoundError):
        driver.stat(ctx, path)


def test_delete_of_a_directory_aborts_the_uploads_below_it_only(driver, ctx, s3, bucket, base) -> None:
    for name in ("d/u1/data", "d/u2/data", "d2/u3/data"):
        writer = driver.writer(ctx, f"{base}/{name}")
        writer.write(payload(5 * MiB))
        writer.close()
    driver.delete(ctx, f"{base}/d")
    assert uploads_at(s3, bucket, f"{base[1:]}/d/u1/data") == []
    assert uploads_at(s3, bucket, f"{base[1:]}/d/u2/data") == []
    assert len(uploads_at(s3, bucket, f"{base[1:]}/d2/u3/data")) == 1
    with pytest.raises(PathNotFoundError):
        driver.stat(ctx, f"{base}/d")
    driver.delete(ctx, base)
    assert uploads_at(s3, bucket, base[1:]) == []


def test_append_to_a_finished_file(driver, ctx, base) -> None:
    for size in (100, 6 * MiB):
        path = f"{base}/f{size}"
        original = payload(size, seed=1)
        driver.put_content(ctx, path, original)
        writer = driver.writer(ctx, path, append=True)
        assert writer.size == size
        writer.write(b"more")
        writer.close()
        assert driver.stat(ctx, path).size == size + 4
        writer = driver.writer(ctx, path, append=True)
        writer.write(b"!")
        writer.commit()
        assert driver.get_content(ctx, path) == original + b"more!"


def test_writer_without_append_over_a_file_with_parts_starts_afresh(driver, ctx, s3, bucket, base) -> None:
    path = f"{base}/data"
    writer = driver.writer(ctx, path)
    writer.write(payload(11 * MiB))
    writer.close()
    writer = driver.writer(ctx, path)
    writer.write(b"fresh")
    writer.commit()
    assert driver.get_content(ctx, path) == b"fresh"
    driver.delete(ctx, base)
    assert uploads_at(s3, bucket, path[1:]) == []  # the orphaned upload went with its directory


# -- moves and reads -----------------------------------------------------------------------


def test_move_is_a_server_side_copy(driver, ctx, base) -> None:
    data = payload(3 * MiB)
    driver.put_content(ctx, f"{base}/src", data)
    counted = Requests()
    driver.move(ctx, f"{base}/src", f"{base}/dst")
    assert counted.since() == Counter({"HeadObject": 1, "CopyObject": 1, "DeleteObject": 1})
    assert driver.get_content(ctx, f"{base}/dst") == data


def test_large_move_copies_parts_in_parallel(moto_s3, bucket, ctx, base) -> None:
    driver = from_parameters(moto_s3.parameters(
        bucket, multipartcopythresholdsize="5MiB", multipartcopychunksize="5MiB", multipartcopymaxconcurrency=4))
    data = payload(17 * MiB)
    driver.put_content(ctx, f"{base}/src", data)
    threads_before = threading.active_count()
    counted = Requests()
    driver.move(ctx, f"{base}/src", f"{base}/blob/data")
    counts = counted.since()
    assert counts["UploadPartCopy"] == 4 and counts["CompleteMultipartUpload"] == 1
    assert counts["GetObject"] == 0 and counts["UploadPart"] == 0  # no byte went through us
    assert threading.active_count() == threads_before
    assert driver.get_content(ctx, f"{base}/blob/data") == data


def test_moving_a_file_still_being_written_is_refused(driver, ctx, base) -> None:
    writer = driver.writer(ctx, f"{base}/data")
    writer.write(b"x")
    writer.close()
    with pytest.raises(StorageError, match="still being written"):
        driver.move(ctx, f"{base}/data", f"{base}/blob")


def test_redirect_url_is_presigned_with_the_expiry(driver, ctx, base) -> None:
    driver.put_content(ctx, f"{base}/f", b"served by S3")
    url = driver.redirect_url(ctx, "GET", f"{base}/f", 1200)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["1200"] and "X-Amz-Signature" in query
    assert http.get(url, timeout=10).content == b"served by S3"
    assert http.get(url, headers={"Range": "bytes=7-8"}, timeout=10).content == b"by"
    assert driver.redirect_url(ctx, "DELETE", f"{base}/f", 60) is None


def test_reader_at_the_end_of_a_file_is_empty(driver, ctx, base) -> None:
    driver.put_content(ctx, f"{base}/f", b"abc")
    with driver.reader(ctx, f"{base}/f", 3) as stream:
        assert stream.read() == b""
    with driver.reader(ctx, f"{base}/f") as stream:  # no descriptor: servers must not sendfile it
        assert not server._has_fd(stream)


# -- configuration -------------------------------------------------------------------------


def test_environment_selects_and_configures_the_driver(moto_s3, bucket) -> None:
    environ = moto_s3.environment(bucket, REGISTRY_STORAGE_S3_ROOTDIRECTORY="/r",
                                  REGISTRY_STORAGE_S3_CHUNKSIZE="6291456")
    config = load_config(environ=environ)
    driver = create_driver(config.storage.driver, config.storage.parameters)
    assert isinstance(driver, S3Driver)
    assert driver.params.root_directory == "r" and driver.params.chunk_size == 6 * MiB
    assert driver.params.connection.force_path_style is True


@pytest.mark.parametrize("params, key", [
    ({}, "bucket"),
    ({"bucket": "b"}, "region"),
    ({"bucket": "b", "region": "us-east-1", "chunksize": 1024}, "chunksize"),
    ({"bucket": "b", "region": "us-east-1", "encrypt": "maybe"}, "encrypt"),
    ({"bucket": "b", "region": "us-east-1", "storageclass": "COLD"}, "storageclass"),
    ({"bucket": "b", "region": "us-east-1", "accesskey": "a"}, "accesskey"),
    ({"bucket": "b", "region": "us-east-1", "v4auth": False}, "v4auth"),
    ({"bucket": "b", "region": "us-east-1", "bukket": "x"}, "bukket"),
])
def test_bad_parameters_name_their_key(params, key, monkeypatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ValueError, match=rf"storage\.s3\.{key}"):
        parse_parameters(params)


def test_reference_parameters_are_accepted() -> None:
    params = parse_parameters({
        "bucket": "b", "region": "eu-west-1", "rootdirectory": "/x/", "encrypt": "true", "keyid": "k",
        "secure": True, "skipverify": False, "v4auth": "true", "chunksize": "10MiB", "storageclass": "standard",
        "objectacl": "bucket-owner-full-control", "useragent": "me", "usedualstack": False, "accelerate": "false",
        "multipartcopychunksize": 33554432, "multipartcopymaxconcurrency": "8",
        "multipartcopythresholdsize": 33554432, "loglevel": False, "forcepathstyle": "false",
    })
    assert params.root_directory == "x" and params.storage_class == "STANDARD"
    assert params.copy_max_concurrency == 8 and params.log_level == "off"
    assert not params.may_be_eventually_consistent


def test_one_client_per_process_is_shared_by_drivers(moto_s3, bucket, ctx, base) -> None:
    first = from_parameters(moto_s3.parameters(bucket))
    first.put_content(ctx, f"{base}/f", b"x")
    threads = threading.active_count()
    for _ in range(20):
        from_parameters(moto_s3.parameters(bucket)).get_content(ctx, f"{base}/f")
    assert from_parameters(moto_s3.parameters(bucket)).bucket.client is first.bucket.client
    assert threading.active_count() == threads
