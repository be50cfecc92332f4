"""What a test does when a component it needs is missing: skip it, or under CI fail it.

A developer without Ceph or docker still runs everything else (the test skips and
names what to install); CI (`CI=true`) must exercise every component, so there the
same test fails. Every such skip goes through this module:

    require("redis-server", NO_REDIS)          # in a fixture or test: skip or fail now
    needs_redis = needs("redis-server", None if HAVE_REDIS else NO_REDIS)   # a mark

A skip that is not about a missing component (the test inspects filesystem storage
and the suite runs on S3, say) is `not_applicable(...)`: the only kind of skip that
CI accepts. conftest.py turns every other skip under CI into a failure, so a helper
that calls `pytest.skip` directly is caught too.
"""
from __future__ import annotations

import os
from typing import NoReturn, Optional

import pytest

NOT_APPLICABLE = "not applicable: "
MARK = "needs_component"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(component: str, missing: Optional[str]) -> None:
    """Nothing when `missing` is None; else skip the test, or fail it under CI=true."""
    if missing is not None:
        unavailable(component, missing)


def unavailable(component: str, reason: str) -> NoReturn:
    if under_ci():
        pytest.fail(f"CI=true and {component} is missing: {reason}", pytrace=False)
    pytest.skip(f"{component} is missing: {reason}")


def needs(component: str, missing: Optional[str]) -> pytest.MarkDecorator:
    """A mark for tests that need `component`; `missing` says why it is absent, or None.

    conftest.py's pytest_runtest_setup calls require() for it: a skip, or a failure under CI."""
    return getattr(pytest.mark, MARK)(component, missing)


def not_applicable(condition: bool, reason: str) -> pytest.MarkDecorator:
    """skipif for a test that does not apply here (not a missing component): CI accepts it."""
    return pytest.mark.skipif(condition, reason=NOT_APPLICABLE + reason)


def skip_not_applicable(reason: str) -> NoReturn:
    pytest.skip(NOT_APPLICABLE + reason)


def is_accepted_skip(message: str) -> bool:
    """Whether CI accepts a skip with this message (pytest prefixes some with 'Skipped: ')."""
    return message.removeprefix("Skipped: ").startswith(NOT_APPLICABLE)
