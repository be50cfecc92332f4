"""The Azure Functions app (azure_func/function_app.py) behind a stand-in for the Functions host, over Azurite.

Every HTTP request goes through tests/functions_host.py: a real HTTP front that
enforces the host's body limit (Kestrel's 413, before the function runs), and a
worker process that runs the function app as the Python worker does, in HTTP
streaming mode (PYTHON_ENABLE_INIT_INDEXING=1 with the FastAPI extension) unless a
test asks for the classic HttpRequest mode. Each host gets its own app settings, as
a deployment would. Blob GETs answer 307 to a SAS URL, which plain `requests`
follows to Azurite.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from tests.azurite import Azurite
from tests.clients_images import needs_tools
from tests.functions_host import DEFAULT_BODY_LIMIT, FunctionsHost, Record, functions_host
from tests.oci_client import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, canonical, descriptor, random_bytes, sha256
from tests.oci_conformance import requires_conformance, run_oci_conformance

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_APP = ROOT / "azure_func" / "function_app.py"
SECRET = "functions-test-secret"
MiB = 1 << 20
_loads = itertools.count()


def load_function_app() -> Any:
    """A new instance of the function app module in this process, as a new worker would import it."""
    spec = importlib.util.spec_from_file_location(f"stratus_function_app_{next(_loads)}", FUNCTION_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Client:
    """HTTP to one Functions host, with targets relative to it."""

    def __init__(self, host: FunctionsHost):
        self.host = host
        self.session = requests.Session()

    def __call__(self, method: str, target: str, body: Any = b"", headers: Optional[dict] = None,
                 **params: str) -> requests.Response:
        url = target if target.startswith("http") else self.host.url + target
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        return self.session.request(method, url, data=body, headers=headers or {}, allow_redirects=False,
                                    timeout=300)

    def records_since(self, start: int) -> list[Record]:
        return self.host.records()[start:]


def settings(azurite: Azurite, container: str, **extra: str) -> dict[str, str]:
    """A deployment's app settings: storage on Azurite, HTTP streaming on."""
    return azurite.environment(container, REGISTRY_HTTP_SECRET=SECRET, PYTHON_ENABLE_INIT_INDEXING="1", **extra)


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.new_container()


@pytest.fixture(scope="module")
def host(azurite: Azurite, container: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionsHost]:
    with functions_host(settings(azurite, container), tmp_path_factory.mktemp("functions")) as running:
        yield running


@pytest.fixture
def functions(host: FunctionsHost) -> Client:
    return Client(host)


@pytest.fixture
def start_host(tmp_path: Path) -> Iterator[Any]:
    """Starts more hosts (other app settings, another worker); all stop with the test."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda env, **options: stack.enter_context(functions_host(env, tmp_path, **options))


def error_code(response: requests.Response) -> str:
    return json.loads(response.content)["errors"][0]["code"]


def blobs_under(azurite: Azurite, container: str, prefix: str) -> list[str]:
    """Every blob below prefix, including those that only have staged blocks."""
    client = azurite.service_client().get_container_client(container)
    return sorted(b.name for b in client.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"]))


def repo_prefix(name: str) -> str:
    return f"docker/registry/v2/repositories/{name}/"


def relative(location: str) -> str:
    parts = urlsplit(location)
    return urlunsplit(("", "", parts.path, parts.query, ""))


def push_monolithic(functions: Client, name: str, data: bytes) -> str:
    digest = sha256(data)
    response = functions("POST", f"/v2/{name}/blobs/uploads/", data,
                         {"Content-Type": "application/octet-stream"}, digest=digest)
    assert response.status_code == 201, response.content
    assert response.headers["Docker-Content-Digest"] == digest
    return digest


def pull_blob_by_redirect(functions: Client, name: str, digest: str) -> bytes:
    response = functions("GET", f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 307, response.content
    location = response.headers["Location"]
    assert not location.startswith(functions.host.url)  # Azurite, not the function
    fetched = requests.get(location, timeout=60)  # a plain client: no Azure credentials
    assert fetched.status_code == 200
    assert sha256(fetched.content) == digest
    return fetched.content


def push_manifest(functions: Client, name: str, config: bytes, layers: list[bytes], tag: str) -> bytes:
    body = canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    })
    response = functions("PUT", f"/v2/{name}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.content
    assert response.headers["Docker-Content-Digest"] == sha256(body)
    return body


def start_upload(functions: Client, name: str) -> str:
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202, started.content
    return relative(started.headers["Location"])


def uploaded_range(functions: Client, location: str) -> str:
    status = functions("GET", location)
    assert status.status_code == 204, status.content
    return status.headers["Range"]


def in_pieces(data: bytes, size: int = MiB) -> Iterator[bytes]:
    """A body of unknown length: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


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


def test_host_json_and_requirements_serve_v2_at_the_root_with_streaming() -> None:
    host = json.loads((ROOT / "azure_func" / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""
    requirements = (ROOT / "azure_func" / "requirements.txt").read_text()
    pins = dict(line.split("==") for line in requirements.splitlines() if "==" in line and not line.startswith("#"))
    for package in ("azure-functions", "azure-storage-blob", "azure-identity", "PyYAML",
                    "azurefunctions-extensions-http-fastapi"):
        assert pins.get(package), package
    settings_example = json.loads((ROOT / "azure_func" / "local.settings.json.example").read_text())["Values"]
    assert settings_example["FUNCTIONS_WORKER_RUNTIME"] == "python" and settings_example["REGISTRY_STORAGE"] == "azure"
    assert settings_example["PYTHON_ENABLE_INIT_INDEXING"] == "1"


def test_worker_streams_http_with_the_extension_and_init_indexing(host: FunctionsHost) -> None:
    assert host.streaming
    (registry,) = [f for f in host.metadata["functions"] if f["name"] == "registry"]
    assert registry["route"] == "v2/{*path}"


def test_base_endpoint(functions: Client) -> None:
    response = functions("GET", "/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.json() == {}


def test_unknown_path_is_an_oci_error(functions: Client) -> None:
    response = functions("GET", "/v2/no/such/endpoint")
    assert response.status_code == 404
    assert error_code(response) in ("UNSUPPORTED", "NAME_UNKNOWN")


def test_path_outside_the_route_never_reaches_the_function(functions: Client) -> None:
    start = len(functions.host.records())
    assert functions("GET", "/api/v2/").status_code == 404
    (record,) = functions.records_since(start)
    assert record.path == "/api/v2/" and not record.reached_function


# -- push and pull ---------------------------------------------------------------------------------


def test_monolithic_push_and_pull_through_redirects(functions: Client, azurite, container) -> None:
    name = "functions/monolithic"
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = random_bytes(3 * MiB + 5)
    push_monolithic(functions, name, config)
    layer_digest = push_monolithic(functions, name, layer)
    body = push_manifest(functions, name, config, [layer], "v1")

    response = functions("GET", f"/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 200 and response.content == body
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert pull_blob_by_redirect(functions, name, layer_digest) == layer

    head = functions("HEAD", f"/v2/{name}/blobs/{layer_digest}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(layer))
    assert head.headers["Docker-Content-Digest"] == layer_digest
    tags = functions("GET", f"/v2/{name}/tags/list")
    assert tags.json() == {"name": name, "tags": ["v1"]}
    stored = blobs_under(azurite, container, f"docker/registry/v2/blobs/sha256/{layer_digest[7:9]}/")
    assert f"docker/registry/v2/blobs/sha256/{layer_digest[7:9]}/{layer_digest[7:]}/data" in stored


def test_chunked_push_alternates_between_two_workers(functions, start_host, azurite, container) -> None:
    """Each chunk lands on another instance: only storage and the signed state carry the upload."""
    other = Client(start_host(settings(azurite, container)))
    name = "functions/chunked"
    layer = random_bytes(9 * MiB + 123)
    digest = sha256(layer)
    started = functions("POST", f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    assert started.headers["OCI-Chunk-Max-Length"] == str(DEFAULT_BODY_LIMIT)
    location = relative(started.headers["Location"])
    upload_id = started.headers["Docker-Upload-UUID"]
    data_blob = azurite.service_client().get_blob_client(
        container, f"{repo_prefix(name)}_uploads/{upload_id}/data")

    chunks = [layer[:4 * MiB], layer[4 * MiB:4 * MiB + 1], layer[4 * MiB + 1:9 * MiB]]
    offset = 0
    for chunk, client in zip(chunks, itertools.cycle([other, functions])):
        response = client("PATCH", location, chunk, {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        })
        assert response.status_code == 202, response.content
        offset += len(chunk)
        assert response.headers["Range"] == f"0-{offset - 1}"
        location = relative(response.headers["Location"])
        # the chunk is staged, not committed: the blob itself is still empty
        committed, staged = data_blob.get_block_list("all")
        assert committed == [] and sum(block.size for block in staged) == offset
        assert data_blob.get_blob_properties().size == 0

    assert uploaded_range(other, location) == f"0-{offset - 1}"
    out_of_order = functions("PATCH", location, b"x", {"Content-Range": "5-5"})
    assert out_of_order.status_code == 416

    final = other("PUT", location, layer[offset:], {"Content-Type": "application/octet-stream"}, digest=digest)
    assert final.status_code == 201, final.content
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/") == []

    config = canonical({"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    push_monolithic(functions, name, config)
    push_manifest(functions, name, config, [layer], "chunked")
    assert pull_blob_by_redirect(functions, name, digest) == layer
    assert all(r.reached_function for r in other.host.records())


def test_chunked_transfer_encoding_bodies_reach_the_function_whole(functions: Client) -> None:
    name = "functions/transfer-chunked"
    layer = random_bytes(5 * MiB + 11)
    location = start_upload(functions, name)
    start = len(functions.host.records())
    response = functions("PATCH", location, in_pieces(layer, 300_000), {"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.content
    assert response.headers["Range"] == f"0-{len(layer) - 1}"
    (record,) = functions.records_since(start)
    assert record.content_length is None and record.body_bytes == len(layer) and record.reached_function
    final = functions("PUT", relative(response.headers["Location"]), digest=sha256(layer))
    assert final.status_code == 201, final.content


def test_binary_bodies_pass_unchanged(functions: Client) -> None:
    name = "functions/binary"
    data = bytes(range(256)) * 3 + b"\r\n\x00\xff"
    for headers in ({}, {"Content-Type": "text/plain; charset=utf-8"}, {"Content-Type": "application/json"}):
        location = start_upload(functions, name)
        response = functions("PUT", location, data, headers, digest=sha256(data))
        assert response.status_code == 201, response.content
    assert pull_blob_by_redirect(functions, name, sha256(data)) == data


def test_wrong_digest_leaves_no_upload_behind(functions: Client, azurite, container) -> None:
    name = "functions/wrong-digest"
    location = start_upload(functions, name)
    patched = functions("PATCH", location, b"some bytes", {"Content-Type": "application/octet-stream"})
    response = functions("PUT", relative(patched.headers["Location"]), digest=sha256(b"other bytes"))
    assert response.status_code == 400 and error_code(response) == "DIGEST_INVALID"
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/") == []


def test_cancel_leaves_no_committed_or_staged_blocks(functions: Client, azurite, container) -> None:
    name = "functions/cancel"
    location = start_upload(functions, name)
    response = functions("PATCH", location, random_bytes(MiB), {"Content-Type": "application/octet-stream"})
    location = relative(response.headers["Location"])
    assert blobs_under(azurite, container, f"{repo_prefix(name)}_uploads/")  # staged data and startedat
    assert functions("DELETE", location).status_code == 204
    assert blobs_under(azurite, container, repo_prefix(name)) == []
    assert functions("GET", location).status_code == 404


def test_delete_manifest_and_blob_leave_no_links(functions: Client, azurite, container) -> None:
    name = "functions/delete"
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    layer = random_bytes(1000)
    push_monolithic(functions, name, config)
    layer_digest = push_monolithic(functions, name, layer)
    body = push_manifest(functions, name, config, [layer], "gone")

    assert functions("DELETE", f"/v2/{name}/manifests/{sha256(body)}").status_code == 202
    assert functions("GET", f"/v2/{name}/manifests/gone").status_code == 404
    for digest in (layer_digest, sha256(config)):
        assert functions("DELETE", f"/v2/{name}/blobs/{digest}").status_code == 202
        assert functions("GET", f"/v2/{name}/blobs/{digest}").status_code == 404
    assert blobs_under(azurite, container, repo_prefix(name)) == []


def test_lost_hash_state_is_recomputed_from_staged_blocks(functions: Client, azurite, container) -> None:
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
    assert second.status_code == 202, second.content
    final = functions("PUT", relative(second.headers["Location"]), digest=sha256(layer))
    assert final.status_code == 201, final.content
    assert pull_blob_by_redirect(functions, name, sha256(layer)) == layer


# -- redirects -------------------------------------------------------------------------------------


def test_tampered_sas_is_refused_by_storage(functions: Client) -> None:
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


def test_redirect_expiry_follows_configuration(start_host, azurite, container) -> None:
    functions = Client(start_host(settings(azurite, container, REGISTRY_STORAGE_REDIRECT_EXPIRY="90s")))
    name = "functions/expiry"
    digest = push_monolithic(functions, name, b"short-lived")
    location = functions("GET", f"/v2/{name}/blobs/{digest}").headers["Location"]
    from datetime import datetime, timedelta, timezone

    expiry = datetime.strptime(parse_qs(urlsplit(location).query)["se"][0], "%Y-%m-%dT%H:%M:%SZ")
    remaining = expiry.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
    assert timedelta(seconds=60) < remaining <= timedelta(seconds=91)


def test_redirect_disabled_streams_bytes_with_ranges(start_host, azurite, container) -> None:
    functions = Client(start_host(settings(azurite, container, REGISTRY_STORAGE_REDIRECT_DISABLE="true")))
    name = "functions/direct"
    data = random_bytes(3 * MiB + 5000)
    digest = push_monolithic(functions, name, data)
    response = functions("GET", f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 200 and response.content == data
    assert response.headers["Docker-Content-Digest"] == digest
    ranged = functions("GET", f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]


# -- the host's limits -----------------------------------------------------------------------------


def assert_nothing_over_the_limit_reached_the_function(host: FunctionsHost) -> None:
    over = [r for r in host.records() if r.body_bytes > host.body_limit or (r.content_length or 0) > host.body_limit]
    assert not [r for r in over if r.reached_function], over


def test_patch_over_the_host_limit_gets_413_and_never_reaches_the_function(functions: Client) -> None:
    name = "functions/over-limit"
    location = start_upload(functions, name)
    start = len(functions.host.records())
    too_big = b"\x01" * (DEFAULT_BODY_LIMIT + 1)
    response = functions("PATCH", location, too_big, {"Content-Type": "application/octet-stream"})
    assert response.status_code == 413 and response.content == b""  # Kestrel's answer, not an OCI error
    (record,) = functions.records_since(start)
    assert record.status == 413 and not record.reached_function
    assert record.content_length == DEFAULT_BODY_LIMIT + 1
    assert uploaded_range(functions, location) == "0-0"  # nothing was written

    chunked = functions("PATCH", location, in_pieces(too_big, 4 * MiB), {"Content-Type": "application/octet-stream"})
    assert chunked.status_code == 413
    record = functions.records_since(start)[-1]
    assert record.content_length is None and record.body_bytes == DEFAULT_BODY_LIMIT + 1
    assert record.status == 413 and not record.reached_function
    assert uploaded_range(functions, location) == "0-0"
    assert_nothing_over_the_limit_reached_the_function(functions.host)


def test_patch_at_the_host_limit_passes_and_is_stored(functions: Client, azurite, container) -> None:
    name = "functions/at-limit"
    location = start_upload(functions, name)
    layer = os.urandom(DEFAULT_BODY_LIMIT)
    response = functions("PATCH", location, layer, {"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.content
    assert response.headers["Range"] == f"0-{DEFAULT_BODY_LIMIT - 1}"
    final = functions("PUT", relative(response.headers["Location"]), digest=sha256(layer))
    assert final.status_code == 201, final.content
    assert functions("HEAD", f"/v2/{name}/blobs/{sha256(layer)}").headers["Content-Length"] == str(len(layer))
    assert_nothing_over_the_limit_reached_the_function(functions.host)


def test_configured_body_limit_is_enforced_by_the_host_and_advertised(start_host, azurite, container) -> None:
    host = start_host(settings(azurite, container, FUNCTIONS_REQUEST_BODY_SIZE_LIMIT="4096"))
    functions = Client(host)
    assert host.body_limit == 4096
    started = functions("POST", "/v2/functions/limits/blobs/uploads/")
    assert started.headers["OCI-Chunk-Max-Length"] == "4096"
    location = relative(started.headers["Location"])
    refused = functions("PATCH", location, b"x" * 4097, {"Content-Type": "application/octet-stream"})
    assert refused.status_code == 413
    assert host.records()[-1].reached_function is False
    assert functions("PATCH", location, b"x" * 4096).status_code == 202
    assert_nothing_over_the_limit_reached_the_function(host)


def test_chunk_over_the_configured_chunk_limit_is_size_invalid(start_host, azurite, container) -> None:
    """Below the host's limit, the api's own http.chunkmaxlength answers with an OCI error."""
    functions = Client(start_host(settings(azurite, container, REGISTRY_HTTP_CHUNKMAXLENGTH="1048576")))
    started = functions("POST", "/v2/functions/configured/blobs/uploads/")
    assert started.headers["OCI-Chunk-Max-Length"] == "1048576"
    location = relative(started.headers["Location"])
    for body in (b"x" * (MiB + 1), in_pieces(b"x" * (MiB + 1), 64 * 1024)):
        response = functions("PATCH", location, body, {"Content-Type": "application/octet-stream"})
        assert response.status_code == 413 and error_code(response) == "SIZE_INVALID"
        assert functions.host.records()[-1].reached_function


def test_host_gives_up_on_a_function_after_its_timeout(tmp_path: Path, start_host) -> None:
    app = tmp_path / "slow_app" / "function_app.py"
    app.parent.mkdir()
    app.write_text(
        "import asyncio\nimport azure.functions as func\n"
        "app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)\n"
        "@app.route(route='slow', methods=['GET'])\n"
        "async def slow(req: func.HttpRequest) -> func.HttpResponse:\n"
        "    await asyncio.Event().wait()  # never answers\n"
    )
    host = start_host({}, timeout=1.0, app=app)
    response = requests.get(host.url + "/api/slow", timeout=60)
    assert response.status_code == 500 and b"The request timed out" in response.content
    (record,) = host.records()
    assert record.reached_function and record.status == 500


def test_locations_use_the_forwarded_scheme_and_host(functions: Client) -> None:
    started = functions("POST", "/v2/functions/scheme/blobs/uploads/",
                        headers={"X-Forwarded-Proto": "https", "Host": "stratus-test.azurewebsites.net"})
    assert started.headers["Location"].startswith("https://stratus-test.azurewebsites.net/v2/functions/scheme/")


# -- memory: a whole layer through the function without holding it ---------------------------------


def test_a_layer_at_the_host_limit_streams_through_in_bounded_memory(start_host, azurite, container) -> None:
    """PATCH and GET (redirects off) of a 100 MB layer: the worker's peak RSS stays far below it."""
    host = start_host(settings(azurite, container, REGISTRY_STORAGE_REDIRECT_DISABLE="true"))
    functions = Client(host)
    assert host.streaming
    name = "functions/memory"
    location = start_upload(functions, name)  # the api is built: the worker is as warm as it gets
    layer = os.urandom(DEFAULT_BODY_LIMIT)
    digest = sha256(layer)
    idle = host.worker_memory()["VmRSS"]
    host.reset_worker_peak_rss()
    response = functions("PATCH", location, layer, {"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.content
    del layer
    patch_peak = host.worker_memory()["VmHWM"] - idle
    final = functions("PUT", relative(response.headers["Location"]), digest=digest)
    assert final.status_code == 201, final.content

    idle = host.worker_memory()["VmRSS"]
    host.reset_worker_peak_rss()
    hasher, size = hashlib.sha256(), 0
    with functions.session.get(f"{host.url}/v2/{name}/blobs/{digest}", stream=True, timeout=300) as pulled:
        assert pulled.status_code == 200
        for piece in pulled.iter_content(MiB):
            hasher.update(piece)
            size += len(piece)
    get_peak = host.worker_memory()["VmHWM"] - idle
    assert size == DEFAULT_BODY_LIMIT and f"sha256:{hasher.hexdigest()}" == digest
    print(f"worker peak RSS above idle: PATCH {patch_peak / MiB:.1f} MiB, GET {get_peak / MiB:.1f} MiB")
    assert patch_peak < 100 * MiB // 2, patch_peak
    assert get_peak < 100 * MiB // 2, get_peak


# -- the classic HttpRequest mode, for hosts without HTTP streaming --------------------------------


@pytest.mark.parametrize("how", ["extension absent", "init indexing off"])
def test_classic_mode_without_streaming_still_pushes_and_pulls(how, start_host, azurite, container) -> None:
    env = settings(azurite, container)
    if how == "init indexing off":
        del env["PYTHON_ENABLE_INIT_INDEXING"]
    host = start_host(env, hide_extension=how == "extension absent")
    assert not host.streaming
    functions = Client(host)
    name = "functions/classic"
    layer = random_bytes(2 * MiB + 3)
    location = start_upload(functions, name)
    patched = functions("PATCH", location, in_pieces(layer, 500_000), {"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202, patched.content
    final = functions("PUT", relative(patched.headers["Location"]), digest=sha256(layer))
    assert final.status_code == 201, final.content
    assert pull_blob_by_redirect(functions, name, sha256(layer)) == layer
    head = functions("HEAD", f"/v2/{name}/blobs/{sha256(layer)}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(layer))
    refused = functions("PATCH", location, b"\x00" * (DEFAULT_BODY_LIMIT + 1))
    assert refused.status_code == 413 and not host.records()[-1].reached_function


# -- in-process: the registry object and the timer -------------------------------------------------


@pytest.fixture
def environment(azurite: Azurite, container: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process as a worker with the app settings (for tests that call the app in-process)."""
    env = azurite.environment(container, REGISTRY_HTTP_SECRET=SECRET)
    for name in [n for n in os.environ if n.startswith("REGISTRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT", raising=False)
    monkeypatch.delenv("PYTHON_ENABLE_INIT_INDEXING", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_a_warm_app_reuses_its_registry(environment) -> None:
    import azure.functions as func

    module = load_function_app()
    (function,) = [f for f in module.app.get_functions() if f.get_function_name() == "registry"]
    handler = function.get_user_function()
    request = func.HttpRequest("GET", "https://stratus-test.azurewebsites.net/v2/", body=b"")
    assert handler(request).status_code == 200
    api = module.registry.api
    assert handler(request).status_code == 200
    assert module.registry.api is api


def test_purge_timer_removes_abandoned_uploads(functions: Client, azurite, container, environment,
                                               monkeypatch) -> None:
    name = "functions/purge"
    location = start_upload(functions, name)
    functions("PATCH", location, b"abandoned")
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
    code = "import function_app, chalicelib; print(chalicelib.__file__, function_app.STREAMING is not None)"
    done = subprocess.run([sys.executable, "-c", code], cwd=out, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(out), "PYTHON_ENABLE_INIT_INDEXING": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / "chalicelib" / "__init__.py"), "True"]


# -- real clients through the host -----------------------------------------------------------------


@needs_tools
def test_skopeo_push_and_pull_through_the_functions_host(host, tmp_path, tmp_path_factory) -> None:
    from tests.clients_images import Layout, assert_same_image, images_dir, pull, push, session_image

    start = len(host.records())
    image = session_image(images_dir(tmp_path_factory), "small")
    push(image.path, "v1", host.url, "functions/skopeo", "v1")
    copy = Layout(tmp_path / "copy")
    pull(host.url, "functions/skopeo", "v1", copy.path, "v1")  # layers come from Azurite by 307
    assert_same_image(image, "v1", copy, "v1")
    seen = host.records()[start:]
    assert any(r.method == "PUT" and r.status == 201 and "/manifests/" in r.path for r in seen)
    assert any(r.method == "GET" and r.status == 307 and "/blobs/sha256:" in r.path for r in seen)
    assert_nothing_over_the_limit_reached_the_function(host)


NEAR_LIMIT_LAYER = 96 * MiB  # random bytes: the gzipped layer stays just under 104,857,600


@needs_tools
def test_skopeo_pushes_a_layer_near_the_host_limit_in_bounded_memory(start_host, azurite, container,
                                                                     tmp_path) -> None:
    """skopeo sends the whole ~100 MB layer in one PATCH; the worker streams it to storage."""
    from tests.clients_images import Layout, assert_same_image, build_image, pull, push

    image = build_image(tmp_path / "near-limit", "v1", {"layer.bin": os.urandom(NEAR_LIMIT_LAYER)})
    manifest = json.loads(image.blob(image.tagged("v1")["digest"]))
    (layer,) = manifest["layers"]
    assert NEAR_LIMIT_LAYER < layer["size"] <= DEFAULT_BODY_LIMIT
    host = start_host(settings(azurite, container))
    assert requests.get(host.url + "/v2/", timeout=30).status_code == 200  # the api is built
    idle = host.worker_memory()["VmRSS"]
    host.reset_worker_peak_rss()
    push(image.path, "v1", host.url, "functions/near-limit", "v1")
    peak = host.worker_memory()["VmHWM"] - idle
    print(f"worker peak RSS above idle for a {layer['size']}-byte layer pushed by skopeo: {peak / MiB:.1f} MiB")
    assert peak < layer["size"] // 2, peak
    assert any(r.body_bytes == layer["size"] and r.reached_function for r in host.records())
    copy = Layout(tmp_path / "copy")
    pull(host.url, "functions/near-limit", "v1", copy.path, "v1")
    assert_same_image(image, "v1", copy, "v1")


@needs_tools
def test_skopeo_push_of_a_layer_over_the_limit_meets_the_hosts_413(host, tmp_path_factory) -> None:
    """As on Azure: a 200 MiB layer in one PATCH never reaches the function."""
    from tests.clients_images import images_dir, push, session_image

    image = session_image(images_dir(tmp_path_factory), "big")
    start = len(host.records())
    with pytest.raises(AssertionError, match="413"):
        push(image.path, "big", host.url, "functions/too-big", "big")
    refused = [r for r in host.records()[start:] if r.status == 413]
    assert refused and all(not r.reached_function and r.body_bytes > host.body_limit for r in refused)
    assert_nothing_over_the_limit_reached_the_function(host)


@requires_conformance
def test_oci_conformance_suite_through_the_functions_host(host, tmp_path) -> None:
    assert run_oci_conformance(host.url, tmp_path).returncode == 0
