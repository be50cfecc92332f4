"""The pull-through cache against an upstream that misbehaves: a tiny fake registry
(tests/upstream_stub.py) serving bytes that do not match the digest they were asked
by, or no bytes at all."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests

from .servers import stratus_server
from .upstream_stub import StubUpstream

V2 = "docker/registry/v2"


@contextmanager
def fake_upstream() -> Iterator[tuple[str, StubUpstream]]:
    stub = StubUpstream()
    with stub.running() as url:
        yield url, stub


def corrupt(size: int) -> tuple[str, bytes]:
    """A digest and bytes of the same size that are not its content."""
    good = os.urandom(size)
    bad = bytes([good[0] ^ 0xFF]) + good[1:]
    return "sha256:" + hashlib.sha256(good).hexdigest(), bad


def assert_nothing_stored(root: Path, name: str, digest: str) -> None:
    hex_ = digest.split(":", 1)[1]
    assert not (root / V2 / "blobs/sha256" / hex_[:2] / hex_).exists()
    assert not (root / V2 / "repositories" / name / "_layers/sha256" / hex_).exists()
    uploads = root / V2 / "repositories" / name / "_uploads"
    assert not uploads.exists() or not any(uploads.iterdir())  # no staging file left either


def test_a_small_corrupt_blob_is_refused_with_an_oci_error_and_not_stored(tmp_path: Path) -> None:
    digest, bad = corrupt(64 << 10)
    with fake_upstream() as (upstream, state):
        state.blobs[digest] = bad
        root = tmp_path / "data"
        with stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream}) as url:
            for _ in range(2):  # refused every time, never served from a bad copy
                response = requests.get(f"{url}/v2/lib/app/blobs/{digest}", timeout=30)
                assert response.status_code == 502, response.text
                assert response.json()["errors"][0]["code"] == "DIGEST_INVALID"
            assert state.gets == [digest, digest]
            assert_nothing_stored(root, "lib/app", digest)


def test_a_large_corrupt_blob_breaks_the_client_stream_and_is_not_stored(tmp_path: Path) -> None:
    size = 12 << 20
    digest, bad = corrupt(size)
    with fake_upstream() as (upstream, state):
        state.blobs[digest] = bad
        root = tmp_path / "data"
        with stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream}) as url:
            received = b""
            with pytest.raises(requests.exceptions.RequestException):
                with requests.get(f"{url}/v2/lib/app/blobs/{digest}", stream=True, timeout=30) as response:
                    assert response.status_code == 200
                    for piece in response.iter_content(1 << 16):
                        received += piece
            # the last piece was held back: the client never holds the whole wrong blob
            assert len(received) < size
            assert_nothing_stored(root, "lib/app", digest)
            assert requests.get(f"{url}/v2/", timeout=10).status_code == 200  # the server lives on


def test_an_upstream_that_is_down_gives_503_for_what_is_not_cached(tmp_path: Path) -> None:
    with fake_upstream() as (upstream, _):
        pass  # stopped: nothing listens there any more
    root = tmp_path / "data"
    with stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream}) as url:
        digest = "sha256:" + "0" * 64
        for path in (f"/v2/lib/app/blobs/{digest}", "/v2/lib/app/manifests/latest"):
            response = requests.get(url + path, timeout=30)
            assert response.status_code == 503, response.text
            assert response.json()["errors"][0]["code"] == "UNKNOWN"
        # HEAD of an unknown blob has no body, only the status
        assert requests.head(f"{url}/v2/lib/app/blobs/{digest}", timeout=30).status_code == 503
        # the tags list falls back to what is cached: nothing, so the repository is unknown
        response = requests.get(f"{url}/v2/lib/app/tags/list", timeout=30)
        assert response.status_code == 404 and response.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_a_blob_the_upstream_does_not_have_is_blob_unknown(tmp_path: Path) -> None:
    with fake_upstream() as (upstream, state):
        root = tmp_path / "data"
        with stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream}) as url:
            digest = "sha256:" + "1" * 64
            response = requests.get(f"{url}/v2/lib/app/blobs/{digest}", timeout=30)
            assert response.status_code == 404 and response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
            assert state.gets == [digest]
