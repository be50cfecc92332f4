"""A Redis outage in the middle of a push and pull, against a real `stratus serve`.

The same push/pull runs twice over HTTP: once with Redis up, once with Redis
killed halfway. Every response must be the same (up to the repository name and
upload ids); after Redis is started again, empty, the cache refills.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from chalicelib.cache.redis import blob_key, repository_blob_key

from .redis_server import RedisServer, redis_server, requires_redis
from .servers import stratus_server

pytestmark = requires_redis

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
COMPARED_HEADERS = (
    "Docker-Content-Digest", "Content-Length", "Content-Type", "ETag", "Range",
    "Location", "Docker-Upload-UUID", "Cache-Control",
)
CHUNK_1, CHUNK_2 = b"a" * 3000, b"b" * 1234
LAYER_CHUNKED = CHUNK_1 + CHUNK_2
LAYER_SMALL = b"small layer"
CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(CONFIG), "size": len(CONFIG)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(b), "size": len(b)}
            for b in (LAYER_CHUNKED, LAYER_SMALL)
        ],
    }
).encode()


class Recorder:
    """Sends requests and keeps each response in a form comparable across runs."""

    def __init__(self, url: str, name: str):
        self.url = url
        self.name = name
        self.http = requests.Session()
        self.log: list[tuple] = []
        self._uploads: dict[str, str] = {}

    def __call__(self, method: str, path: str, **kwargs) -> requests.Response:
        target = path if path.startswith("http") else self.url + path.replace("{name}", self.name)
        response = self.http.request(method, target, allow_redirects=False, timeout=10, **kwargs)
        self.log.append((method, self._normal(path), response.status_code, self._headers(response), response.content))
        return response

    def _headers(self, response: requests.Response) -> dict:
        return {h: self._normal(response.headers[h]) for h in COMPARED_HEADERS if h in response.headers}

    def _normal(self, text: str) -> str:
        text = text.replace(self.url, "<url>").replace(self.name, "<name>")
        for uuid in re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text):
            text = text.replace(uuid, self._uploads.setdefault(uuid, f"<upload-{len(self._uploads)}>"))
        return re.sub(r"_state=[^&]+", "_state=<token>", text)


def push_and_pull(r: Recorder, midway: Callable[[], None]) -> None:
    # a chunked upload: POST, PATCH, PUT
    started = r("POST", "/v2/{name}/blobs/uploads/")
    assert started.status_code == 202
    patched = r("PATCH", started.headers["Location"], data=CHUNK_1,
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"0-{len(CHUNK_1) - 1}"})
    assert patched.status_code == 202
    put = r("PUT", patched.headers["Location"] + f"&digest={sha(LAYER_CHUNKED)}", data=CHUNK_2)
    assert put.status_code == 201
    assert r("POST", f"/v2/{{name}}/blobs/uploads/?digest={sha(LAYER_SMALL)}", data=LAYER_SMALL).status_code == 201
    assert r("HEAD", f"/v2/{{name}}/blobs/{sha(LAYER_SMALL)}").status_code == 200

    midway()  # the rest of the push, and the pull, may find Redis gone

    assert r("POST", f"/v2/{{name}}/blobs/uploads/?digest={sha(CONFIG)}", data=CONFIG).status_code == 201
    for blob in (LAYER_CHUNKED, LAYER_SMALL, CONFIG):
        assert r("HEAD", f"/v2/{{name}}/blobs/{sha(blob)}").status_code == 200
    mounted = r("POST", f"/v2/{{name}}-mirror/blobs/uploads/?mount={sha(LAYER_SMALL)}&from={{name}}")
    assert mounted.status_code == 201
    assert r("PUT", "/v2/{name}/manifests/v1", data=MANIFEST, headers={"Content-Type": OCI_MANIFEST}).status_code == 201

    pulled = r("GET", "/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert pulled.content == MANIFEST
    assert r("HEAD", f"/v2/{{name}}/manifests/{sha(MANIFEST)}").status_code == 200
    for blob in (CONFIG, LAYER_CHUNKED, LAYER_SMALL):
        assert r("GET", f"/v2/{{name}}/blobs/{sha(blob)}").content == blob
    assert r("GET", f"/v2/{{name}}-mirror/blobs/{sha(LAYER_SMALL)}").content == LAYER_SMALL
    assert r("GET", f"/v2/{{name}}-other/blobs/{sha(LAYER_SMALL)}").status_code == 404

    assert r("DELETE", f"/v2/{{name}}-mirror/blobs/{sha(LAYER_SMALL)}").status_code == 202
    assert r("HEAD", f"/v2/{{name}}-mirror/blobs/{sha(LAYER_SMALL)}").status_code == 404
    assert r("HEAD", f"/v2/{{name}}/blobs/{sha(LAYER_SMALL)}").status_code == 200


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[str, RedisServer, Path]]:
    with redis_server(tmp_path / "redis") as server:
        root = tmp_path / "storage"
        root.mkdir()
        env = {
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis",
            "REGISTRY_REDIS_ADDR": server.addr,
            "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        }
        with stratus_server(root, env=env) as url:
            yield url, server, root


def test_push_and_pull_with_redis_killed_midway_answer_the_same(deployment):
    url, server, root = deployment
    reference = Recorder(url, "ref/app")
    push_and_pull(reference, midway=lambda: None)
    assert server.client().exists(blob_key(sha(LAYER_SMALL)))  # Redis was in use

    outage = Recorder(url, "outage/app")
    push_and_pull(outage, midway=server.kill)
    assert outage.log == reference.log

    # one warning for the whole outage, not one per request; what the outage cost is
    # in its cause: a refused connection, answered at once, never a timeout waited
    # for (tests/test_cache_redis.py counts the connects: two, then none until the
    # cooldown ends)
    log_text = next(root.parent.glob("stratus-*.log")).read_text()
    assert log_text.count("blob descriptor cache unavailable") == 1, log_text
    assert "Connection refused" in log_text and "Timeout" not in log_text, log_text

    # Redis comes back empty; the cache refills from storage as requests arrive
    server.start()
    assert server.client().dbsize() == 0
    http = requests.Session()
    key = repository_blob_key("outage/app", sha(LAYER_CHUNKED))
    # the server retries Redis once its cooldown (1 s) has passed; the deadline only
    # bounds a hang, it is no claim about speed
    deadline = time.monotonic() + 60
    while not server.client().exists(key):
        assert time.monotonic() < deadline, "the cache did not refill"
        assert http.head(f"{url}/v2/outage/app/blobs/{sha(LAYER_CHUNKED)}", timeout=5).status_code == 200
        time.sleep(0.1)
    assert server.client().hgetall(blob_key(sha(LAYER_CHUNKED)))["size"] == str(len(LAYER_CHUNKED))
    assert "reachable again" in next(root.parent.glob("stratus-*.log")).read_text()
