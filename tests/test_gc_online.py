"""Garbage collection online: it runs while images are pushed and loses nothing.

A real `stratus serve` takes 20 concurrent pushes whose blobs are uploaded first
and whose manifests come later, while garbage collection (the code `stratus gc`
runs, over its own driver on the same directory) is held at chosen points by
events: uploads land after it planned, manifests land while it has candidates
moved aside. Afterwards every image, old and new, is complete, and the garbage
is gone.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import requests

from chalicelib.context import Context
from chalicelib.digest import Digest
from chalicelib.registry.blobs import GC_STATE, QUARANTINE
from chalicelib.registry.maintenance import collect_garbage
from chalicelib.storage import paths
from chalicelib.storage.filesystem import from_parameters as filesystem

from .oci_client import Registry as Client
from .oci_client import canonical, descriptor, random_bytes, sha256
from .servers import stratus_server

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
WAIT = 120  # seconds an event may take before the test gives up (never reached when it works)


class HeldDriver:
    """The collector's driver, stopping at two points until the test lets it go on:
    when its sweep starts (after the plan), and when it lists the repositories
    again after moving candidates aside."""

    def __init__(self, inner):
        self._inner = inner
        self.sweeping, self.uploads_done = threading.Event(), threading.Event()
        self.moved_aside, self.puts_done = threading.Event(), threading.Event()
        self.moves = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put_content(self, ctx, path, content):
        self._inner.put_content(ctx, path, content)
        if path == GC_STATE and content.startswith(b"sweeping"):
            self.sweeping.set()
            assert self.uploads_done.wait(WAIT)

    def move(self, ctx, source, dest):
        self._inner.move(ctx, source, dest)
        if dest.startswith(QUARANTINE):
            self.moves += 1

    def list(self, ctx, path):
        if path == paths.REPOSITORIES and self.moves and not self.moved_aside.is_set():
            self.moved_aside.set()
            assert self.puts_done.wait(WAIT)
        return self._inner.list(ctx, path)


def age(root: Path, seconds: float) -> None:
    """Every file of the tree as if written `seconds` ago."""
    past = time.time() - seconds
    for directory, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(directory, name), (past, past))


def upload_chunked(client: Client, repo: str, data: bytes) -> None:
    location = client.upload_location(repo)
    half = len(data) // 2
    response = client.patch(location, data[:half], f"0-{half - 1}")
    assert response.status_code == 202, response.text
    response = client.put_upload(response.headers["Location"], sha256(data), data[half:])
    assert response.status_code == 201, response.text


def test_gc_during_twenty_pushes_loses_nothing(tmp_path):
    root = tmp_path / "storage"
    with stratus_server(root) as url:
        setup = Client(url)
        # before: a tagged image, garbage, and an unreferenced blob a push will bring back
        old = setup.push_image("old/kept", "v1", layers=2)
        garbage = [setup.push_blob("old/kept", random_bytes(500 + i)) for i in range(5)]
        revived = random_bytes(4000)
        setup.push_blob("old/loose", revived)
        age(root, 2 * 3600)

        driver = HeldDriver(filesystem({"rootdirectory": str(root)}))
        outcome: dict = {}

        def gc() -> None:
            try:
                outcome["report"] = collect_garbage(Context(), driver, grace=3600)
            except BaseException as exc:  # surfaced below
                outcome["error"] = exc

        shared_layer = random_bytes(6000)
        images: dict[str, tuple[bytes, list[bytes]]] = {}
        uploaded = threading.Barrier(21)
        put_now = threading.Event()
        results: dict[str, int] = {}
        errors: list = []

        def push(i: int, wave: str) -> None:
            client = Client(url)
            repo = f"new/{wave}{i}"
            try:
                config = canonical({"architecture": "amd64", "os": "linux", "image": repo})
                layers = [random_bytes(3000 + i), shared_layer, old.layers[0]]
                if wave == "b":
                    layers.append(revived)  # garbage when gc planned, pushed again now
                for blob in [config] + layers:
                    if client.head(f"/v2/{repo}/blobs/{sha256(blob)}").status_code == 200:
                        continue  # as clients do: skip what is there
                    if i % 2:
                        upload_chunked(client, repo, blob)
                    else:
                        client.push_blob(repo, blob)
                images[repo] = (config, layers)
            except BaseException as exc:
                errors.append(exc)
            finally:
                uploaded.wait(WAIT)
            try:
                assert put_now.wait(WAIT)
                body = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                  "config": descriptor(OCI_CONFIG, images[repo][0]),
                                  "layers": [descriptor(OCI_LAYER, b) for b in images[repo][1]]})
                response = client.put_manifest(repo, "v1", body)
                results[repo] = response.status_code
                if response.status_code != 201:
                    errors.append(AssertionError(f"{repo}: {response.status_code} {response.text}"))
            except BaseException as exc:
                errors.append(exc)

        # wave a uploads before gc starts; wave b after gc planned, so gc saw neither
        # its links nor its blobs; both put their manifests while gc has candidates
        # moved aside and is about to list again
        pushers = [threading.Thread(target=push, args=(i, "a")) for i in range(10)]
        for thread in pushers:
            thread.start()
        time.sleep(0)  # wave a's uploads race gc's mark, as they would
        collector = threading.Thread(target=gc)
        collector.start()
        assert driver.sweeping.wait(WAIT), outcome
        wave_b = [threading.Thread(target=push, args=(i, "b")) for i in range(10)]
        for thread in wave_b:
            thread.start()
        uploaded.wait(WAIT)
        driver.uploads_done.set()
        assert driver.moved_aside.wait(WAIT), outcome
        put_now.set()
        for thread in pushers + wave_b:
            thread.join(WAIT)
        driver.puts_done.set()
        collector.join(WAIT)

        assert not errors, errors
        assert "error" not in outcome, outcome.get("error")
        report = outcome["report"]
        assert results == {repo: 201 for repo in images} and len(results) == 20
        # gc did its job: the old garbage is gone ...
        assert {str(d) for d in report.deleted} == set(garbage)
        assert Digest.parse(sha256(revived)) in report.rescued  # moved aside, then taken back
        for digest in garbage:
            assert setup.blob("old/kept", digest).status_code == 404
        # ... and every image, old and new, is complete
        check = Client(url)
        for repo, (config, layers) in [("old/kept", (old.config, old.layers))] + list(images.items()):
            response = check.manifest(repo, "v1")
            assert response.status_code == 200, (repo, response.text)
            for blob in [config] + layers:
                response = check.blob(repo, sha256(blob))
                assert response.status_code == 200 and sha256(response.content) == sha256(blob), repo
        assert requests.get(f"{url}/v2/", timeout=10).status_code == 200


def test_a_blob_the_sweep_puts_back_while_a_manifest_put_takes_it_back_is_found(tmp_path):
    """A manifest PUT finds its blob missing (moved aside) and moves it back from
    quarantine, while the sweep, which has seen the PUT's reference, puts it back itself:
    one move wins, and the other must then find the blob in place, not report it unknown."""
    from chalicelib.registry.blobs import BlobStore, blob_path, quarantine_path
    from chalicelib.storage.base import PathNotFoundError

    driver = filesystem({"rootdirectory": str(tmp_path)})
    ctx = Context()
    data = b"a layer the sweep moved aside"
    digest = Digest.from_bytes(data)
    driver.put_content(ctx, quarantine_path(digest), data)

    class SweepPutsItBackFirst:
        """The driver, with the sweep's put-back landing just before the PUT's move."""

        def __getattr__(self, name):
            return getattr(driver, name)

        def move(self, ctx, source, dest):
            if source == quarantine_path(digest):
                driver.move(ctx, source, dest)  # the sweep's move
                raise PathNotFoundError("filesystem", source)  # so the PUT's finds nothing
            driver.move(ctx, source, dest)

    store = BlobStore(SweepPutsItBackFirst(), statter=None)
    assert store.stat_stored(ctx, digest).size == len(data)
    assert driver.get_content(ctx, blob_path(digest)) == data
