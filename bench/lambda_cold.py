"""Issue 13: the first request of a new Lambda instance, as the deployment package runs it.

`make package` builds the zip; it is unpacked and every measured request runs in a
fresh interpreter (`-I -S`) whose sys.path holds only the package and, behind it, what
the Lambda Python runtime provides (boto3 and its dependencies, here the venv's). The
interpreter imports app.py and hands the handler one API Gateway (HTTP API) event, as
a cold instance does, over moto S3 with the secret in SSM and the descriptor cache in
redis-server, configured as the prod stage and Terraform configure ElastiCache (TLS,
an AUTH token read from SSM), warmed beforehand by another instance:

* `GET /v2/`: no storage, no secret;
* a manifest GET by digest (the descriptor from warm Redis, the body from S3);
* a blob GET (the descriptor from warm Redis, a presigned S3 URL: 307).

Each number is import + handler, network calls to the loopback moto and Redis
included; the modules imported are listed in the log.

As deployed: the environment is what the Lambda runtime sets
(tests.lambda_gateway.runtime_environment) plus active X-Ray tracing, which both
Chalice stages and the Terraform module turn on (the trace header says Sampled=1, as
for an instance's first request; documents go to the discard port). Interpreters run
with -B: /var/task is read-only on Lambda, so a module the zip carries no .pyc for is
compiled from source by every new instance, and no instance may leave bytecode
behind for the next one here either. Logged beside the rows (not in them): the same
requests untraced, and with the package's modules compiled to .pyc beforehand
(what `python -m compileall` in `make package` would give).

Alone, with a before/after against another commit measured in the same run:

    .venv/bin/python -m bench.lambda_cold --reps 8 --baseline HEAD~2
"""
from __future__ import annotations

import argparse
import base64
import compileall
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
SDKS = ("boto3", "botocore", "s3transfer", "aws_xray_sdk", "redis", "bcrypt", "jwt", "cryptography", "yaml",
        "urllib3")

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
    modules: list[str] = field(default_factory=list)  # top-level packages in sys.modules after it
    # ms spent importing, by top-level package (-X importtime: the imports not made by
    # another import, so nothing is counted twice); what is left is the handler's own
    # work and its network calls
    imports_ms: dict[str, list[float]] = field(default_factory=dict)
    rest_ms: list[float] = field(default_factory=list)  # per run: total minus its imports

    @property
    def median_ms(self) -> float:
        return statistics.median(self.total_ms)


XRAY_ENV = {  # what Lambda adds for a function with active tracing
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9",  # UDP to the discard port
    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    "_X_AMZN_TRACE_ID": "Root=1-65f1c2a0-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1",
}


def package(workdir: Path, root: Path = ROOT, name: str = "lambda") -> Path:
    """`make package` of the tree at root into workdir, unpacked: the task root (Lambda's
    /var/task), as the zip has it (no bytecode but what the wheels carry)."""
    out = workdir / f"{name}-package"
    run = subprocess.run(["make", "-s", "-o", f"{ROOT / '.venv'}/.installed-stamp", "package", f"PACKAGE_DIR={out}",
                          f"VENV={ROOT / '.venv'}"],
                         cwd=root, capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        raise RuntimeError(f"make package failed:\n{run.stderr[-3000:]}")
    task = workdir / f"{name}-task"
    shutil.rmtree(task, ignore_errors=True)
    with zipfile.ZipFile(out / "deployment.zip") as zf:
        zf.extractall(task)
    return task


def compiled_copy(task: Path) -> Path:
    """The task root with every module compiled to .pyc (unchecked hashes: the package
    never changes under a running function, so no source is read to validate them)."""
    copy = task.with_name(task.name + "-pyc")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(task, copy, symlinks=True)
    compileall.compile_dir(str(copy), quiet=1, workers=1,
                           invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return copy


def runtime_dir(workdir: Path) -> Path:
    site = Path(metadata.distribution("boto3").locate_file(""))
    directory = workdir / "lambda-runtime"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    for name in RUNTIME_MODULES:
        (directory / name).symlink_to(site / name)
    return directory


def _run(script: str, task: Path, runtime: Path, env: dict[str, str], *args: str,
         importtime: Optional[dict[str, float]] = None) -> str:
    """The script's last line; with `importtime`, it is filled with the ms each top-level
    package took to import (the probe's own imports before the clock starts left out)."""
    # -B: a read-only /var/task; nothing compiled here is reused by the next instance
    flags = ["-X", "importtime"] if importtime is not None else []
    out = subprocess.run([sys.executable, "-I", "-S", "-B", *flags, "-c", script, str(task), str(runtime), *args],
                         cwd=str(task), env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"cold instance failed:\n{out.stderr[-3000:]}")
    if importtime is not None:
        counting = False
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or line.count("|") != 2:
                continue
            _, cumulative, name = line.split("|")
            if name.strip() == "app":
                counting = True  # the probe's clock starts at `import app`, the first top-level import after it
            if counting and not name.startswith("  ") and cumulative.strip().isdigit():
                root = name.strip().split(".")[0]
                importtime[root] = importtime.get(root, 0.0) + int(cumulative) / 1000
    return out.stdout.strip().splitlines()[-1]


def import_summary(cold: ColdRequest) -> str:
    """`app 60, boto3 90, ...; rest 40` (medians, ms): where a cold request's time goes."""
    medians = {name: statistics.median(values) for name, values in cold.imports_ms.items()}
    major = sorted(((v, k) for k, v in medians.items() if v >= 2), reverse=True)
    rest = statistics.median(cold.rest_ms)
    return ", ".join(f"{k} {v:.0f}" for v, k in major) + f"; handler and network {rest:.0f}"


def measure(workdir: Path, reps: int, log=print, baseline: Optional[Path] = None) -> Optional[dict[str, ColdRequest]]:
    """The rows (as deployed); the variants are logged. `baseline`: another checkout,
    packaged and measured in the same run, interleaved, for a before/after."""
    from tests.lambda_gateway import runtime_environment
    from tests.moto_server import ACCESS_KEY, SECRET_KEY, moto_s3_server
    from tests.redis_server import HAVE_REDIS, redis_server

    if not HAVE_REDIS or shutil.which("make") is None:
        log("lambda cold start: needs redis-server and make; skipped")
        return None
    task, runtime = package(workdir), runtime_dir(workdir)
    variants = {"as deployed": (task, True), "untraced": (task, False), "pyc in package": (compiled_copy(task), True)}
    if baseline is not None:
        base_task = package(workdir, baseline, "baseline")
        variants["baseline, as deployed"] = (base_task, True)
        variants["baseline, untraced"] = (base_task, False)
    token = base64.b16encode(os.urandom(16)).decode()
    with moto_s3_server(workdir / "moto-cold.log") as s3, \
            redis_server(workdir / "redis-cold", password=token, tls=True) as redis:
        # as the prod stage and the Terraform module configure ElastiCache: TLS in
        # transit (its certificate trusted as the system's CAs would be) and an AUTH
        # token the function reads from SSM with its role
        parameter, token_parameter = "/stratus/bench/http-secret", "/stratus/bench/redis-auth-token"
        ssm = s3.client("ssm")
        ssm.put_parameter(Name=parameter, Value=base64.b16encode(os.urandom(24)).decode(),
                          Type="SecureString", Overwrite=True)
        ssm.put_parameter(Name=token_parameter, Value=token, Type="SecureString", Overwrite=True)
        assert redis.tls is not None
        common = {
            **s3.environment(s3.create_bucket()),
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": redis.addr,
            "REGISTRY_REDIS_TLS": "true", "STRATUS_REDIS_PASSWORD_PARAMETER": token_parameter,
            "SSL_CERT_FILE": str(redis.tls.ca),
            "STRATUS_HTTP_SECRET_PARAMETER": parameter, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL_SSM": s3.endpoint,
        }

        def environment(task: Path, xray: bool) -> dict[str, str]:
            env = {**runtime_environment("stratus-bench", task_root=task), **common,
                   "LAMBDA_RUNTIME_DIR": str(runtime)}
            return {**env, **XRAY_ENV} if xray else env

        digests = json.loads(_run(_SEED, task, runtime, environment(task, False)))
        media = "application/vnd.oci.image.manifest.v1+json"
        specs = {
            "base": ("First GET /v2/", {"method": "GET", "path": "/v2/"}, 200),
            "manifest": ("First manifest GET by digest, warm Redis",
                         {"method": "GET", "path": f"/v2/bench/cold/manifests/{digests['manifest']}",
                          "headers": {"accept": media}}, 200),
            "blob": ("First blob GET (307), warm Redis",
                     {"method": "GET", "path": f"/v2/bench/cold/blobs/{digests['layer']}"}, 307),
        }
        found = {v: {key: ColdRequest(label) for key, (label, _, _) in specs.items()} for v in variants}
        for _ in range(reps):  # interleaved, so load on the machine falls on every variant alike
            for key, (_, spec, expected) in specs.items():
                for variant, (root, xray) in variants.items():
                    imports: dict[str, float] = {}
                    doc = json.loads(_run(_PROBE, root, runtime, environment(root, xray), json.dumps(spec),
                                          importtime=imports))
                    if doc["status"] != expected:
                        raise RuntimeError(f"{variant}, {key}: {doc['status']}, expected {expected}")
                    cold = found[variant][key]
                    cold.status = doc["status"]
                    cold.total_ms.append(doc["total_ms"])
                    cold.import_ms.append(doc["import_ms"])
                    cold.sdks = [m for m in doc["modules"] if m in SDKS]
                    cold.modules = doc["modules"]
                    cold.rest_ms.append(doc["total_ms"] - sum(imports.values()))
                    runs = len(cold.total_ms)  # this one included: a package new now took 0 ms before
                    for name in set(cold.imports_ms) | set(imports):
                        cold.imports_ms.setdefault(name, [0.0] * (runs - 1)).append(imports.get(name, 0.0))
        for variant, requests in found.items():
            for key, cold in requests.items():
                log(f"lambda cold ({variant}): {cold.label}: median {cold.median_ms:.0f} ms, range "
                    f"{min(cold.total_ms):.0f}-{max(cold.total_ms):.0f} (import app.py "
                    f"{statistics.median(cold.import_ms):.0f} ms); imported: {', '.join(cold.sdks) or 'no SDK'}; "
                    f"ms importing: {import_summary(cold)}")
                if key != "base":  # what this request loaded that the first GET /v2/ did not
                    extra = sorted(set(cold.modules) - set(requests["base"].modules))
                    log(f"lambda cold ({variant}): {cold.label}: top-level modules beyond GET /v2/'s "
                        f"({len(extra)}): {' '.join(extra)}")
        return found["as deployed"]


def export(ref: str, workdir: Path) -> Path:
    """The tree of commit `ref` (git archive: the checkout itself is left alone)."""
    tree = workdir / "baseline-src"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lambda_cold", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="cold instances per request and variant")
    parser.add_argument("--baseline", metavar="COMMIT", help="package this commit too and measure it interleaved")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/stratus-lambda-cold"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    baseline = export(args.baseline, args.workdir) if args.baseline else None
    with open("/proc/loadavg") as load:
        print(f"load average before: {load.read().split()[:3]}", flush=True)
    measure(args.workdir, args.reps, log=lambda line: print(line, flush=True), baseline=baseline)
    with open("/proc/loadavg") as load:
        print(f"load average after: {load.read().split()[:3]}", flush=True)


if __name__ == "__main__":
    main()
