"""Tag immutability (storage.tag.immutable, issue 15 item 5), through the HTTP API of
`stratus serve` on the filesystem, S3 (moto server) and Azure (Azurite).

In the repositories and tags the rules match, a tag once pushed is neither moved
(a manifest PUT by the tag naming another digest) nor deleted (DELETE of the tag or
of the manifest it names): 403 DENIED with the spec's error body. Pushing the same
digest again is accepted, as CI does. Retention (`stratus gc`) leaves such tags too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from .oci_client import Registry, assert_error, canonical, sha256
from .servers import stratus_server

ROOT = Path(__file__).resolve().parent.parent
RULES = json.dumps(["release/*", {"repository": "prod/**", "tags": "v*"}])


@pytest.fixture(params=["filesystem", "s3", "azure"])
def storage_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """REGISTRY_* variables of a fresh storage on the parametrized backend."""
    if request.param == "filesystem":
        return {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "storage")}
    if request.param == "s3":
        moto = request.getfixturevalue("moto_s3")
        return {**moto.environment(moto.create_bucket()), "REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}
    azurite = request.getfixturevalue("azurite")
    return {**azurite.environment(azurite.new_container()), "REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}


@pytest.fixture
def env(storage_env: dict[str, str]) -> dict[str, str]:
    return {**storage_env, "REGISTRY_STORAGE_TAG_IMMUTABLE": RULES}


@pytest.fixture
def oci(env: dict[str, str], tmp_path: Path) -> Iterator[Registry]:
    with stratus_server(tmp_path / "server", env) as url:
        client = Registry(url)
        yield client
        client.close()


def denied(response, tag: str) -> dict:
    """The refusal's error, checked to be the spec's body with DENIED and 403."""
    assert_error(response, 403, "DENIED")
    (error,) = response.json()["errors"]
    assert "immutable" in error["message"] and error["detail"]["tag"] == tag
    return error


def test_first_push_and_the_same_digest_again_are_accepted(oci: Registry) -> None:
    image = oci.push_image("release/app", "1.0")
    again = oci.put_manifest("release/app", "1.0", image.body)  # CI pushes the same image again
    assert again.status_code == 201, again.text
    assert again.headers["Docker-Content-Digest"] == image.digest
    got = oci.manifest("release/app", "1.0")
    assert got.status_code == 200 and got.content == image.body


def test_moving_an_immutable_tag_is_denied_and_writes_nothing(oci: Registry) -> None:
    first = oci.push_image("release/app", "1.0")
    other = oci.push_image("release/app", "scratch")  # blobs and a manifest that exist
    body = canonical({**json.loads(other.body), "annotations": {"moved": "yes"}})
    refused = oci.put_manifest("release/app", "1.0", body)
    error = denied(refused, "1.0")
    assert error["detail"]["digest"] == first.digest
    got = oci.manifest("release/app", "1.0")
    assert got.status_code == 200 and got.content == first.body
    # refused before anything was written: the new manifest is unknown by digest
    assert_error(oci.manifest("release/app", sha256(body)), 404, "MANIFEST_UNKNOWN")


def test_deleting_an_immutable_tag_or_its_manifest_is_denied(oci: Registry) -> None:
    image = oci.push_image("release/app", "2.0")
    denied(oci.delete("/v2/release/app/manifests/2.0"), "2.0")
    denied(oci.delete(f"/v2/release/app/manifests/{image.digest}"), "2.0")
    got = oci.manifest("release/app", "2.0")
    assert got.status_code == 200 and got.content == image.body
    assert "2.0" in oci.tags("release/app").json()["tags"]
    # a tag that does not exist is unknown, not denied
    assert_error(oci.delete("/v2/release/app/manifests/9.9"), 404, "MANIFEST_UNKNOWN")


def test_tags_and_repositories_outside_the_rules_stay_mutable(oci: Registry) -> None:
    # prod/**: only tags matching v*; any depth of repository
    kept = oci.push_image("prod/team/api", "v1")
    latest = oci.push_image("prod/team/api", "latest")
    newer = oci.push_image("prod/team/api", "latest-next")
    assert oci.put_manifest("prod/team/api", "latest", newer.body).status_code == 201  # moved
    assert oci.delete("/v2/prod/team/api/manifests/latest").status_code == 202
    assert oci.delete(f"/v2/prod/team/api/manifests/{latest.digest}").status_code == 202
    denied(oci.put_manifest("prod/team/api", "v1", newer.body), "v1")
    # release/* covers one path segment: release/a/b is outside it
    nested = oci.push_image("release/a/b", "1.0")
    nested_next = oci.push_image("release/a/b", "next")
    assert oci.put_manifest("release/a/b", "1.0", nested_next.body).status_code == 201
    assert oci.delete("/v2/release/a/b/manifests/1.0").status_code == 202
    assert oci.manifest("release/a/b", nested.digest).status_code == 200
    # and a repository no rule names
    oci.push_image("scratch/app", "1.0")
    scratch_next = oci.push_image("scratch/app", "next")
    assert oci.put_manifest("scratch/app", "1.0", scratch_next.body).status_code == 201
    assert oci.manifest("prod/team/api", "v1").content == kept.body


def test_an_immutable_manifest_referenced_by_a_mutable_tag_cannot_be_deleted(oci: Registry) -> None:
    image = oci.push_image("prod/svc", "v3")
    assert oci.put_manifest("prod/svc", "stable", image.body).status_code == 201
    assert oci.delete("/v2/prod/svc/manifests/stable").status_code == 202  # the mutable tag goes
    denied(oci.delete(f"/v2/prod/svc/manifests/{image.digest}"), "v3")
    assert oci.manifest("prod/svc", "v3").content == image.body


def test_retention_leaves_immutable_tags(env: dict[str, str], tmp_path: Path) -> None:
    """keeptags: 1 over release/*: every mutable tag but the newest goes, no immutable one
    (immutable tags are neither expired nor counted), and gc keeps their blobs."""
    rules = json.dumps([{"repository": "release/*", "tags": "1.*"}])
    env = {**env, "REGISTRY_STORAGE_TAG_IMMUTABLE": rules}
    with stratus_server(tmp_path / "server", env) as url:
        oci = Registry(url)
        frozen = [oci.push_image("release/app", f"1.{i}") for i in range(3)]
        mutable = [oci.push_image("release/app", f"dev-{i}") for i in range(3)]
        policies = json.dumps([{"repositories": "release/*", "keeptags": 1}])
        gc_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "REGISTRY_STORAGE_MAINTENANCE_RETENTION_POLICIES": policies}
        done = subprocess.run([sys.executable, "-m", "chalicelib", "gc", "--grace", "0s", "-m"],
                              cwd=ROOT, env=gc_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        tags = oci.tags("release/app").json()["tags"]
        kept_mutable = [t for t in tags if t.startswith("dev-")]
        assert sorted(t for t in tags if t.startswith("1.")) == ["1.0", "1.1", "1.2"]
        assert len(kept_mutable) == 1, (tags, done.stdout)
        expired = {f"release/app:dev-{i}" for i in range(3)} - {f"release/app:{kept_mutable[0]}"}
        assert {line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("tag deleted")} == expired
        for image in frozen:
            assert oci.manifest("release/app", image.digest).content == image.body
            for layer in [image.config_digest, *image.layer_digests]:
                assert oci.blob("release/app", layer).status_code == 200
        kept_digest = oci.manifest("release/app", kept_mutable[0]).headers["Docker-Content-Digest"]
        gone = [m for m in mutable if m.digest != kept_digest]
        assert len(gone) == 2
        for image in gone:  # untagged by retention, then deleted by -m
            assert_error(oci.manifest("release/app", image.digest), 404, "MANIFEST_UNKNOWN")
        oci.close()
