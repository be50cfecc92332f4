"""docker through the pull-through cache, the way docker users use one.

A private dockerd (tests/docker_daemon.py) with `registry-mirrors` naming `stratus serve`,
and Stratus with `proxy.remoteurl` naming the reference registry (tests/upstream_registry.py)
that holds `library/<name>:<tag>`: `docker pull <name>:<tag>` (a Docker Hub name, which
docker sends to its mirror as /v2/library/<name>/...) pulls through Stratus, which stores
what it fetched; with the upstream stopped, the same pull is served from that cache. There
is no network here, so a docker that fell back to registry-1.docker.io would fail the pull.

And the prefixed form: Stratus with `proxy.upstreams` prefix `docker.io/`, pulled as
`127.0.0.1:<port>/docker.io/library/<name>:<tag>`. And what docker does that a mirror's
operator must know (docs/proxy.md, "Using it as docker's registry mirror"): after any error
from the mirror it pulls from Docker Hub itself, and it answers a mirror's challenge with
its Docker Hub credentials.
"""
from __future__ import annotations

import base64
import json
import shutil
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from .clients_images import images_dir, needs_tools, session_image, skopeo
from .clients_servers import needs_reference
from .components import needs
from .docker_daemon import DockerDaemon, ImportedImage, docker_daemon_running, unavailable_reason
from .servers import stratus_server
from .test_auth_htpasswd import PASSWORD, htpasswd_file
from .test_clients_docker import blob_file, file_digest, pushed_digest
from .upstream_registry import Upstream, reference_upstream

pytestmark = [needs("docker, dockerd and containerd", unavailable_reason()), needs_reference]

V2 = Path("docker/registry/v2")
LAYER_MIB = 6  # over the 4 MiB a cold blob is read whole: docker meets the streamed fetch
HUB_AUTH_KEY = "https://index.docker.io/v1/"  # where docker keeps its Docker Hub credentials
HUB_FALLBACK = "registry-1.docker.io"  # where docker goes when its mirror answers an error


def seed_upstream(daemon: DockerDaemon, upstream: Upstream, name: str, tag: str) -> tuple[ImportedImage, str]:
    """An imported image pushed to the upstream as library/<name>:<tag>, then removed from
    the daemon (so the pull that follows has to fetch every byte); (image, manifest digest)."""
    image = daemon.image_with_layer(LAYER_MIB)
    ref = daemon.tag(image, f"{upstream.url.split('://', 1)[1]}/library/{name}:{tag}")
    digest = pushed_digest(daemon.docker("push", ref, timeout=600))
    daemon.rmi(ref, image.tag)
    assert daemon.inspect(image.id) is None, "the image is still in the daemon: a pull would prove nothing"
    return image, digest


def assert_pulled(daemon: DockerDaemon, ref: str, image: ImportedImage, repo_digest: str) -> None:
    pulled = daemon.docker("pull", ref, timeout=600)
    assert "Pull complete" in pulled and "Already exists" not in pulled, pulled
    assert daemon.image_id(ref) == image.id
    assert daemon.diff_ids(ref) == [image.diff_id]
    assert repo_digest in daemon.inspect(ref)["RepoDigests"], daemon.inspect(ref)["RepoDigests"]


def assert_cached(root: Path, repository: str, tag: str, digest: str) -> list[str]:
    """Stratus's storage holds the tag, the manifest and every blob it names, as a push
    would have stored them; returns the blob digests (config and layers)."""
    repo = root / V2 / "repositories" / repository
    assert (repo / "_manifests/tags" / tag / "current/link").read_text() == digest
    assert (repo / "_manifests/revisions/sha256" / digest[7:] / "link").read_text() == digest
    stored = json.loads(blob_file(root, digest).read_bytes())
    blobs = [stored["config"]["digest"], *(layer["digest"] for layer in stored["layers"])]
    for blob in blobs:
        assert file_digest(blob_file(root, blob)) == blob
        assert (repo / "_layers/sha256" / blob[7:] / "link").read_text() == blob
    assert not any((repo / "_uploads").glob("*")), "a staging file was left behind"
    return blobs


def private_daemon(stack: ExitStack, settings: dict | None = None) -> DockerDaemon:
    """A docker daemon of this test's own, under a short /tmp path: dockerd puts unix
    sockets under its exec root, and a pytest tmp_path can exceed their 108 bytes."""
    workdir = Path(tempfile.mkdtemp(prefix="pxd-", dir="/tmp"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    return stack.enter_context(docker_daemon_running(workdir, settings))


def stratus_log(root: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in root.parent.glob("stratus-*.log"))


def attempted_next_endpoint(daemon: DockerDaemon, since: int) -> list[str]:
    """dockerd's 'Attempting next endpoint for pull after error: ...' lines after offset since."""
    text = daemon.log.read_text(errors="replace")[since:]
    return [line for line in text.splitlines() if "Attempting next endpoint for pull" in line]


def log_size(daemon: DockerDaemon) -> int:
    return len(daemon.log.read_text(errors="replace"))


def test_docker_pulls_a_hub_name_through_stratus_as_its_registry_mirror(tmp_path: Path) -> None:
    name, tag = f"mirrored{uuid.uuid4().hex[:8]}", "v1"
    root = tmp_path / "stratus" / "data"
    root.mkdir(parents=True)
    with ExitStack() as stack:
        upstream_running = stack.enter_context(ExitStack())
        upstream = upstream_running.enter_context(reference_upstream(tmp_path / "upstream"))
        # ttl 0: every pull asks the upstream about the tag, so the pull with it stopped
        # shows a failed re-validation serving the cached tag, not merely a fresh one
        url = stack.enter_context(stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream.url,
                                                            "REGISTRY_PROXY_TTL": "0s"}))
        daemon = private_daemon(stack, {"registry-mirrors": [url]})
        image, digest = seed_upstream(daemon, upstream, name, tag)

        since = log_size(daemon)
        assert_pulled(daemon, f"{name}:{tag}", image, f"{name}@{digest}")
        assert attempted_next_endpoint(daemon, since) == []  # the mirror answered everything
        blobs = assert_cached(root, f"library/{name}", tag, digest)
        assert upstream.requests("GET", f"/v2/library/{name}/manifests/")
        for blob in blobs:
            assert upstream.blob_gets(blob) == 1, blob
            assert f"proxy: cached {blob} for library/{name}" in stratus_log(root)

        upstream_running.close()  # stopped: what follows can only come from Stratus's storage
        daemon.rmi(f"{name}:{tag}")
        assert daemon.inspect(image.id) is None
        since = log_size(daemon)
        assert_pulled(daemon, f"{name}:{tag}", image, f"{name}@{digest}")
        assert attempted_next_endpoint(daemon, since) == []
        # ...and by digest, as `docker pull name@sha256:...` asks the mirror
        daemon.rmi(f"{name}:{tag}")
        daemon.docker("pull", f"{name}@{digest}", timeout=600)
        assert daemon.image_id(f"{name}@{digest}") == image.id


@needs_tools
def test_docker_pulls_its_platform_of_a_multi_arch_index_through_the_mirror(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Most Docker Hub images are indexes: docker takes the index and then only the
    linux/amd64 manifest and its blobs, and that is all the cache fetches and keeps."""
    name = f"multiarch{uuid.uuid4().hex[:8]}"
    multi = session_image(images_dir(tmp_path_factory), "multi")
    index = multi.tagged("multi")["digest"]
    amd64, arm64 = json.loads(multi.blob(multi.tagged("amd64")["digest"])), \
        json.loads(multi.blob(multi.tagged("arm64")["digest"]))
    root = tmp_path / "stratus" / "data"
    root.mkdir(parents=True)
    with ExitStack() as stack:
        upstream = stack.enter_context(reference_upstream(tmp_path / "upstream"))
        skopeo("copy", "--quiet", "--all", "--dest-tls-verify=false", f"oci:{multi.path}:multi",
               f"docker://{upstream.url.split('://', 1)[1]}/library/{name}:latest", timeout=300)
        url = stack.enter_context(stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream.url}))
        daemon = private_daemon(stack, {"registry-mirrors": [url]})

        since = log_size(daemon)
        daemon.docker("pull", name, timeout=600)
        assert attempted_next_endpoint(daemon, since) == []
        assert daemon.image_id(name) == amd64["config"]["digest"]
        assert f"{name}@{index}" in daemon.inspect(name)["RepoDigests"]
        repo = root / V2 / "repositories/library" / name
        assert (repo / "_manifests/tags/latest/current/link").read_text() == index
        for blob in [amd64["config"]["digest"], *(layer["digest"] for layer in amd64["layers"])]:
            assert file_digest(blob_file(root, blob)) == blob
        for blob in [arm64["config"]["digest"], *(layer["digest"] for layer in arm64["layers"])]:
            assert not blob_file(root, blob).exists(), "a blob docker did not ask for was fetched"
            assert upstream.blob_gets(blob) == 0


def test_docker_pulls_through_a_docker_io_prefix(tmp_path: Path) -> None:
    name, tag = f"prefixed{uuid.uuid4().hex[:8]}", "1.0"
    root = tmp_path / "stratus" / "data"
    root.mkdir(parents=True)
    with ExitStack() as stack:
        upstream_running = stack.enter_context(ExitStack())
        upstream = upstream_running.enter_context(reference_upstream(tmp_path / "upstream"))
        config = tmp_path / "config.yml"
        config.write_text(yaml.safe_dump({"proxy": {"upstreams": [
            {"prefix": "docker.io/", "remoteurl": upstream.url, "ttl": "0s"}]}}))
        url = stack.enter_context(stratus_server(root, config=config))
        daemon = private_daemon(stack)
        image, digest = seed_upstream(daemon, upstream, name, tag)
        host = url.split("://", 1)[1]
        ref = f"{host}/docker.io/library/{name}:{tag}"

        assert_pulled(daemon, ref, image, f"{host}/docker.io/library/{name}@{digest}")
        blobs = assert_cached(root, f"docker.io/library/{name}", tag, digest)
        for blob in blobs:
            assert upstream.blob_gets(blob) == 1, blob

        upstream_running.close()
        daemon.rmi(ref)
        assert daemon.inspect(image.id) is None
        assert_pulled(daemon, ref, image, f"{host}/docker.io/library/{name}@{digest}")


# -- what docker does when its mirror answers an error ------------------------------------------
#
# docker (20.10's puller, moby/distribution/pull_v2.go continueOnError) tries the next
# endpoint, registry-1.docker.io itself, after *any* error a mirror answers: a 404, a 401,
# a 503. With no network here that attempt fails with a DNS error naming Docker Hub; on a
# machine with Internet access it is a pull from Docker Hub that the cache never sees.

def test_docker_tries_docker_hub_itself_when_the_mirror_answers_404_or_503(tmp_path: Path) -> None:
    root = tmp_path / "stratus" / "data"
    root.mkdir(parents=True)
    with ExitStack() as stack:
        upstream_running = stack.enter_context(ExitStack())
        upstream = upstream_running.enter_context(reference_upstream(tmp_path / "upstream"))
        url = stack.enter_context(stratus_server(root, env={"REGISTRY_PROXY_REMOTEURL": upstream.url}))
        daemon = private_daemon(stack, {"registry-mirrors": [url]})

        since = log_size(daemon)
        absent = daemon.run("pull", "absent:v1")  # the upstream has no library/absent: our 404
        assert absent.returncode != 0 and HUB_FALLBACK in absent.stderr, absent.stderr
        assert any("manifest unknown" in line for line in attempted_next_endpoint(daemon, since))
        assert upstream.requests("HEAD", "/v2/library/absent/manifests/v1") or \
            upstream.requests("GET", "/v2/library/absent/manifests/v1")

        upstream_running.close()
        since = log_size(daemon)
        down = daemon.run("pull", "uncached:v1")  # the upstream is down, nothing cached: our 503
        assert down.returncode != 0 and HUB_FALLBACK in down.stderr, down.stderr
        assert any("503" in line for line in attempted_next_endpoint(daemon, since))


def test_docker_sends_a_mirror_behind_htpasswd_its_docker_hub_credentials(tmp_path: Path) -> None:
    """docker answers a mirror's challenge with what it keeps for Docker Hub (config.json's
    `https://index.docker.io/v1/`), never with a `docker login` to the mirror's own host."""
    name, tag = f"private{uuid.uuid4().hex[:8]}", "v1"
    root = tmp_path / "stratus" / "data"
    root.mkdir(parents=True)
    users = htpasswd_file(tmp_path, {"alice": PASSWORD}, cost=4)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"auth": {"htpasswd": {"realm": "Stratus", "path": str(users)}}}))
    with ExitStack() as stack:
        upstream = stack.enter_context(reference_upstream(tmp_path / "upstream"))
        url = stack.enter_context(stratus_server(root, config=config,
                                                 env={"REGISTRY_PROXY_REMOTEURL": upstream.url}))
        daemon = private_daemon(stack, {"registry-mirrors": [url]})
        image, digest = seed_upstream(daemon, upstream, name, tag)

        since = log_size(daemon)
        refused = daemon.run("pull", f"{name}:{tag}")
        assert refused.returncode != 0 and HUB_FALLBACK in refused.stderr, refused.stderr
        assert any("no basic auth credentials" in line for line in attempted_next_endpoint(daemon, since))

        # a login to the mirror's host is not used for the mirror...
        daemon.login(url.split("://", 1)[1], "alice", PASSWORD)
        refused = daemon.run("pull", f"{name}:{tag}")
        assert refused.returncode != 0 and HUB_FALLBACK in refused.stderr, refused.stderr

        # ...the Docker Hub entry is (what `docker login` with no server writes)
        saved = json.loads((daemon.config_dir / "config.json").read_text())
        saved["auths"][HUB_AUTH_KEY] = {"auth": base64.b64encode(f"alice:{PASSWORD}".encode()).decode()}
        (daemon.config_dir / "config.json").write_text(json.dumps(saved))
        since = log_size(daemon)
        assert_pulled(daemon, f"{name}:{tag}", image, f"{name}@{digest}")
        assert attempted_next_endpoint(daemon, since) == []
        assert_cached(root, f"library/{name}", tag, digest)
