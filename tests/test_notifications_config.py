"""The `notifications` section: registry:2's keys typed, Stratus's additions, and start-up
errors that name the key path; with no endpoint enabled the api is not wrapped at all."""
from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.config import ConfigError, load_config


def load(tmp_path: Path, text: str, environ: dict | None = None):
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_config(str(path), environ=environ or {})


REFERENCE_SECTION = """
notifications:
  events:
    includereferences: true
  endpoints:
    - name: alistener
      disabled: false
      url: https://my.listener.com/event
      headers:
        Authorization: [Bearer x]
      timeout: 500ms
      threshold: 5
      backoff: 1s
      ignoredmediatypes:
        - application/octet-stream
      ignore:
        mediatypes:
           - application/vnd.oci.image.manifest.v1+json
        actions:
           - pull
    - name: second
      disabled: true
"""


def test_reference_section_is_read_into_types(tmp_path: Path) -> None:
    section = load(tmp_path, REFERENCE_SECTION).notifications
    assert section.include_references is True
    first, second = section.endpoints
    assert (first.name, first.url, first.timeout, first.threshold, first.backoff) == (
        "alistener", "https://my.listener.com/event", 0.5, 5, 1.0)
    assert first.headers == {"Authorization": ["Bearer x"]}
    # ignoredmediatypes and ignore.mediatypes are one list, as the reference merges them
    assert first.ignored_mediatypes == ("application/octet-stream", "application/vnd.oci.image.manifest.v1+json")
    assert first.ignored_actions == ("pull",)
    assert first.ignores("pull", "x") and first.ignores("push", "application/octet-stream")
    assert not first.ignores("push", "application/vnd.docker.distribution.manifest.v2+json")
    assert second.disabled and section.active == (first,)


def test_the_reference_defaults(tmp_path: Path) -> None:
    (endpoint,) = load(tmp_path, "notifications:\n  endpoints:\n    - name: a\n      url: http://a/\n"
                       ).notifications.endpoints
    assert (endpoint.timeout, endpoint.threshold, endpoint.backoff) == (1.0, 10, 1.0)  # notifications/endpoint.go


def test_environment_overrides_an_endpoint(tmp_path: Path) -> None:
    section = load(tmp_path, REFERENCE_SECTION, {
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": "http://other:8080/hook",
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_THRESHOLD": "2"}).notifications
    assert (section.endpoints[0].url, section.endpoints[0].threshold) == ("http://other:8080/hook", 2)


@pytest.mark.parametrize("text, key", [
    ("notifications:\n  endpoints:\n    - name: a\n      url: ftp://a\n", r"notifications\.endpoints\.0\.url"),
    ("notifications:\n  endpoints:\n    - name: a\n", r"notifications\.endpoints\.0\.url"),
    ("notifications:\n  endpoints:\n    - url: http://a\n", r"notifications\.endpoints\.0\.name"),
    ("notifications:\n  endpoints:\n    - {name: a, url: 'http://a', timeout: soon}\n",
     r"notifications\.endpoints\.0\.timeout"),
    ("notifications:\n  endpoints:\n    - {name: a, url: 'http://a', threshold: many}\n",
     r"notifications\.endpoints\.0\.threshold"),
    ("notifications:\n  endpoints:\n    - {name: a, url: 'http://a', ignore: {actions: [pul]}}\n",
     r"notifications\.endpoints\.0\.ignore\.actions"),
    ("notifications:\n  endpoints:\n    - {name: a, url: 'http://a', ignoredmediatypes: [1]}\n",
     r"notifications\.endpoints\.0\.ignoredmediatypes"),
    ("notifications:\n  endpoints:\n    - {name: a, url: 'http://a'}\n    - {name: a, url: 'http://b'}\n",
     r"notifications\.endpoints"),
    ("notifications:\n  events:\n    includereferences: maybe\n", r"notifications\.events\.includereferences"),
    ("notifications:\n  queue:\n    size: 0\n", r"notifications\.queue\.size"),
    ("notifications:\n  delivery: later\n", r"notifications\.delivery"),
    ("notifications:\n  eventgrid:\n    key: k\n", r"notifications\.eventgrid\.endpoint"),
    ("notifications:\n  eventgrid:\n    endpoint: https://t/api/events\n    schema: xml\n",
     r"notifications\.eventgrid\.schema"),
])
def test_bad_values_stop_start_up_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}"):
        load(tmp_path, text)


def test_disabled_endpoint_needs_no_url(tmp_path: Path) -> None:
    section = load(tmp_path, "notifications:\n  endpoints:\n    - name: a\n      disabled: true\n").notifications
    assert section.active == ()


def test_nothing_is_wrapped_without_an_enabled_endpoint(tmp_path: Path) -> None:
    from chalicelib.api import RegistryAPI
    from chalicelib.bootstrap import build_api
    from chalicelib.notifications.api import NotifyingAPI

    root = tmp_path / "root"
    base = f"storage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  secret: s\n"
    assert type(build_api(load(tmp_path, base + "notifications:\n  endpoints:\n    - {name: a, disabled: true}\n"))) \
        is RegistryAPI
    api = build_api(load(tmp_path, base + "notifications:\n  endpoints:\n    - {name: a, url: 'http://127.0.0.1:9/'}\n"
                         "  queue:\n    directory: ''\n"))
    try:
        assert isinstance(api, NotifyingAPI)
        assert not (tmp_path / "root-notifications").exists()  # queue.directory "": in memory
    finally:
        api.notifier.stop(0.1)


def test_spool_defaults_beside_a_filesystem_root(tmp_path: Path) -> None:
    from chalicelib.notifications import spool_directory

    config = load(tmp_path, f"storage:\n  filesystem:\n    rootdirectory: {tmp_path}/data/\n")
    assert spool_directory(config) == f"{tmp_path}/data-notifications"
    config = load(tmp_path, "storage:\n  inmemory: {}\nnotifications:\n  queue:\n    directory: /var/spool/x\n")
    assert spool_directory(config) == "/var/spool/x"
    assert spool_directory(load(tmp_path, "storage:\n  inmemory: {}\n")) is None
