"""The Lambda deployment package that `make package` builds (issue 13, item 3).

The zip is built as a user would build it (`make package`, which runs `chalice
package` with a region), unpacked, and run the way Lambda runs it: a clean
interpreter (`-I -S`: no site-packages, no PYTHONPATH, no user site) whose sys.path
holds the package, then what the Python runtime provides beside it (boto3, botocore,
s3transfer and their dependencies, here the venv's), then nothing else. The API
Gateway stand-in (tests/lambda_gateway.py, copied alone into a directory of its own)
serves HTTP in front of the package's `app`, over moto S3 with the secret in SSM,
htpasswd auth (bcrypt's wheel from the zip) and X-Ray on (subsegments sent to a
UDP port); a push and a pull go through it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterator

import bcrypt
import pytest

from tests.components import require
from tests.lambda_gateway import GatewayClient, runtime_environment
from tests.test_lambda_tracing import Daemon, walk
from tests.moto_server import ACCESS_KEY, SECRET_KEY, MotoS3
from tests.servers import free_port, process

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SDK = ("boto3", "botocore", "s3transfer")
# what the Lambda Python runtime has on its path besides the standard library
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")
USER, PASSWORD = "pusher", "package-secret"

_BOOT = """\
import sys
package, runtime, gateway = sys.argv[1:4]
sys.path[:0] = [package, runtime, gateway]
sys.argv = ["lambda_gateway", *sys.argv[4:]]
import lambda_gateway
lambda_gateway.main()
"""

_PROBE = """\
import json, sys
package, runtime = sys.argv[1:3]
sys.path[:0] = [package, runtime]
import app, boto3, botocore, chalicelib, yaml
print(json.dumps({"path": sys.path, "files": {m.__name__: m.__file__ for m in (app, boto3, botocore, chalicelib, yaml)},
                  "botocore": botocore.__version__, "boto3": boto3.__version__}))
"""


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make package` into a directory of this test's: deployment.zip and sam.json."""
    require("make", None if shutil.which("make") else "make is not installed")
    out = tmp_path_factory.mktemp("package")
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    # -o: the venv the tests run in is the one to package with; never reinstall it here
    run = subprocess.run(["make", "-s", "-o", ".venv/.installed-stamp", "package", f"PACKAGE_DIR={out}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"make package failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def unpacked(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    task_root = tmp_path_factory.mktemp("task")  # Lambda's /var/task
    with zipfile.ZipFile(built / "deployment.zip") as zf:
        zf.extractall(task_root)
    return task_root


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the Lambda Python runtime puts on sys.path after the package: its AWS SDK."""
    site = Path(metadata.distribution("boto3").locate_file(""))
    directory = tmp_path_factory.mktemp("runtime")
    for name in RUNTIME_MODULES:
        (directory / name).symlink_to(site / name)
    return directory


def test_the_zip_carries_the_sdk_set_pinned_together(built: Path) -> None:
    """boto3, botocore and s3transfer at requirements.txt's pins, the versions the tests
    run (the venv's): the runtime's boto3 never runs over our botocore."""
    with zipfile.ZipFile(built / "deployment.zip") as zf:
        names = zf.namelist()
    versions = {}
    for name in names:
        m = re.match(r"^([A-Za-z0-9_.]+)-([^-/]+)\.dist-info/METADATA$", name)
        if m:
            versions[m.group(1).lower().replace("_", "-")] = m.group(2)
    pins = requirement_pins()
    for sdk in SDK:
        assert versions.get(sdk) == pins[sdk] == metadata.version(sdk), (sdk, versions.get(sdk), pins.get(sdk))
    assert "app.py" in names and "chalicelib/api/app.py" in names
    assert not any(n.startswith(("tests/", "bench/", ".venv/")) for n in names)


def test_the_template_schedules_the_maintenance(built: Path) -> None:
    resources = json.loads((built / "sam.json").read_text())["Resources"]
    functions = {r["Properties"]["Handler"]: r["Properties"] for r in resources.values()
                 if r["Type"] == "AWS::Serverless::Function"}
    purge, gc = functions["app.purge_uploads"], functions["app.collect_garbage"]
    assert [e["Properties"]["Schedule"] for e in purge["Events"].values()] == ["cron(17 3 * * ? *)"]
    assert [e["Properties"]["Schedule"] for e in gc["Events"].values()] == ["rate(15 minutes)"]
    assert purge["Timeout"] == gc["Timeout"] == 900
    assert gc["ReservedConcurrentExecutions"] == 1  # one collector at a time


def test_the_package_carries_bytecode_its_runtime_loads(built: Path, tmp_path: Path) -> None:
    """Every module of ours has a .pyc for the packaged Python, and Lambda's interpreter
    uses it without looking at the source: a copy whose chalicelib/config.py no longer
    parses still imports (a read-only /var/task would otherwise compile each module on
    every cold start)."""
    tag = sys.implementation.cache_tag
    with zipfile.ZipFile(built / "deployment.zip") as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path)
    ours = [n for n in names if n.endswith(".py") and (n == "app.py" or n.startswith("chalicelib/"))]
    assert len(ours) > 50
    for name in ours:
        folder, _, file = name.rpartition("/")
        pyc = f"{folder + '/' if folder else ''}__pycache__/{file[:-3]}.{tag}.pyc"
        assert pyc in names, name
    (tmp_path / "chalicelib" / "config.py").write_text("this is not python (\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c",
                          "import sys; sys.path.insert(0, sys.argv[1]); import chalicelib.config as c; print(c.__name__)",
                          str(tmp_path)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "chalicelib.config", out.stderr[-2000:]


def test_a_clean_interpreter_takes_app_and_the_sdk_from_the_package(unpacked: Path, runtime: Path) -> None:
    out = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE, str(unpacked), str(runtime)],
                         cwd=str(unpacked), env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    for module, path in doc["files"].items():
        assert path.startswith(str(unpacked) + os.sep), (module, path)  # the zip's, ahead of the runtime's
    assert not any("site-packages" in p or p == str(REPO) for p in doc["path"]), doc["path"]
    assert doc["botocore"] == requirement_pins()["botocore"]


@pytest.fixture(scope="module")
def xray_daemon() -> Iterator[Daemon]:
    daemon = Daemon()
    yield daemon
    daemon.close()


@pytest.fixture(scope="module")
def gateway(unpacked: Path, runtime: Path, moto_s3: MotoS3, xray_daemon: Daemon,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayClient]:
    work = tmp_path_factory.mktemp("gateway")
    gateway_dir = work / "harness"
    gateway_dir.mkdir()
    shutil.copy(REPO / "tests" / "lambda_gateway.py", gateway_dir / "lambda_gateway.py")
    bucket = moto_s3.create_bucket()
    parameter = f"/stratus/package/http-secret-{os.urandom(4).hex()}"
    moto_s3.client("ssm").put_parameter(Name=parameter, Value=os.urandom(24).hex(), Type="SecureString")
    entry = f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()}"
    env = {
        **runtime_environment(),
        "LAMBDA_TASK_ROOT": str(unpacked),
        **moto_s3.environment(bucket),
        "STRATUS_HTTP_SECRET_PARAMETER": parameter,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint,
        "REGISTRY_AUTH_HTPASSWD_REALM": "stratus", "REGISTRY_AUTH_HTPASSWD_ENV": "STRATUS_HTPASSWD",
        "STRATUS_HTPASSWD": entry,
        "REGISTRY_TRACING_XRAY": "true", "AWS_XRAY_DAEMON_ADDRESS": xray_daemon.address,
    }
    port = free_port()
    argv = [sys.executable, "-I", "-S", "-c", _BOOT, str(unpacked), str(runtime), str(gateway_dir),
            "--port", str(port), "--mode", "rest", "--stage", "api", "--record", str(work / "record.jsonl")]
    log = work / "gateway.log"
    with process(argv, port, env, log_path=log, cwd=unpacked, timeout=90, inherit_env=False):
        yield GatewayClient(f"http://127.0.0.1:{port}")


def _auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def test_the_packaged_app_serves_a_push_and_a_pull(gateway: GatewayClient, xray_daemon: Daemon) -> None:
    class Authorized(GatewayClient):
        def __call__(self, method, path, query="", headers=None, body=b"", **kw):
            return super().__call__(method, path, query, {**_auth(), **(headers or {})}, body, **kw)

    client = Authorized(gateway.base_url)
    assert gateway("GET", "/v2/").status == 401  # auth is on: the package's bcrypt checks passwords
    assert client("GET", "/v2/").status == 200
    layer, config = os.urandom(3 << 20), b'{"architecture":"amd64","os":"linux"}'
    layer_digest = client.push_blob("package/app", layer, chunk=[1 << 20, 2 << 20])
    config_digest = client.push_blob("package/app", config, chunk=len(config))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer)}],
    }).encode()
    put = client("PUT", "/v2/package/app/manifests/v1", headers={"Content-Type": MANIFEST}, body=manifest)
    assert put.status == 201, put.body

    got = client("GET", "/v2/package/app/manifests/v1", headers={"Accept": MANIFEST})
    assert got.status == 200 and got.body == manifest
    blob = client("GET", f"/v2/package/app/blobs/{layer_digest}")
    assert blob.status == 307  # to a presigned S3 URL, signed by the package's sigv4.py
    with urllib.request.urlopen(blob.header("Location"), timeout=60) as response:
        assert hashlib.sha256(response.read()).hexdigest() == layer_digest.split(":", 1)[1]
    # traced: every storage call a subsegment under its invocation's trace (xray.py's documents)
    docs = xray_daemon.documents()
    assert docs and all(d["type"] == "subsegment" and d["trace_id"].startswith("1-") and d["parent_id"]
                        for d in docs)
    assert {"s3.writer.commit", "s3.redirect_url"} <= {d["name"] for d in walk(docs)}
