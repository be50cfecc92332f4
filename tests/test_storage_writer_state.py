"""The writer state machine every driver's FileWriter shares."""
from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from chalicelib.context import Context
from chalicelib.storage import PathNotFoundError, StorageError
from chalicelib.storage.s3 import from_parameters as s3_from_parameters
from chalicelib.storage.s3.bucket import Bucket
from chalicelib.storage.writer_state import WriterNotOpenError, WriterState
from tests.moto_server import MotoS3
from tests.storage_suite import payload

MiB = 1 << 20


def _ended(how: str) -> WriterState:
    state = WriterState("test", "/a/data")
    if how == "committed":
        state.commit()
    elif how == "closed":
        assert state.close()
    else:
        state.cancel()
    return state


def test_new_writer_is_open() -> None:
    state = WriterState("test", "/a/data")
    assert state.is_open and state.state == "open"
    state.require_open()


@pytest.mark.parametrize("how", ["committed", "closed", "cancelled"])
def test_writing_after_an_ending_names_it(how: str) -> None:
    state = _ended(how)
    assert not state.is_open and state.state == how
    with pytest.raises(WriterNotOpenError, match=f"writer already {how}: /a/data") as raised:
        state.require_open()
    assert isinstance(raised.value, StorageError)
    assert (raised.value.driver, raised.value.path, raised.value.state) == ("test", "/a/data", how)


@pytest.mark.parametrize("how", ["committed", "closed", "cancelled"])
def test_commit_and_cancel_after_an_ending_raise(how: str) -> None:
    state = _ended(how)
    with pytest.raises(WriterNotOpenError):
        state.commit()
    with pytest.raises(WriterNotOpenError):
        state.cancel()
    assert state.state == how


@pytest.mark.parametrize("how", ["committed", "closed", "cancelled"])
def test_close_after_an_ending_is_harmless_and_does_nothing(how: str) -> None:
    state = _ended(how)
    assert state.close() is False
    assert state.state == how


def test_commit_counts_only_when_the_driver_finished_the_file() -> None:
    state = WriterState("test", "/a/data")
    with pytest.raises(OSError):
        with state.committing():
            raise OSError("disk full")
    assert state.is_open  # a later close() still makes the bytes durable
    with state.committing():
        assert state.is_open
    assert state.state == "committed"


def test_committing_refuses_before_running_the_block() -> None:
    state = _ended("cancelled")
    ran = []
    with pytest.raises(WriterNotOpenError):
        with state.committing():
            ran.append(True)
    assert ran == []


def test_cancel_ends_the_writer_before_the_file_is_removed() -> None:
    state = WriterState("test", "/a/data")
    state.cancel()
    assert state.state == "cancelled"
    assert state.close() is False


# -- a driver's writer after a commit that failed ----------------------------------------------


@pytest.fixture
def s3_driver(moto_s3: MotoS3):
    return s3_from_parameters(moto_s3.parameters(moto_s3.create_bucket()))


def _failing_complete(*args: object, **kwargs: object) -> None:
    raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "CompleteMultipartUpload")


def test_s3_writer_closed_after_a_failed_commit_stays_appendable(s3_driver, monkeypatch) -> None:
    ctx, path = Context(), "/u/data"
    first, second, third = payload(6 * MiB, seed=1), payload(1 * MiB, seed=2), payload(5 * MiB, seed=3)
    writer = s3_driver.writer(ctx, path)
    writer.write(first)
    writer.close()  # one 6 MiB part
    writer = s3_driver.writer(ctx, path, append=True)
    writer.write(second)
    with monkeypatch.context() as patch:
        patch.setattr(Bucket, "complete", _failing_complete)
        with pytest.raises(StorageError, match="injected"):
            writer.commit()
    # Still open: its short last part must not be recorded as a middle part, or the
    # next writer's upload could never complete (S3 refuses parts under 5 MiB).
    writer.close()
    writer = s3_driver.writer(ctx, path, append=True)
    assert writer.size == len(first) + len(second)
    writer.write(third)
    writer.commit()
    writer.close()
    assert s3_driver.get_content(ctx, path) == first + second + third


def test_s3_writer_cancelled_after_a_failed_commit_leaves_nothing(s3_driver, monkeypatch) -> None:
    # what the pull-through cache does when storing a blob fails
    ctx, path = Context(), "/u/data"
    writer = s3_driver.writer(ctx, path)
    writer.write(payload(6 * MiB))
    writer.close()  # a multipart upload with one part
    writer = s3_driver.writer(ctx, path, append=True)
    writer.write(payload(1 * MiB))
    monkeypatch.setattr(Bucket, "complete", _failing_complete)
    with pytest.raises(StorageError):
        writer.commit()
    writer.cancel()
    with pytest.raises(PathNotFoundError):
        s3_driver.stat(ctx, path)
