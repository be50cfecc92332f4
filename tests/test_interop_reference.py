"""Interop with the reference registry (Debian's docker-registry 2.8) over the same
storage directory: each serves what the other wrote, byte-identical, and Stratus
writes the files registry:2 writes, with the same names and contents."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests

from .clients_images import (
    Layout,
    absolute,
    assert_same_image,
    assert_stored_like,
    images_dir,
    inspect_raw,
    needs_tools,
    pull,
    push,
    push_artifact,
    session_image,
)
from .clients_servers import (
    REFERENCE_REGISTRY,
    REFERENCE_SECRET,
    clean_env,
    needs_reference,
    reference_config,
    reference_registry,
)
from .servers import free_port, stratus_server

pytestmark = [needs_tools, needs_reference]

V2 = "docker/registry/v2"
Served = tuple[str, Path]  # a registry's URL and its storage root
# registry:2 answers 404 for an OCI manifest unless the client accepts OCI
ACCEPT_OCI = {"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"}
RFC3339_UTC = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interop-shared") / "data"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def reference(shared_root: Path) -> Iterator[str]:
    with reference_registry(shared_root) as url:
        yield url


@pytest.fixture(scope="module")
def stratus_on_shared(shared_root: Path) -> Iterator[str]:
    with stratus_server(shared_root) as url:
        yield url


def get_json(url: str) -> dict:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# -- the same directory, served by both ---------------------------------------------


def test_stratus_serves_what_the_reference_wrote(
    reference: str, stratus_on_shared: str, shared_root: Path, images: Path, tmp_path: Path
) -> None:
    small, multi = session_image(images, "small"), session_image(images, "multi")
    push(small.path, "v1", reference, "interop/by-reference", "v1")
    push(small.path, "v1", reference, "interop/by-reference", "2.0")
    push(small.path, "v1", reference, "interop/by-reference", "10")
    push(multi.path, "multi", reference, "interop/by-reference/multi", "1", "--all")

    copy = Layout(tmp_path / "copy")
    pull(stratus_on_shared, "interop/by-reference", "v1", copy.path, "v1")
    assert_same_image(small, "v1", copy, "v1")
    pull(stratus_on_shared, "interop/by-reference/multi", "1", copy.path, "multi", "--all")
    assert_same_image(multi, "multi", copy, "multi")
    manifest = small.blob(small.tagged("v1")["digest"])
    assert inspect_raw(stratus_on_shared, "interop/by-reference", "2.0") == manifest

    tags = get_json(f"{stratus_on_shared}/v2/interop/by-reference/tags/list")
    assert tags == {"name": "interop/by-reference", "tags": ["10", "2.0", "v1"]}
    reference_tags = get_json(f"{reference}/v2/interop/by-reference/tags/list")
    assert sorted(reference_tags["tags"]) == tags["tags"]

    catalog = get_json(f"{stratus_on_shared}/v2/_catalog")["repositories"]
    assert {"interop/by-reference", "interop/by-reference/multi"} <= set(catalog)
    assert catalog == sorted(catalog)

    # a blob the reference stored answers HEAD with its size and digest
    layer = json.loads(small.blob(small.tagged("v1")["digest"]))["layers"][0]
    head = requests.head(f"{stratus_on_shared}/v2/interop/by-reference/blobs/{layer['digest']}", timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == layer["size"]
    assert head.headers["Docker-Content-Digest"] == layer["digest"]


def test_reference_serves_what_stratus_wrote(
    reference: str, stratus_on_shared: str, shared_root: Path, images: Path, tmp_path: Path
) -> None:
    small, multi = session_image(images, "small"), session_image(images, "multi")
    push(small.path, "v1", stratus_on_shared, "interop/by-stratus", "v1")
    push(multi.path, "multi", stratus_on_shared, "interop/by-stratus/multi", "1", "--all")
    assert_stored_like(small, small.tagged("v1")["digest"], shared_root)

    copy = Layout(tmp_path / "copy")
    pull(reference, "interop/by-stratus", "v1", copy.path, "v1")
    assert_same_image(small, "v1", copy, "v1")
    pull(reference, "interop/by-stratus/multi", "1", copy.path, "multi", "--all")
    assert_same_image(multi, "multi", copy, "multi")

    assert get_json(f"{reference}/v2/interop/by-stratus/tags/list")["tags"] == ["v1"]
    reference_catalog = get_json(f"{reference}/v2/_catalog")["repositories"]
    assert {"interop/by-stratus", "interop/by-stratus/multi"} <= set(reference_catalog)
    # one tree, one catalog; registry:2 also lists a repository that has blobs but no
    # manifest (it looks for _layers), Stratus only those with _manifests
    repositories = shared_root / V2 / "repositories"
    with_manifests = [r for r in reference_catalog if (repositories / r / "_manifests").is_dir()]
    assert get_json(f"{stratus_on_shared}/v2/_catalog")["repositories"] == sorted(with_manifests)


def test_deletes_by_one_are_seen_by_the_other(
    reference: str, stratus_on_shared: str, images: Path
) -> None:
    small = session_image(images, "small")
    digest = small.tagged("v1")["digest"]
    for writer, reader, name in (
        (stratus_on_shared, reference, "interop/deleted-by-stratus"),
        (reference, stratus_on_shared, "interop/deleted-by-reference"),
    ):
        push(small.path, "v1", writer, name, "v1")
        found = requests.head(f"{reader}/v2/{name}/manifests/v1", headers=ACCEPT_OCI, timeout=10)
        assert found.status_code == 200
        deleted = requests.delete(f"{writer}/v2/{name}/manifests/{digest}", timeout=10)
        assert deleted.status_code == 202, deleted.text
        for url in (f"{reader}/v2/{name}/manifests/{digest}", f"{reader}/v2/{name}/manifests/v1"):
            assert requests.get(url, headers=ACCEPT_OCI, timeout=10).status_code == 404, url


def test_reference_garbage_collect_keeps_what_stratus_references(
    tmp_path: Path, images: Path
) -> None:
    """`registry garbage-collect` over a tree Stratus wrote: the blobs of a deleted
    manifest go, those of a tagged image and of an index's children stay."""
    root = tmp_path / "data"
    root.mkdir()
    small, multi = session_image(images, "small"), session_image(images, "multi")
    with stratus_server(root) as url:
        push(small.path, "v1", url, "gc/kept", "v1")
        push(multi.path, "multi", url, "gc/index", "1", "--all")
        dropped, dropped_layer = push_artifact(url, "gc/dropped", "v1", os.urandom(1000))
        assert requests.delete(f"{url}/v2/gc/dropped/manifests/{dropped}", timeout=10).status_code == 202

    config = reference_config(root, free_port())
    done = subprocess.run(
        [REFERENCE_REGISTRY, "garbage-collect", str(config)],
        env=clean_env({}), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr + done.stdout

    blobs = root / V2 / "blobs/sha256"
    for gone in (dropped, dropped_layer):
        assert not (blobs / gone[7:9] / gone[7:] / "data").exists(), gone
    assert_stored_like(small, small.tagged("v1")["digest"], root)
    assert_stored_like(multi, multi.tagged("multi")["digest"], root)

    with stratus_server(root) as url:
        copy = Layout(tmp_path / "copy")
        pull(url, "gc/kept", "v1", copy.path, "v1")
        assert_same_image(small, "v1", copy, "v1")
        pull(url, "gc/index", "1", copy.path, "multi", "--all")
        assert_same_image(multi, "multi", copy, "multi")


# -- the same files on disk ----------------------------------------------------------


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root: file contents, None for a directory."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def twin_roots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    """(reference URL, its root), (Stratus URL, its root): the same pushes go to both."""
    base = tmp_path_factory.mktemp("interop-twins")
    reference_root, stratus_root = base / "reference" / "data", base / "stratus" / "data"
    reference_root.mkdir(parents=True)
    stratus_root.mkdir(parents=True)
    with reference_registry(reference_root) as reference_url, stratus_server(stratus_root) as stratus_url:
        yield (reference_url, reference_root), (stratus_url, stratus_root)


def test_stratus_writes_the_files_the_reference_writes(twin_roots, images: Path) -> None:
    small, multi = session_image(images, "small"), session_image(images, "multi")
    for url, _ in twin_roots:
        push(small.path, "v1", url, "twins/app", "v1")
        push(small.path, "v1", url, "twins/app", "latest")
        push(multi.path, "multi", url, "twins/multi", "1", "--all")
        # Docker media types, converted by skopeo on the way
        push(small.path, "v1", url, "twins/docker", "v1", "--format", "v2s2")
        # a tag that moves keeps its history in tags/<tag>/index
        push(small.path, "v1", url, "twins/app", "moving")
        push_artifact(url, "twins/app", "moving", b"the tag moves here")
    (_, reference_root), (_, stratus_root) = twin_roots
    assert_same_trees(reference_root, stratus_root)


def test_deletes_leave_the_files_the_reference_leaves(twin_roots, images: Path) -> None:
    small = session_image(images, "small")
    manifest = small.tagged("v1")["digest"]
    layer = json.loads(small.blob(manifest))["layers"][0]["digest"]
    for url, _ in twin_roots:
        push(small.path, "v1", url, "twins/deleting", "v1")
        push(small.path, "v1", url, "twins/deleting", "v2")
        push_artifact(url, "twins/deleting", "artifact", b"an artifact layer")
        assert requests.delete(f"{url}/v2/twins/deleting/manifests/{manifest}", timeout=10).status_code == 202
        assert requests.delete(f"{url}/v2/twins/deleting/blobs/{layer}", timeout=10).status_code == 202
    (_, reference_root), (_, stratus_root) = twin_roots
    assert_same_trees(reference_root, stratus_root)


def assert_same_trees(reference_root: Path, stratus_root: Path) -> None:
    theirs, ours = tree(reference_root / V2), tree(stratus_root / V2)
    only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    # registry:2 deletes a link file and leaves its directory empty; Stratus removes the
    # directory (object stores have none): the same to every reader of the tree
    emptied = [p for p in only_theirs if theirs[p] is None and not any(q.startswith(p + "/") for q in theirs)]
    only_theirs = [p for p in only_theirs if p not in emptied]
    assert (only_ours, only_theirs) == ([], []), "paths only Stratus has, paths only registry:2 has"
    for path, content in ours.items():
        assert theirs[path] == content, path
    links = [p for p in ours if p.endswith("/link")]
    assert links and all(re.fullmatch(rb"sha256:[0-9a-f]{64}", ours[p]) for p in links)


def _upload(url: str, name: str, chunks: list[bytes]) -> str:
    """Start an upload and PATCH chunks into it; returns the upload's id."""
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", timeout=10)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]
    offset = 0
    for chunk in chunks:
        response = requests.patch(
            absolute(url, location), data=chunk, timeout=10,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Range": f"{offset}-{offset + len(chunk) - 1}"},
        )
        assert response.status_code == 202, response.text
        offset += len(chunk)
        location = response.headers["Location"]
    return response.headers["Docker-Upload-UUID"]


def test_an_upload_in_progress_has_the_reference_files(twin_roots) -> None:
    chunks = [b"\x01" * 1000, bytes(range(256)) * 300, b"tail"]
    written: dict[str, dict[str, bytes | None]] = {}
    for kind, (url, root) in zip(("reference", "stratus"), twin_roots):
        upload_id = _upload(url, "twins/uploading", chunks)
        written[kind] = tree(root / V2 / "repositories/twins/uploading/_uploads" / upload_id)
    theirs, ours = written["reference"], written["stratus"]

    assert ours["data"] == theirs["data"] == b"".join(chunks)
    for startedat in (ours["startedat"], theirs["startedat"]):
        assert RFC3339_UTC.match(startedat), startedat
    states = {p: c for p, c in theirs.items() if p.startswith("hashstates/")}
    # registry:2 also stores the empty hasher's state at offset 0 when the upload starts;
    # Stratus starts from a fresh hasher instead (no write needed for an empty upload)
    assert set(ours) == set(theirs) - {"hashstates/sha256/0"}
    for path, content in states.items():
        if path != "hashstates/sha256/0":
            assert ours[path] == content, path
    offsets = sorted(int(p.rsplit("/", 1)[1]) for p, c in ours.items() if p.startswith("hashstates/sha256/"))
    assert offsets == [1000, 77800, 77804]


# -- one upload, two registries -------------------------------------------------------

def reference_state_token(name: str, upload_id: str, offset: int, started_at: str) -> str:
    """registry:2's `_state`: base64url(HMAC-SHA256(secret, json) + json) of its blobUploadState."""
    payload = json.dumps(
        {"Name": name, "UUID": upload_id, "Offset": offset, "StartedAt": started_at}, separators=(",", ":")
    ).encode()
    mac = hmac.new(REFERENCE_SECRET.encode(), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac + payload).decode()


def upload_dir(root: Path, name: str, upload_id: str) -> Path:
    return root / V2 / "repositories" / name / "_uploads" / upload_id


def test_stratus_finishes_an_upload_the_reference_started(
    reference: str, stratus_on_shared: str, shared_root: Path
) -> None:
    """Stratus resumes hashing from registry:2's hashstates (Go's MarshalBinary layout)."""
    name = "interop/handover/to-stratus"
    first, second = os.urandom(300_000), os.urandom(12_345)
    upload_id = _upload(reference, name, [first])
    assert (upload_dir(shared_root, name, upload_id) / f"hashstates/sha256/{len(first)}").is_file()

    # no `_state`: a registry:2 token means nothing to Stratus, the upload's files do
    location = f"{stratus_on_shared}/v2/{name}/blobs/uploads/{upload_id}"
    response = requests.patch(
        location, data=second, timeout=10,
        headers={"Content-Type": "application/octet-stream",
                 "Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"},
    )
    assert response.status_code == 202, response.text
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
    response = requests.put(response.headers["Location"], params={"digest": digest}, timeout=10)
    assert response.status_code == 201, response.text
    for url in (stratus_on_shared, reference):
        assert requests.get(f"{url}/v2/{name}/blobs/{digest}", timeout=10).content == first + second
    log = next(shared_root.parent.glob("stratus-*.log")).read_text()
    assert "no hash state" not in log  # resumed from the reference's state, not by re-reading


def test_the_reference_finishes_an_upload_stratus_started(
    reference: str, stratus_on_shared: str, shared_root: Path
) -> None:
    """registry:2 resumes from the startedat and hashstates Stratus wrote."""
    name = "interop/handover/to-reference"
    first, second = os.urandom(200_000), os.urandom(54_321)
    upload_id = _upload(stratus_on_shared, name, [first[:70_000], first[70_000:]])
    files = upload_dir(shared_root, name, upload_id)
    assert (files / f"hashstates/sha256/{len(first)}").is_file()

    token = reference_state_token(name, upload_id, len(first), (files / "startedat").read_text())
    location = f"{reference}/v2/{name}/blobs/uploads/{upload_id}"
    response = requests.patch(
        location, params={"_state": token}, data=second, timeout=10,
        headers={"Content-Type": "application/octet-stream",
                 "Content-Range": f"{len(first)}-{len(first) + len(second) - 1}"},
    )
    assert response.status_code == 202, response.text
    digest = "sha256:" + hashlib.sha256(first + second).hexdigest()
    location = absolute(reference, response.headers["Location"])
    response = requests.put(location, params={"digest": digest}, timeout=10)
    assert response.status_code == 201, response.text
    for url in (reference, stratus_on_shared):
        assert requests.get(f"{url}/v2/{name}/blobs/{digest}", timeout=10).content == first + second
