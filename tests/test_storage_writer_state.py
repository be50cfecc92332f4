"""The writer state machine every driver's FileWriter shares."""
from __future__ import annotations

import pytest

from chalicelib.storage import StorageError
from chalicelib.storage.writer_state import WriterNotOpenError, WriterState


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
