"""The pull-through cache on Azure Functions (the stand-in host of tests/functions_host.py)
over Azurite: skopeo pulls cold and again with the upstream stopped, cached blobs are
307s to SAS URLs, and a blob over proxy.inlinelimit is handed to the client from the
upstream while another invocation copies it into the container."""
from __future__ import annotations

import os
import time
from pathlib import Path

import requests

from .azurite import Azurite
from .clients_images import Layout, assert_same_image, images_dir, needs_tools, pull, session_image
from .clients_servers import needs_reference
from .functions_host import functions_host
from .test_proxy import push_to, put_blob
from .upstream_registry import reference_upstream

pytestmark = [needs_reference]
MiB = 1 << 20


def app_settings(azurite: Azurite, container: str, upstream_url: str, **extra: str) -> dict[str, str]:
    return azurite.environment(container, REGISTRY_HTTP_SECRET="proxy-functions", PYTHON_ENABLE_INIT_INDEXING="1",
                               REGISTRY_PROXY_REMOTEURL=upstream_url, **extra)


@needs_tools
def test_skopeo_pulls_through_functions_cold_then_with_the_upstream_stopped(
        azurite: Azurite, tmp_path: Path, tmp_path_factory) -> None:
    small = session_image(images_dir(tmp_path_factory), "small")
    container = azurite.new_container()
    with reference_upstream(tmp_path / "upstream") as upstream:
        push_to(upstream, small, "v1", "team/app", "v1")
        with functions_host(app_settings(azurite, container, upstream.url), tmp_path) as host:
            cold = Layout(tmp_path / "cold")
            pull(host.url, "team/app", "v1", cold.path, "v1")
            top = assert_same_image(small, "v1", cold, "v1")
        stopped = upstream
    with functions_host(app_settings(azurite, container, stopped.url), tmp_path) as host:
        warm = Layout(tmp_path / "warm")
        pull(host.url, "team/app", "v1", warm.path, "v1")
        assert_same_image(small, "v1", warm, "v1")
        for digest in list(small.closure(top))[1:]:
            response = requests.get(f"{host.url}/v2/team/app/blobs/{digest}", allow_redirects=False, timeout=30)
            assert response.status_code == 307 and response.headers["Location"].startswith(azurite.blob_endpoint)


def test_a_blob_over_the_inline_limit_is_handed_off_then_served_from_the_container(
        azurite: Azurite, tmp_path: Path) -> None:
    data = os.urandom(6 * MiB)
    container = azurite.new_container()
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/large", data)
        settings = app_settings(azurite, container, upstream.url, REGISTRY_PROXY_INLINELIMIT=str(2 * MiB))
        with functions_host(settings, tmp_path) as host:
            url = f"{host.url}/v2/team/large/blobs/{digest}"
            first = requests.get(url, allow_redirects=False, timeout=60)
            assert first.status_code == 307 and first.headers["Location"].startswith(upstream.url)
            assert requests.get(url, timeout=120).content == data
            deadline = time.monotonic() + 60
            while True:  # the fill lands in the container; reads then go there
                cached = requests.get(url, allow_redirects=False, timeout=60)
                if cached.headers.get("Location", "").startswith(azurite.blob_endpoint):
                    break
                assert time.monotonic() < deadline, "the fill never stored the blob"
                time.sleep(0.5)
            assert requests.get(cached.headers["Location"], timeout=60).content == data
