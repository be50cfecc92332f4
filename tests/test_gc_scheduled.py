"""Garbage collection as a scheduled function (issue 15, item 3): app.collect_garbage
(a Chalice schedule, an EventBridge "Scheduled Event") over S3 on a moto server, and
the Azure timer function `collect_garbage` over Azurite.

With a budget of 1 ms each invocation does one step and saves its progress in
_gc/checkpoint, so one gc takes dozens of invocations. The registry it leaves must
be the one a one-shot `stratus gc` leaves from identical content (same tags,
manifests and blobs, the same deletions reported), with retention and tag
immutability applied, and an image pushed between two invocations (in the middle
of the mark, or while its blob waits in quarantine) must come out complete.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

import pytest

from chalicelib.cache.memory import InMemoryBlobDescriptorCache
from chalicelib.context import Context
from chalicelib.digest import Digest
from chalicelib.registry import Registry
from chalicelib.registry.blobs import QUARANTINE, blob_path, gc_state, is_sweeping
from chalicelib.registry.maintenance import CHECKPOINT, invocation_budget
from chalicelib.registry.manifest_types import OCI_MANIFEST
from chalicelib.storage import PathNotFoundError, create_driver

from .lambda_events import LambdaContext
from .oci_client import canonical
from .test_lambda_schedule import scheduled_event

CTX = Context()
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "docker/registry/v2/"
POLICY = json.dumps([{"repositories": "keep/*", "keeptags": 1}])
IMMUTABLE = json.dumps([{"repository": "keep/*", "tags": "r1"}])
SETTINGS = {
    "REGISTRY_HTTP_SECRET": "gc-schedule-secret",
    "REGISTRY_STORAGE_MAINTENANCE_GC_GRACEPERIOD": "0s",
    "REGISTRY_STORAGE_MAINTENANCE_GC_DELETEUNTAGGED": "true",
    "REGISTRY_STORAGE_MAINTENANCE_RETENTION_POLICIES": POLICY,
    "REGISTRY_STORAGE_TAG_IMMUTABLE": IMMUTABLE,
}
TINY = {"REGISTRY_STORAGE_MAINTENANCE_GC_BUDGET": "1ms"}


# -- the two platforms: storage, one scheduled invocation, a listing of keys ---------------------


class Platform:
    """One store (an S3 bucket or an Azure container) and its scheduled gc function."""

    def __init__(self, driver_name: str, parameters: dict, env: dict[str, str],
                 keys: Callable[[], set], invoke: Callable[[], Optional[dict]]):
        self.driver = create_driver(driver_name, parameters)
        self.env = env
        self.keys = keys
        self.invoke = invoke

    def checkpoint(self) -> Optional[dict]:
        try:
            return json.loads(self.driver.get_content(CTX, CHECKPOINT))
        except PathNotFoundError:
            return None

    def run_to_end(self, between: Callable[[dict], None] = lambda saved: None, limit: int = 500) -> int:
        """Invoke until no checkpoint is left; calls `between` with each saved one. The count."""
        for count in range(1, limit + 1):
            self.invoke()
            saved = self.checkpoint()
            if saved is None:
                return count
            between(saved)
        raise AssertionError(f"gc not finished after {limit} invocations")


@pytest.fixture(params=["lambda-s3", "azure-functions"])
def platform(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Platform]:
    """A factory: platform(**settings) -> a Platform on a fresh bucket or container."""
    if request.param == "lambda-s3":
        moto = request.getfixturevalue("moto_s3")

        def make(**settings: str) -> Platform:
            bucket = moto.create_bucket()
            s3 = moto.client()

            def keys() -> set:
                pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
                return {o["Key"][len(PREFIX):] for page in pages for o in page.get("Contents", [])}

            def invoke() -> Optional[dict]:
                with moto.lambda_function(monkeypatch, bucket, **settings):
                    import app

                    return app.collect_garbage(scheduled_event("stratus-dev-collect_garbage-event"),
                                               LambdaContext())

            return Platform("s3", moto.parameters(bucket), moto.environment(bucket, **settings), keys, invoke)

        return make

    azurite = request.getfixturevalue("azurite")
    from .test_azure_functions import load_function_app

    def make_azure(**settings: str) -> Platform:
        container = azurite.new_container()
        client = azurite.service_client().get_container_client(container)
        env = azurite.environment(container, **settings)

        def keys() -> set:
            return {b.name[len(PREFIX):] for b in client.list_blobs(name_starts_with=PREFIX)}

        def invoke() -> None:
            for name in [n for n in os.environ if n.startswith("REGISTRY_")]:
                monkeypatch.delenv(name)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            module = load_function_app()  # a worker as the host starts it for the tick
            (timer,) = [f for f in module.app.get_functions() if f.get_function_name() == "collect_garbage"]
            timer.get_user_function()(None)

        return Platform("azure", azurite.driver_parameters(container), env, keys, invoke)

    return make_azure


# -- content: the same digests on every store --------------------------------------------------


def push_blob(registry: Registry, name: str, data: bytes) -> Digest:
    digest = Digest.from_bytes(data)
    registry.repository(name).uploads.create(CTX).commit(CTX, digest, io.BytesIO(data), len(data))
    return digest


def manifest_body(config: bytes, layers: list[bytes]) -> bytes:
    def descriptor(media_type: str, data: bytes) -> dict:
        return {"mediaType": media_type, "digest": str(Digest.from_bytes(data)), "size": len(data)}

    return canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer) for layer in layers],
    })


def push_image(registry: Registry, name: str, tag: Optional[str], seed: str, existing: tuple = ()) -> dict:
    """A config, a unique layer, a layer shared by every image, and `existing` layers the
    repository already links (not uploaded again, as a client skips what HEAD finds)."""
    config = canonical({"os": "linux", "seed": seed})
    layers = [b"the shared base layer", f"layer of {seed}".encode(), *existing]
    for blob in (config, *layers[:2]):
        push_blob(registry, name, blob)
    body = manifest_body(config, layers)
    digest, _ = registry.repository(name).manifests.put(CTX, body, OCI_MANIFEST, tag=tag)
    blobs = {digest, Digest.from_bytes(config), *(Digest.from_bytes(layer) for layer in layers)}
    return {"name": name, "tag": tag, "digest": digest, "blobs": blobs}


def build(platform: Platform) -> dict:
    """Five repositories: tagged images (live), an untagged manifest (-m deletes it), an
    orphan blob, and keep/three with tags r1..r3 a second apart (keeptags 1 expires r2;
    r1 is immutable, so it stays)."""
    registry = Registry(platform.driver, InMemoryBlobDescriptorCache(1000))
    live = [push_image(registry, f"app/repo{i}", "latest", f"app {i}") for i in range(3)]
    untagged = push_image(registry, "app/repo0", None, "untagged")
    orphan = push_blob(registry, "app/repo1", b"an orphan blob nothing references")
    kept = {}
    for tag in ("r1", "r2", "r3"):
        kept[tag] = push_image(registry, "keep/three", tag, f"keep {tag}")
        time.sleep(1.1)  # push times a second apart: S3 and Azure keep whole seconds
    return {"live": live + [kept["r1"], kept["r3"]], "gone": [untagged, kept["r2"]], "orphan": orphan}


def stored(keys: set) -> set:
    return {k for k in keys if k.startswith(("repositories/", "blobs/"))}


def assert_complete(platform: Platform, image: dict) -> None:
    registry = Registry(platform.driver, InMemoryBlobDescriptorCache(1000))
    repo = registry.repository(image["name"])
    if image["tag"] is not None:
        assert repo.tags.get(CTX, image["tag"]) == image["digest"]
    assert repo.manifests.get(CTX, image["digest"]).digest == image["digest"]
    for digest in image["blobs"]:
        platform.driver.stat(CTX, blob_path(digest))  # PathNotFoundError if lost


def one_shot_gc(env: dict[str, str]) -> dict[str, set]:
    """`stratus gc -m --grace 0s` (retention and immutability from the environment)."""
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}, **env,
               "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "-m", "--grace", "0s"],
                          cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found: dict[str, set] = {"tag": set(), "manifest": set(), "blob": set()}
    for line in done.stdout.splitlines():
        kind, _, what = line.partition(" deleted: ")
        found[kind].add(what)
    return found


# -- tests ---------------------------------------------------------------------------------------


def test_a_gc_over_many_invocations_leaves_what_a_one_shot_gc_leaves(platform) -> None:
    scheduled, reference = platform(**SETTINGS, **TINY), platform(**SETTINGS)
    content, same = build(scheduled), build(reference)
    assert stored(scheduled.keys()) == stored(reference.keys())
    before = stored(scheduled.keys())

    phases = []
    invocations = scheduled.run_to_end(lambda saved: phases.append((saved["phase"], saved.get("sweep", {}).get("step"))))
    expected = one_shot_gc(reference.env)

    assert invocations >= 20, invocations  # 1 ms each: the run really was spread out
    assert ("mark", None) in phases and ("sweep", "quarantine") in phases and ("sweep", "remark") in phases
    after = stored(scheduled.keys())
    assert after == stored(reference.keys())
    assert after < before
    assert expected["tag"] == {"keep/three:r2"}
    assert expected["manifest"] == {f"{i['name']}@{i['digest']}" for i in content["gone"]}
    live_blobs = {str(d) for image in content["live"] for d in image["blobs"]}
    gone_blobs = {str(d) for image in content["gone"] for d in image["blobs"]} - live_blobs
    assert expected["blob"] == gone_blobs | {str(content["orphan"])}
    for image in content["live"]:
        assert_complete(scheduled, image)
    for image in content["gone"]:
        assert not any(k.endswith(f"revisions/sha256/{image['digest'].hex}/link") for k in after)
    assert not is_sweeping(gc_state(CTX, scheduled.driver))
    assert not any(k.startswith("_gc/quarantine/") for k in scheduled.keys())
    assert scheduled.checkpoint() is None and same["orphan"] == content["orphan"]


def test_the_last_invocation_reports_the_whole_run(platform) -> None:
    """The Lambda's return value (on Azure: the run's effect) names every deletion once."""
    scheduled = platform(**SETTINGS, **TINY)
    content = build(scheduled)
    results = []
    for _ in range(500):
        results.append(scheduled.invoke())
        if scheduled.checkpoint() is None:
            break
    assert scheduled.checkpoint() is None and len(results) > 5
    if results[-1] is not None:  # the Lambda returns a summary; the timer function returns nothing
        assert all(r["finished"] is False for r in results[:-1])
        final = results[-1]
        assert final["finished"] is True and final["invocations"] == len(results)
        assert final["tags_deleted"] == ["keep/three:r2"]
        assert sorted(final["manifests_deleted"]) == sorted(f"{i['name']}@{i['digest']}" for i in content["gone"])
        assert str(content["orphan"]) in final["blobs_deleted"]
        assert len(final["blobs_deleted"]) == len(set(final["blobs_deleted"]))
    # the next tick, the interval (24h) not yet passed since this run ended, does nothing
    keys = scheduled.keys()
    again = scheduled.invoke()
    assert scheduled.checkpoint() is None and scheduled.keys() == keys
    if again is not None:
        assert again["skipped"] == "interval"


@pytest.mark.parametrize("when", ["mid-mark", "in-quarantine"])
def test_an_image_pushed_between_invocations_is_complete_afterwards(platform, when) -> None:
    """A manifest naming the orphan blob, pushed after its repository was marked (the mark
    missed it), or while the blob waits in quarantine between two invocations."""
    scheduled = platform(**SETTINGS, **TINY)
    content = build(scheduled)
    orphan = content["orphan"]
    pushed: list = []

    def between(saved: dict) -> None:
        if pushed:
            return
        marked = [repo["name"] for repo in saved["repos"]]
        sweep = saved.get("sweep", {})
        if when == "mid-mark":
            if saved["phase"] != "mark" or "app/repo1" not in marked:
                return
        else:
            if str(orphan) not in sweep.get("quarantined", []) or sweep["step"] == "finish":
                return
            assert any(k.startswith(f"_gc/quarantine/sha256/{orphan.hex}/") for k in scheduled.keys())
            assert is_sweeping(gc_state(CTX, scheduled.driver))
        registry = Registry(scheduled.driver, InMemoryBlobDescriptorCache(1000))
        pushed.append(push_image(registry, "app/repo1", "late", "late image",
                                 existing=(b"an orphan blob nothing references",)))

    scheduled.run_to_end(between)
    assert pushed, "the moment to push never came"
    (late,) = pushed
    assert orphan in late["blobs"]
    assert_complete(scheduled, late)
    for image in content["live"]:
        assert_complete(scheduled, image)
    assert not any(k.startswith("_gc/quarantine/") for k in scheduled.keys())


def test_a_checkpoint_left_by_a_runner_that_died_is_continued_by_the_next(platform) -> None:
    """A run stopped mid-sweep (its invocation gone after saving) is finished by `stratus gc`,
    which runs the same code; the state never blocks it (no --recover needed)."""
    scheduled = platform(**SETTINGS, **TINY)
    content = build(scheduled)
    for _ in range(500):
        scheduled.invoke()
        saved = scheduled.checkpoint()
        assert saved is not None
        if saved["phase"] == "sweep" and saved["sweep"]["step"] == "quarantine" and saved["sweep"]["quarantined"]:
            break
    assert is_sweeping(gc_state(CTX, scheduled.driver))
    finished = one_shot_gc(scheduled.env)
    assert str(content["orphan"]) in finished["blob"]
    assert scheduled.checkpoint() is None and not is_sweeping(gc_state(CTX, scheduled.driver))
    for image in content["live"]:
        assert_complete(scheduled, image)
    assert not any(k.startswith(QUARANTINE[len(PREFIX):]) for k in scheduled.keys())


def test_gc_disabled_or_read_only_does_nothing(platform) -> None:
    for setting in ({"REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED": "false"},
                    {"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": "true"}):
        scheduled = platform(**SETTINGS, **setting)
        build_keys = stored(scheduled.keys())
        registry = Registry(scheduled.driver, InMemoryBlobDescriptorCache(1000))
        push_blob(registry, "app/orphan", b"would be swept")
        before = scheduled.keys()
        result = scheduled.invoke()
        assert scheduled.keys() == before and scheduled.checkpoint() is None
        if result is not None:
            assert result["skipped"] in ("disabled", "readonly")
        assert build_keys <= stored(before)


def test_stratus_gc_stops_while_a_scheduled_invocation_holds_the_lease(platform) -> None:
    """The checkpoint as an invocation still working leaves it (its lease renewed on each
    save): `stratus gc` beside it changes nothing and says who holds it."""
    scheduled = platform(**SETTINGS, **TINY)
    build(scheduled)
    scheduled.invoke()
    saved = scheduled.checkpoint()
    assert saved is not None and saved["lease_until"] is None  # released at the end of the invocation
    saved["lease_until"] = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    saved["holder"] = "a-running-invocation"
    scheduled.driver.put_content(CTX, CHECKPOINT, json.dumps(saved).encode())
    before = scheduled.keys()
    run_env = {**{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}, **scheduled.env,
               "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "-m", "--grace", "0s"],
                          cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "a-running-invocation" in done.stderr, done.stderr
    assert scheduled.keys() == before
    assert scheduled.checkpoint() == saved


@pytest.mark.parametrize("configured, remaining, expected", [
    (None, None, None),  # stratus gc: no budget
    (None, 900.0, 720.0),  # Lambda, 900 s left: a fifth kept back
    (None, 100.0, 70.0),  # at least 30 s kept back
    (None, 20.0, 1.0),  # always at least one step
    (60.0, 900.0, 60.0),  # storage.maintenance.gc.budget caps it
    (600.0, 100.0, 70.0),  # but never past the invocation's end
])
def test_invocation_budget(configured, remaining, expected) -> None:
    assert invocation_budget(configured, remaining) == expected
