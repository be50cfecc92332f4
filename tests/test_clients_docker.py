"""docker against `stratus serve`: push and pull of an imported image with a 200 MiB layer,
and `docker login` with htpasswd and bearer-token auth.

The daemon is Debian's dockerd over a private containerd (tests/docker_daemon.py),
shared by the session. docker trusts registries on 127.0.0.0/8 as insecure, so it
speaks plain HTTP to `127.0.0.1:<port>` without configuration.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from .docker_daemon import docker_daemon_fixture  # noqa: F401  (the fixture `docker_daemon`)
from .docker_daemon import DockerDaemon, ImportedImage, MiB, docker_daemon_running
from .servers import stratus_server
from .test_auth_htpasswd import PASSWORD, htpasswd_file
from .token_issuer import TokenIssuer

BIG_LAYER_MIB = 200
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REFUSED = r"(?i)unauthorized|authentication required|denied|no basic auth credentials|incorrect username"


def registry_host(url: str) -> str:
    return url.split("://", 1)[1]


def pushed_digest(output: str) -> str:
    """The manifest digest `docker push` reports: `<tag>: digest: sha256:... size: N`."""
    found = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", output)
    assert found, f"no digest in docker push output:\n{output}"
    return found.group(1)


def manifest(url: str, name: str, reference: str, auth: tuple[str, str] | None = None) -> tuple[dict, str]:
    """The stored manifest and its Docker-Content-Digest, read over HTTP as a client would."""
    response = requests.get(f"{url}/v2/{name}/manifests/{reference}", timeout=30, auth=auth,
                            headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"})
    assert response.status_code == 200, response.text
    assert response.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(response.content).hexdigest()
    return response.json(), response.headers["Docker-Content-Digest"]


def blob_file(root: Path, digest: str) -> Path:
    hex_ = digest.split(":", 1)[1]
    return root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"


def file_digest(path: Path, opener=open) -> str:
    digest = hashlib.sha256()
    with opener(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def push_then_pull_back(daemon: DockerDaemon, image: ImportedImage, ref: str,
                        config_dir: Path | None = None) -> str:
    """Push ref, remove it and its layer from the daemon, pull it again; returns the manifest digest."""
    daemon.tag(image, ref)
    digest = pushed_digest(daemon.docker("push", ref, timeout=600, config_dir=config_dir))
    daemon.rmi(ref, image.tag)
    assert daemon.inspect(image.id) is None, "the image is still in the daemon: the pull would prove nothing"
    pulled = daemon.docker("pull", ref, timeout=600, config_dir=config_dir)
    assert "Pull complete" in pulled and "Already exists" not in pulled, pulled
    assert daemon.image_id(ref) == image.id
    assert daemon.diff_ids(ref) == [image.diff_id]
    assert f"{ref.rsplit(':', 1)[0]}@{digest}" in daemon.inspect(ref)["RepoDigests"]
    return digest


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("docker-open") / "data"
    root.mkdir()
    with stratus_server(root) as url:
        yield url, root
    shutil.rmtree(root, ignore_errors=True)  # hundreds of MiB; pytest keeps its last temp dirs


# -- push and pull ------------------------------------------------------------------------


def test_docker_pushes_and_pulls_a_200_mib_layer(docker_daemon: DockerDaemon, open_registry) -> None:
    url, root = open_registry
    image = docker_daemon.image_with_layer(BIG_LAYER_MIB)
    assert image.size > BIG_LAYER_MIB * MiB
    assert docker_daemon.diff_ids(image.tag) == [image.diff_id]  # import kept our tarball as the layer
    ref = f"{registry_host(url)}/docker/big:v1"
    docker_daemon.tag(image, ref)
    digest = pushed_digest(docker_daemon.docker("push", ref, timeout=600))

    stored, served_digest = manifest(url, "docker/big", "v1")
    assert served_digest == digest
    assert stored["config"]["digest"] == image.id  # an image ID is its config's digest
    [layer] = stored["layers"]
    data = blob_file(root, layer["digest"])
    assert data.stat().st_size == layer["size"]
    assert file_digest(data) == layer["digest"]
    # docker gzips the layer on push: the stored bytes unpack to the tarball we imported
    assert file_digest(data, gzip.open) == image.diff_id

    docker_daemon.rmi(ref, image.tag)
    assert docker_daemon.inspect(image.id) is None
    pulled = docker_daemon.docker("pull", ref, timeout=600)
    assert "Pull complete" in pulled and "Already exists" not in pulled, pulled
    assert docker_daemon.image_id(ref) == image.id
    assert docker_daemon.diff_ids(ref) == [image.diff_id]
    assert f"{registry_host(url)}/docker/big@{digest}" in docker_daemon.inspect(ref)["RepoDigests"]
    docker_daemon.rmi(ref)


def test_docker_pull_by_digest_and_a_second_tag(docker_daemon: DockerDaemon, open_registry) -> None:
    url, _ = open_registry
    host = registry_host(url)
    image = docker_daemon.image_with_layer(1)
    digest = push_then_pull_back(docker_daemon, image, f"{host}/docker/small:v1")
    # the second push of the same image sends no blob again and names the same manifest
    docker_daemon.tag(f"{host}/docker/small:v1", f"{host}/docker/small:v2")
    again = docker_daemon.docker("push", f"{host}/docker/small:v2")
    assert pushed_digest(again) == digest and "Layer already exists" in again, again
    docker_daemon.rmi(f"{host}/docker/small:v1", f"{host}/docker/small:v2")
    docker_daemon.docker("pull", f"{host}/docker/small@{digest}")
    assert docker_daemon.image_id(f"{host}/docker/small@{digest}") == image.id
    docker_daemon.rmi(f"{host}/docker/small@{digest}")


def test_docker_mounts_a_layer_from_another_repository(docker_daemon: DockerDaemon, open_registry) -> None:
    url, root = open_registry
    host = registry_host(url)
    image = docker_daemon.image_with_layer(1)
    first = docker_daemon.tag(image, f"{host}/docker/first:v1")
    docker_daemon.docker("push", first)
    second = docker_daemon.tag(image, f"{host}/docker/second:v1")
    output = docker_daemon.docker("push", second)
    # docker asks for a cross-repository mount of the layer it pushed to docker/first
    assert "Mounted from docker/first" in output, output
    stored, _ = manifest(url, "docker/second", "v1")
    [layer] = stored["layers"]
    link = root / "docker/registry/v2/repositories/docker/second/_layers/sha256" / layer["digest"][7:] / "link"
    assert link.read_text() == layer["digest"]
    docker_daemon.rmi(first, second, image.tag)


def test_a_fresh_docker_daemon_pulls_what_another_pushed(docker_daemon: DockerDaemon, open_registry,
                                                          tmp_path: Path) -> None:
    url, root = open_registry
    image = docker_daemon.image_with_layer(3)
    ref = docker_daemon.tag(image, f"{registry_host(url)}/docker/shared:v1")
    digest = pushed_digest(docker_daemon.docker("push", ref))
    docker_daemon.rmi(ref, image.tag)
    with docker_daemon_running(tmp_path / "fresh") as fresh:
        assert fresh.inspect(image.id) is None
        fresh.docker("pull", ref)
        assert fresh.image_id(ref) == image.id
        assert fresh.diff_ids(ref) == [image.diff_id]
        assert f"{registry_host(url)}/docker/shared@{digest}" in fresh.inspect(ref)["RepoDigests"]


def test_docker_pull_of_an_unknown_tag_is_not_found(docker_daemon: DockerDaemon, open_registry) -> None:
    url, _ = open_registry
    done = docker_daemon.run("pull", f"{registry_host(url)}/docker/nothing:here")
    assert done.returncode != 0
    assert re.search(r"(?i)manifest unknown|not found", done.stderr), done.stderr


# -- htpasswd -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    base = tmp_path_factory.mktemp("docker-htpasswd")
    root = base / "data"
    root.mkdir()
    path = htpasswd_file(base, {"alice": PASSWORD, "bob": "other"}, cost=6)
    config = base / "config.yml"
    config.write_text(yaml.safe_dump({"version": "0.1", "auth": {"htpasswd": {"realm": "Stratus", "path": str(path)}}}))
    with stratus_server(root, config=config) as url:
        yield url, root


def stored_auth(config_dir: Path, host: str) -> str | None:
    """The user:password `docker login` saved for host in config.json, if any."""
    entry = json.loads((config_dir / "config.json").read_text()).get("auths", {}).get(host)
    return base64.b64decode(entry["auth"]).decode() if entry and entry.get("auth") else None


def test_docker_login_with_htpasswd_then_push_and_pull(docker_daemon: DockerDaemon, htpasswd_registry,
                                                       tmp_path: Path) -> None:
    url, root = htpasswd_registry
    host = registry_host(url)
    config = docker_daemon.fresh_config(tmp_path / "docker-config")
    image = docker_daemon.image_with_layer(2)
    ref = docker_daemon.tag(image, f"{host}/private/app:v1")

    refused = docker_daemon.run("push", ref, config_dir=config)
    assert refused.returncode != 0 and re.search(REFUSED, refused.stderr + refused.stdout), refused

    assert "Login Succeeded" in docker_daemon.login(host, "alice", PASSWORD, config_dir=config)
    assert stored_auth(config, host) == f"alice:{PASSWORD}"
    digest = push_then_pull_back(docker_daemon, image, ref, config_dir=config)
    assert manifest(url, "private/app", "v1", auth=("alice", PASSWORD))[1] == digest

    docker_daemon.logout(host, config_dir=config)
    assert stored_auth(config, host) is None
    docker_daemon.rmi(ref)
    refused = docker_daemon.run("pull", ref, config_dir=config)
    assert refused.returncode != 0 and re.search(REFUSED, refused.stderr), refused.stderr
    log = (root.parent / f"stratus-{host.rsplit(':', 1)[1]}.log").read_text()
    assert PASSWORD not in log


@pytest.mark.parametrize("user, password", [("alice", PASSWORD + "x"), ("mallory", PASSWORD)],
                         ids=["wrong-password", "unknown-user"])
def test_docker_login_with_htpasswd_refuses_bad_credentials(docker_daemon: DockerDaemon, htpasswd_registry,
                                                            tmp_path: Path, user: str, password: str) -> None:
    url, _ = htpasswd_registry
    host = registry_host(url)
    config = docker_daemon.fresh_config(tmp_path / "docker-config")
    done = docker_daemon.run("login", "--username", user, "--password-stdin", host, input=password,
                             config_dir=config)
    assert done.returncode != 0, done.stdout
    assert re.search(REFUSED, done.stderr), done.stderr
    assert stored_auth(config, host) is None


# -- bearer tokens ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    issuer = TokenIssuer(users={
        "pusher": ("push-pw", {"*": ["pull", "push"]}),
        "reader": ("read-pw", {"*": ["pull"]}),
    })
    base = tmp_path_factory.mktemp("docker-token")
    root = base / "data"
    root.mkdir()
    with issuer.serve() as realm:
        config = base / "config.yml"
        config.write_text(yaml.safe_dump({"version": "0.1", "auth": issuer.auth_config(base, realm=realm)}))
        with stratus_server(root, config=config) as url:
            yield url, root


def test_docker_login_with_token_auth_then_push_and_pull(docker_daemon: DockerDaemon, token_registry,
                                                         tmp_path: Path) -> None:
    url, _ = token_registry
    host = registry_host(url)
    pusher = docker_daemon.fresh_config(tmp_path / "pusher")
    image = docker_daemon.image_with_layer(2)
    ref = docker_daemon.tag(image, f"{host}/tokens/app:v1")

    refused = docker_daemon.run("push", ref, config_dir=pusher)  # anonymous: a token granting nothing
    assert refused.returncode != 0 and re.search(REFUSED, refused.stderr + refused.stdout), refused

    assert "Login Succeeded" in docker_daemon.login(host, "pusher", "push-pw", config_dir=pusher)
    push_then_pull_back(docker_daemon, image, ref, config_dir=pusher)

    # a reader pulls, and is refused a push
    reader = docker_daemon.fresh_config(tmp_path / "reader")
    docker_daemon.login(host, "reader", "read-pw", config_dir=reader)
    docker_daemon.rmi(ref)
    docker_daemon.docker("pull", ref, config_dir=reader)
    assert docker_daemon.image_id(ref) == image.id
    other = docker_daemon.tag(ref, f"{host}/tokens/other:v1")
    refused = docker_daemon.run("push", other, config_dir=reader)
    assert refused.returncode != 0 and re.search(REFUSED, refused.stderr + refused.stdout), refused
    docker_daemon.rmi(ref, other)


def test_docker_login_with_token_auth_refuses_a_wrong_password(docker_daemon: DockerDaemon, token_registry,
                                                               tmp_path: Path) -> None:
    url, _ = token_registry
    host = registry_host(url)
    config = docker_daemon.fresh_config(tmp_path / "docker-config")
    done = docker_daemon.run("login", "--username", "pusher", "--password-stdin", host, input="wrong-pw",
                             config_dir=config)
    assert done.returncode != 0, done.stdout
    assert re.search(REFUSED, done.stderr), done.stderr
    assert stored_auth(config, host) is None
