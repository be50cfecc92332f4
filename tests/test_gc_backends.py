"""Retention policies on S3 (moto server) and Azure (Azurite), through `stratus gc` and
through the scheduled functions (issue 15, items 3 and 4; its tests ask for retention
"through the HTTP API and the scheduled handlers, on filesystem, S3 on moto, and Azure
on Azurite").

tests/test_gc_retention.py covers both rules of a policy on the filesystem only (push
times set with os.utime); tests/test_gc_scheduled.py and tests/test_tag_immutability.py
run keeptags with -m on S3 and Azure, where the order of the pushes and the tag names
agree and untagged manifests go by -m. Here, on the object stores, where a push time is
an object's Last-Modified (whole seconds on Azure) and cannot be set back:

- keeptags ranks tags by push time, not by name nor by the first push: a tag moved to
  another image counts from the move;
- untaggedage (with no -m) deletes the untagged manifests older than it, those untagged
  by the move and by the expiry in the same run, and keeps a younger one;
- a repository no policy names keeps everything;
- a dry run (`stratus gc --dry-run`, storage.maintenance.gc.dryrun for the schedule)
  names exactly what the run then deletes, and deletes nothing;
- everything is pushed and checked through the HTTP API of a `stratus serve` that runs
  the whole time: it must answer 404 for what gc deleted at once, and serve the rest.

The scheduled runs have a budget of 1 ms, so the policy and the run's start time (the
untaggedage cutoff) travel in the checkpoint across many invocations.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from chalicelib.context import Context
from chalicelib.registry.maintenance import CHECKPOINT
from chalicelib.storage import PathNotFoundError, create_driver

from .lambda_events import LambdaContext
from .oci_client import Image, Registry, assert_error
from .servers import stratus_server
from .test_lambda_schedule import scheduled_event

CTX = Context()
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "docker/registry/v2/"
UNTAGGED_AGE = 8  # seconds: untaggedage of the policy (room for a slow start of gc after the fresh push)
POLICY = json.dumps([{"repositories": "team/*", "keeptags": 2, "untaggedage": f"{UNTAGGED_AGE}s"}])
SETTINGS = {
    "REGISTRY_HTTP_SECRET": "gc-backends-secret",
    "REGISTRY_STORAGE_MAINTENANCE_GC_GRACEPERIOD": "0s",
    "REGISTRY_STORAGE_MAINTENANCE_RETENTION_POLICIES": POLICY,
}
TINY = {"REGISTRY_STORAGE_MAINTENANCE_GC_BUDGET": "1ms"}


@dataclass
class Store:
    """One bucket or container: its REGISTRY_* variables, a driver, its keys, and one
    invocation of the platform's scheduled gc function with extra settings."""

    env: dict
    driver: object
    keys: Callable[[], set]
    invoke: Callable[..., Optional[dict]]

    def checkpoint(self) -> Optional[dict]:
        try:
            return json.loads(self.driver.get_content(CTX, CHECKPOINT))
        except PathNotFoundError:
            return None


@pytest.fixture(params=["s3", "azure"])
def new_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Store]:
    """A factory of fresh stores on the parametrized platform."""
    if request.param == "s3":
        moto = request.getfixturevalue("moto_s3")

        def make() -> Store:
            bucket = moto.create_bucket()
            s3 = moto.client()

            def keys() -> set:
                pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
                return {o["Key"][len(PREFIX):] for page in pages for o in page.get("Contents", [])}

            def invoke(**settings: str) -> Optional[dict]:
                with moto.lambda_function(monkeypatch, bucket, **SETTINGS, **settings):
                    import app

                    return app.collect_garbage(scheduled_event("stratus-dev-collect_garbage-event"), LambdaContext())

            return Store(moto.environment(bucket, **SETTINGS), create_driver("s3", moto.parameters(bucket)),
                         keys, invoke)

        return make

    azurite = request.getfixturevalue("azurite")
    from .test_azure_functions import load_function_app

    def make_azure() -> Store:
        container = azurite.new_container()
        client = azurite.service_client().get_container_client(container)
        env = azurite.environment(container, **SETTINGS)

        def keys() -> set:
            return {b.name[len(PREFIX):] for b in client.list_blobs(name_starts_with=PREFIX)}

        def invoke(**settings: str) -> None:
            for name in [n for n in os.environ if n.startswith("REGISTRY_")]:
                monkeypatch.delenv(name)
            for name, value in {**env, **settings}.items():
                monkeypatch.setenv(name, value)
            module = load_function_app()  # a worker as the host starts it for the tick
            (timer,) = [f for f in module.app.get_functions() if f.get_function_name() == "collect_garbage"]
            timer.get_user_function()(None)

        return Store(env, create_driver("azure", azurite.driver_parameters(container)), keys, invoke)

    return make_azure


def stored(keys: set) -> set:
    return {k for k in keys if k.startswith(("repositories/", "blobs/"))}


def blobs_of(image: Image) -> set:
    return {image.digest, image.config_digest, *image.layer_digests}


def build(clients: list) -> list:
    """In each registry (pushed to all of them together, to share the waits):
    team/app: an old untagged manifest; tag b, then c, then a, a second apart (push
    times in whole seconds), then b moved to a new image: by push time c < a < b, so
    keeptags 2 expires c (by name it would be a, by first push b). other/app (no policy):
    an old untagged manifest and the same tags, all kept. Returns, label -> Image for
    each registry, once the untagged manifests of team/app (old, b's first image, c's)
    are older than untaggedage."""
    found: list = [{} for _ in clients]

    def push(label: str, repo: str, tag: Optional[str] = None) -> None:
        for images, oci in zip(found, clients):
            images[label] = oci.push_image(repo, tag)

    push("old", "team/app")
    push("other-old", "other/app")
    for tag in ("b", "c", "a"):
        push(tag, "team/app", tag)
        if tag == "c":
            c_pushed = time.time()
        time.sleep(1.1)
    push("b2", "team/app", "b")  # moves b: its first image is untagged now
    for tag in ("b", "c", "a"):  # other/app: tags b, c, a, and b moved
        push(f"other-{tag}", "other/app", tag)
    push("other-b2", "other/app", "b")
    time.sleep(max(0.0, c_pushed + UNTAGGED_AGE + 1.5 - time.time()))
    return found


def expected_deletions(images: dict) -> dict[str, set]:
    gone = [images[label] for label in ("old", "b", "c")]
    return {
        "tag": {"team/app:c"},
        "manifest": {f"team/app@{image.digest}" for image in gone},
        "blob": set().union(*(blobs_of(image) for image in gone)),
    }


def check_through_http(store: Store, oci: Registry, images: dict, new: Image) -> None:
    """What the server (running through the gc, its caches warm) answers afterwards, and
    that the store still holds every blob of what is kept."""
    assert oci.tags("team/app").json()["tags"] == ["a", "b"]
    assert oci.tags("other/app").json()["tags"] == ["a", "b", "c"]
    kept = ("a", "b2", "other-old", "other-b", "other-c", "other-a", "other-b2")
    for label in kept:
        image = images[label]
        got = oci.manifest(image.repo, image.digest)
        assert got.status_code == 200 and got.content == image.body, label
        if image.repo == "team/app":
            for digest in (image.config_digest, *image.layer_digests):
                assert oci.blob(image.repo, digest).status_code == 200, (label, digest)
    keys = store.keys()
    for image in [images[label] for label in kept] + [new]:
        for digest in blobs_of(image):
            hex_ = digest.split(":")[1]
            assert f"blobs/sha256/{hex_[:2]}/{hex_}/data" in keys, (image.repo, digest)
    assert oci.manifest("team/app", "b").headers["Docker-Content-Digest"] == images["b2"].digest
    got = oci.manifest("team/app", new.digest)  # untagged, younger than untaggedage
    assert got.status_code == 200 and got.content == new.body
    for digest in (new.config_digest, *new.layer_digests):
        assert oci.blob("team/app", digest).status_code == 200
    assert_error(oci.manifest("team/app", "c"), 404, "MANIFEST_UNKNOWN")
    for label in ("old", "b", "c"):
        image = images[label]
        assert_error(oci.manifest("team/app", image.digest), 404, "MANIFEST_UNKNOWN")
        for digest in (image.config_digest, *image.layer_digests):
            assert_error(oci.blob("team/app", digest), 404, "BLOB_UNKNOWN")
            assert oci.head(f"/v2/team/app/blobs/{digest}").status_code == 404


def stratus_gc(env: dict, *flags: str) -> dict[str, set]:
    """`stratus gc --grace 0s` (retention from the environment, no -m): what it printed."""
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}, **env,
               "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "--grace", "0s", *flags],
                          cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found: dict[str, set] = {"tag": set(), "manifest": set(), "blob": set()}
    verb = " would delete: " if "--dry-run" in flags else " deleted: "
    for line in done.stdout.splitlines():
        kind, sep, what = line.partition(verb)
        assert sep and kind in found and what not in found[kind], line
        found[kind].add(what)
    return found


def through_stratus_gc(store: Store, oci: Registry, images: dict) -> None:
    before = stored(store.keys())
    plan = stratus_gc(store.env, "--dry-run")
    assert stored(store.keys()) == before
    new = oci.push_image("team/app")  # untagged, just before the run: younger than untaggedage
    before = stored(store.keys())
    done = stratus_gc(store.env)

    expected = expected_deletions(images)
    assert done == plan == expected
    after = stored(store.keys())
    assert after < before
    assert not any(k.startswith("repositories/team/app/_manifests/tags/c/") for k in after)
    check_through_http(store, oci, images, new)


def through_the_scheduled_function(store: Store, oci: Registry, images: dict) -> None:
    expected = expected_deletions(images)
    before = stored(store.keys())

    # storage.maintenance.gc.dryrun: the schedule's run reports its plan and changes nothing
    plan = store.invoke(REGISTRY_STORAGE_MAINTENANCE_GC_DRYRUN="true")
    assert stored(store.keys()) == before and store.checkpoint() is None
    if plan is not None:  # the Lambda returns its summary; the timer function returns nothing
        assert plan["dryrun"] is True and plan["finished"] is True
        assert set(plan["tags_deleted"]) == expected["tag"]
        assert set(plan["manifests_deleted"]) == expected["manifest"]
        assert set(plan["blobs_deleted"]) == expected["blob"]

    new = oci.push_image("team/app")  # untagged, just before the run: younger than untaggedage
    before = stored(store.keys())
    results, phases = [], set()
    for _ in range(500):
        results.append(store.invoke(**TINY))
        saved = store.checkpoint()
        if saved is None:
            break
        phases.add(saved["phase"])
        # the policy and the run's start (the untaggedage cutoff) travel in the checkpoint
        assert saved["options"]["retention"] == [["team/*", 2, float(UNTAGGED_AGE)]]
    else:
        raise AssertionError("gc not finished after 500 invocations")
    assert len(results) >= 5 and {"mark", "sweep"} <= phases, (len(results), phases)

    if results[-1] is not None:
        final = results[-1]
        assert final["finished"] is True and final["dryrun"] is False
        assert set(final["tags_deleted"]) == expected["tag"]
        assert sorted(final["manifests_deleted"]) == sorted(expected["manifest"])
        assert sorted(final["blobs_deleted"]) == sorted(expected["blob"])
    after = stored(store.keys())
    assert after < before
    for image in (images["old"], images["b"], images["c"]):
        hexes = {d.split(":")[1] for d in blobs_of(image)}
        assert not any(k.endswith(f"/_manifests/revisions/sha256/{image.digest.split(':')[1]}/link") for k in after)
        assert not any(k.startswith(f"blobs/sha256/{h[:2]}/{h}/") for h in hexes for k in after)
    check_through_http(store, oci, images, new)
    assert not any(k.startswith("_gc/quarantine/") for k in store.keys())


def test_retention_through_stratus_gc_and_the_scheduled_function(new_store, tmp_path: Path) -> None:
    """Two stores built side by side (the waits shared): one collected by `stratus gc`, the
    other by the platform's scheduled function; both served the whole time."""
    stores = [new_store(), new_store()]
    with ExitStack() as stack:
        clients = []
        for i, store in enumerate(stores):
            env = {**store.env, "REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}
            url = stack.enter_context(stratus_server(tmp_path / f"server{i}", env))
            clients.append(stack.enter_context(closing(Registry(url))))
        by_gc, by_schedule = build(clients)
        through_stratus_gc(stores[0], clients[0], by_gc)
        through_the_scheduled_function(stores[1], clients[1], by_schedule)
