"""The proxy section: the reference's keys, Stratus's upstreams by prefix, environment
overrides, and every bad value refused at start-up naming its key."""
from __future__ import annotations

import pytest

from chalicelib.config import ConfigError, config_from_mapping, load_config
from chalicelib.registry.proxy.mirror import Proxies

HUB = "https://registry-1.docker.io"


def test_the_reference_section_is_one_upstream_for_every_repository() -> None:
    proxy = config_from_mapping({"proxy": {"remoteurl": HUB + "/", "username": "u", "password": "p",
                                           "ttl": "168h"}}).proxy
    [upstream] = proxy.upstreams
    assert (upstream.prefix, upstream.remoteurl, upstream.username, upstream.password, upstream.ttl) == (
        "", HUB, "u", "p", 168 * 3600)
    assert Proxies(proxy.upstreams).mirror_for("anything/at/all") is not None


def test_no_proxy_section_means_no_proxy() -> None:
    assert config_from_mapping({}).proxy.upstreams == []


def test_reference_environment_variables_configure_the_proxy() -> None:
    config = load_config(None, {"REGISTRY_PROXY_REMOTEURL": HUB, "REGISTRY_PROXY_USERNAME": "user",
                                "REGISTRY_PROXY_PASSWORD": "0123", "REGISTRY_PROXY_TTL": "90s"})
    [upstream] = config.proxy.upstreams
    # a password is the variable's text as written, not the YAML integer 83
    assert (upstream.remoteurl, upstream.username, upstream.password, upstream.ttl) == (HUB, "user", "0123", 90)


def test_a_password_parameter_stands_for_the_password_and_the_lease_ttl_is_read() -> None:
    config = load_config(None, {"REGISTRY_PROXY_REMOTEURL": HUB, "REGISTRY_PROXY_USERNAME": "user",
                                "REGISTRY_PROXY_PASSWORDPARAMETER": "/stratus/prod/hub-token",
                                "REGISTRY_PROXY_LEASETTL": "10s"})
    [upstream] = config.proxy.upstreams
    assert (upstream.username, upstream.password, upstream.passwordparameter) == (
        "user", None, "/stratus/prod/hub-token")
    assert config.proxy.leasettl == 10
    assert config_from_mapping({"proxy": {"remoteurl": HUB}}).proxy.leasettl == 30
    config = load_config(None, {
        "REGISTRY_PROXY_UPSTREAMS_0_PREFIX": "docker.io/", "REGISTRY_PROXY_UPSTREAMS_0_REMOTEURL": HUB,
        "REGISTRY_PROXY_UPSTREAMS_0_USERNAME": "hub",
        "REGISTRY_PROXY_UPSTREAMS_0_PASSWORDPARAMETER": "secretsmanager:hub-token"})
    assert config.proxy.upstreams[0].passwordparameter == "secretsmanager:hub-token"


def test_upstreams_by_prefix_from_environment_variables() -> None:
    config = load_config(None, {
        "REGISTRY_PROXY_UPSTREAMS_0_PREFIX": "docker.io/", "REGISTRY_PROXY_UPSTREAMS_0_REMOTEURL": HUB,
        "REGISTRY_PROXY_UPSTREAMS_1_PREFIX": "ghcr.io/", "REGISTRY_PROXY_UPSTREAMS_1_REMOTEURL": "https://ghcr.io",
        "REGISTRY_PROXY_UPSTREAMS_1_TTL": "1h",
    })
    assert [(u.prefix, u.remoteurl, u.ttl) for u in config.proxy.upstreams] == [
        ("docker.io/", HUB, 300.0), ("ghcr.io/", "https://ghcr.io", 3600.0)]


def test_the_longest_prefix_chooses_the_upstream_and_other_names_are_not_mirrored() -> None:
    proxies = Proxies(config_from_mapping({"proxy": {"upstreams": [
        {"prefix": "mirror/", "remoteurl": "https://a.example"},
        {"prefix": "mirror/special/", "remoteurl": "https://b.example"},
    ]}}).proxy.upstreams)
    assert proxies.mirror_for("mirror/special/x").config.remoteurl == "https://b.example"  # type: ignore[union-attr]
    assert proxies.mirror_for("mirror/x").config.remoteurl == "https://a.example"  # type: ignore[union-attr]
    assert proxies.mirror_for("mirrors/x") is None and proxies.mirror_for("team/app") is None


def test_docker_hub_single_names_get_library_and_the_prefix_is_dropped() -> None:
    proxies = Proxies(config_from_mapping({"proxy": {"upstreams": [
        {"prefix": "docker.io/", "remoteurl": HUB}, {"prefix": "ghcr.io/", "remoteurl": "https://ghcr.io"},
    ]}}).proxy.upstreams)
    hub, ghcr = proxies.mirror_for("docker.io/alpine"), proxies.mirror_for("ghcr.io/tool")
    assert hub is not None and ghcr is not None
    assert hub.remote_name("docker.io/alpine") == "library/alpine"
    assert hub.remote_name("docker.io/bitnami/redis") == "bitnami/redis"
    assert ghcr.remote_name("ghcr.io/tool") == "tool"  # only Docker Hub has library/


@pytest.mark.parametrize("proxy, key, expected", [
    ({"remoteurl": "ftp://example.com"}, "proxy.remoteurl", "an absolute http(s) URL"),
    ({"username": "u", "password": "p"}, "proxy.remoteurl", "the upstream registry's http(s) URL"),
    ({"remoteurl": HUB, "username": "u"}, "proxy.password", "username and password set together"),
    ({"remoteurl": HUB, "ttl": "soon"}, "proxy.ttl", ""),
    ({"remoteurl": HUB, "upstreams": [{"prefix": "a/", "remoteurl": HUB}]}, "proxy.remoteurl", "not both"),
    ({"upstreams": [{"prefix": "a", "remoteurl": HUB}]}, "proxy.upstreams.0.prefix", "ending in '/'"),
    ({"upstreams": [{"remoteurl": HUB}]}, "proxy.upstreams.0.prefix", "ending in '/'"),
    ({"upstreams": [{"prefix": "a/", "remoteurl": HUB}, {"prefix": "a/", "remoteurl": HUB}]},
     "proxy.upstreams", "a distinct prefix"),
    ({"upstreams": {"prefix": "a/"}}, "proxy.upstreams", "a list"),
    ({"remoteurl": HUB, "inlinelimit": "0"}, "proxy.inlinelimit", "positive"),
    ({"remoteurl": HUB, "leasettl": "0s"}, "proxy.leasettl", "positive"),
    ({"remoteurl": HUB, "username": "u", "password": "p", "passwordparameter": "/p"}, "proxy.passwordparameter",
     "not both"),
    ({"remoteurl": HUB, "passwordparameter": "/p"}, "proxy.username", "username and password set together"),
    ({"upstreams": [{"prefix": "a/", "remoteurl": HUB, "username": "u", "password": "p",
                     "passwordparameter": "/p"}]}, "proxy.upstreams.0.passwordparameter", "not both"),
    ({"remoteurl": HUB, "exec": {"command": "helper"}}, "proxy.exec.command", "not supported by Stratus"),
])
def test_bad_values_are_refused_naming_the_key(proxy: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_mapping({"proxy": proxy})
    assert str(raised.value).startswith(key), str(raised.value)
    assert expected in str(raised.value)
