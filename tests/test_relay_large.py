"""Issue 12: a 1 GiB layer, pushed by docker, podman and skopeo through `stratus relay`
into the function apps behind their platforms' fronts, and pulled straight back through
those fronts (not through the relay), where every blob GET is a 307 to storage; the
harness's record shows that no request over its limit reached the function.

- docker  -> relay -> API Gateway stand-in (HTTP API, 6 MB events) -> Lambda app -> moto S3
- skopeo  -> relay -> Functions host stand-in (100 MB bodies) -> Functions app -> Azurite
- podman  -> relay -> Functions host stand-in (100 MB bodies) -> Functions app -> Azurite

One 1 GiB run per client, not each client into each harness: on the loaded 2-core
test machine (load average ~10) a 1 GiB push and pull took 1.5-2 min into the Functions
host on Azurite and 4.5 min into the Lambda stand-in on moto (moto completes a multipart
upload, serves every ranged GET and copies an object by reading the whole object, so the
registry's assembly, read-back and move of 1 GiB take minutes there). These three took
8 min together (docker 271 s, podman 119 s, skopeo 88 s); six would take about 20, hence
one run over moto. What a harness shows does not depend on the
client: the relay turns every client's one-request layer into direct-upload parts.
tests/test_relay.py already has skopeo and docker at 12-200 MiB through both harnesses
(pulled back through the relay); here the layers are 1 GiB and the pulls go to the
harness itself.

Layers are random bytes (incompressible), and the pulled image is compared with the
pushed one by image ID / manifest digest and by the layer's digest and diff ID, which
the client checks against the bytes it pulled.

The last test needs no relay: a client that sends direct-upload parts itself, through
the Functions host (tests/test_direct_uploads.py covers the Lambda harness and
`stratus serve`).

STRATUS_LARGE_LAYER_MIB=40 runs the client tests with a smaller layer (to try them out).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .clients_images import docker_ref, needs_tools, skopeo
from .docker_daemon import docker_daemon_fixture  # noqa: F401  (the fixture `docker_daemon`)
from .moto_server import MotoS3
from .test_relay import relay

MIB = 1 << 20
# STRATUS_LARGE_LAYER_MIB: a smaller layer, to try the tests out quickly
LAYER = int(os.environ.get("STRATUS_LARGE_LAYER_MIB", "1024")) * MIB
# docker's push and pull of 1 GiB into the Lambda stand-in on moto took 4.5 min, and more than
# the suite's 300 s on a busier run (load average ~19) of the loaded 2-core machine
LARGE_TIMEOUT = 1200
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

needs_podman = pytest.mark.skipif(shutil.which("podman") is None,
                                  reason="podman not installed (scripts/install-system-deps.sh)")


# -- images: an OCI layout with one layer of random bytes -------------------------------------


@dataclass(frozen=True)
class BigImage:
    layout: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digest: str  # the layer as stored (gzipped)
    diff_id: str  # the digest of the layer's tar


class _Random:
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def _write_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return "sha256:" + digest


class _HashingWriter:
    """A file-like sink that hashes what passes through it on the way to `target`."""

    def __init__(self, target) -> None:
        self.target = target
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()

    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()


def big_image(directory: Path, tag: str, size: int) -> BigImage:
    """An OCI image layout whose one layer is a gzipped tar of `size` random bytes,
    written in pieces (never whole in memory). gzip at level 0 (stored blocks): random
    bytes would not shrink anyway, and a registry client copies a gzipped layer as it is
    (an uncompressed one, skopeo and podman would compress on push)."""
    layout = directory / f"layout-{tag}"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    staging = layout / "layer.tar.gz"
    with open(staging, "wb") as raw:
        compressed = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=0, mtime=0) as zipped:
            uncompressed = _HashingWriter(zipped)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                entry = tarfile.TarInfo(f"data/{tag}.bin")
                entry.size, entry.mtime, entry.mode = size, 1_700_000_000, 0o644
                tar.addfile(entry, _Random(size))
    layer, diff_id = compressed.digest(), uncompressed.digest()
    staging.rename(layout / "blobs" / "sha256" / layer.split(":", 1)[1])
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": [f"STRATUS_LARGE={tag}"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_digest = _write_blob(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": compressed.size}],
    }).encode()
    manifest_digest = _write_blob(layout, manifest)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    return BigImage(layout, tag, manifest_digest, config_digest, layer, diff_id)


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(8 * MIB):
            hasher.update(piece)
    return "sha256:" + hasher.hexdigest()


def assert_pulled_identical(image: BigImage, copy: Path) -> None:
    """The copy's tag names the pushed manifest, and its manifest, config and layer hash
    to the pushed ones' digests (so they are the same bytes) with the same sizes."""
    index = json.loads((copy / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_digest]
    for digest in (image.manifest_digest, image.config_digest, image.layer_digest):
        pulled = copy / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert file_digest(pulled) == digest
        assert pulled.stat().st_size == (image.layout / "blobs" / "sha256" / digest.split(":", 1)[1]).stat().st_size


# -- what the harnesses recorded ---------------------------------------------------------------


def assert_blob_gets_redirected(records, name: str, digest: str) -> None:
    """Every GET of the layer through the harness was answered 307 (to storage): its bytes
    never came through the function."""
    gets = [r for r in records if r.method == "GET" and r.path.split("?")[0].endswith(f"/v2/{name}/blobs/{digest}")]
    assert gets, f"no GET of {digest} reached the harness"
    assert {r.status for r in gets} == {307}, gets


def assert_layer_went_in_parts(log: str, digest: str) -> None:
    line = next((line for line in log.splitlines() if f"{digest} complete" in line), None)
    assert line is not None, log[-3000:]
    assert "sent as direct-upload parts" in line, line


def lambda_env(moto_s3: MotoS3, secret: str) -> dict[str, str]:
    return {**moto_s3.environment(moto_s3.create_bucket()), "REGISTRY_HTTP_SECRET": secret,
            # docs/direct-uploads.md: moto copies the whole object for every UploadPartCopy, so
            # the final move of 1 GiB takes 93 s with 32 MiB copy parts and 17 s with 128 MiB
            "REGISTRY_STORAGE_S3_MULTIPARTCOPYCHUNKSIZE": str(128 * MIB),
            # moto reads the whole object for every ranged GET: the read-back of 1 GiB in
            # 64 MiB reads costs 16 of those instead of 64 (S3 itself needs no such setting)
            "REGISTRY_STORAGE_DIRECTUPLOAD_READSIZE": str(64 * MIB)}


def timed(label: str, started: float) -> None:
    print(f"{label}: {time.monotonic() - started:.0f} s")


# -- docker -> Lambda --------------------------------------------------------------------------


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def stored_manifest(url: str, name: str, digest: str) -> dict:
    import requests

    r = requests.get(f"{url}/v2/{name}/manifests/{digest}", headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_MANIFEST}"},
                     timeout=60)
    assert r.status_code == 200, r.text
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    return r.json()


@pytest.mark.timeout(LARGE_TIMEOUT)
def test_docker_pushes_1_gib_through_the_relay_into_lambda_and_pulls_it_from_the_gateway(
        docker_daemon, moto_s3: MotoS3, tmp_path: Path) -> None:
    from .lambda_gateway import lambda_gateway
    from .test_clients_docker import pushed_digest

    image = docker_daemon.image_with_layer(LAYER // MIB)
    with lambda_gateway(lambda_env(moto_s3, "large-docker"), "http", workdir=tmp_path) as gw, \
            relay(gw.url, tmp_path / "state") as running:
        started = time.monotonic()
        ref = docker_daemon.tag(image, f"{running.host}/large/docker:1")
        digest = pushed_digest(docker_daemon.docker("push", ref, timeout=1500))
        timed(f"docker push of {LAYER // MIB} MiB through the relay into Lambda", started)
        log = running.log_text()
        docker_daemon.rmi(ref, image.tag)
        assert docker_daemon.inspect(image.id) is None, "the image is still in the daemon: the pull would prove nothing"
        # the pull goes to the gateway itself: pulling needs no relay
        direct = f"{gw.host}/large/docker:1"
        started = time.monotonic()
        pulled = docker_daemon.docker("pull", direct, timeout=1500)
        timed(f"docker pull of {LAYER // MIB} MiB from the gateway", started)
        assert "Pull complete" in pulled and "Already exists" not in pulled, pulled
        assert docker_daemon.image_id(direct) == image.id
        assert docker_daemon.diff_ids(direct) == [image.diff_id]
        assert f"{gw.host}/large/docker@{digest}" in docker_daemon.inspect(direct)["RepoDigests"]
        docker_daemon.rmi(direct)
        layer = stored_manifest(gw.url, "large/docker", digest)["layers"][0]
        gw.assert_nothing_over_the_limit_reached_the_function()
        records = gw.records()
    assert layer["size"] > LAYER  # random bytes: gzip made the layer no smaller
    assert_layer_went_in_parts(log, layer["digest"])
    assert_blob_gets_redirected(records, "large/docker", layer["digest"])
    assert max(r.body_bytes for r in records) < 6 * MIB


# -- skopeo -> Azure Functions -------------------------------------------------------------------


@needs_tools
@pytest.mark.timeout(LARGE_TIMEOUT)
def test_skopeo_pushes_1_gib_through_the_relay_into_functions_and_pulls_it_from_the_host(
        azurite, tmp_path: Path) -> None:
    from .functions_host import functions_host

    image = big_image(tmp_path, "skopeo", LAYER)
    env = azurite.environment(azurite.new_container(), REGISTRY_HTTP_SECRET="large-skopeo",
                              PYTHON_ENABLE_INIT_INDEXING="1")
    with functions_host(env, tmp_path) as host, relay(host.url, tmp_path / "state") as running:
        assert host.body_limit == 100 * 1024 * 1024  # the host's default: the layer is ten times that
        started = time.monotonic()
        skopeo("copy", "--quiet", "--dest-tls-verify=false", f"oci:{image.layout}:{image.tag}",
               docker_ref(running.url, "large/skopeo", "1"), timeout=1500)
        timed(f"skopeo push of {LAYER // MIB} MiB through the relay into Functions", started)
        log = running.log_text()
        copy = tmp_path / "copy"
        started = time.monotonic()
        skopeo("copy", "--quiet", "--src-tls-verify=false", docker_ref(host.url, "large/skopeo", "1"),
               f"oci:{copy}:1", timeout=1500)
        timed(f"skopeo pull of {LAYER // MIB} MiB from the host", started)
        records = host.records()
    assert_pulled_identical(image, copy)
    assert_layer_went_in_parts(log, image.layer_digest)
    assert_blob_gets_redirected(records, "large/skopeo", image.layer_digest)
    assert not [r for r in records if r.body_bytes > host.body_limit and r.reached_function]
    assert max(r.body_bytes for r in records) < 100 * 1024 * 1024
    shutil.rmtree(image.layout)  # 2 GiB between them; pytest keeps its last temp dirs
    shutil.rmtree(copy)


# -- podman -> Lambda ---------------------------------------------------------------------------


@pytest.fixture
def podman():
    """podman with storage of its own (vfs, in a fresh directory, removed afterwards):
    nothing shared with the machine's. Its runroot must be a short path (podman refuses
    one over 50 characters), so the directory is not under pytest's tmp_path."""
    root = Path(tempfile.mkdtemp(prefix="podman-", dir="/tmp"))
    try:
        yield podman_runner(root)
    finally:
        podman_runner(root)("system", "reset", "--force")  # unmounts what vfs holds, then removes it
        shutil.rmtree(root, ignore_errors=True)


def podman_runner(root: Path):
    base = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(root / "xdg"), "HOME": str(root / "home"),
           "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
           "REGISTRIES_CONFIG_PATH": str(root / "registries.conf")}
    for sub in ("xdg", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "registries.conf").write_text('unqualified-search-registries = []\n')

    def podman(*args: str, timeout: float = 1500) -> str:
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
        return done.stdout

    return podman


@needs_podman
@pytest.mark.timeout(LARGE_TIMEOUT)
def test_podman_pushes_1_gib_through_the_relay_into_functions_and_pulls_it_from_the_host(
        podman, azurite, tmp_path: Path) -> None:
    from .functions_host import functions_host

    image = big_image(tmp_path, "podman", LAYER)
    podman("pull", "--quiet", f"oci:{image.layout}:{image.tag}")
    shutil.rmtree(image.layout)  # podman holds the image now
    image_id = image.config_digest.split(":", 1)[1]
    assert podman("image", "inspect", "--format", "{{.Id}}", image_id).strip() == image_id
    env = azurite.environment(azurite.new_container(), REGISTRY_HTTP_SECRET="large-podman",
                              PYTHON_ENABLE_INIT_INDEXING="1")
    with functions_host(env, tmp_path) as host, relay(host.url, tmp_path / "state") as running:
        registry = host.url.split("://", 1)[1]
        digest_file = tmp_path / "pushed-digest"
        started = time.monotonic()
        podman("push", "--tls-verify=false", "--digestfile", str(digest_file), image_id,
               f"docker://{running.host}/large/podman:1")
        timed(f"podman push of {LAYER // MIB} MiB through the relay into Functions", started)
        log = running.log_text()
        podman("rmi", "--force", image_id)
        assert podman("images", "--quiet").strip() == ""
        started = time.monotonic()
        podman("pull", "--quiet", "--tls-verify=false", f"{registry}/large/podman:1")
        timed(f"podman pull of {LAYER // MIB} MiB from the host", started)
        pulled = json.loads(podman("image", "inspect", f"{registry}/large/podman:1"))[0]
        digest = digest_file.read_text().strip()
        layer = stored_manifest(host.url, "large/podman", digest)["layers"][0]
        records = host.records()
    assert pulled["Id"] == image_id  # the config's digest: the same image
    assert pulled["RootFS"]["Layers"] == [image.diff_id]  # the layer's diff ID, checked by podman on pull
    assert pulled["Digest"] == digest
    assert layer["size"] > LAYER  # podman gzipped it; random bytes do not shrink
    assert_layer_went_in_parts(log, layer["digest"])
    assert_blob_gets_redirected(records, "large/podman", layer["digest"])
    assert not [r for r in records if r.body_bytes > host.body_limit and r.reached_function]
    assert max(r.body_bytes for r in records) < host.body_limit


# -- without the relay: direct uploads through the Functions host ----------------------------------
# tests/test_direct_uploads.py shows a wrong digest refused through the Lambda harness (and
# through `stratus serve` on S3 and Azure), and a part URL that cannot write another upload
# against `stratus serve` on Azurite; this is the same through the Functions harness, where
# Azurite checks every SAS signature. (moto does not check presigned signatures, so on the
# Lambda harness what a URL can write cannot be shown; test_s3_part_url_names_only_its_own_upload
# shows what it names.)


def test_functions_host_a_part_url_cannot_write_another_upload_and_a_wrong_digest_leaves_nothing(
        azurite, tmp_path: Path) -> None:
    from .functions_host import functions_host
    from .test_direct_uploads import (
        AZURE_PART, BLOBS, AzureView, ask_parts, complete, random_bytes, send_part, send_parts, served, sha256, start,
        uploads_of,
    )

    container = azurite.new_container()
    view = AzureView(azurite, container)
    env = azurite.environment(container, REGISTRY_HTTP_SECRET="large-direct", PYTHON_ENABLE_INIT_INDEXING="1")
    name = "bypass/app"
    data = random_bytes(2 * AZURE_PART + 77, seed=1212)
    with functions_host(env, tmp_path) as host:
        call = served(host.url)
        one, two = start(call, name), start(call, name)
        id_one, id_two = one.header("Docker-Upload-UUID"), two.header("Docker-Upload-UUID")
        grant = ask_parts(call, one, "1-3", AZURE_PART)
        assert grant.status == 200, grant.body
        assert ask_parts(call, two, "1-1", AZURE_PART).status == 200
        first = grant.json()["parts"][0]
        assert id_one in first["url"]
        # one upload's URL, aimed at the other's blob: Azurite refuses the signature
        assert send_part({**first, "url": first["url"].replace(id_one, id_two)}, data[:AZURE_PART]) == 403
        assert call("GET", two.target()).header("Range") == "0-0"
        # a client without the relay sends the parts itself, then claims a wrong digest
        send_parts(grant.json(), data)
        assert call("GET", one.target()).header("Range") == f"0-{len(data) - 1}"
        wrong = sha256(data + b"tampered")
        refused, _ = complete(call, one, wrong)
        assert refused.status == 400 and refused.code() == "DIGEST_INVALID"
        for digest in (wrong, sha256(data)):
            assert view.keys(f"{BLOBS}sha256/{digest[7:9]}/{digest[7:]}") == []
            assert call("HEAD", f"/v2/{name}/blobs/{digest}").status == 404
        assert call("GET", one.target()).code() == "BLOB_UPLOAD_UNKNOWN"
        assert not [k for k in uploads_of(view, name) if f"/_uploads/{id_one}/" in k]
        assert view.keys(BLOBS) == []
        records = host.records()
    assert [r for r in records if r.reached_function]
    assert max(r.body_bytes for r in records) == 0  # the parts went to Azurite, never through the host
