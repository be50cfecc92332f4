"""Real client tools for the tests: images built with umoci, copied with skopeo,
compared as OCI image layouts blob by blob.

A layout is the directory `umoci init` or `skopeo copy … oci:<dir>:<tag>` makes:
index.json names tags, blobs/<alg>/<hex> holds manifests, configs and layers.
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from .components import needs

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
BIG_LAYER_SIZE = 200 << 20

missing = [tool for tool in ("skopeo", "umoci") if shutil.which(tool) is None]
needs_tools = needs(
    "skopeo and umoci", f"{', '.join(missing)} not installed (scripts/install-system-deps.sh)" if missing else None
)


def run(argv: list[str], timeout: float = 120, cwd: Optional[Path] = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}{done.stdout}")
    return done.stdout


def skopeo(*args: str, timeout: float = 120) -> str:
    # --insecure-policy: no dependence on the machine's /etc/containers/policy.json
    return run(["skopeo", "--insecure-policy", *args], timeout=timeout)


def docker_ref(registry_url: str, name: str, tag: str) -> str:
    return f"docker://{registry_url.split('://', 1)[1]}/{name}:{tag}"


def push(layout: Path, tag: str, registry_url: str, name: str, dest_tag: str, *extra: str) -> None:
    skopeo("copy", "--quiet", "--dest-tls-verify=false", *extra, f"oci:{layout}:{tag}",
           docker_ref(registry_url, name, dest_tag), timeout=300)


def pull(registry_url: str, name: str, tag: str, layout: Path, dest_tag: str, *extra: str) -> None:
    skopeo("copy", "--quiet", "--src-tls-verify=false", *extra, docker_ref(registry_url, name, tag),
           f"oci:{layout}:{dest_tag}", timeout=300)


def inspect_raw(registry_url: str, name: str, tag: str) -> bytes:
    done = subprocess.run(
        ["skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false",
         docker_ref(registry_url, name, tag)],
        capture_output=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- OCI image layouts -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    path: Path

    def blob_path(self, digest: str) -> Path:
        alg, hex_ = digest.split(":", 1)
        return self.path / "blobs" / alg / hex_

    def blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def tagged(self, tag: str) -> dict:
        """The index.json descriptor of a tag."""
        index = json.loads((self.path / "index.json").read_text())
        for descriptor in index["manifests"]:
            if (descriptor.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag:
                return descriptor
        raise KeyError(f"{self.path} has no tag {tag!r}")

    def closure(self, digest: str) -> Iterator[str]:
        """The manifest or index `digest` and every blob it references, depth first."""
        yield digest
        doc = json.loads(self.blob(digest))
        if doc.get("mediaType") in (INDEX, MANIFEST_LIST) or "manifests" in doc:
            for child in doc["manifests"]:
                yield from self.closure(child["digest"])
            return
        yield doc["config"]["digest"]
        for layer in doc.get("layers", []):
            yield layer["digest"]


def assert_same_image(source: Layout, source_tag: str, copy: Layout, copy_tag: str) -> str:
    """The tag names the same manifest in both layouts and every blob is byte-identical."""
    top = source.tagged(source_tag)["digest"]
    assert copy.tagged(copy_tag)["digest"] == top
    for digest in source.closure(top):
        copied = copy.blob_path(digest)
        assert copied.is_file(), f"{digest} missing from {copy.path}"
        assert filecmp.cmp(source.blob_path(digest), copied, shallow=False), f"{digest} differs"
        assert hashlib.sha256(copied.read_bytes()).hexdigest() == digest.split(":", 1)[1]
    return top


def assert_stored_like(source: Layout, digest: str, root: Path) -> None:
    """Every blob of the image sits in a registry:2 tree at root with the same bytes."""
    for blob in source.closure(digest):
        alg, hex_ = blob.split(":", 1)
        stored = root / "docker/registry/v2/blobs" / alg / hex_[:2] / hex_ / "data"
        assert filecmp.cmp(source.blob_path(blob), stored, shallow=False), f"{blob} stored differently"


# -- images built with umoci ----------------------------------------------------------


def umoci(*args: str) -> str:
    return run(["umoci", *args])


def build_image(
    layout: Path, tag: str, files: dict[str, bytes], arch: str = "amd64", label: str = ""
) -> Layout:
    """An image of one layer holding `files` (relative path -> bytes) under /opt/stratus."""
    if not (layout / "index.json").exists():
        umoci("init", "--layout", str(layout))
    ref = f"{layout}:{tag}"
    umoci("new", "--image", ref)
    content = layout.parent / f"{layout.name}-{tag}-files"
    for rel, data in files.items():
        target = content / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    umoci("insert", "--image", ref, str(content), "/opt/stratus")
    shutil.rmtree(content)
    umoci(
        "config", "--image", ref,
        "--config.cmd", "/opt/stratus/run", "--config.env", "STRATUS=1",
        "--os", "linux", "--architecture", arch,
        "--config.label", f"org.example.label={label or tag}",
        "--author", "stratus tests",
    )
    return Layout(layout)


def add_index(layout: Layout, tag: str, images: dict[str, str]) -> str:
    """Tag an OCI index over the manifests of `images` (tag -> architecture)."""
    manifests = []
    for image_tag, arch in images.items():
        descriptor = dict(layout.tagged(image_tag))
        descriptor.pop("annotations", None)
        descriptor["platform"] = {"architecture": arch, "os": "linux"}
        manifests.append(descriptor)
    body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}, indent=2).encode()
    digest = sha256_digest(body)
    layout.blob_path(digest).write_bytes(body)
    index_path = layout.path / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"].append({
        "mediaType": INDEX, "digest": digest, "size": len(body),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    })
    index_path.write_text(json.dumps(index))
    return digest


def small_files(seed: str) -> dict[str, bytes]:
    """A few files that differ per seed, with a binary one large enough to matter."""
    rand = hashlib.sha256(seed.encode()).digest() * 4096  # 128 KiB, not compressible to nothing
    return {
        "run": b"#!/bin/sh\necho " + seed.encode() + b"\n",
        "etc/hello.txt": f"hello from {seed}\n".encode(),
        "data/blob.bin": os.urandom(64 << 10) + rand,
        "empty": b"",
    }


_built: dict[Path, Layout] = {}


def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory of built images per test session, whichever module asks first."""
    path = tmp_path_factory.getbasetemp() / "client-images"
    path.mkdir(exist_ok=True)
    return path


def session_image(base: Path, kind: str) -> Layout:
    """Layouts built once per session under base: "small" (tag v1, and v1-tar with
    uncompressed layers), "multi" (tags amd64,
    arm64 and the index "multi") and "big" (tag big, one layer of 200 MiB random bytes)."""
    layout_dir = base / f"layout-{kind}"
    if layout_dir in _built:
        return _built[layout_dir]
    if kind == "small":
        layout = build_image(layout_dir, "v1", small_files("small"))
        add_uncompressed_variant(layout, "v1", "v1-tar")
    elif kind == "multi":
        build_image(layout_dir, "amd64", small_files("amd64"), arch="amd64")
        layout = build_image(layout_dir, "arm64", small_files("arm64"), arch="arm64")
        add_index(layout, "multi", {"amd64": "amd64", "arm64": "arm64"})
    elif kind == "big":
        # random bytes: gzip cannot shrink them, so the pushed layer is ~200 MiB
        layout = build_image(layout_dir, "big", {"big.bin": os.urandom(BIG_LAYER_SIZE)})
    else:
        raise ValueError(kind)
    _built[layout_dir] = layout
    return layout


def discard_image(base: Path, kind: str) -> None:
    layout_dir = base / f"layout-{kind}"
    _built.pop(layout_dir, None)
    shutil.rmtree(layout_dir, ignore_errors=True)


def add_uncompressed_variant(layout: Layout, tag: str, new_tag: str) -> str:
    """Tag a copy of image `tag` whose layers are plain tar: a registry client must
    compress them on the fly, streaming a body whose length it does not know."""
    import gzip

    manifest = json.loads(layout.blob(layout.tagged(tag)["digest"]))
    for layer in manifest["layers"]:
        tar = gzip.decompress(layout.blob(layer["digest"]))
        layer.update(
            mediaType="application/vnd.oci.image.layer.v1.tar", digest=sha256_digest(tar), size=len(tar)
        )
        layout.blob_path(layer["digest"]).write_bytes(tar)
    body = json.dumps(manifest).encode()
    digest = sha256_digest(body)
    layout.blob_path(digest).write_bytes(body)
    index_path = layout.path / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"].append({
        "mediaType": layout.tagged(tag)["mediaType"], "digest": digest, "size": len(body),
        "annotations": {"org.opencontainers.image.ref.name": new_tag},
    })
    index_path.write_text(json.dumps(index))
    return digest


def absolute(url: str, location: str) -> str:
    """registry:2 sends relative Locations unless told its host; Stratus absolute ones."""
    return location if location.startswith("http") else url + location


def push_artifact(registry_url: str, name: str, tag: str, layer: bytes) -> tuple[str, str]:
    """An OCI manifest of one layer pushed with plain HTTP; (manifest digest, layer digest)."""
    import requests

    config = b"{}"
    for blob in (config, layer):
        # POST then PUT with the body: registry:2 does not take a single POST ?digest=
        response = requests.post(f"{registry_url}/v2/{name}/blobs/uploads/", timeout=30)
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        response = requests.put(
            absolute(registry_url, location),
            params={"digest": sha256_digest(blob)}, data=blob,
            headers={"Content-Type": "application/octet-stream"}, timeout=30,
        )
        assert response.status_code == 201, response.text
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.test",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream",
                    "digest": sha256_digest(layer), "size": len(layer)}],
    }).encode()
    response = requests.put(
        f"{registry_url}/v2/{name}/manifests/{tag}", data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=30,
    )
    assert response.status_code == 201, response.text
    return sha256_digest(manifest), sha256_digest(layer)
