"""match_route tries a route's pattern only when the path holds that route's literal:
the literals must never hide a route the patterns alone would have chosen."""
from __future__ import annotations

import pytest

from chalicelib.api.app import ROUTES, match_route

PATHS = [
    "/v2", "/v2/", "/v2/_catalog", "/v2/_catalog/", "/v2/a/tags/list", "/v2/a/b/tags/list",
    "/v2/a/manifests/latest", "/v2/a/manifests/sha256:" + "0" * 64, "/v2/manifests/manifests/x",
    "/v2/a/blobs/uploads", "/v2/a/blobs/uploads/", "/v2/a/blobs/uploads/u-1",
    "/v2/a/blobs/sha256:" + "1" * 64, "/v2/blobs/uploads/blobs/x", "/v2/a/blobs/uploads/x/blobs/y",
    "/v2/a/referrers/sha256:" + "2" * 64, "/v2/tags/list/manifests/t", "/v2/a/tags/list/blobs/d",
    "/v2/a/manifests/", "/v2/a/blobs/", "/v3/a/blobs/d", "/", "", "/v2/a/unknown/x",
]


def _by_patterns_alone(path: str) -> tuple:
    for pattern, route, _ in ROUTES:
        m = pattern.match(path)
        if m:
            return route, m.groupdict()
    return None, {}


@pytest.mark.parametrize("path", PATHS)
def test_literals_agree_with_the_patterns(path: str) -> None:
    assert match_route(path) == _by_patterns_alone(path)


def test_every_literal_is_in_what_its_pattern_matches() -> None:
    samples = {"base": "/v2/", "catalog": "/v2/_catalog", "tags": "/v2/a/tags/list",
               "manifest": "/v2/a/manifests/t", "uploads": "/v2/a/blobs/uploads/",
               "upload": "/v2/a/blobs/uploads/u", "blob": "/v2/a/blobs/d", "referrers": "/v2/a/referrers/d"}
    for pattern, route, literal in ROUTES:
        assert pattern.match(samples[route]), route
        assert literal in samples[route], route
        assert match_route(samples[route])[0] == route
