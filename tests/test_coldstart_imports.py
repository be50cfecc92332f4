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
* starting an upload signs its state, so only then is that parameter read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Iterator

import pytest

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

    # a request that asks the cache pays for redis-py and the AUTH token, one that reads
    # S3 for boto3; neither for the http secret
    assert head["status"] == 404
    assert {"boto3", "redis"} <= set(head["modules"])
    assert ("aws_xray_sdk" in head["modules"]) == xray
    assert head["secrets"] == [env["STRATUS_REDIS_PASSWORD_PARAMETER"]]
    # ...and the token from SSM let it in: its lookups reached the keys (a refused AUTH
    # would have left Redis unread and storage answering alone)
    assert int(redis_with_auth.client().info("stats")["keyspace_misses"]) > 0

    # the first request that signs upload state reads the parameter, once
    assert upload["status"] == 202
    assert upload["secrets"] == sorted([env["STRATUS_HTTP_SECRET_PARAMETER"], env["STRATUS_REDIS_PASSWORD_PARAMETER"]])
