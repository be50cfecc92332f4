"""The Azure Functions app (azure_func/function_app.py) over Azurite.

Requests are azure.functions.HttpRequest objects, as the Python worker builds them,
handed to the app's HTTP function. Every request of a push goes through a freshly
loaded function app, as if each landed on another worker: nothing but storage and
the signed upload state carries an upload from one chunk to the next. Blob GETs
answer 307 to a SAS URL, which plain `requests` follows to Azurite.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from tests.azurite import Azurite
from tests.oci_conformance import requires_conformance, run_oci_conformance
from tests.oci_client import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, canonical, descriptor, random_bytes, sha256

azure_functions = pytest.importorskip("azure.functions")

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_APP = ROOT / "azure_func" / "function_app.py"
HOST = "https://stratus-test.azurewebsites.net"
MiB = 1 << 20
_loads = itertools.count()


def load_function_app() -> Any:
    """A new instance of the function app module, as a new worker would import it."""
    spec = importlib.util.spec_from_file_location(f"stratus_function_app_{next(_loads)}", FUNCTION_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def http_function(module: Any) -> Any:
    (function,) = [f for f in module.app.get_functions() if f.get_function_name() == "registry"]
    return function.get_user_function()


class Functions:
    """Sends requests to the function app the way the Functions host does."""

    def __init__(self, fresh: bool = True):
        self.fresh = fresh
        self._function = None

    def function(self) -> Any:
        if self.fresh or self._function is None:
            self._function = http_function(load_function_app())
        return self._function

    def __call__(self, method: str, target: str, body: bytes = b"", headers: Optional[dict] = None,
                 **params: str) -> Any:
        url = target if target.startswith("http") else HOST + target
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        path = urlsplit(url).path
        request = azure_functions.HttpRequest(
            method, url, headers=headers or {}, body=body,
            params={k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()},
            route_params={"path": path[len("/v2/"):]},
        )
        response = self.function()(request)
        assert isinstance(response, azure_functions.HttpResponse)
        return response


def error_code(response: Any) -> str:
    return json.loads(response.get_body())["errors"][0]["code"]


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.new_container()


@pytest.fixture
def environment(azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = azurite.environment(container, REGISTRY_HTTP_SECRET="functions-test-secret")
    for name in [n for n in os.environ if n.startswith("REGISTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def functions(environment: dict[str, str]) -> Functions:
    return Functions(fresh=True)


def blobs_under(azurite: Azurite, container: str, prefix: str) -> list[str]:
    """Every blob below prefix, including those that only have staged blocks."""
    client = azurite.service_client().get_container_client(container)
    return sorted(b.name for b in client.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"]))


def repo_prefix(name: str) -> str:
    return f"docker/registry/v2/repositories/{name}/"


def relative(location: str) -> str:
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == HOST, location
    return urlunsplit(("", "", parts.path, parts.query, ""))


def push_monolithic(functions: Functions, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = functions("POST", f"/v2/{name}/blobs/uploads/", data,
                         {"Content-Type": "application/octet-stream"}, digest=digest)
    assert response.status_code == 201, response.get_body()
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def pull_blob_by_redirect(functions: Functions, name: str, digest: str) -> bytes:
    response = functions("GET", f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 307, response.get_body()
    location = response.headers["Location"]
    assert location.startswith("http://127.0.0.1:")  # Azurite, not the function
    fetched = requests.get(location, timeout=30)  # a plain client: no Azure credentials
    assert fetched.status_code == 200
    assert sha256(fetched.content) == digest
    return fetched.content


def push_manifest(functions: Functions, name: str, config: bytes, layers: list[bytes], tag: str) -> bytes:
    body = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    })
    response = functions("PUT", f"/v2/{name}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.get_body()
    assert response.headers["Docker-Content-Digest"] == sha256(body)
    return body


# -- the app and its host configuration ----------------------------------------------------------


def test_app_declares_one_anonymous_route_for_every_method() -> None:
    module = load_function_app()
    functions = {f.get_function_name(): json.loads(f.get_function_json()) for f in module.app.get_functions()}
    (trigger,) = [b for b in functions["registry"]["bindings"] if b["type"] == "httpTrigger"]
    assert trigger["route"] == "v2/{*path}"
    assert trigger["authLevel"] == "ANONYMOUS"
    assert set(trigger["methods"]) == {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
    (timer,) = [b for b in functions["purge_uploads"]["bindings"] if b["type"] == "timerTrigger"]
    assert timer["schedule"]


def test_host_json_serves_v2_at_the_root() -> None:
    host = json.loads((ROOT / "azure_func" / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""
    requirements = (ROOT / "azure_func" / "requirements.txt").read_text()
    for package in ("azure-functions", "azure-storage-blob", "azure-identity", "PyYAML"):
        assert package in requirements
    settings = json.loads((ROOT / "azure_func" / "local.settings.json.example").read_text())["Values"]
    assert settings["FUNCTIONS_WORKER_RUNTIME"] == "python" and settings["REGISTRY_STORAGE"] == "azure"


def test_base_endpoint(functions: Functions) -> None:
    response = functions("GET", "/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert json.loads(response.get_body()) == {}


def test_unknown_path_is_an_oci_error(functions: Functions) -> None:
    response = functions("GET", "/v2/no/such/endpoint")
    assert response.status_code == 404
    assert error_code(response) in ("UNSUPPORTED", "NAME_UNKNOWN")


# -- push and pull ---------------------------------------------------------------------------------


def test_monolithic_push_and_pull_through_redirects(functions: Functions, azurite, container) -> None:
    name = "functions/monolithic"
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = random_bytes(3 * MiB + 5)
    push_monolithic(functions, name, config)
    layer_digest = push_monolithic(functions, name, layer)
    body = push_manifest(functions, name, config, [layer], "v1")

    response = functions("GET", f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200 and response.get_body() == body
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert pull_blob_by_redirect(functions, name, layer_digest) == layer

    head = functions("HEAD", f"/v2/{name}/blobs/{layer_digest}")
    assert head.status_code == 200 and head.get_body() == b""
    assert head.headers["Content-Length"] == str(len(layer))
    assert head.headers["Docker-Content-Digest"] == layer_digest
    tags = functions("GET", f"/v2/{name}/tags/list")
    assert json.loads(tags.get_body()) == {"name": name, "tags": ["v1"]}
    stored = blobs_under(azurite, container, f"docker/registry/v2/blobs/sha256/{layer_digest[7:9]}/")
    assert f"docker/registry/v2/blobs/sha256/{layer_digest[7:9]}/{layer_digest[7:]}/data" in stored


def test_chunked_push_resumes_on_a_fresh_app_for_every_chunk(functions, azurite, container) -> None:
    name = "functions/chunked"
    layer = random_bytes(9 * MiB + 123)
    digest = sha256(layer)
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    assert started.headers["OCI-Chunk-Max-Length"] == "104857600"  # the Functions host's body limit
    location = relative(started.headers["Location"])
    upload_id = started.headers["Docker-Upload-UUID"]
    data_blob = azurite.service_client().get_blob_client(
        container, f"{repo_prefix(name)}_uploads/{upload_id}/data")

    chunks = [layer[:4 * MiB], layer[4 * MiB:4 * MiB + 1], layer[4 * MiB + 1:9 * MiB]]
    offset = 0
    for chunk in chunks:
        response = functions("PATCH", location, chunk, {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        })
        assert response.status_code == 202, response.get_body()
        offset += len(chunk)
        assert response.headers["Range"] == f"0-{offset - 1}"
        location = relative(response.headers["Location"])
        # the chunk is staged, not committed: the blob itself is still empty
        committed, staged = data_blob.get_block_list("all")
        assert committed == [] and sum(block.size for block in staged) == offset
        assert data_blob.get_blob_properties().size == 0

    status = functions("GET", location)
    assert status.status_code == 204 and status.headers["Range"] == f"0-{offset - 1}"
    out_of_order = functions("PATCH", location, b"x", {"Content-Range": "5-5"})
    assert out_of_order.status_code == 416

    final = functions("PUT", location, layer[offset:], {"Content-Type": "application/octet-stream"},
                      digest=digest)
    assert final.status_code == 201, final.get_body()
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/") == []

    config = canonical({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    push_monolithic(functions, name, config)
    push_manifest(functions, name, config, [layer], "chunked")
    assert pull_blob_by_redirect(functions, name, digest) == layer


def test_binary_bodies_pass_unchanged(functions: Functions) -> None:
    name = "functions/binary"
    data = bytes(range(256)) * 3 + b"\r\n\x00\xff"
    for headers in ({}, {"Content-Type": "text/plain; charset=utf-8"}, {"Content-Type": "application/json"}):
        started = functions("POST", f"/v2/{name}/blobs/uploads/")
        response = functions("PUT", relative(started.headers["Location"]), data, headers, digest=sha256(data))
        assert response.status_code == 201, response.get_body()
    assert pull_blob_by_redirect(functions, name, sha256(data)) == data


def test_wrong_digest_leaves_no_upload_behind(functions: Functions, azurite, container) -> None:
    name = "functions/wrong-digest"
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    patched = functions("PATCH", relative(started.headers["Location"]), b"some bytes",
                        {"Content-Type": "application/octet-stream"})
    response = functions("PUT", relative(patched.headers["Location"]), digest=sha256(b"other bytes"))
    assert response.status_code == 400 and error_code(response) == "DIGEST_INVALID"
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/") == []


def test_cancel_leaves_no_committed_or_staged_blocks(functions: Functions, azurite, container) -> None:
    name = "functions/cancel"
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    location = relative(started.headers["Location"])
    response = functions("PATCH", location, random_bytes(MiB), {"Content-Type": "application/octet-stream"})
    location = relative(response.headers["Location"])
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/")  # staged data and startedat
    assert functions("DELETE", location).status_code == 204
    assert blobs_under(azurite, container, repo_prefix(name)) == []
    assert functions("GET", location).status_code == 404


def test_delete_manifest_and_blob_leave_no_links(functions: Functions, azurite, container) -> None:
    name = "functions/delete"
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = random_bytes(1000)
    push_monolithic(functions, name, config)
    layer_digest = push_monolithic(functions, name, layer)
    body = push_manifest(functions, name, config, [layer], "gone")
    manifest_digest = sha256(body)

    assert functions("DELETE", f"/v2/{name}/manifests/{manifest_digest}").status_code == 202
    assert functions("GET", f"/v2/{name}/manifests/gone").status_code == 404
    for digest in (layer_digest, sha256(config)):
        assert functions("DELETE", f"/v2/{name}/blobs/{digest}").status_code == 202
        assert functions("GET", f"/v2/{name}/blobs/{digest}").status_code == 404
    assert blobs_under(azurite, container, repo_prefix(name)) == []


# -- redirects -------------------------------------------------------------------------------------


def test_tampered_sas_is_refused_by_storage(functions: Functions) -> None:
    name = "functions/sas"
    digest = push_monolithic(functions, name, b"guarded bytes")
    location = functions("GET", f"/v2/{name}/blobs/{digest}").headers["Location"]
    parts = urlsplit(location)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["sp"] == "r"
    forged_sig = ("B" if query["sig"][0] == "A" else "A") + query["sig"][1:]  # always a different signature
    for change in ({"sp": "rw"}, {"se": "2099-01-01T00:00:00Z"}, {"sig": forged_sig}):
        forged = urlunsplit(parts._replace(query=urlencode({**query, **change})))
        assert requests.get(forged, timeout=10).status_code == 403, change
    assert requests.get(location, timeout=10).content == b"guarded bytes"


def test_redirect_expiry_follows_configuration(functions: Functions, monkeypatch) -> None:
    monkeypatch.setenv("REGISTRY_STORAGE_REDIRECT_EXPIRY", "90s")
    name = "functions/expiry"
    digest = push_monolithic(functions, name, b"short-lived")
    location = functions("GET", f"/v2/{name}/blobs/{digest}").headers["Location"]
    from datetime import datetime, timedelta, timezone

    expiry = datetime.strptime(parse_qs(urlsplit(location).query)["se"][0], "%Y-%m-%dT%H:%M:%SZ")
    remaining = expiry.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(seconds=60) < remaining <= timedelta(seconds=91)


def test_redirect_disabled_serves_bytes_with_ranges(functions: Functions, monkeypatch) -> None:
    monkeypatch.setenv("REGISTRY_STORAGE_REDIRECT_DISABLE", "true")
    name = "functions/direct"
    data = random_bytes(5000)
    digest = push_monolithic(functions, name, data)
    response = functions("GET", f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 200 and response.get_body() == data
    ranged = functions("GET", f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.get_body() == data[10:20]


# -- platform limits and request details ----------------------------------------------------------


def test_chunk_over_the_host_limit_is_size_invalid(functions: Functions, monkeypatch) -> None:
    monkeypatch.setenv("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT", "4096")
    name = "functions/limits"
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    assert started.headers["OCI-Chunk-Max-Length"] == "4096"
    location = relative(started.headers["Location"])
    response = functions("PATCH", location, b"x" * 4097, {"Content-Type": "application/octet-stream"})
    assert response.status_code == 413 and error_code(response) == "SIZE_INVALID"
    assert functions("PATCH", location, b"x" * 4096).status_code == 202


def test_configured_chunk_limit_below_the_platform_is_kept(functions: Functions, monkeypatch) -> None:
    monkeypatch.setenv("REGISTRY_HTTP_CHUNKMAXLENGTH", "1048576")
    started = functions("POST", "/v2/functions/configured/blobs/uploads/")
    assert started.headers["OCI-Chunk-Max-Length"] == "1048576"


def test_locations_use_the_forwarded_scheme(functions: Functions) -> None:
    url = "http://stratus-test.azurewebsites.net/v2/functions/scheme/blobs/uploads/"
    started = functions("POST", url, headers={"X-Forwarded-Proto": "https"})
    assert started.headers["Location"].startswith("https://stratus-test.azurewebsites.net/v2/functions/scheme/")


def test_a_warm_app_reuses_its_registry(environment) -> None:
    module = load_function_app()
    handler = http_function(module)
    request = azure_functions.HttpRequest("GET", HOST + "/v2/", body=b"")
    assert handler(request).status_code == 200
    api = module.registry.api
    assert handler(request).status_code == 200
    assert module.registry.api is api


def test_purge_timer_removes_abandoned_uploads(functions: Functions, azurite, container, monkeypatch) -> None:
    name = "functions/purge"
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    functions("PATCH", relative(started.headers["Location"]), b"abandoned")
    monkeypatch.setenv("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "1s")
    import time

    time.sleep(1.1)
    module = load_function_app()
    (timer,) = [f for f in module.app.get_functions() if f.get_function_name() == "purge_uploads"]
    timer.get_user_function()(None)
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/") == []


def test_package_carries_the_library_the_app_imports(tmp_path) -> None:
    out = tmp_path / "app"
    subprocess.run(["sh", str(ROOT / "azure_func" / "package.sh"), str(out)], check=True, capture_output=True)
    expected = {"function_app.py", "host.json", "requirements.txt", "chalicelib"}
    assert {p.name for p in out.iterdir()} >= expected
    code = "import function_app, chalicelib; print(chalicelib.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(out)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "chalicelib" / "__init__.py")


def test_lost_hash_state_is_recomputed_from_staged_blocks(functions: Functions, azurite, container) -> None:
    name = "functions/lost-state"
    layer = random_bytes(3 * MiB + 7)
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    upload_id = started.headers["Docker-Upload-UUID"]
    first = functions("PATCH", relative(started.headers["Location"]), layer[:MiB],
                      {"Content-Type": "application/octet-stream"})
    assert first.status_code == 202
    client = azurite.service_client().get_container_client(container)
    prefix = f"{repo_prefix(name)}_uploads/{upload_id}/hashstates/"
    states = [b.name for b in client.list_blobs(name_starts_with=prefix)]
    assert states
    for state in states:
        client.delete_blob(state)
    # the next chunk finds no state at 1 MiB and hashes what is staged so far
    second = functions("PATCH", relative(first.headers["Location"]), layer[MiB:],
                       {"Content-Type": "application/octet-stream"})
    assert second.status_code == 202, second.get_body()
    final = functions("PUT", relative(second.headers["Location"]), digest=sha256(layer))
    assert final.status_code == 201, final.get_body()
    assert pull_blob_by_redirect(functions, name, sha256(layer)) == layer



# -- a real client through the function app --------------------------------------------------------


def functions_host_app(function: Any, body_limit: int) -> Any:
    """A WSGI stand-in for the Functions host: buffers the request body (a chunked one
    too), refuses one over the body limit as the host does, calls the function with
    an azure.functions.HttpRequest and sends its HttpResponse."""

    def application(environ: dict, start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        if len(body) > body_limit:
            start_response("413 Payload Too Large", [("Content-Length", "0")])
            return []
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        path = environ.get("PATH_INFO", "/").encode("latin-1").decode()
        query = environ.get("QUERY_STRING", "")
        url = f"http://{environ['HTTP_HOST']}{path}" + (f"?{query}" if query else "")
        request = azure_functions.HttpRequest(
            environ["REQUEST_METHOD"], url, headers=headers, body=body,
            params={k: v[-1] for k, v in parse_qs(query).items()}, route_params={"path": path[len("/v2/"):]},
        )
        response = function(request)
        out = [(k, v) for k, v in response.headers.items()]
        if not any(k.lower() == "content-type" for k, _ in out):
            out.append(("Content-Type", response.mimetype))
        start_response(f"{response.status_code} -", out)
        return [response.get_body()]

    return application


def run_functions_host(port: int) -> None:
    """Serve the function app on loopback until killed (run in a subprocess)."""
    from gunicorn.app.base import BaseApplication

    from chalicelib.azurefunctions import body_limit

    app = functions_host_app(http_function(load_function_app()), body_limit())

    class Host(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"127.0.0.1:{port}", "workers": 1, "threads": 8,
                               "accesslog": None, "timeout": 120}.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Host().run()


@pytest.fixture
def functions_host(environment, tmp_path) -> Iterator[str]:
    """URL of the function app behind a stand-in for the Functions host."""
    from tests.servers import free_port, process

    port = free_port()
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); " \
           f"from tests.test_azure_functions import run_functions_host; run_functions_host({port})"
    with process([sys.executable, "-c", code], port, {"PYTHONPATH": str(ROOT)},
                 log_path=tmp_path / "functions-host.log", cwd=ROOT):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo")
def test_skopeo_push_and_pull_through_the_function_app(functions_host, tmp_path, tmp_path_factory) -> None:
    from tests.clients_images import Layout, assert_same_image, images_dir, pull, push, session_image

    image = session_image(images_dir(tmp_path_factory), "small")
    push(image.path, "v1", functions_host, "functions/skopeo", "v1")
    copy = Layout(tmp_path / "copy")
    pull(functions_host, "functions/skopeo", "v1", copy.path, "v1")  # layers come from Azurite by 307
    assert_same_image(image, "v1", copy, "v1")


@requires_conformance
def test_oci_conformance_suite_through_the_function_app(functions_host, tmp_path) -> None:
    assert run_oci_conformance(functions_host, tmp_path).returncode == 0
