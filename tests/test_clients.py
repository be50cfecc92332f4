"""Real clients against Stratus, through `stratus serve` and through `chalice local`:
skopeo copies umoci-built OCI images in and back out byte-identical (one small
image, a 200 MiB layer, a multi-arch index with --all), and oras pushes and pulls
an artifact."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from .clients_images import (
    BIG_LAYER_SIZE,
    INDEX,
    Layout,
    assert_same_image,
    assert_stored_like,
    images_dir,
    inspect_raw,
    needs_tools,
    pull,
    push,
    discard_image,
    docker_ref,
    session_image,
    sha256_digest,
    skopeo,
)
from .clients_servers import chalice_local, needs_chalice
from .conftest import RunningRegistry
from .servers import stratus_server

pytestmark = needs_tools


@pytest.fixture(scope="module", params=["stratus-serve", pytest.param("chalice-local", marks=needs_chalice)])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRegistry]:
    """A fresh Stratus of each kind, over a filesystem root of its own."""
    root = tmp_path_factory.mktemp(request.param) / "data"
    root.mkdir()
    start = stratus_server if request.param == "stratus-serve" else chalice_local
    with start(root) as url:
        yield RunningRegistry(url, root)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def big_image(images: Path) -> Iterator[Layout]:
    """Built on first use (~2 s), removed after the module: 200 MiB is worth not keeping."""
    yield session_image(images, "big")
    discard_image(images, "big")


def test_skopeo_round_trip_is_byte_identical(target: RunningRegistry, images: Path, tmp_path: Path) -> None:
    source = session_image(images, "small")
    name = "clients/small/image"
    push(source.path, "v1", target.url, name, "v1")

    raw = inspect_raw(target.url, name, "v1")
    assert sha256_digest(raw) == source.tagged("v1")["digest"]
    assert raw == source.blob(source.tagged("v1")["digest"])

    copy = Layout(tmp_path / "copy")
    pull(target.url, name, "v1", copy.path, "v1")
    digest = assert_same_image(source, "v1", copy, "v1")
    assert_stored_like(source, digest, target.root)

    repository_ref = docker_ref(target.url, name, "v1").rsplit(":", 1)[0]
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", repository_ref))
    assert tags["Tags"] == ["v1"]

    # by digest too
    by_digest = Layout(tmp_path / "by-digest")
    host = target.url.split("://", 1)[1]
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{host}/{name}@{digest}",
           f"oci:{by_digest.path}:v1")
    assert_same_image(source, "v1", by_digest, "v1")


def test_skopeo_round_trip_with_docker_media_types(
    target: RunningRegistry, images: Path, tmp_path: Path
) -> None:
    """--format v2s2: skopeo converts to a Docker schema 2 manifest; pulled back into a
    dir: the manifest and blobs are those the registry holds."""
    source = session_image(images, "small")
    name = "clients/docker-types"
    push(source.path, "v1", target.url, name, "v1", "--format", "v2s2")
    raw = inspect_raw(target.url, name, "v1")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    response = requests.get(
        f"{target.url}/v2/{name}/manifests/v1", headers={"Accept": manifest["mediaType"]}, timeout=10
    )
    assert response.headers["Content-Type"] == manifest["mediaType"]
    assert response.content == raw

    host = target.url.split("://", 1)[1]
    out = tmp_path / "dir"
    skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{host}/{name}:v1", f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == raw
    for descriptor in [manifest["config"], *manifest["layers"]]:
        # the config and layers are the OCI image's own bytes
        assert (out / descriptor["digest"].split(":", 1)[1]).read_bytes() == source.blob(descriptor["digest"])


def test_skopeo_streams_a_layer_it_compresses_on_the_fly(
    target: RunningRegistry, images: Path, tmp_path: Path
) -> None:
    """An uncompressed layer is gzipped while pushed: the PATCH body has no known
    length and goes out with Transfer-Encoding: chunked (as docker and podman push)."""
    source = session_image(images, "small")
    name = "clients/streamed"
    push(source.path, "v1-tar", target.url, name, "v1")
    raw = inspect_raw(target.url, name, "v1")
    manifest = json.loads(raw)
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"

    copy = Layout(tmp_path / "copy")
    pull(target.url, name, "v1", copy.path, "v1")
    assert copy.tagged("v1")["digest"] == sha256_digest(raw)
    stored = copy.blob(layer["digest"])
    assert len(stored) == layer["size"] and sha256_digest(stored) == layer["digest"]
    # the layer's content is what was pushed: same tar once decompressed
    source_manifest = json.loads(source.blob(source.tagged("v1-tar")["digest"]))
    assert sha256_digest(gzip.decompress(stored)) == source_manifest["layers"][0]["digest"]


def test_skopeo_pushes_an_image_again_and_to_another_repository(target: RunningRegistry, images: Path) -> None:
    """Pushing again finds every blob by HEAD; another repository may get them by mount."""
    source = session_image(images, "small")
    push(source.path, "v1", target.url, "clients/again", "v1")
    push(source.path, "v1", target.url, "clients/again", "v2")
    # a push to another repository of the same registry may mount the blobs
    push(source.path, "v1", target.url, "clients/again-elsewhere", "v1")
    for name, tag in (("clients/again", "v2"), ("clients/again-elsewhere", "v1")):
        assert sha256_digest(inspect_raw(target.url, name, tag)) == source.tagged("v1")["digest"]


def test_skopeo_copies_between_repositories_of_the_registry(
    target: RunningRegistry, images: Path, tmp_path: Path
) -> None:
    """docker:// to docker:// within one registry: skopeo mounts blobs across repositories."""
    source = session_image(images, "small")
    push(source.path, "v1", target.url, "clients/mount/src", "v1")
    host = target.url.split("://", 1)[1]
    skopeo("copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{host}/clients/mount/src:v1", f"docker://{host}/clients/mount/dst:v1")
    copy = Layout(tmp_path / "copy")
    pull(target.url, "clients/mount/dst", "v1", copy.path, "v1")
    assert_same_image(source, "v1", copy, "v1")


def test_skopeo_delete_removes_the_manifest(target: RunningRegistry, images: Path) -> None:
    source = session_image(images, "small")
    name = "clients/deleted"
    push(source.path, "v1", target.url, name, "v1")
    skopeo("delete", "--tls-verify=false", docker_ref(target.url, name, "v1"))
    digest = source.tagged("v1")["digest"]
    response = requests.get(f"{target.url}/v2/{name}/manifests/{digest}", timeout=10)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_skopeo_copies_a_multi_arch_index_with_all(
    target: RunningRegistry, images: Path, tmp_path: Path
) -> None:
    source = session_image(images, "multi")
    name = "clients/multi"
    push(source.path, "multi", target.url, name, "1.0", "--all")

    raw = inspect_raw(target.url, name, "1.0")
    index = source.tagged("multi")["digest"]
    assert sha256_digest(raw) == index
    assert json.loads(raw)["mediaType"] == INDEX
    response = requests.get(
        f"{target.url}/v2/{name}/manifests/1.0", headers={"Accept": INDEX}, timeout=10
    )
    assert response.headers["Content-Type"] == INDEX
    assert response.headers["Docker-Content-Digest"] == index

    copy = Layout(tmp_path / "copy")
    pull(target.url, name, "1.0", copy.path, "multi", "--all")
    assert_same_image(source, "multi", copy, "multi")
    assert_stored_like(source, index, target.root)

    # without --all skopeo picks the platform it is asked for, by the child's digest
    arm = Layout(tmp_path / "arm")
    pull(target.url, name, "1.0", arm.path, "arm", "--override-arch", "arm64")
    assert arm.tagged("arm")["digest"] == source.tagged("arm64")["digest"]


@pytest.mark.slow
def test_skopeo_round_trip_of_a_200_mib_layer(
    target: RunningRegistry, big_image: Layout, tmp_path: Path
) -> None:
    source = big_image
    manifest = json.loads(source.blob(source.tagged("big")["digest"]))
    assert manifest["layers"][0]["size"] > BIG_LAYER_SIZE
    name = "clients/big"
    started = time.monotonic()
    push(source.path, "big", target.url, name, "1")
    pushed = time.monotonic()
    copy = Layout(tmp_path / "copy")
    try:
        pull(target.url, name, "1", copy.path, "1")
        pulled = time.monotonic()
        digest = assert_same_image(source, "big", copy, "1")
        assert_stored_like(source, digest, target.root)
        print(f"200 MiB via {target.url}: push {pushed - started:.1f}s, pull {pulled - pushed:.1f}s")
    finally:
        shutil.rmtree(copy.path, ignore_errors=True)
        # the stored copy is the other 200 MiB this test leaves behind
        layer = manifest["layers"][0]["digest"].split(":", 1)[1]
        shutil.rmtree(target.root / "docker/registry/v2/blobs/sha256" / layer[:2] / layer, ignore_errors=True)


# -- oras -------------------------------------------------------------------------------


def _oras_client():
    oras_client = pytest.importorskip("oras.client")
    return oras_client.OrasClient(insecure=True)


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_oras_push_and_pull_an_artifact(
    target: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    client = _oras_client()
    work = tmp_path / "push"
    work.mkdir()
    files = {"notes.txt": b"stratus artifact\n", "payload.bin": hashlib.sha512(b"x").digest() * 5000}
    for filename, data in files.items():
        (work / filename).write_bytes(data)
    monkeypatch.chdir(work)  # oras-py only pushes paths under the working directory
    host = target.url.split("://", 1)[1]
    # a repository per variant: oras skips blobs the repository already has
    name = f"clients/oras/{'chunked' if chunked else 'monolithic'}"
    ref = f"{host}/{name}:v1"
    response = client.push(
        target=ref, files=list(files), do_chunked=chunked, chunk_size=64 << 10,
        manifest_annotations={"org.example.kind": "test"},
    )
    assert response.status_code == 201, response.text
    manifest_digest = response.headers["Docker-Content-Digest"]

    out = tmp_path / "pull"
    pulled = client.pull(target=ref, outdir=str(out))
    assert sorted(Path(p).name for p in pulled) == sorted(files)
    for filename, data in files.items():
        assert (out / filename).read_bytes() == data

    manifest = client.get_manifest(ref)
    assert manifest["annotations"] == {"org.example.kind": "test"}
    body = requests.get(f"{target.url}/v2/{name}/manifests/{manifest_digest}", timeout=10).content
    assert sha256_digest(body) == manifest_digest


def test_oras_push_with_a_subject_is_listed_by_referrers(
    target: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _oras_client()
    import oras.oci

    monkeypatch.chdir(tmp_path)
    Path("base.txt").write_bytes(b"the subject\n")
    Path("sig.txt").write_bytes(b"a signature of it\n")
    host = target.url.split("://", 1)[1]
    subject_response = client.push(target=f"{host}/clients/oras/refs:base", files=["base.txt"])
    subject_digest = subject_response.headers["Docker-Content-Digest"]
    subject_size = len(requests.get(f"{target.url}/v2/clients/oras/refs/manifests/base", timeout=10).content)
    subject = oras.oci.Subject(
        mediaType="application/vnd.oci.image.manifest.v1+json", digest=subject_digest, size=subject_size
    )
    response = client.push(target=f"{host}/clients/oras/refs:sig", files=["sig.txt"], subject=subject)
    assert response.status_code == 201
    assert response.headers.get("OCI-Subject") == subject_digest
    referrers = requests.get(f"{target.url}/v2/clients/oras/refs/referrers/{subject_digest}", timeout=10)
    assert referrers.status_code == 200
    listed = [m["digest"] for m in referrers.json()["manifests"]]
    assert listed == [response.headers["Docker-Content-Digest"]]
