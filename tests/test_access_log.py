"""The access log of `stratus serve` (STRATUS_ACCESS_LOG): one line per request with the
query string (?mount=&from=, ?digest=, ?n=&last=), the upload `_state` token redacted,
the status and the duration; text and JSON (log.formatter) with log.fields; on each of
the three servers; log.accesslog.disabled drops the lines."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import pytest
import requests

from .oci_client import Registry, random_bytes, unique_repo
from .servers import stratus_server


def _log_of(root: Path, url: str) -> Path:
    return root.parent / f"stratus-{urlsplit(url).port}.log"  # where tests/servers.py writes it


def _wait_for(path: Path, done: Callable[[list[str]], bool], timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        if done(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _traffic(url: str) -> tuple[str, str]:
    """Requests whose query strings the log must show; returns (repo, the _state token sent)."""
    registry = Registry(url)
    repo, other = unique_repo("access"), unique_repo("access")
    digest = registry.push_blob(repo, random_bytes(2000))
    started = registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    token = dict(part.split("=", 1) for part in urlsplit(started.headers["Location"]).query.split("&"))["_state"]
    assert registry.patch(started.headers["Location"], b"x" * 10).status_code == 202
    assert registry.request("POST", f"/v2/{other}/blobs/uploads/?mount={digest}&from={repo}").status_code == 201
    registry.get(f"/v2/{repo}/tags/list?n=5&last=a")
    registry.close()
    requests.get(f"{url}/v2/?done=1", timeout=10)  # the last line to wait for
    return repo, token


def _check_text_lines(lines: list[str], repo: str, token: str) -> None:
    access = [line for line in lines if " stratus.access " in line]
    text = "\n".join(access)
    assert f"/v2/{repo}/tags/list?n=5&last=a" in text, text
    assert "?mount=sha256:" in text and f"&from={repo}" in text
    assert "&digest=sha256%3A" in text  # push_blob's closing PUT, its query as the client sent it
    assert token not in "\n".join(lines)  # nowhere in the log
    patch = [line for line in access if '"PATCH ' in line]
    assert patch and "_state=REDACTED" in patch[0] and " 202 " in patch[0], patch
    for line in access:  # the duration, in milliseconds
        assert line.split('" ')[1].split()[2].endswith("ms"), line


@pytest.mark.parametrize("server", ["uvicorn", "granian", "gunicorn"])
def test_text_access_lines_carry_query_duration_and_redact_state(tmp_path, server):
    root = tmp_path / "data"
    with stratus_server(root, {"STRATUS_ACCESS_LOG": "1", "STRATUS_SERVER": server}) as url:
        repo, token = _traffic(url)
        lines = _wait_for(_log_of(root, url), lambda lines: any("/v2/?done=1" in line for line in lines))
    _check_text_lines(lines, repo, token)


def test_json_access_lines_parse_with_fields(tmp_path):
    root = tmp_path / "data"
    env = {"STRATUS_ACCESS_LOG": "1", "REGISTRY_LOG_FORMATTER": "json", "REGISTRY_LOG_FIELDS_SERVICE": "registry"}
    with stratus_server(root, env) as url:
        repo, token = _traffic(url)
        lines = _wait_for(_log_of(root, url), lambda lines: any("/v2/?done=1" in line for line in lines))
    docs = [json.loads(line) for line in lines]  # every line parses
    access = [d for d in docs if d["logger"] == "stratus.access"]
    assert access and all(d["service"] == "registry" for d in access)
    uris = [d["http.request.uri"] for d in access]
    assert f"/v2/{repo}/tags/list?n=5&last=a" in uris, uris
    patch = next(d for d in access if d["http.request.method"] == "PATCH")
    assert "_state=REDACTED" in patch["http.request.uri"] and patch["http.response.status"] == 202
    assert all(isinstance(d["http.response.duration"], float) and d["http.response.duration"] >= 0 for d in access)
    assert token not in "\n".join(lines)


def test_access_log_to_a_file(tmp_path):
    root, path = tmp_path / "data", tmp_path / "access.log"
    with stratus_server(root, {"STRATUS_ACCESS_LOG": str(path)}) as url:
        repo, token = _traffic(url)
        lines = _wait_for(path, lambda lines: any("/v2/?done=1" in line for line in lines))
    _check_text_lines(lines, repo, token)
    assert not any("stratus.access" in line for line in _log_of(root, url).read_text().splitlines())


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_accesslog_disabled_writes_no_line(tmp_path, server):
    root = tmp_path / "data"
    env = {"STRATUS_ACCESS_LOG": "1", "STRATUS_SERVER": server, "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
           "REGISTRY_LOG_LEVEL": "debug"}
    with stratus_server(root, env) as url:
        _traffic(url)
        time.sleep(1)
        lines = _log_of(root, url).read_text().splitlines()
    assert lines and not any("access" in line and "/v2/" in line for line in lines), lines
