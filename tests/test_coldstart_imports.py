"""What a cold Lambda instance imports and fetches, request by request (issue 13, item 2).

Each test starts a fresh interpreter, as a new function instance is, with a
deployment's environment: S3 storage (moto server), the secret in an SSM parameter
(`STRATUS_HTTP_SECRET_PARAMETER`, as both Chalice stages set it) and, like the prod
stage, the descriptor cache in Redis (a real redis-server) whose AUTH token is in
another parameter (`STRATUS_REDIS_PASSWORD_PARAMETER`). The interpreter invokes
app.py's handler with API Gateway events and reports, after each request, which
SDKs are in `sys.modules` and which secrets were fetched:

* `GET /v2/` touches neither S3, SSM, Redis nor (traced) X-Ray, so it imports none
  of boto3, botocore, redis, cryptography or aws_xray_sdk;
* a blob HEAD asks Redis (redis-py now, and the AUTH token), then S3 (boto3 now), but
  not the http secret;
* starting an upload signs its state, so only then is that parameter read;
* a cold pull (manifest GET by digest, blob GET answered 307) with the role's
  credentials in the environment reads S3 without any AWS SDK (storage/s3/light.py):
  boto3 in the blob HEAD above comes from SSM, for the Redis AUTH token.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests as http

from tests.lambda_gateway import runtime_environment
from tests.moto_server import ACCESS_KEY, SECRET_KEY, MotoS3
from tests.redis_server import RedisServer, redis_server, requires_redis
from tests.servers import ROOT

SDKS = ("boto3", "botocore", "s3transfer", "aws_xray_sdk", "redis", "bcrypt", "jwt", "cryptography")
# what a request that calls no AWS service and no cache must not import
NOT_ON_GET_BASE = {"boto3", "botocore", "s3transfer", "redis", "cryptography", "aws_xray_sdk"}

_PROBE = """\
import json, sys, time

from tests.lambda_events import LambdaContext, Response, rest_api_event

def step(label, method, path, query=""):
    start = time.perf_counter()
    import app
    from chalicelib import aws_runtime
    response = Response(app.app(rest_api_event(method, path, query), LambdaContext()))
    elapsed = time.perf_counter() - start
    top = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"step": label, "status": response.status, "ms": round(elapsed * 1000, 1),
                      "modules": top, "secrets": sorted(aws_runtime._secrets)}), flush=True)
    return response

step("base", "GET", "/v2/")
step("blob-head", "HEAD", "/v2/cold/start/blobs/sha256:" + "0" * 64)
step("upload", "POST", "/v2/cold/start/blobs/uploads/")
"""


def run_cold_instance(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    # -E -s: no PYTHON* variables or user site; the environment is exactly env
    out = subprocess.run([sys.executable, "-E", "-s", "-c", _PROBE], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {s["step"]: s for s in steps}


@pytest.fixture()
def redis_with_auth(tmp_path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", password=os.urandom(12).hex()) as server:
        yield server


@pytest.fixture()
def deployment(moto_s3: MotoS3, redis_with_auth: RedisServer) -> dict[str, str]:
    bucket = moto_s3.create_bucket()
    ssm = moto_s3.client("ssm")
    parameter = f"/stratus/dev/http-secret-{os.urandom(4).hex()}"
    ssm.put_parameter(Name=parameter, Value=os.urandom(16).hex(), Type="SecureString")
    token = f"/stratus/dev/redis-auth-token-{os.urandom(4).hex()}"
    ssm.put_parameter(Name=token, Value=str(redis_with_auth.password), Type="SecureString")
    return {
        **runtime_environment(),  # LAMBDA_TASK_ROOT included: aws-xray-sdk's "on Lambda"
        **moto_s3.environment(bucket),
        "STRATUS_HTTP_SECRET_PARAMETER": parameter,
        "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis_with_auth.addr,
        "STRATUS_REDIS_PASSWORD_PARAMETER": token,
        # the function's role, here moto's: SSM at the moto server
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint,
    }


@requires_redis
@pytest.mark.parametrize("xray", [False, True], ids=["untraced", "xray"])
def test_cold_base_request_imports_no_sdk_and_reads_no_secret(deployment, redis_with_auth, xray) -> None:
    env = dict(deployment)
    if xray:  # what Lambda sets on a function with active tracing (both Chalice stages)
        env["AWS_XRAY_DAEMON_ADDRESS"] = "127.0.0.1:9"  # UDP to the discard port: documents go nowhere
        env["_X_AMZN_TRACE_ID"] = "Root=1-65f1c2a0-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1"
    steps = run_cold_instance(env)
    base, head, upload = steps["base"], steps["blob-head"], steps["upload"]
    print(f"\ncold GET /v2/ ({'xray' if xray else 'untraced'}): {base['ms']} ms, SDKs imported: "
          f"{[m for m in base['modules'] if m in SDKS]}; after a blob HEAD: "
          f"{[m for m in head['modules'] if m in SDKS]}")

    assert base["status"] == 200
    assert not NOT_ON_GET_BASE & set(base["modules"]), sorted(NOT_ON_GET_BASE & set(base["modules"]))
    assert base["secrets"] == []

    # a request that asks the cache pays for the AUTH token (read from SSM) and reads S3,
    # with neither an AWS SDK nor redis-py (cache/resp.py, aws_secrets.py, s3/light.py);
    # not for the http secret
    assert head["status"] == 404
    assert not {"boto3", "botocore", "redis"} & set(head["modules"]), head["modules"]
    assert "hiredis" in head["modules"]
    assert "aws_xray_sdk" not in head["modules"]  # traced or not: the documents are ours (xray.py)
    assert head["secrets"] == [env["STRATUS_REDIS_PASSWORD_PARAMETER"]]
    # ...and the token from SSM let it in: its lookups reached the keys (a refused AUTH
    # would have left Redis unread and storage answering alone)
    assert int(redis_with_auth.client().info("stats")["keyspace_misses"]) > 0

    # the first request that signs upload state reads the parameter, once
    assert upload["status"] == 202
    assert upload["secrets"] == sorted([env["STRATUS_HTTP_SECRET_PARAMETER"], env["STRATUS_REDIS_PASSWORD_PARAMETER"]])


# -- a cold pull: the S3 reads need no AWS SDK ----------------------------------------------

_PULL_SEED = """\
import hashlib, json
from tests.lambda_events import LambdaContext, Response, rest_api_event
import app

def call(method, path, query="", headers=None, body=b""):
    response = Response(app.app(rest_api_event(method, path, query, headers, body), LambdaContext()))
    assert response.status < 400, (method, path, response.status)
    return response

def push(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    call("POST", "/v2/cold/pull/blobs/uploads/", "digest=" + digest, {"Content-Type": "application/octet-stream"}, data)
    return digest

media = "application/vnd.oci.image.manifest.v1+json"
config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes " * 1000
manifest = json.dumps({"schemaVersion": 2, "mediaType": media,
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": push(layer), "size": len(layer)}]}).encode()
call("PUT", "/v2/cold/pull/manifests/v1", "", {"Content-Type": media}, manifest)
digests = {"manifest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "layer": "sha256:" + hashlib.sha256(layer).hexdigest()}
# an earlier instance's pull warms the descriptor cache
call("GET", "/v2/cold/pull/manifests/" + digests["manifest"], "", {"Accept": media})
call("HEAD", "/v2/cold/pull/blobs/" + digests["layer"])
print(json.dumps(digests))
"""

_PULL_PROBE = """\
import json, sys
from tests.lambda_events import LambdaContext, Response, rest_api_event
import app
method, path, accept = sys.argv[1:4]
response = Response(app.app(rest_api_event(method, path, "", {"Accept": accept}), LambdaContext()))
print(json.dumps({"status": response.status, "headers": dict(response.headers), "body": response.body.decode("latin-1"),
                  "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""

# what a cold pull must not import: the SDK, and what only the SDK brings; nor urllib3,
# since light.py's reads go over http.client (urllib3 costs ~20 ms more of imports)
NOT_ON_PULL = {"boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3"}


def _fresh(env: dict[str, str], script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-E", "-s", "-c", script, *args], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture()
def pull_deployment(moto_s3: MotoS3, tmp_path) -> Iterator[dict[str, str]]:
    """A function whose role's credentials are in the environment, as Lambda gives them
    (a session token included), the http secret there too, the cache in Redis."""
    with redis_server(tmp_path / "redis-pull") as redis:
        storage = {k: v for k, v in moto_s3.environment(moto_s3.create_bucket()).items()
                   if k not in ("REGISTRY_STORAGE_S3_ACCESSKEY", "REGISTRY_STORAGE_S3_SECRETKEY")}
        yield {
            **runtime_environment(), **storage,
            "REGISTRY_HTTP_SECRET": os.urandom(16).hex(),
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis.addr,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_SESSION_TOKEN": "IQoJb3JpZ2luX2VjEXAMPLE+/=",
        }


@requires_redis
@pytest.mark.parametrize("xray", [False, True], ids=["untraced", "xray"])
def test_cold_pull_reads_s3_without_the_sdk(pull_deployment, moto_s3, xray) -> None:
    env = dict(pull_deployment)
    digests = _fresh(env, _PULL_SEED)
    if xray:
        env["AWS_XRAY_DAEMON_ADDRESS"] = "127.0.0.1:9"
        env["_X_AMZN_TRACE_ID"] = "Root=1-65f1c2a0-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1"
    media = "application/vnd.oci.image.manifest.v1+json"

    manifest = _fresh(env, _PULL_PROBE, "GET", f"/v2/cold/pull/manifests/{digests['manifest']}", media)
    assert manifest["status"] == 200
    assert json.loads(manifest["body"])["layers"][0]["digest"] == digests["layer"]
    assert not NOT_ON_PULL & set(manifest["modules"]), sorted(NOT_ON_PULL & set(manifest["modules"]))
    assert "aws_xray_sdk" not in manifest["modules"]

    blob = _fresh(env, _PULL_PROBE, "GET", f"/v2/cold/pull/blobs/{digests['layer']}", "*/*")
    assert blob["status"] == 307
    assert not NOT_ON_PULL & set(blob["modules"]), sorted(NOT_ON_PULL & set(blob["modules"]))
    location = {k.lower(): v for k, v in blob["headers"].items()}["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Security-Token"] == [env["AWS_SESSION_TOKEN"]]  # signed with the role's session
    assert http.get(location, timeout=10).content == b"layer bytes " * 1000
    print(f"\ncold pull ({'xray' if xray else 'untraced'}): manifest GET imports "
          f"{[m for m in manifest['modules'] if m in SDKS + ('urllib3',)]}, blob GET "
          f"{[m for m in blob['modules'] if m in SDKS + ('urllib3',)]}")


def test_cold_base_request_with_a_proxy_password_parameter_reads_nothing(moto_s3: MotoS3) -> None:
    """The pull-through cache's upstream password named by a parameter (as
    infra/terraform/aws sets it) is read on the first upstream challenge, never at
    start-up: a cold GET /v2/ imports no boto3 and reads no secret. The blob HEAD's
    upstream (nothing listens there) asks for no credentials, so it reads none either."""
    parameter = f"/stratus/dev/proxy-password-{os.urandom(4).hex()}"
    moto_s3.client("ssm").put_parameter(Name=parameter, Value="upstream-password", Type="SecureString")
    env = {
        **runtime_environment(),
        **moto_s3.environment(moto_s3.create_bucket()),
        "REGISTRY_HTTP_SECRET": "cold-proxy",
        "REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:9",
        "REGISTRY_PROXY_USERNAME": "mirror",
        "REGISTRY_PROXY_PASSWORDPARAMETER": parameter,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint,
    }
    steps = run_cold_instance(env)
    base, head = steps["base"], steps["blob-head"]
    assert base["status"] == 200
    assert not NOT_ON_GET_BASE & set(base["modules"]), sorted(NOT_ON_GET_BASE & set(base["modules"]))
    assert base["secrets"] == []
    assert head["status"] == 503 and head["secrets"] == []  # the upstream was down, no challenge met
