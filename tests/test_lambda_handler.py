"""The Lambda handler (app.py) behind the API Gateway stand-in (tests/lambda_gateway.py)
over S3 (moto server), as a REST API (payload 1.0) and an HTTP API (payload 2.0).

Every request is handled by a freshly built registry (`instances="cold"`), as when
each chunk of a push lands on a different function instance: nothing but S3 and the
signed upload state carries an upload from one request to the next. Each gateway
imports app.py with exactly the environment of the deployment it stands for.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import requests as http

from tests.lambda_events import http_api_event
from tests.lambda_gateway import GatewayClient, LambdaGateway, lambda_gateway
from tests.moto_server import ACCESS_KEY, SECRET_KEY, MotoS3

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SECRET = "lambda-test-secret"


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


def deployment_env(moto_s3: MotoS3, bucket: str, **extra: str) -> dict[str, str]:
    """The environment of a deployed function: S3 selected, running on Lambda."""
    return {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": SECRET,
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "inmemory", **extra}


@pytest.fixture(scope="module", params=["http", "rest"])
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def gateway(mode, moto_s3, bucket, tmp_path_factory) -> Iterator[LambdaGateway]:
    with lambda_gateway(deployment_env(moto_s3, bucket), mode, instances="cold",
                        workdir=tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


@pytest.fixture(scope="module")
def invoke(gateway) -> GatewayClient:
    return gateway.client()


@contextmanager
def deployed(mode: str, env: dict[str, str], tmp_path: Path) -> Iterator[GatewayClient]:
    """A gateway of its own, for a deployment configured differently."""
    with lambda_gateway(env, mode, instances="cold", workdir=tmp_path) as gw:
        yield gw.client()


def random_bytes(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(size)


def test_base_endpoint(invoke, gateway) -> None:
    response = invoke("GET", "/v2/")
    assert response.status == 200
    assert response.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert gateway.records()[-1].response_base64 is True  # the function's result, as API Gateway read it


def test_push_in_chunks_on_fresh_instances_then_pull_through_s3(invoke, gateway, moto_s3) -> None:
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
    gateway.assert_nothing_over_the_limit_reached_the_function()


def test_redirect_disabled_serves_bytes_with_range(mode, moto_s3, bucket, tmp_path) -> None:
    env = deployment_env(moto_s3, bucket, REGISTRY_STORAGE_REDIRECT_DISABLE="true")
    with deployed(mode, env, tmp_path) as invoke:
        data = random_bytes(300_000, seed=3)
        digest = invoke.push_blob("lambda/direct", data, chunk=MiB)
        whole = invoke("GET", f"/v2/lambda/direct/blobs/{digest}")
        assert whole.status == 200 and whole.body == data
        part = invoke("GET", f"/v2/lambda/direct/blobs/{digest}", headers={"Range": "bytes=1000-1999"})
        assert part.status == 206 and part.body == data[1000:2000]
        assert part.header("Content-Range") == f"bytes 1000-1999/{len(data)}"


def test_manifest_push_and_pull_by_tag(invoke) -> None:
    """The manifest goes as text through an HTTP API, base64-encoded through a REST API."""
    config = b"{}"
    layer = random_bytes(1000, seed=2)
    config_digest = invoke.push_blob("lambda/img", config, chunk=MiB)
    layer_digest = invoke.push_blob("lambda/img", layer, chunk=MiB)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": 1000}],
    }).encode()
    put = invoke("PUT", "/v2/lambda/img/manifests/v1", headers={"Content-Type": MANIFEST}, body=manifest)
    assert put.status == 201, put.body
    got = invoke("GET", "/v2/lambda/img/manifests/v1", headers={"Accept": MANIFEST})
    assert got.status == 200 and got.body == manifest
    assert got.header("Docker-Content-Digest") == "sha256:" + hashlib.sha256(manifest).hexdigest()
    tags = invoke("GET", "/v2/lambda/img/tags/list")
    assert json.loads(tags.body) == {"name": "lambda/img", "tags": ["v1"]}


def test_chunk_limit_is_4_mib_on_lambda_and_advertised(invoke, gateway) -> None:
    started = invoke("POST", "/v2/lambda/big/blobs/uploads/")
    assert started.header("OCI-Chunk-Max-Length") == str(4 * MiB)
    path, query = started.location()
    too_big = invoke("PATCH", path, query, {"Content-Range": f"0-{4 * MiB}"}, random_bytes(4 * MiB + 1))
    assert too_big.status == 413
    assert json.loads(too_big.body)["errors"][0]["code"] == "SIZE_INVALID"
    assert gateway.records()[-1].reached_function  # the function's own answer, not the platform's
    fits = invoke("PATCH", path, query, {"Content-Range": f"0-{4 * MiB - 1}"}, random_bytes(4 * MiB))
    assert fits.status == 202


def test_configured_chunk_limit_wins_on_lambda(mode, moto_s3, bucket, tmp_path) -> None:
    with deployed(mode, deployment_env(moto_s3, bucket, REGISTRY_HTTP_CHUNKMAXLENGTH="1MiB"), tmp_path) as invoke:
        started = invoke("POST", "/v2/lambda/small/blobs/uploads/")
        assert started.header("OCI-Chunk-Max-Length") == str(MiB)


def test_no_limit_off_lambda(mode, moto_s3, bucket, tmp_path) -> None:
    """The same app where AWS_LAMBDA_FUNCTION_NAME is not set (any other runtime)."""
    with deployed(mode, deployment_env(moto_s3, bucket, AWS_LAMBDA_FUNCTION_NAME=""), tmp_path) as invoke:
        started = invoke("POST", "/v2/lambda/any/blobs/uploads/")
        assert started.status == 202
        assert started.header("OCI-Chunk-Max-Length") is None


def test_upload_state_is_checked_across_instances(invoke) -> None:
    started = invoke("POST", "/v2/lambda/state/blobs/uploads/")
    path, query = started.location()
    forged = query.replace("_state=", "_state=x")
    response = invoke("PATCH", path, forged, {"Content-Range": "0-2"}, b"abc")
    assert response.status in (404, 416)
    assert json.loads(response.body)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_rest_api_locations_keep_the_stage(moto_s3, bucket, tmp_path) -> None:
    with lambda_gateway(deployment_env(moto_s3, bucket), "rest", stage_in_path=True, instances="cold",
                        workdir=tmp_path) as gw:
        invoke = gw.client()
        started = invoke("POST", "/v2/lambda/stage/blobs/uploads/")
        assert started.header("Location").startswith(f"http://127.0.0.1:{gw.port}/api/v2/")
        path, query = started.location()
        assert invoke("PATCH", path, query, {"Content-Range": "0-2"}, b"abc").status == 202


# -- the HTTP secret -------------------------------------------------------------------------


def parameter_env(moto_s3: MotoS3, bucket: str, setting: str) -> dict[str, str]:
    """A deployment that reads http.secret from a parameter with its role (here: moto)."""
    env = deployment_env(moto_s3, bucket, STRATUS_HTTP_SECRET_PARAMETER=setting, AWS_ACCESS_KEY_ID=ACCESS_KEY,
                         AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_ENDPOINT_URL_SSM=moto_s3.endpoint,
                         AWS_ENDPOINT_URL_SECRETS_MANAGER=moto_s3.endpoint)
    del env["REGISTRY_HTTP_SECRET"]
    return env


@pytest.mark.parametrize("store", ["ssm", "secretsmanager"])
def test_http_secret_from_a_parameter_is_read_once_per_instance(moto_s3, bucket, tmp_path, store) -> None:
    first, rotated = f"first-{os.urandom(8).hex()}", f"rotated-{os.urandom(8).hex()}"
    if store == "ssm":
        setting = f"/stratus/dev/http-secret-{os.urandom(4).hex()}"
        ssm = moto_s3.client("ssm")
        ssm.put_parameter(Name=setting, Value=first, Type="SecureString")
        rotate = lambda: ssm.put_parameter(Name=setting, Value=rotated, Type="SecureString", Overwrite=True)  # noqa: E731
    else:
        sm = moto_s3.client("secretsmanager")
        setting = sm.create_secret(Name=f"stratus-http-secret-{os.urandom(4).hex()}", SecretString=first)["ARN"]
        rotate = lambda: sm.put_secret_value(SecretId=setting, SecretString=rotated)  # noqa: E731
    with deployed("http", parameter_env(moto_s3, bucket, setting), tmp_path) as invoke:
        started = invoke("POST", "/v2/lambda/secret/blobs/uploads/")
        assert started.status == 202, started.body
        path, query = started.location()
        # the value changes once the process has it: a process that read it again would
        # now refuse the upload state it signed itself
        rotate()
        # another instance (fresh registry, same process) signs and checks with the same secret
        patched = invoke("PATCH", path, query, {"Content-Range": "0-2"}, b"abc")
        assert patched.status == 202, patched.body
        path, query = patched.location()
        assert invoke("GET", path, query).status == 204
    # and the secret was the parameter's value: a deployment given that value takes the
    # state, one given the rotated value does not
    for secret, expected in ((first, 204), (rotated, 404)):
        with deployed("http", deployment_env(moto_s3, bucket, REGISTRY_HTTP_SECRET=secret), tmp_path) as other:
            status = other("GET", path, query).status
            assert status == expected or (expected == 404 and status == 416), (secret, status)


def test_no_secret_in_the_repository() -> None:
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    for stage in config["stages"].values():
        env = stage.get("environment_variables", {})
        assert "REGISTRY_HTTP_SECRET" not in env
        assert not any("secret" in k.lower() and "parameter" not in k.lower() for k in env)


def test_http_api_event_helper_shape() -> None:
    event = http_api_event("PATCH", "/v2/a/b/blobs/uploads/x", "_state=abc", {"Content-Type": "x"}, b"\x00\xff")
    assert event["isBase64Encoded"] and event["body"] == "AP8="


@pytest.mark.parametrize("mode", ["http", "rest"])
def test_cold_start_answers_the_base_endpoint_without_boto3(moto_s3, bucket, mode) -> None:
    """An instance that only answers GET /v2/ never imports boto3 (nor the X-Ray SDK): the
    gateway's own code, run in a process of the function's environment that then looks
    at what it loaded."""
    import subprocess
    import sys

    from tests.lambda_gateway import runtime_environment

    code = f"""
import sys
from pathlib import Path
from tests.lambda_gateway import Function, Gateway, IncomingRequest, Settings
gateway = Gateway(Settings("{mode}", "api", False, 30.0, 6291456, 6291556, "warm", Path("/dev/null"), 443),
                  Function("warm"))
status, headers, body, record = gateway.handle(
    IncomingRequest("GET", "/v2/", "", [("Host", "127.0.0.1")], b"", "198.51.100.7", 443), 0, True)
assert status == 200 and record["reached_function"], (status, body)
loaded = [m for m in ("boto3", "botocore", "aws_xray_sdk", "redis") if m in sys.modules]
assert not loaded, loaded
"""
    env = {**runtime_environment(), **deployment_env(moto_s3, bucket), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=60)


@pytest.mark.parametrize("make_event", ["http_api_event", "rest_api_event"])
def test_the_client_address_comes_from_either_payload_version(make_event: str) -> None:
    from chalicelib.adapters.apigateway import request_from_event
    from tests import lambda_events

    request = request_from_event(getattr(lambda_events, make_event)("GET", "/v2/"))
    assert request.remote_addr == "198.51.100.7"
