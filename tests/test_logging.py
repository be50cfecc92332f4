"""log.formatter (text, json) with log.fields, and log.accesslog.disabled.

The server tests run `stratus serve` as an operator would, with REGISTRY_LOG_*
variables, and read what it wrote."""
from __future__ import annotations

import json
import logging
import uuid
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from chalicelib.bootstrap import configure_logging
from chalicelib.config import config_from_mapping
from chalicelib.logs import JSONFormatter, TextFormatter

from .oci_client import Registry, random_bytes, unique_repo
from .servers import stratus_server


def _server_log(root: Path, url: str) -> Path:
    return root.parent / f"stratus-{urlsplit(url).port}.log"


def _wait_for_lines(path: Path, predicate, timeout: float = 20.0) -> list[str]:
    """The log's lines once one satisfies predicate (the server writes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        if any(predicate(line) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _record(name="stratus.test", msg="hello %s", args=("world",), level=logging.INFO, exc_info=None, **extra):
    record = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_json_line_has_time_level_logger_msg_and_fields():
    line = JSONFormatter({"service": "registry", "msg": "not the message"}).format(
        _record(level=logging.WARNING, repository="team/app"))
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "stratus.test" and doc["msg"] == "hello world"
    assert doc["service"] == "registry" and doc["repository"] == "team/app"
    assert doc["fields.msg"] == "not the message"  # a field never hides the message
    assert time.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%f%z")


def test_json_keeps_an_exception_and_a_multiline_message_on_one_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        import sys

        line = JSONFormatter().format(_record(msg="first\nsecond", args=(), level=logging.ERROR,
                                              exc_info=sys.exc_info()))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == "first\nsecond" and doc["error"] == "ValueError: bad\nvalue"
    assert "Traceback" in doc["stack"] and "raise ValueError" in doc["stack"]


def test_text_line_ends_with_the_fields():
    line = TextFormatter({"service": "registry", "environment": "staging two"}).format(_record())
    assert line.endswith(' stratus.test hello world service=registry environment="staging two"')
    assert " INFO " in line


def test_configure_logging_formats_the_root_handlers_and_does_not_stack_them(capsys):
    root = logging.getLogger()
    saved = (root.level, root.handlers[:], [h.formatter for h in root.handlers])
    handler = logging.StreamHandler()  # as a runtime (Lambda, Functions) installs its own
    root.handlers = [handler]
    try:
        config = config_from_mapping({"log": {"formatter": "json", "fields": {"service": "registry"}}})
        configure_logging(config)
        configure_logging(config)
        assert root.handlers == [handler]
        # a logger no earlier test can have touched (a dictConfig elsewhere in the
        # session may have disabled the loggers that existed when it ran)
        logger = logging.getLogger(f"stratus.test.{uuid.uuid4().hex}")
        logger.info("ready %d", 1)
        configure_logging(config_from_mapping({"log": {"level": "error"}}))
        logger.warning("dropped")
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        for h, f in zip(saved[1], saved[2]):
            h.setFormatter(f)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert (doc["msg"], doc["service"], doc["level"]) == ("ready 1", "registry", "info")


def _push_and_pull(url: str) -> str:
    registry = Registry(url)
    repo = unique_repo("logs")
    digest = registry.push_blob(repo, random_bytes(1000))
    assert registry.blob(repo, digest).status_code == 200
    assert registry.get(f"/v2/{repo}/tags/list?n=5").status_code == 404
    registry.close()
    return repo


def test_stratus_serve_writes_json_lines_that_parse(tmp_path):
    root = tmp_path / "data"
    env = {
        "REGISTRY_LOG_FORMATTER": "json",
        "REGISTRY_LOG_LEVEL": "info",
        "REGISTRY_LOG_FIELDS_SERVICE": "registry",
        "REGISTRY_LOG_FIELDS_ENVIRONMENT": "staging",
        "STRATUS_ACCESS_LOG": "1",
    }
    with stratus_server(root, env) as url:
        repo = _push_and_pull(url)
        lines = _wait_for_lines(_server_log(root, url), lambda line: "tags/list" in line)
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    for doc in docs:
        assert {"time", "level", "logger", "msg"} <= doc.keys(), doc
        assert (doc["service"], doc["environment"]) == ("registry", "staging")
    access = [d for d in docs if d["logger"] == "stratus.access"]
    assert any(f"/v2/{repo}/tags/list?n=5" in d["msg"] for d in access), access
    assert any(d["logger"].startswith("stratus") for d in docs)  # the server's own lines too


@pytest.mark.parametrize("disabled", [False, True])
def test_accesslog_disabled_is_honoured(tmp_path, disabled):
    root = tmp_path / "data"
    env = {"STRATUS_ACCESS_LOG": "1", "REGISTRY_LOG_ACCESSLOG_DISABLED": str(disabled).lower()}
    with stratus_server(root, env) as url:
        repo = unique_repo("access")
        assert requests.get(f"{url}/v2/{repo}/tags/list", timeout=10).status_code == 404
        # the server's own lines are written as they happen; one more request after
        # ours makes sure ours would have been written by now
        requests.get(f"{url}/v2/", timeout=10)
        lines = _wait_for_lines(_server_log(root, url), lambda line: "GET /v2/ " in line, timeout=5 if disabled else 20)
    logged = [line for line in lines if f"/v2/{repo}/tags/list" in line]
    assert (logged == []) if disabled else (len(logged) == 1), lines


_LAMBDA_PROBE = """\
import logging, sys
from tests.lambda_events import LambdaContext, Response, rest_api_event
# the Lambda runtime's own handler on the root logger, as awslambdaric installs it
handler = logging.StreamHandler(sys.stderr)
handler.addFilter(lambda record: setattr(record, "aws_request_id", "req-1") or True)
logging.getLogger().addHandler(handler)
import app
assert Response(app.app(rest_api_event("GET", "/v2/"), LambdaContext())).status == 200
"""


def test_lambda_logs_are_json_lines_through_the_runtime_handler():
    import subprocess
    import sys

    from .lambda_gateway import runtime_environment
    from .servers import ROOT

    env = {**runtime_environment(), "PYTHONPATH": str(ROOT), "REGISTRY_STORAGE": "inmemory",
           "REGISTRY_LOG_FORMATTER": "json", "REGISTRY_LOG_FIELDS_SERVICE": "registry"}
    out = subprocess.run([sys.executable, "-E", "-s", "-c", _LAMBDA_PROBE], cwd=str(ROOT), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.strip()]
    # without http.secret the api warns as it is built: that line, as JSON, with the request id
    warned = [d for d in lines if "http.secret" in d["msg"]]
    assert len(warned) == 1 and warned[0]["level"] == "warning" and warned[0]["logger"] == "stratus"
    assert all(d["service"] == "registry" and d["aws_request_id"] == "req-1" for d in lines)
