"""Upload purging on Lambda: app.py's scheduled function (issue 13, item 6).

`chalice deploy` makes `purge_uploads` a function of its own with an EventBridge
schedule, and infra/terraform/aws does the same; EventBridge invokes it with a
"Scheduled Event". Here the handler gets such an event while the registry's bucket
(moto server) holds an upload abandoned for longer than the purge age (its
`startedat` set back, with a pending tail, a multipart part and hash states) and
one started just now.
"""
from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.lambda_events import Invoker, LambdaContext
from tests.moto_server import MotoS3

MiB = 1 << 20
ROOT = "docker/registry/v2"


def scheduled_event(rule: str = "stratus-dev-purge_uploads-event") -> dict[str, Any]:
    """What EventBridge sends a function its schedule rule targets."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{rule}"],
        "detail": {},
    }


def start_upload(invoke: Invoker, name: str, chunks: list[bytes]) -> str:
    """POST and PATCH the chunks, never PUT: an upload a client gave up on. Its id."""
    started = invoke("POST", f"/v2/{name}/blobs/uploads/")
    assert started.status == 202, started.body
    path, query = started.location()
    offset = 0
    for chunk in chunks:
        patched = invoke("PATCH", path, query, {"Content-Range": f"{offset}-{offset + len(chunk) - 1}"}, chunk)
        assert patched.status == 202, patched.body
        path, query = patched.location()
        offset += len(chunk)
    return path.rstrip("/").rsplit("/", 1)[1]


def upload_keys(s3: Any, bucket: str, name: str, upload_id: str) -> list[str]:
    prefix = f"{ROOT}/repositories/{name}/_uploads/{upload_id}/"
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def multipart_keys(s3: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def abandon(s3: Any, bucket: str, name: str, upload_id: str, days: int) -> None:
    """Set the upload's startedat back, as if its client had left it `days` ago."""
    when = datetime.now(timezone.utc) - timedelta(days=days)
    s3.put_object(Bucket=bucket, Key=f"{ROOT}/repositories/{name}/_uploads/{upload_id}/startedat",
                  Body=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode())


@pytest.fixture()
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


def test_scheduled_purge_removes_an_abandoned_upload_and_keeps_a_young_one(moto_s3, bucket, monkeypatch) -> None:
    s3 = moto_s3.client()
    with moto_s3.lambda_function(monkeypatch, bucket, REGISTRY_HTTP_SECRET="schedule-secret"):
        import app

        invoke = Invoker("rest")
        # two chunks of 3 MiB: a 5 MiB multipart part, a pending tail and hash states
        old = start_upload(invoke, "team/app", [os.urandom(3 * MiB), os.urandom(3 * MiB)])
        young = start_upload(invoke, "team/app", [b"young"])
        abandon(s3, bucket, "team/app", old, days=8)  # the default age is 168h
        old_keys = upload_keys(s3, bucket, "team/app", old)
        assert any(k.endswith("/startedat") for k in old_keys) and any("/hashstates/" in k for k in old_keys)
        assert any(f"/_uploads/{old}/" in k for k in multipart_keys(s3, bucket))
        young_keys = upload_keys(s3, bucket, "team/app", young)

        result = app.purge_uploads(scheduled_event(), LambdaContext())

    assert result["dryrun"] is False
    assert [p.rsplit("/", 1)[1] for p in result["purged"]] == [old]
    assert upload_keys(s3, bucket, "team/app", old) == []
    assert not any(f"/_uploads/{old}/" in k for k in multipart_keys(s3, bucket))  # its parts aborted
    assert upload_keys(s3, bucket, "team/app", young) == young_keys


def test_scheduled_purge_honours_the_configured_age_and_dry_run(moto_s3, bucket, monkeypatch) -> None:
    s3 = moto_s3.client()
    env = {"REGISTRY_HTTP_SECRET": "schedule-secret", "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "48h"}
    with moto_s3.lambda_function(monkeypatch, bucket, **env):
        import app

        invoke = Invoker("http")
        three_days, one_day = start_upload(invoke, "dry/run", [b"a"]), start_upload(invoke, "dry/run", [b"b"])
        abandon(s3, bucket, "dry/run", three_days, days=3)
        abandon(s3, bucket, "dry/run", one_day, days=1)

        monkeypatch.setenv("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_DRYRUN", "true")
        planned = app.purge_uploads(scheduled_event(), LambdaContext())
        assert planned["dryrun"] is True
        assert [p.rsplit("/", 1)[1] for p in planned["purged"]] == [three_days]
        assert upload_keys(s3, bucket, "dry/run", three_days)  # a dry run removes nothing

        monkeypatch.delenv("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_DRYRUN")
        done = app.purge_uploads(scheduled_event(), LambdaContext())
    assert [p.rsplit("/", 1)[1] for p in done["purged"]] == [three_days]
    assert upload_keys(s3, bucket, "dry/run", three_days) == []
    assert upload_keys(s3, bucket, "dry/run", one_day)


def test_the_schedule_is_registered_for_chalice_deploy() -> None:
    import app

    schedules = {s.name: s for s in app.app.event_sources if type(s).__name__ == "ScheduledEventConfig"}
    purge = schedules["purge_uploads"]
    assert (purge.schedule_expression.to_string(), purge.handler_string) == ("cron(17 3 * * ? *)", "app.purge_uploads")
