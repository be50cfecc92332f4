"""The pull-through cache against the reference registry as its upstream: skopeo pulls
through `stratus serve`, cold and then with the upstream stopped; the upstream behind
htpasswd and behind a token server; several upstreams by prefix beside a normal
repository; a tag moved upstream seen after the ttl; one upstream fetch for 16
concurrent pulls of one blob."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest
import requests
import yaml

from .clients_images import (
    Layout,
    absolute,
    assert_same_image,
    images_dir,
    needs_tools,
    pull,
    push,
    session_image,
    sha256_digest,
    skopeo,
)
from .clients_servers import needs_reference
from .components import unavailable
from .servers import stratus_server
from .token_issuer import TokenIssuer
from .upstream_registry import PASSWORD, USER, Upstream, htpasswd_auth, reference_upstream

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
    # ...while the first cache (same storage, new process) serves the whole pull; ttl 0
    # makes every tag due for re-validation, which fails: the cached tags are served
    root = tmp_path / "stratus" / "data"
    with stratus_server(root, env=proxy_env(stopped_upstream, ttl="0s")) as url:
        warm = Layout(tmp_path / "warm")
        pull(url, "team/app", "v1", warm.path, "v1")
        assert_same_image(small, "v1", warm, "v1")
        pull(url, "team/multi", "1", warm.path, "multi", "--all")
        assert_same_image(multi, "multi", warm, "multi")


# -- helpers over HTTP ---------------------------------------------------------------------


def put_blob(url: str, name: str, data: bytes, auth=None) -> str:
    digest = sha256_digest(data)
    started = requests.post(f"{url}/v2/{name}/blobs/uploads/", auth=auth, timeout=30)
    assert started.status_code == 202, started.text
    location = absolute(url, started.headers["Location"])
    done = requests.put(location, params={"digest": digest}, data=data, auth=auth,
                        headers={"Content-Type": "application/octet-stream"}, timeout=120)
    assert done.status_code == 201, done.text
    return digest


def put_manifest(url: str, name: str, ref: str, layers: list[bytes], auth=None) -> tuple[str, bytes]:
    """An image manifest over `layers` (pushed as blobs) and an empty config; (digest, body)."""
    config = b"{}"
    descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put_blob(url, name, layer, auth),
                    "size": len(layer)} for layer in layers]
    body = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put_blob(url, name, config, auth), "size": len(config)},
        "layers": descriptors,
    }).encode()
    response = requests.put(f"{url}/v2/{name}/manifests/{ref}", data=body, auth=auth, timeout=30,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status_code == 201, response.text
    return response.headers["Docker-Content-Digest"], body


def manifest_digest(url: str, name: str, ref: str) -> str:
    response = requests.get(f"{url}/v2/{name}/manifests/{ref}", headers=OCI_ACCEPT, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["Docker-Content-Digest"]


# -- upstream authentication ------------------------------------------------------------------


def test_upstream_behind_htpasswd_is_pulled_with_basic_credentials(images: Path, tmp_path: Path) -> None:
    small = session_image(images, "small")
    auth = htpasswd_auth(tmp_path)
    with reference_upstream(tmp_path / "upstream", auth, credentials=(USER, PASSWORD)) as upstream:
        push_to(upstream, small, "v1", "team/app", "v1")
        with mirror(tmp_path, proxy_env(upstream, credentials=(USER, PASSWORD))) as url:
            copy = Layout(tmp_path / "copy")
            pull(url, "team/app", "v1", copy.path, "v1")
            assert_same_image(small, "v1", copy, "v1")
        # without credentials the upstream refuses, and so the mirror has nothing to serve
        with mirror(tmp_path, proxy_env(upstream), name="anonymous") as url:
            response = requests.get(f"{url}/v2/team/app/manifests/v1", headers=OCI_ACCEPT, timeout=30)
            assert response.status_code == 404, response.text
            assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        # credentials that stopped working refuse re-validation, not what is cached
        root = tmp_path / "stratus" / "data"
        with stratus_server(root, env=proxy_env(upstream, ttl="0s", credentials=(USER, "rotated"))) as url:
            copy = Layout(tmp_path / "stale")
            pull(url, "team/app", "v1", copy.path, "v1")
            assert_same_image(small, "v1", copy, "v1")


def test_upstream_behind_a_token_server_is_pulled_with_bearer_tokens(images: Path, tmp_path: Path) -> None:
    small = session_image(images, "small")
    issuer = TokenIssuer(users={USER: (PASSWORD, {"*": ["pull", "push"]})})
    with issuer.serve() as realm:
        bundle, _ = issuer.write_trust(tmp_path)
        auth = {"token": {"realm": realm, "service": issuer.service, "issuer": issuer.issuer,
                          "rootcertbundle": str(bundle)}}
        with reference_upstream(tmp_path / "upstream", auth, credentials=(USER, PASSWORD)) as upstream:
            push_to(upstream, small, "v1", "team/app", "v1")
            with mirror(tmp_path, proxy_env(upstream, credentials=(USER, PASSWORD))) as url:
                copy = Layout(tmp_path / "copy")
                pull(url, "team/app", "v1", copy.path, "v1")
                assert_same_image(small, "v1", copy, "v1")
                # one token per scope served every request of the pull: the upstream
                # challenged the mirror once (skopeo's own push met the others), not per request
                before = upstream.statuses(401)
                requests.get(f"{url}/v2/team/app/tags/list", timeout=30).raise_for_status()
                blob = layers_of(small, "v1")[0]["digest"]
                assert requests.get(f"{url}/v2/team/app/blobs/{blob}", timeout=30).content == small.blob(blob)
                assert upstream.statuses(401) == before
                assert len(upstream.requests("GET", "/tags/list")) == 1


# -- several upstreams, and a normal repository beside them -------------------------------------


def test_two_upstreams_by_prefix_beside_a_normal_repository(images: Path, tmp_path: Path) -> None:
    small, multi = session_image(images, "small"), session_image(images, "multi")
    auth = htpasswd_auth(tmp_path)
    with reference_upstream(tmp_path / "hub") as hub, \
            reference_upstream(tmp_path / "ghcr", auth, credentials=(USER, PASSWORD)) as ghcr:
        push_to(hub, small, "v1", "library/app", "v1")  # a single-name image as Docker Hub keeps it
        push_to(ghcr, multi, "amd64", "org/tool", "1.0")
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump({"proxy": {"upstreams": [
            {"prefix": "hub/", "remoteurl": hub.url},
            {"prefix": "ghcr/", "remoteurl": ghcr.url, "username": USER, "password": PASSWORD, "ttl": "1h"},
        ]}}))
        root = tmp_path / "stratus" / "data"
        root.mkdir(parents=True)
        with stratus_server(root, config=config) as url:
            copy = Layout(tmp_path / "copy")
            pull(url, "hub/library/app", "v1", copy.path, "app")
            assert_same_image(small, "v1", copy, "app")
            pull(url, "ghcr/org/tool", "1.0", copy.path, "tool")
            assert_same_image(multi, "amd64", copy, "tool")
            assert sorted(requests.get(f"{url}/v2/hub/library/app/tags/list", timeout=10).json()["tags"]) == ["v1"]

            # outside the prefixes: an ordinary repository, pushed to and pulled from
            push(small.path, "v1", url, "local/app", "v1")
            pull(url, "local/app", "v1", copy.path, "local")
            assert_same_image(small, "v1", copy, "local")

            # inside them: every write is the reference proxy's UNSUPPORTED
            for method, path in [("POST", "/v2/hub/library/app/blobs/uploads/"),
                                 ("PUT", "/v2/ghcr/org/tool/manifests/2.0"),
                                 ("DELETE", f"/v2/ghcr/org/tool/manifests/{copy.tagged('tool')['digest']}")]:
                response = requests.request(method, url + path, data=b"{}", timeout=10)
                assert response.status_code == 405, (method, path, response.text)
                assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
            with pytest.raises(AssertionError, match="exited"):
                push(small.path, "v1", url, "hub/library/app", "pushed")
        assert not (root / "docker/registry/v2/repositories/hub/library/app/_manifests/tags/pushed").exists()


# -- ttl ---------------------------------------------------------------------------------------


def test_a_tag_moved_upstream_is_seen_once_its_ttl_has_passed(tmp_path: Path) -> None:
    ttl = 4.0
    with reference_upstream(tmp_path / "upstream") as upstream:
        first, _ = put_manifest(upstream.url, "team/moving", "latest", [b"first layer"])
        with mirror(tmp_path, proxy_env(upstream, ttl=f"{ttl}s")) as url:
            started = time.monotonic()
            assert manifest_digest(url, "team/moving", "latest") == first
            heads = len(upstream.requests("HEAD", "/manifests/latest"))
            second, _ = put_manifest(upstream.url, "team/moving", "latest", [b"second layer"])
            seen = manifest_digest(url, "team/moving", "latest")
            if time.monotonic() - started < ttl:  # still fresh: served without asking upstream
                assert seen == first
                assert len(upstream.requests("HEAD", "/manifests/latest")) == heads
            time.sleep(max(0.0, ttl - (time.monotonic() - started)) + 0.5)
            assert manifest_digest(url, "team/moving", "latest") == second
            # re-validated with a conditional HEAD, then the new manifest fetched by digest
            assert len(upstream.requests("HEAD", "/manifests/latest")) == heads + 1
            assert upstream.requests("GET", f"/manifests/{second}")
            # fresh again: a pull within the ttl does not ask
            assert manifest_digest(url, "team/moving", "latest") == second
            assert len(upstream.requests("HEAD", "/manifests/latest")) == heads + 1
            layer = json.loads(requests.get(f"{url}/v2/team/moving/manifests/latest", headers=OCI_ACCEPT,
                                            timeout=10).content)["layers"][0]
            blob = requests.get(f"{url}/v2/team/moving/blobs/{layer['digest']}", timeout=10)
            assert blob.content == b"second layer"


def test_an_unchanged_tag_is_revalidated_with_a_304_and_kept(tmp_path: Path) -> None:
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest, _ = put_manifest(upstream.url, "team/still", "v1", [b"layer"])
        with mirror(tmp_path, proxy_env(upstream, ttl="0s")) as url:  # 0: ask on every pull
            for _ in range(3):
                assert manifest_digest(url, "team/still", "v1") == digest
            assert len(upstream.requests("HEAD", "/manifests/v1")) == 3
            assert len(upstream.requests("GET", f"/manifests/{digest}")) == 1  # fetched once


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1 << 20, 24 << 20], ids=["1MiB-buffered", "24MiB-streamed"])
def test_sixteen_concurrent_pulls_of_one_uncached_blob_fetch_it_once(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/big", data)
        with mirror(tmp_path, proxy_env(upstream)) as url:
            results: list[Optional[bytes]] = [None] * 16
            barrier = threading.Barrier(16)

            def pull_blob(i: int) -> None:
                barrier.wait()
                response = requests.get(f"{url}/v2/team/big/blobs/{digest}", timeout=120)
                results[i] = response.content if response.status_code == 200 else None

            threads = [threading.Thread(target=pull_blob, args=(i,)) for i in range(16)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(180)
            elapsed = time.monotonic() - started
            assert all(r == data for r in results), [len(r) if r else r for r in results]
            assert upstream.blob_gets(digest) == 1
            print(f"16 concurrent pulls of {size} bytes: {elapsed:.2f}s, upstream GETs: {upstream.blob_gets(digest)}")
            stored = tmp_path / "stratus/data/docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
            assert stored.read_bytes() == data
            # nothing left in staging
            uploads = tmp_path / "stratus/data/docker/registry/v2/repositories/team/big/_uploads"
            assert not uploads.exists() or not any(uploads.iterdir())


# -- podman ---------------------------------------------------------------------------------------


@pytest.fixture
def podman() -> Iterator:
    if shutil.which("podman") is None:
        unavailable("podman", "not installed (scripts/install-system-deps.sh)")
    root = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))  # runroot must be a short path
    base = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(root / "xdg"), "HOME": str(root / "home"),
           "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf")}
    for sub in ("xdg", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "registries.conf").write_text("unqualified-search-registries = []\n")

    def run(*args: str) -> str:
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    try:
        yield run
    finally:
        subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(root, ignore_errors=True)


def test_podman_pulls_through_cold_and_with_the_upstream_stopped(images: Path, tmp_path: Path, podman) -> None:
    small = session_image(images, "small")
    manifest = small.tagged("v1")["digest"]
    with reference_upstream(tmp_path / "upstream") as upstream:
        push_to(upstream, small, "v1", "team/app", "v1")
        root = tmp_path / "stratus" / "data"
        root.mkdir(parents=True)
        with stratus_server(root, env=proxy_env(upstream)) as url:
            host = url.split("://", 1)[1]
            podman("pull", "--quiet", "--tls-verify=false", f"{host}/team/app:v1")
            assert manifest in podman("image", "inspect", "--format", "{{.Digest}}", f"{host}/team/app:v1")
            podman("rmi", "--all", "--force")
            stopped = upstream
    with stratus_server(root, env=proxy_env(stopped)) as url:
        host = url.split("://", 1)[1]
        podman("pull", "--quiet", "--tls-verify=false", f"{host}/team/app:v1")
        assert manifest in podman("image", "inspect", "--format", "{{.Digest}}", f"{host}/team/app:v1")


def test_anonymous_bearer_tokens_when_no_credentials_are_configured(tmp_path: Path) -> None:
    """As docker meets Docker Hub: a token from the realm without credentials, for pull."""
    issuer = TokenIssuer(users={USER: (PASSWORD, {"*": ["pull", "push"]}), None: ("", {"*": ["pull"]})})
    with issuer.serve() as realm:
        bundle, _ = issuer.write_trust(tmp_path)
        auth = {"token": {"realm": realm, "service": issuer.service, "issuer": issuer.issuer,
                          "rootcertbundle": str(bundle)}}
        with reference_upstream(tmp_path / "upstream", auth) as upstream:
            digest, body = put_manifest(upstream.url, "public/app", "v1", [b"public layer"],
                                        auth=TokenAuth(realm, issuer.service, USER, PASSWORD))
            with mirror(tmp_path, proxy_env(upstream)) as url:
                assert manifest_digest(url, "public/app", "v1") == digest
                layer = json.loads(body)["layers"][0]["digest"]
                assert requests.get(f"{url}/v2/public/app/blobs/{layer}", timeout=30).content == b"public layer"


class TokenAuth(requests.auth.AuthBase):
    """A pusher's bearer token for the whole repository, fetched once from the realm."""

    def __init__(self, realm: str, service: str, user: str, password: str):
        self.realm, self.service, self.credentials = realm, service, (user, password)
        self.tokens: dict[str, str] = {}

    def __call__(self, request):
        name = request.path_url.split("/v2/", 1)[1].split("/blobs/")[0].split("/manifests/")[0]
        if name not in self.tokens:
            reply = requests.get(self.realm, params={"service": self.service, "scope": f"repository:{name}:pull,push"},
                                 auth=self.credentials, timeout=10)
            self.tokens[name] = reply.json()["token"]
        request.headers["Authorization"] = f"Bearer {self.tokens[name]}"
        return request


def test_tokens_are_kept_per_scope_until_they_expire(tmp_path: Path, monkeypatch) -> None:
    from chalicelib.registry.proxy import upstream as upstream_module

    issuer = TokenIssuer(users={USER: (PASSWORD, {"*": ["pull", "push"]})})
    with issuer.serve() as realm:
        bundle, _ = issuer.write_trust(tmp_path)
        auth = {"token": {"realm": realm, "service": issuer.service, "issuer": issuer.issuer,
                          "rootcertbundle": str(bundle)}}
        with reference_upstream(tmp_path / "upstream", auth) as upstream:
            client = upstream_module.Upstream(upstream.url, USER, PASSWORD)
            challenged = upstream.statuses(401)  # the fixture's own readiness check
            fetched: list[str] = []
            real_fetch = client._fetch_token

            def counting(challenge, scope):
                fetched.append(scope)
                return real_fetch(challenge, scope)

            monkeypatch.setattr(client, "_fetch_token", counting)
            a, b = upstream_module.pull_scope("team/a"), upstream_module.pull_scope("team/b")
            for _ in range(3):
                assert client.request("GET", "/v2/team/a/tags/list", a).status in (200, 404)
            assert client.request("GET", "/v2/team/b/tags/list", b).status in (200, 404)
            assert fetched == [a, b]  # one token per scope, reused
            assert upstream.statuses(401) == challenged + 1  # only the first request met a challenge
            # the issuer said expires_in 300: a token is renewed 10 s before that
            token, renew_at = client._tokens[a]
            monkeypatch.setattr(upstream_module.time, "monotonic", lambda: renew_at + 1)
            assert client.request("GET", "/v2/team/a/tags/list", a).status in (200, 404)
            assert fetched == [a, b, a] and client._tokens[a][0] != token


def test_a_blob_cached_for_one_repository_is_linked_to_another_only_if_its_upstream_has_it(
        tmp_path: Path) -> None:
    with reference_upstream(tmp_path / "upstream") as upstream:
        shared = put_blob(upstream.url, "team/a", b"shared layer")
        put_blob(upstream.url, "team/b", b"shared layer")
        private = put_blob(upstream.url, "team/a", b"only in a")
        with mirror(tmp_path, proxy_env(upstream)) as url:
            for digest in (shared, private):
                assert requests.get(f"{url}/v2/team/a/blobs/{digest}", timeout=30).status_code == 200
            # team/b's upstream has `shared`: linked from our copy, not fetched again
            assert requests.get(f"{url}/v2/team/b/blobs/{shared}", timeout=30).content == b"shared layer"
            assert upstream.blob_gets(shared) == 1
            # ...but not `private`: knowing a digest opens nothing
            response = requests.get(f"{url}/v2/team/c/blobs/{private}", timeout=30)
            assert response.status_code == 404 and response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
            # team/c's upstream was asked (a HEAD) and has nothing: nothing fetched or linked
            assert len(upstream.requests("HEAD", f"/v2/team/c/blobs/{private}")) == 1
            assert upstream.blob_gets(private) == 1
            assert not (tmp_path / "stratus/data/docker/registry/v2/repositories/team/c").exists()


def test_head_of_an_uncached_blob_asks_upstream_and_stores_nothing(tmp_path: Path) -> None:
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/app", b"x" * 1000)
        with mirror(tmp_path, proxy_env(upstream)) as url:
            response = requests.head(f"{url}/v2/team/app/blobs/{digest}", timeout=30)
            assert response.status_code == 200
            assert response.headers["Content-Length"] == "1000"
            assert response.headers["Docker-Content-Digest"] == digest
            assert upstream.blob_gets(digest) == 0
            assert not (tmp_path / "stratus/data/docker/registry/v2/blobs/sha256" / digest[7:9]).exists()
