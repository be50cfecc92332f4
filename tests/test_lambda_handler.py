"""The Lambda handler (app.py) driven with API Gateway events over S3 (moto server).

Every request is handled by a freshly built app unless a test says otherwise, as
when each chunk of a push lands on a different function instance: nothing but S3
and the signed upload state carries an upload from one request to the next.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import pytest
import requests as http

from chalicelib import aws_runtime
from tests.lambda_events import Invoker, http_api_event
from tests.moto_server import MotoS3

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


@pytest.fixture
def lambda_env(monkeypatch, moto_s3: MotoS3, bucket: str) -> Iterator[dict]:
    """The environment of a deployed function: S3 selected, running on Lambda."""
    with moto_s3.lambda_function(monkeypatch, bucket, REGISTRY_HTTP_SECRET="lambda-test-secret",
                                 REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR="inmemory", AWS_REGION="us-east-1") as env:
        yield env


@pytest.fixture(params=["http", "rest"])
def invoke(request, lambda_env) -> Invoker:
    return Invoker(request.param)


def random_bytes(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(size)


def test_base_endpoint(invoke) -> None:
    response = invoke("GET", "/v2/")
    assert response.status == 200
    assert response.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert response.raw["isBase64Encoded"] is True


def test_push_in_chunks_on_fresh_instances_then_pull_through_s3(invoke, moto_s3, bucket) -> None:
    data = random_bytes(9 * MiB + 123, seed=1)
    digest = invoke.push_blob("lambda/app", data, chunk=4 * MiB)
    head = invoke("HEAD", f"/v2/lambda/app/blobs/{digest}")
    assert head.status == 200 and head.header("Content-Length") == str(len(data))
    assert head.header("Location") is None  # answered from the descriptor, no redirect
    got = invoke("GET", f"/v2/lambda/app/blobs/{digest}")
    assert got.status == 307 and got.body == b""
    location = got.header("Location")
    assert location.startswith(moto_s3.endpoint + "/")
    assert "X-Amz-Expires=1200" in location  # storage.redirect.expiry defaults to 20 minutes
    assert http.get(location, timeout=30).content == data  # no blob byte passed through the function
    ranged = http.get(location, headers={"Range": "bytes=10-19"}, timeout=30)
    assert ranged.status_code == 206 and ranged.content == data[10:20]


def test_redirect_disabled_serves_bytes_with_range(invoke, monkeypatch) -> None:
    monkeypatch.setenv("REGISTRY_STORAGE_REDIRECT_DISABLE", "true")
    data = random_bytes(300_000, seed=3)
    digest = invoke.push_blob("lambda/direct", data, chunk=MiB)
    whole = invoke("GET", f"/v2/lambda/direct/blobs/{digest}")
    assert whole.status == 200 and whole.body == data
    part = invoke("GET", f"/v2/lambda/direct/blobs/{digest}", headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and part.body == data[1000:2000]
    assert part.header("Content-Range") == f"bytes 1000-1999/{len(data)}"


def test_manifest_push_and_pull_by_tag(invoke) -> None:
    config = b"{}"
    layer = random_bytes(1000, seed=2)
    config_digest = invoke.push_blob("lambda/img", config, chunk=MiB)
    layer_digest = invoke.push_blob("lambda/img", layer, chunk=MiB)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": 1000}],
    }).encode()
    put = invoke("PUT", "/v2/lambda/img/manifests/v1", headers={"Content-Type": MANIFEST}, body=manifest,
                 binary=False)
    assert put.status == 201, put.body
    got = invoke("GET", "/v2/lambda/img/manifests/v1", headers={"Accept": MANIFEST})
    assert got.status == 200 and got.body == manifest
    assert got.header("Docker-Content-Digest") == "sha256:" + hashlib.sha256(manifest).hexdigest()
    tags = invoke("GET", "/v2/lambda/img/tags/list")
    assert json.loads(tags.body) == {"name": "lambda/img", "tags": ["v1"]}


def test_chunk_limit_is_4_mib_on_lambda_and_advertised(invoke) -> None:
    started = invoke("POST", "/v2/lambda/big/blobs/uploads/")
    assert started.header("OCI-Chunk-Max-Length") == str(4 * MiB)
    path, query = started.location()
    too_big = invoke("PATCH", path, query, {"Content-Range": f"0-{4 * MiB}"}, random_bytes(4 * MiB + 1))
    assert too_big.status == 413
    assert json.loads(too_big.body)["errors"][0]["code"] == "SIZE_INVALID"
    fits = invoke("PATCH", path, query, {"Content-Range": f"0-{4 * MiB - 1}"}, random_bytes(4 * MiB))
    assert fits.status == 202


def test_configured_chunk_limit_wins_on_lambda(invoke, monkeypatch) -> None:
    monkeypatch.setenv("REGISTRY_HTTP_CHUNKMAXLENGTH", "1MiB")
    started = invoke("POST", "/v2/lambda/small/blobs/uploads/")
    assert started.header("OCI-Chunk-Max-Length") == str(MiB)


def test_no_limit_off_lambda(invoke, monkeypatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME")
    started = invoke("POST", "/v2/lambda/any/blobs/uploads/")
    assert started.header("OCI-Chunk-Max-Length") is None


def test_upload_state_is_checked_across_instances(invoke) -> None:
    started = invoke("POST", "/v2/lambda/state/blobs/uploads/")
    path, query = started.location()
    forged = query.replace("_state=", "_state=x")
    response = invoke("PATCH", path, forged, {"Content-Range": "0-2"}, b"abc")
    assert response.status in (404, 416)
    assert json.loads(response.body)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_rest_api_locations_keep_the_stage(lambda_env) -> None:
    started = Invoker("rest")("POST", "/v2/lambda/stage/blobs/uploads/")
    assert started.header("Location").startswith("https://abc123def4.execute-api.us-east-1.amazonaws.com/api/v2/")


# -- the HTTP secret -------------------------------------------------------------------------


@pytest.fixture
def parameter_store(lambda_env, monkeypatch, moto_s3):
    monkeypatch.delenv("REGISTRY_HTTP_SECRET")
    for name, value in {"AWS_ACCESS_KEY_ID": "stratus-test", "AWS_SECRET_ACCESS_KEY": "stratus-test-secret",
                        "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint,
                        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_s3.endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(aws_runtime, "_secrets", {})
    fetched = []
    real = aws_runtime._fetch
    monkeypatch.setattr(aws_runtime, "_fetch", lambda name: fetched.append(name) or real(name))
    return fetched


@pytest.mark.parametrize("store", ["ssm", "secretsmanager"])
def test_http_secret_from_a_parameter_is_read_once_per_instance(parameter_store, moto_s3, monkeypatch, store) -> None:
    if store == "ssm":
        name = "/stratus/dev/http-secret"
        moto_s3.client("ssm").put_parameter(Name=name, Value="from-ssm", Type="SecureString", Overwrite=True)
        setting = name
    else:
        arn = moto_s3.client("secretsmanager").create_secret(
            Name=f"stratus-http-secret-{os.getpid()}-{len(parameter_store)}", SecretString="from-sm")["ARN"]
        setting = arn
    monkeypatch.setenv(aws_runtime.SECRET_PARAMETER_ENV, setting)
    invoke = Invoker("http")
    started = invoke("POST", "/v2/lambda/secret/blobs/uploads/")
    path, query = started.location()
    # another instance (fresh app, same process) signs and checks with the same secret
    assert invoke("PATCH", path, query, {"Content-Range": "0-2"}, b"abc").status == 202
    assert invoke("GET", path, query).status == 204
    assert parameter_store == [setting]  # fetched once, then kept for the process


def test_no_secret_in_the_repository() -> None:
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    for stage in config["stages"].values():
        env = stage.get("environment_variables", {})
        assert "REGISTRY_HTTP_SECRET" not in env
        assert not any("secret" in k.lower() and "parameter" not in k.lower() for k in env)


def test_http_api_event_helper_shape() -> None:
    event = http_api_event("PATCH", "/v2/a/b/blobs/uploads/x", "_state=abc", {"Content-Type": "x"}, b"\x00\xff")
    assert event["isBase64Encoded"] and event["body"] == "AP8="


def test_cold_start_answers_the_base_endpoint_without_boto3(lambda_env) -> None:
    """An instance that only answers GET /v2/ never imports boto3 (nor the X-Ray SDK)."""
    import subprocess
    import sys

    code = """
import sys
from tests.lambda_events import http_api_event, LambdaContext
import app
result = app.app(http_api_event("GET", "/v2/"), LambdaContext())
assert result["statusCode"] == 200, result
loaded = [m for m in ("boto3", "botocore", "aws_xray_sdk", "redis") if m in sys.modules]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ), check=True, timeout=60)


@pytest.mark.parametrize("make_event", ["http_api_event", "rest_api_event"])
def test_the_client_address_comes_from_either_payload_version(make_event: str) -> None:
    from chalicelib.apigateway import request_from_event
    from tests import lambda_events

    request = request_from_event(getattr(lambda_events, make_event)("GET", "/v2/"))
    assert request.remote_addr == "198.51.100.7"
