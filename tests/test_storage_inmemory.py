"""The in-memory driver: the conformance suite plus what is particular to it."""
from __future__ import annotations

import pytest

pytest.register_assert_rewrite("tests.storage_suite")

from chalicelib.context import Context  # noqa: E402
from chalicelib.storage import PathNotFoundError, create_driver  # noqa: E402
from chalicelib.storage.inmemory import InMemoryDriver, from_parameters  # noqa: E402
from tests.storage_suite import StorageDriverSuite  # noqa: E402


class TestInMemoryDriver(StorageDriverSuite):
    @pytest.fixture
    def driver(self) -> InMemoryDriver:
        return from_parameters({})


def test_factory_builds_inmemory_driver() -> None:
    driver = create_driver("inmemory")
    assert isinstance(driver, InMemoryDriver) and driver.name == "inmemory"


def test_parameters_are_rejected_with_their_key() -> None:
    with pytest.raises(ValueError, match=r"storage\.inmemory\.rootdirectory"):
        from_parameters({"rootdirectory": "/tmp"})


def test_directories_vanish_with_their_last_file() -> None:
    driver, ctx = from_parameters({}), Context()
    driver.put_content(ctx, "/a/b/c/f", b"x")
    driver.put_content(ctx, "/a/keep", b"y")
    driver.delete(ctx, "/a/b/c/f")
    with pytest.raises(PathNotFoundError):
        driver.stat(ctx, "/a/b")
    assert driver.list(ctx, "/a") == ["/a/keep"]
    driver.move(ctx, "/a/keep", "/z/keep")
    assert driver.list(ctx, "/") == ["/z"]


def test_empty_driver_lists_root_as_empty() -> None:
    driver, ctx = from_parameters({}), Context()
    assert driver.list(ctx, "/") == []
    assert list(driver.walk(ctx, "/")) == []
    assert driver.stat(ctx, "/").is_dir


def test_drivers_do_not_share_state() -> None:
    ctx = Context()
    first, second = from_parameters({}), from_parameters({})
    first.put_content(ctx, "/f", b"x")
    with pytest.raises(PathNotFoundError):
        second.get_content(ctx, "/f")


def test_reader_is_a_snapshot_of_the_file() -> None:
    driver, ctx = from_parameters({}), Context()
    driver.put_content(ctx, "/f", b"old")
    stream = driver.reader(ctx, "/f")
    driver.put_content(ctx, "/f", b"new content")
    assert stream.read() == b"old"
