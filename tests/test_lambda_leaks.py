"""A warm function instance serves push after pull without growing: 200 pushes and
pulls through the Lambda handler over S3 (moto server), and the process has the same
threads and file descriptors at the end as after the first few requests."""
from __future__ import annotations

import gc
import hashlib
import os
import threading
from typing import Iterator

import pytest
import requests as http

from tests.lambda_events import Invoker
from tests.moto_server import MotoS3

MiB = 1 << 20
ROUNDS = 200


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def warm_instance(monkeypatch, moto_s3: MotoS3) -> Iterator[Invoker]:
    # multipart copies of 5 MiB, so that a few blobs take the parallel copy path (its threads must end)
    with moto_s3.lambda_function(monkeypatch, moto_s3.create_bucket(), REGISTRY_HTTP_SECRET="s",
                                 REGISTRY_STORAGE_S3_MULTIPARTCOPYTHRESHOLDSIZE="5MiB",
                                 REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE="5MiB"):
        yield Invoker("http")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count file descriptors")
def test_200_pushes_and_pulls_do_not_grow_threads_or_fds(warm_instance: Invoker) -> None:
    invoke = warm_instance
    pulls = http.Session()  # the client side: one connection to S3, reused

    def round_trip(i: int) -> None:
        name = f"leaks/r{i % 7}"
        if i % 50 == 7:  # now and then a blob pushed in chunks whose move copies parts in threads
            data = hashlib.shake_256(f"leak-{i}".encode()).digest(6 * MiB)
            digest = invoke.push_blob(name, data, chunk=4 * MiB, fresh=False)
        else:  # a monolithic push: POST ?digest= with the whole blob
            data = hashlib.shake_256(f"leak-{i}".encode()).digest(1024 + i)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            pushed = invoke("POST", f"/v2/{name}/blobs/uploads/", f"digest={digest}", body=data, fresh=False)
            assert pushed.status == 201, pushed.body
        got = invoke("GET", f"/v2/{name}/blobs/{digest}", fresh=False)
        assert got.status == 307
        assert pulls.get(got.header("Location"), timeout=30).content == data

    for i in range(10):  # warm-up: the S3 client and its connection pool come to be
        round_trip(i)
    gc.collect()
    threads, fds = threading.active_count(), open_fds()
    for i in range(10, 10 + ROUNDS):
        round_trip(i)
    gc.collect()
    assert threading.active_count() == threads
    assert open_fds() <= fds + 2  # pooled connections may be replaced, never accumulate
    pulls.close()
