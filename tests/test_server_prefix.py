"""http.prefix and http.headers on `stratus serve`: the registry under /registry/v2/...,
requests outside the prefix answered 404, Locations a client follows staying under it,
and the configured headers on every response."""
from __future__ import annotations

import hashlib
from urllib.parse import urljoin

import pytest
import requests

from .oci_client import random_bytes, unique_repo
from .servers import stratus_server


def _push(url: str, base: str, repo: str, data: bytes) -> str:
    """A two-step push (POST, PATCH, PUT) that follows each Location as given."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = requests.post(f"{url}{base}/v2/{repo}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    assert location.startswith(("/", url)) and f"{base}/v2/{repo}/blobs/uploads/" in location
    patched = requests.patch(urljoin(url + "/", location), data=data[:1000],
                             headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert patched.status_code == 202, patched.text
    location = patched.headers["Location"]
    assert f"{base}/v2/{repo}/blobs/uploads/" in location
    done = requests.put(urljoin(url + "/", location), params={"digest": digest}, data=data[1000:],
                        headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert done.status_code == 201, done.text
    assert f"{base}/v2/{repo}/blobs/{digest}" in done.headers["Location"]
    return digest


@pytest.mark.parametrize("relative", [False, True])
def test_prefix_serves_under_it_and_404s_outside(tmp_path, relative):
    env = {"REGISTRY_HTTP_PREFIX": "/registry/", "REGISTRY_HTTP_RELATIVEURLS": str(relative).lower()}
    with stratus_server(tmp_path / "data", env) as url:
        assert requests.get(f"{url}/registry/v2/", timeout=10).status_code == 200
        outside = requests.get(f"{url}/v2/", timeout=10)
        assert outside.status_code == 404 and outside.json()["errors"][0]["code"] == "UNSUPPORTED"
        assert requests.get(f"{url}/registryv2/", timeout=10).status_code == 404
        repo = unique_repo("prefix")
        data = random_bytes(5000)
        digest = _push(url, "/registry", repo, data)
        pulled = requests.get(f"{url}/registry/v2/{repo}/blobs/{digest}", timeout=10)
        assert pulled.status_code == 200 and pulled.content == data
        assert requests.get(f"{url}/v2/{repo}/blobs/{digest}", timeout=10).status_code == 404


def test_prefix_with_http_host_puts_the_prefix_in_absolute_locations(tmp_path):
    env = {"REGISTRY_HTTP_PREFIX": "/nested/registry", "REGISTRY_HTTP_HOST": "https://registry.example.com"}
    with stratus_server(tmp_path / "data", env) as url:
        started = requests.post(f"{url}/nested/registry/v2/{unique_repo('prefix')}/blobs/uploads/", timeout=10)
        assert started.status_code == 202
        assert started.headers["Location"].startswith("https://registry.example.com/nested/registry/v2/")


def test_http_headers_are_on_every_response(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nhttp:\n  headers:\n    X-Content-Type-Options: [nosniff]\n"
                      "    X-Frame-Options: [DENY]\n")
    with stratus_server(tmp_path / "data", config=config) as url:
        for answer in (requests.get(f"{url}/v2/", timeout=10),
                       requests.get(f"{url}/v2/{unique_repo('headers')}/tags/list", timeout=10)):
            assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.headers
            assert answer.headers["X-Frame-Options"] == "DENY"
