"""The pull-through cache against the reference registry as its upstream: skopeo pulls
through `stratus serve`, cold and then with the upstream stopped; the upstream behind
htpasswd and behind a token server; several upstreams by prefix beside a normal
repository; a tag moved upstream seen after the ttl; one upstream fetch for 16
concurrent pulls of one blob."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests

from .clients_images import Layout, assert_same_image, images_dir, needs_tools, pull, session_image, skopeo
from .clients_servers import needs_reference
from .servers import stratus_server
from .upstream_registry import Upstream, reference_upstream

pytestmark = [needs_tools, needs_reference]

OCI_ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images_dir(tmp_path_factory)


def push_to(upstream: Upstream, layout: Layout, tag: str, name: str, dest_tag: str, *extra: str) -> None:
    creds = ["--dest-creds", f"{upstream.auth[0]}:{upstream.auth[1]}"] if upstream.auth else []
    skopeo("copy", "--quiet", "--dest-tls-verify=false", *creds, *extra, f"oci:{layout.path}:{tag}",
           f"docker://{upstream.url.split('://', 1)[1]}/{name}:{dest_tag}", timeout=300)


@contextmanager
def mirror(tmp_path: Path, env: dict[str, str], name: str = "stratus") -> Iterator[str]:
    root = tmp_path / name / "data"
    root.mkdir(parents=True)
    with stratus_server(root, env=env) as url:
        yield url


def proxy_env(upstream: Upstream, ttl: str = "5m", credentials: Optional[tuple[str, str]] = None) -> dict[str, str]:
    env = {"REGISTRY_PROXY_REMOTEURL": upstream.url, "REGISTRY_PROXY_TTL": ttl}
    if credentials:
        env.update(REGISTRY_PROXY_USERNAME=credentials[0], REGISTRY_PROXY_PASSWORD=credentials[1])
    return env


def layers_of(layout: Layout, tag: str) -> list[dict]:
    return json.loads(layout.blob(layout.tagged(tag)["digest"]))["layers"]


# -- acceptance ------------------------------------------------------------------------


def test_pull_through_then_served_with_the_upstream_stopped(images: Path, tmp_path: Path) -> None:
    small, multi = session_image(images, "small"), session_image(images, "multi")
    with reference_upstream(tmp_path / "upstream") as upstream:
        push_to(upstream, small, "v1", "team/app", "v1")
        push_to(upstream, multi, "multi", "team/multi", "1", "--all")
        with mirror(tmp_path, proxy_env(upstream)) as url:
            cold = Layout(tmp_path / "cold")
            pull(url, "team/app", "v1", cold.path, "v1")
            assert_same_image(small, "v1", cold, "v1")
            pull(url, "team/multi", "1", cold.path, "multi", "--all")
            assert_same_image(multi, "multi", cold, "multi")
            stopped_upstream = upstream
    # the upstream is gone: everything comes from our storage now
    with mirror(tmp_path, proxy_env(stopped_upstream), name="stratus-again") as other:
        response = requests.get(f"{other}/v2/team/app/manifests/v1", headers=OCI_ACCEPT, timeout=10)
        assert response.status_code == 503, response.text  # a second, empty cache has nothing to serve
    # ...while the first cache (same storage, new process) serves the whole pull
    root = tmp_path / "stratus" / "data"
    with stratus_server(root, env=proxy_env(stopped_upstream)) as url:
        warm = Layout(tmp_path / "warm")
        pull(url, "team/app", "v1", warm.path, "v1")
        assert_same_image(small, "v1", warm, "v1")
        pull(url, "team/multi", "1", warm.path, "multi", "--all")
        assert_same_image(multi, "multi", warm, "multi")
