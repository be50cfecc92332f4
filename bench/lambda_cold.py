"""Issue 13: the first request of a new Lambda instance, as the deployment package runs it.

`make package` builds the zip; it is unpacked and every measured request runs in a
fresh interpreter (`-I -S`) whose sys.path holds only the package and, behind it, what
the Lambda Python runtime provides (boto3 and its dependencies, here the venv's). The
interpreter imports app.py and hands the handler one API Gateway (HTTP API) event, as
a cold instance does, over moto S3 with the secret in SSM and the descriptor cache in
redis-server, warmed beforehand by another instance:

* `GET /v2/`: no storage, no secret;
* a manifest GET by digest (the descriptor from warm Redis, the body from S3);
* a blob GET (the descriptor from warm Redis, a presigned S3 URL: 307).

Each number is import + handler, network calls to the loopback moto and Redis
included; the modules imported are listed in the log.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

from .servers import ROOT

RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")
SDKS = ("boto3", "botocore", "s3transfer", "aws_xray_sdk", "redis", "bcrypt", "jwt", "cryptography", "yaml")

_COMMON = """\
import base64, json, sys, time
package, runtime = sys.argv[1:3]
sys.path[:0] = [package, runtime]

class Context:
    function_name = "stratus-bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    def get_remaining_time_in_millis(self):
        return 30000

def event(method, path, query="", headers=None, body=b""):
    return {"version": "2.0", "rawPath": path, "rawQueryString": query,
            "headers": {"host": "bench.execute-api.us-east-1.amazonaws.com", **(headers or {})},
            "requestContext": {"http": {"method": method, "path": path, "sourceIp": "198.51.100.7"},
                               "domainName": "bench.execute-api.us-east-1.amazonaws.com", "stage": "$default"},
            "body": base64.b64encode(body).decode(), "isBase64Encoded": bool(body)}
"""

_SEED = _COMMON + """
import hashlib
import app
def call(method, path, query="", headers=None, body=b""):
    result = app.app(event(method, path, query, headers, body), Context())
    assert result["statusCode"] < 400, result
    return result
def push(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    call("POST", "/v2/bench/cold/blobs/uploads/", "digest=" + digest, {"content-type": "application/octet-stream"}, data)
    return digest
config, layer = b'{"architecture":"amd64","os":"linux"}', bytes(range(256)) * 4096
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": push(layer), "size": len(layer)}]}).encode()
media = "application/vnd.oci.image.manifest.v1+json"
call("PUT", "/v2/bench/cold/manifests/v1", "", {"content-type": media}, manifest)
digests = {"manifest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "layer": "sha256:" + hashlib.sha256(layer).hexdigest()}
# warm the descriptor cache as earlier instances' pulls would
call("GET", "/v2/bench/cold/manifests/" + digests["manifest"], "", {"accept": media})
call("HEAD", "/v2/bench/cold/blobs/" + digests["layer"])
print(json.dumps(digests))
"""

_PROBE = _COMMON + """
spec = json.loads(sys.argv[3])
start = time.perf_counter()
import app
imported = time.perf_counter()
result = app.app(event(spec["method"], spec["path"], "", spec.get("headers")), Context())
done = time.perf_counter()
print(json.dumps({"status": result["statusCode"], "import_ms": (imported - start) * 1000,
                  "total_ms": (done - start) * 1000, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


@dataclass
class ColdRequest:
    label: str
    status: int = 0
    total_ms: list[float] = field(default_factory=list)
    import_ms: list[float] = field(default_factory=list)
    sdks: list[str] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.total_ms)


def package(workdir: Path) -> Path:
    """`make package` into workdir, unpacked: the task root (Lambda's /var/task)."""
    out = workdir / "lambda-package"
    run = subprocess.run(["make", "-s", "-o", ".venv/.installed-stamp", "package", f"PACKAGE_DIR={out}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"make package failed:\n{run.stderr[-3000:]}")
    task = workdir / "lambda-task"
    shutil.rmtree(task, ignore_errors=True)
    with zipfile.ZipFile(out / "deployment.zip") as zf:
        zf.extractall(task)
    return task


def runtime_dir(workdir: Path) -> Path:
    site = Path(metadata.distribution("boto3").locate_file(""))
    directory = workdir / "lambda-runtime"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for name in RUNTIME_MODULES:
        (directory / name).symlink_to(site / name)
    return directory


def _run(script: str, task: Path, runtime: Path, env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(task), str(runtime), *args],
                         cwd=str(task), env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"cold instance failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def measure(workdir: Path, reps: int, log=print) -> Optional[dict[str, ColdRequest]]:
    from tests.lambda_gateway import runtime_environment
    from tests.moto_server import ACCESS_KEY, SECRET_KEY, moto_s3_server
    from tests.redis_server import HAVE_REDIS, redis_server

    if not HAVE_REDIS or shutil.which("make") is None:
        log("lambda cold start: needs redis-server and make; skipped")
        return None
    task, runtime = package(workdir), runtime_dir(workdir)
    with moto_s3_server(workdir / "moto-cold.log") as s3, redis_server(workdir / "redis-cold") as redis:
        parameter = "/stratus/bench/http-secret"
        s3.client("ssm").put_parameter(Name=parameter, Value=base64.b16encode(os.urandom(24)).decode(),
                                       Type="SecureString", Overwrite=True)
        env = {
            **runtime_environment("stratus-bench"), "LAMBDA_TASK_ROOT": str(task),
            **s3.environment(s3.create_bucket()),
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis.addr,
            "STRATUS_HTTP_SECRET_PARAMETER": parameter, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL_SSM": s3.endpoint,
        }
        digests = json.loads(_run(_SEED, task, runtime, env))
        media = "application/vnd.oci.image.manifest.v1+json"
        specs = {
            "base": ("First GET /v2/", {"method": "GET", "path": "/v2/"}, 200),
            "manifest": ("First manifest GET by digest, warm Redis",
                         {"method": "GET", "path": f"/v2/bench/cold/manifests/{digests['manifest']}",
                          "headers": {"accept": media}}, 200),
            "blob": ("First blob GET (307), warm Redis",
                     {"method": "GET", "path": f"/v2/bench/cold/blobs/{digests['layer']}"}, 307),
        }
        found = {key: ColdRequest(label) for key, (label, _, _) in specs.items()}
        for _ in range(reps):
            for key, (_, spec, expected) in specs.items():
                doc = json.loads(_run(_PROBE, task, runtime, env, json.dumps(spec)))
                if doc["status"] != expected:
                    raise RuntimeError(f"{key}: {doc['status']}, expected {expected}")
                cold = found[key]
                cold.status = doc["status"]
                cold.total_ms.append(doc["total_ms"])
                cold.import_ms.append(doc["import_ms"])
                cold.sdks = [m for m in doc["modules"] if m in SDKS]
        for cold in found.values():
            log(f"lambda cold: {cold.label}: {cold.median_ms:.0f} ms (import app.py "
                f"{statistics.median(cold.import_ms):.0f} ms); imported: {', '.join(cold.sdks) or 'no SDK'}")
        return found
