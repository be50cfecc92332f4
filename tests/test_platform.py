"""bootstrap's one owner of the process (Stratus) and its platform policy (Platform):
each front's limits in one place, the api built once, maintenance without an api."""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest

from chalicelib.bootstrap import LAMBDA, SERVER, Stratus, detect_platform, functions_platform
from chalicelib.config import ConfigError, config_from_mapping, load_config

MiB = 1 << 20


def test_chunk_limits_per_platform(caplog):
    default = config_from_mapping({})
    configured = config_from_mapping({"http": {"chunkmaxlength": 200 * MiB}})
    assert SERVER.apply(default).http.chunk_max_length is None
    assert LAMBDA.apply(default).http.chunk_max_length == 4 * MiB
    assert LAMBDA.apply(configured).http.chunk_max_length == 200 * MiB  # the operator's, as before
    functions = functions_platform({})
    assert functions.apply(default).http.chunk_max_length == 104_857_600
    with caplog.at_level(logging.WARNING):
        assert functions.apply(configured).http.chunk_max_length == 104_857_600  # the host would refuse more
    assert "exceeds the functions request limit" in caplog.text
    raised = functions_platform({"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": str(300 * MiB)})
    assert raised.apply(configured).http.chunk_max_length == 200 * MiB
    assert functions.apply(functions.apply(default)) == functions.apply(default)  # applying twice: the same


def test_direct_uploads_default_on_where_requests_are_limited():
    default = config_from_mapping({})
    off = config_from_mapping({"storage": {"directupload": {"enabled": False}}})
    assert SERVER.apply(default).storage.directupload.enabled is False
    assert LAMBDA.apply(default).storage.directupload.enabled is True
    assert functions_platform({}).apply(default).storage.directupload.enabled is True
    assert LAMBDA.apply(off).storage.directupload.enabled is False


def test_detect_platform():
    assert detect_platform({"AWS_LAMBDA_FUNCTION_NAME": "stratus"}) is LAMBDA
    assert detect_platform({}) is SERVER


@pytest.mark.parametrize("platform", [LAMBDA, functions_platform({})], ids=["lambda", "functions"])
def test_client_certificates_are_refused_where_the_front_ends_tls(platform, caplog):
    tls = {"certificate": "/c.pem", "key": "/k.pem"}
    with pytest.raises(ConfigError, match=r"^http\.tls\.clientcas: not supported by Stratus on "):
        platform.apply(config_from_mapping({"http": {"tls": {**tls, "clientcas": ["/ca.pem"]}}}))
    with caplog.at_level(logging.WARNING):
        platform.apply(config_from_mapping({"http": {"tls": tls}}))
    assert f"http.tls is not applied on {platform.name}" in caplog.text


def test_the_api_is_built_once_whoever_asks_first(tmp_path):
    owner = Stratus(config_from_mapping({"storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
                                         "http": {"secret": "s"}}))
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(owner.api)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(api) for api in seen}) == 1
    assert owner.storage()[0] is owner.api.registry.driver  # maintenance uses the api's storage


def test_load_names_the_bad_key(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("http:\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n    minimumtls: tls1.9\n")
    with pytest.raises(ConfigError, match=r"^http\.tls\.minimumtls: "):
        Stratus.load(str(path), environ={})


def _abandoned_upload(root, repo: str, uuid: str, days: int) -> None:
    upload = root / "docker/registry/v2/repositories" / repo / "_uploads" / uuid
    upload.mkdir(parents=True)
    (upload / "data").write_bytes(b"x")
    started = datetime.now(timezone.utc) - timedelta(days=days)
    (upload / "startedat").write_text(started.strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_scheduled_maintenance_needs_no_api(tmp_path):
    _abandoned_upload(tmp_path, "app", "0b8f6f0e-0000-4000-8000-000000000001", days=8)
    _abandoned_upload(tmp_path, "app", "0b8f6f0e-0000-4000-8000-000000000002", days=1)
    owner = Stratus(load_config(environ={"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path)}))
    result = owner.purge_uploads()
    assert [path.rsplit("/", 1)[1] for path in result["purged"]] == ["0b8f6f0e-0000-4000-8000-000000000001"]
    summary = owner.collect_garbage()
    assert isinstance(summary, dict)
    assert owner._api is None  # neither built an api (nor needed http.secret)
    readonly = Stratus(load_config(environ={"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path),
                                            "REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": "true"}))
    assert readonly.purge_uploads() == {"purged": [], "dryrun": False, "skipped": "readonly"}
