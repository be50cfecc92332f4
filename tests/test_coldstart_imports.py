"""What a cold Lambda instance imports and fetches, request by request (issue 13, item 2).

Each test starts a fresh interpreter, as a new function instance is, with a
deployment's environment: S3 storage (moto server) and the secret in an SSM
parameter (`STRATUS_HTTP_SECRET_PARAMETER`, as both Chalice stages set it). The
interpreter invokes app.py's handler with API Gateway events and reports, after
each request, which SDKs are in `sys.modules` and whether the secret was fetched:

* `GET /v2/` touches neither S3 nor SSM, so it imports neither boto3 nor botocore;
* a blob HEAD touches S3 (boto3 now) but not the secret;
* starting an upload signs its state, so only then is the parameter read.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.lambda_gateway import runtime_environment
from tests.moto_server import ACCESS_KEY, SECRET_KEY, MotoS3
from tests.servers import ROOT

SDKS = ("boto3", "botocore", "s3transfer", "aws_xray_sdk", "redis", "bcrypt", "jwt", "cryptography")

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
def deployment(moto_s3: MotoS3) -> dict[str, str]:
    bucket = moto_s3.create_bucket()
    parameter = f"/stratus/dev/http-secret-{os.urandom(4).hex()}"
    moto_s3.client("ssm").put_parameter(Name=parameter, Value=os.urandom(16).hex(), Type="SecureString")
    return {
        **runtime_environment(),
        # Lambda sets it to the package's directory; aws-xray-sdk takes it as "on Lambda"
        # (without it the SDK's global recorder loads a sampler that imports botocore)
        "LAMBDA_TASK_ROOT": str(ROOT),
        **moto_s3.environment(bucket),
        "STRATUS_HTTP_SECRET_PARAMETER": parameter,
        # the function's role, here moto's: SSM at the moto server
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint,
    }


@pytest.mark.parametrize("xray", [False, True], ids=["untraced", "xray"])
def test_cold_base_request_imports_no_aws_sdk_and_reads_no_secret(deployment, xray) -> None:
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
    assert not {"boto3", "botocore", "s3transfer"} & set(base["modules"]), base["modules"]
    assert base["secrets"] == []
    assert ("aws_xray_sdk" in base["modules"]) == xray

    # a request that reads S3 pays for boto3, and still not for the secret
    assert head["status"] == 404
    assert "boto3" in head["modules"]
    assert head["secrets"] == []

    # the first request that signs upload state reads the parameter, once
    assert upload["status"] == 202
    assert upload["secrets"] == [env["STRATUS_HTTP_SECRET_PARAMETER"]]
