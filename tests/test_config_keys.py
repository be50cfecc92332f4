"""Every key the reference registry documents is implemented, refused or a warning.

KEYS is the "List of configuration options" of distribution/distribution's
docs/content/about/configuration.md (plus the keys its sections document beside that
list: validation.disabled, the tags section), one row per leaf with the example
value the documentation gives and Stratus's disposition:

* implemented: the value reaches the typed Config (the getter reads it back), and
  loading it logs no warning;
* refused: start-up fails with a ConfigError whose message starts with the key's path
  (list indices aside) and says it is not supported;
* cosmetic: the configuration loads and exactly one warning line names the key.

Each row is loaded on its own (with the siblings it needs to be valid), from a YAML
file as an operator would write it.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml

from chalicelib.config import COSMETIC_KEYS, REFUSED_KEYS, Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

IMPLEMENTED, REFUSED, COSMETIC = "implemented", "refused", "cosmetic"
Getter = Optional[Callable[[Config], Any]]


def _param(config: Config, path: str) -> Any:
    """storage.<driver>.a.b / auth.<method>.a.b read back from the driver's or method's parameters."""
    section, _, rest = path.split(".", 2)
    node: Any = config.storage.parameters if section == "storage" else config.auth.parameters  # type: ignore[union-attr]
    for part in rest.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


S = "storage"
# (key, documented example value, disposition, getter for implemented keys, expected typed value)
KEYS: list[tuple[str, Any, str, Getter, Any]] = [
    ("version", "0.1", IMPLEMENTED, lambda c: c.version, "0.1"),
    ("log.accesslog.disabled", True, IMPLEMENTED, lambda c: c.log.accesslog_disabled, True),
    ("log.level", "debug", IMPLEMENTED, lambda c: c.log.level, "debug"),
    ("log.formatter", "json", IMPLEMENTED, lambda c: c.log.formatter, "json"),
    ("log.fields.service", "registry", IMPLEMENTED, lambda c: c.log.fields["service"], "registry"),
    ("log.fields.environment", "staging", IMPLEMENTED, lambda c: c.log.fields["environment"], "staging"),
    ("log.hooks.0.type", "mail", REFUSED, None, None),
    ("log.hooks.0.disabled", True, COSMETIC, None, None),  # a disabled hook does nothing anyway
    ("log.hooks.0.levels.0", "panic", REFUSED, None, None),
    ("log.hooks.0.options.smtp.addr", "mail.example.com:25", REFUSED, None, None),
    ("log.hooks.0.options.smtp.username", "mailuser", REFUSED, None, None),
    ("log.hooks.0.options.smtp.password", "password", REFUSED, None, None),
    ("log.hooks.0.options.smtp.insecure", True, REFUSED, None, None),
    ("log.hooks.0.options.from", "sender@example.com", REFUSED, None, None),
    ("log.hooks.0.options.to.0", "errors@example.com", REFUSED, None, None),
    ("loglevel", "debug", IMPLEMENTED, lambda c: c.log.level, "debug"),
    ("storage.filesystem.rootdirectory", "/var/lib/registry", IMPLEMENTED, None, "/var/lib/registry"),
    ("storage.filesystem.maxthreads", 100, COSMETIC, None, None),
    ("storage.azure.accountname", "accountname", IMPLEMENTED, None, "accountname"),
    ("storage.azure.accountkey", "base64encodedaccountkey", IMPLEMENTED, None, "base64encodedaccountkey"),
    ("storage.azure.container", "containername", IMPLEMENTED, None, "containername"),
    ("storage.azure.rootdirectory", "/az/object/name/prefix", IMPLEMENTED, None, "/az/object/name/prefix"),
    ("storage.azure.credentials.type", "client_secret", IMPLEMENTED, None, "client_secret"),
    ("storage.azure.credentials.clientid", "client_id_string", IMPLEMENTED, None, "client_id_string"),
    ("storage.azure.credentials.tenantid", "tenant_id_string", IMPLEMENTED, None, "tenant_id_string"),
    ("storage.azure.credentials.secret", "secret_string", IMPLEMENTED, None, "secret_string"),
    ("storage.azure.max_retries", 10, IMPLEMENTED, None, 10),
    ("storage.azure.retry_delay", "100ms", IMPLEMENTED, None, "100ms"),
    ("storage.gcs.bucket", "bucketname", REFUSED, None, None),
    ("storage.gcs.keyfile", "/path/to/keyfile", REFUSED, None, None),
    *[(f"storage.gcs.credentials.{k}", "x", REFUSED, None, None) for k in (
        "type", "project_id", "private_key_id", "private_key", "client_email", "client_id", "auth_uri",
        "token_uri", "auth_provider_x509_cert_url", "client_x509_cert_url")],
    ("storage.gcs.rootdirectory", "/gcs/object/name/prefix", REFUSED, None, None),
    ("storage.gcs.chunksize", 5242880, REFUSED, None, None),
    *[(f"storage.s3.{k}", v, IMPLEMENTED, None, v) for k, v in (
        ("accesskey", "awsaccesskey"), ("secretkey", "awssecretkey"), ("region", "us-west-1"),
        ("regionendpoint", "http://myobjects.local"), ("forcepathstyle", True), ("accelerate", False),
        ("bucket", "bucketname"), ("encrypt", True), ("keyid", "mykeyid"), ("secure", True), ("v4auth", True),
        ("chunksize", 5242880), ("multipartcopychunksize", 33554432), ("multipartcopymaxconcurrency", 100),
        ("multipartcopythresholdsize", 33554432), ("rootdirectory", "/s3/object/name/prefix"),
        ("usedualstack", False), ("usefipsendpoint", False), ("loglevel", "debug"))],
    ("storage.inmemory", None, IMPLEMENTED, lambda c: c.storage.driver, "inmemory"),
    ("storage.tag.concurrencylimit", 8, COSMETIC, None, None),
    ("storage.delete.enabled", False, IMPLEMENTED, lambda c: c.storage.delete_enabled, False),
    ("storage.redirect.disable", True, IMPLEMENTED, lambda c: c.storage.redirect_disable, True),
    ("storage.cache.blobdescriptor", "redis", IMPLEMENTED, lambda c: c.storage.cache_blobdescriptor, "redis"),
    ("storage.cache.blobdescriptorsize", 5000, IMPLEMENTED, lambda c: c.storage.cache_blobdescriptor_size, 5000),
    ("storage.maintenance.uploadpurging.enabled", False, IMPLEMENTED,
     lambda c: c.storage.upload_purging.enabled, False),
    ("storage.maintenance.uploadpurging.age", "168h", IMPLEMENTED, lambda c: c.storage.upload_purging.age, 168 * 3600),
    ("storage.maintenance.uploadpurging.interval", "12h", IMPLEMENTED,
     lambda c: c.storage.upload_purging.interval, 12 * 3600),
    ("storage.maintenance.uploadpurging.dryrun", True, IMPLEMENTED, lambda c: c.storage.upload_purging.dryrun, True),
    ("storage.maintenance.readonly.enabled", True, IMPLEMENTED, lambda c: c.storage.readonly, True),
    ("auth.silly.realm", "silly-realm", IMPLEMENTED, None, "silly-realm"),
    ("auth.silly.service", "silly-service", IMPLEMENTED, None, "silly-service"),
    ("auth.token.autoredirect", True, REFUSED, None, None),
    ("auth.token.realm", "token-realm", IMPLEMENTED, None, "token-realm"),
    ("auth.token.service", "token-service", IMPLEMENTED, None, "token-service"),
    ("auth.token.issuer", "registry-token-issuer", IMPLEMENTED, None, "registry-token-issuer"),
    ("auth.token.rootcertbundle", "/root/certs/bundle", IMPLEMENTED, None, "/root/certs/bundle"),
    ("auth.token.jwks", "/path/to/jwks", IMPLEMENTED, None, "/path/to/jwks"),
    ("auth.token.signingalgorithms.0", "EdDSA", IMPLEMENTED, None, "EdDSA"),
    ("auth.token.signingalgorithms.1", "HS256", IMPLEMENTED, None, "HS256"),  # refused by the controller
    ("auth.htpasswd.realm", "basic-realm", IMPLEMENTED, None, "basic-realm"),
    ("auth.htpasswd.path", "/path/to/htpasswd", IMPLEMENTED, None, "/path/to/htpasswd"),
    ("middleware.registry.0.name", "ARegistryMiddleware", REFUSED, None, None),
    ("middleware.registry.0.options.foo", "bar", REFUSED, None, None),
    ("middleware.repository.0.name", "ARepositoryMiddleware", REFUSED, None, None),
    ("middleware.repository.0.options.foo", "bar", REFUSED, None, None),
    ("middleware.storage.0.name", "cloudfront", REFUSED, None, None),
    *[(f"middleware.storage.0.options.{k}", v, REFUSED, None, None) for k, v in (
        ("baseurl", "https://my.cloudfronted.domain.com/"), ("privatekey", "/path/to/pem"),
        ("keypairid", "cloudfrontkeypairid"), ("duration", "3000s"), ("ipfilteredby", "awsregion"),
        ("awsregion", "us-east-1, use-east-2"), ("updatefrequency", "12h"),
        ("iprangesurl", "https://ip-ranges.amazonaws.com/ip-ranges.json"))],
    ("catalog.maxentries", 1000, IMPLEMENTED, lambda c: c.catalog.maxentries, 1000),
    ("tags.maxtags", 1000, COSMETIC, None, None),
    ("http.addr", "localhost:5000", IMPLEMENTED, lambda c: c.http.addr, "localhost:5000"),
    ("http.net", "unix", IMPLEMENTED, lambda c: (c.http.net, c.http.addr), ("unix", "/run/registry.sock")),
    ("http.prefix", "/my/nested/registry/", IMPLEMENTED, lambda c: c.http.prefix, "/my/nested/registry/"),
    ("http.host", "https://myregistryaddress.org:5000", IMPLEMENTED, lambda c: c.http.host,
     "https://myregistryaddress.org:5000"),
    ("http.secret", "asecretforlocaldevelopment", IMPLEMENTED, lambda c: c.http.secret, "asecretforlocaldevelopment"),
    ("http.relativeurls", True, IMPLEMENTED, lambda c: c.http.relativeurls, True),
    ("http.draintimeout", "60s", IMPLEMENTED, lambda c: c.http.draintimeout, 60),
    ("http.tls.certificate", "/path/to/x509/public", IMPLEMENTED, lambda c: c.http.tls.certificate,
     "/path/to/x509/public"),
    ("http.tls.key", "/path/to/x509/private", IMPLEMENTED, lambda c: c.http.tls.key, "/path/to/x509/private"),
    ("http.tls.clientcas.0", "/path/to/ca.pem", IMPLEMENTED, lambda c: c.http.tls.clientcas[0], "/path/to/ca.pem"),
    ("http.tls.clientcas.1", "/path/to/another/ca.pem", IMPLEMENTED, lambda c: c.http.tls.clientcas[1],
     "/path/to/another/ca.pem"),
    ("http.tls.clientauth", "require-and-verify-client-cert", IMPLEMENTED, lambda c: c.http.tls.clientauth,
     "require-and-verify-client-cert"),
    ("http.tls.minimumtls", "tls1.2", IMPLEMENTED, lambda c: c.http.tls.minimumtls, "tls1.2"),
    ("http.tls.ciphersuites.0", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", IMPLEMENTED,
     lambda c: c.http.tls.ciphersuites[0], "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    ("http.tls.letsencrypt.cachefile", "/path/to/cache-file", REFUSED, None, None),
    ("http.tls.letsencrypt.email", "emailused@letsencrypt.com", REFUSED, None, None),
    ("http.tls.letsencrypt.hosts.0", "myregistryaddress.org", REFUSED, None, None),
    ("http.tls.letsencrypt.directoryurl", "https://acme-v02.api.letsencrypt.org/directory", REFUSED, None, None),
    ("http.debug.addr", "localhost:5001", IMPLEMENTED, lambda c: c.http.debug.addr, "localhost:5001"),
    ("http.debug.prometheus.enabled", True, IMPLEMENTED, lambda c: c.http.debug.prometheus_enabled, True),
    ("http.debug.prometheus.path", "/metricz", IMPLEMENTED, lambda c: c.http.debug.prometheus_path, "/metricz"),
    ("http.headers.X-Content-Type-Options.0", "nosniff", IMPLEMENTED,
     lambda c: c.http.headers["X-Content-Type-Options"], ["nosniff"]),
    ("http.http2.disabled", False, COSMETIC, None, None),
    ("http.h2c.enabled", False, COSMETIC, None, None),
    ("notifications.events.includereferences", True, IMPLEMENTED, lambda c: c.notifications.include_references, True),
    ("notifications.endpoints.0.name", "alistener", IMPLEMENTED, lambda c: c.notifications.endpoints[0].name,
     "alistener"),
    ("notifications.endpoints.0.disabled", True, IMPLEMENTED, lambda c: c.notifications.endpoints[0].disabled, True),
    ("notifications.endpoints.0.url", "https://my.listener.com/event", IMPLEMENTED,
     lambda c: c.notifications.endpoints[0].url, "https://my.listener.com/event"),
    ("notifications.endpoints.0.headers.Authorization.0", "Bearer x", IMPLEMENTED,
     lambda c: c.notifications.endpoints[0].headers["Authorization"], ["Bearer x"]),
    ("notifications.endpoints.0.timeout", "500ms", IMPLEMENTED, lambda c: c.notifications.endpoints[0].timeout, 0.5),
    ("notifications.endpoints.0.threshold", 5, IMPLEMENTED, lambda c: c.notifications.endpoints[0].threshold, 5),
    ("notifications.endpoints.0.backoff", "2s", IMPLEMENTED, lambda c: c.notifications.endpoints[0].backoff, 2.0),
    ("notifications.endpoints.0.ignoredmediatypes.0", "application/octet-stream", IMPLEMENTED,
     lambda c: c.notifications.endpoints[0].ignored_mediatypes, ("application/octet-stream",)),
    ("notifications.endpoints.0.ignore.mediatypes.0", "application/octet-stream", IMPLEMENTED,
     lambda c: c.notifications.endpoints[0].ignored_mediatypes, ("application/octet-stream",)),
    ("notifications.endpoints.0.ignore.actions.0", "pull", IMPLEMENTED,
     lambda c: c.notifications.endpoints[0].ignored_actions, ("pull",)),
    ("redis.tls.certificate", "/path/to/cert.crt", REFUSED, None, None),
    ("redis.tls.key", "/path/to/key.pem", REFUSED, None, None),
    ("redis.tls.rootcas.0", "/path/to/ca.pem", REFUSED, None, None),
    ("redis.addrs.0", "localhost:6379", IMPLEMENTED, lambda c: c.redis.addr, "localhost:6379"),
    ("redis.password", "asecret", IMPLEMENTED, lambda c: c.redis.password, "asecret"),
    ("redis.db", 3, IMPLEMENTED, lambda c: c.redis.db, 3),
    ("redis.dialtimeout", "10ms", IMPLEMENTED, lambda c: c.redis.dialtimeout, 0.01),
    ("redis.readtimeout", "10ms", IMPLEMENTED, lambda c: c.redis.readtimeout, 0.01),
    ("redis.writetimeout", "10ms", IMPLEMENTED, lambda c: c.redis.writetimeout, 0.01),
    ("redis.maxidleconns", 16, IMPLEMENTED, lambda c: c.redis.pool.maxidle, 16),
    ("redis.poolsize", 64, IMPLEMENTED, lambda c: c.redis.pool.maxactive, 64),
    ("redis.connmaxidletime", "300s", IMPLEMENTED, lambda c: c.redis.pool.idletimeout, 300),
    ("redis.tls.enabled", True, IMPLEMENTED, lambda c: c.redis.tls, True),
    ("health.storagedriver.enabled", True, IMPLEMENTED, lambda c: c.health.storagedriver.enabled, True),
    ("health.storagedriver.interval", "20s", IMPLEMENTED, lambda c: c.health.storagedriver.interval, 20),
    ("health.storagedriver.threshold", 3, IMPLEMENTED, lambda c: c.health.storagedriver.threshold, 3),
    ("health.file.0.file", "/path/to/checked/file", IMPLEMENTED, lambda c: c.health.file[0].file,
     "/path/to/checked/file"),
    ("health.file.0.interval", "20s", IMPLEMENTED, lambda c: c.health.file[0].interval, 20),
    ("health.http.0.uri", "http://server.to.check/must/return/200", IMPLEMENTED, lambda c: c.health.http[0].uri,
     "http://server.to.check/must/return/200"),
    ("health.http.0.headers.Authorization.0", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", IMPLEMENTED,
     lambda c: c.health.http[0].headers["Authorization"], ["Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="]),
    ("health.http.0.statuscode", 204, IMPLEMENTED, lambda c: c.health.http[0].statuscode, 204),
    ("health.http.0.timeout", "3s", IMPLEMENTED, lambda c: c.health.http[0].timeout, 3),
    ("health.http.0.interval", "20s", IMPLEMENTED, lambda c: c.health.http[0].interval, 20),
    ("health.http.0.threshold", 3, IMPLEMENTED, lambda c: c.health.http[0].threshold, 3),
    ("health.tcp.0.addr", "redis-server.domain.com:6379", IMPLEMENTED, lambda c: c.health.tcp[0].addr,
     "redis-server.domain.com:6379"),
    ("health.tcp.0.timeout", "4s", IMPLEMENTED, lambda c: c.health.tcp[0].timeout, 4),
    ("health.tcp.0.interval", "20s", IMPLEMENTED, lambda c: c.health.tcp[0].interval, 20),
    ("health.tcp.0.threshold", 3, IMPLEMENTED, lambda c: c.health.tcp[0].threshold, 3),
    ("proxy.remoteurl", "https://registry-1.docker.io", IMPLEMENTED, lambda c: c.proxy.upstreams[0].remoteurl,
     "https://registry-1.docker.io"),
    ("proxy.username", "username", IMPLEMENTED, lambda c: c.proxy.upstreams[0].username, "username"),
    ("proxy.password", "password", IMPLEMENTED, lambda c: c.proxy.upstreams[0].password, "password"),
    ("proxy.exec.command", "docker-credential-helper", REFUSED, None, None),
    ("proxy.exec.lifetime", "1h", REFUSED, None, None),
    ("proxy.ttl", "168h", IMPLEMENTED, lambda c: c.proxy.upstreams[0].ttl, 168 * 3600),
    ("validation.disabled", False, COSMETIC, None, None),
    ("validation.manifests.urls.allow.0", "^https?://([^/]+\\.)*example\\.com/", REFUSED, None, None),
    ("validation.manifests.urls.deny.0", "^https?://www\\.example\\.com/", REFUSED, None, None),
    ("validation.manifests.indexes.platforms", "List", REFUSED, None, None),
    ("validation.manifests.indexes.platformlist.0.architecture", "amd64", REFUSED, None, None),
    ("validation.manifests.indexes.platformlist.0.os", "linux", REFUSED, None, None),
]

# What a key needs beside it to be valid on its own (a check's required field ...).
NEEDS: list[tuple[str, dict[str, Any]]] = [
    ("storage.cache.blobdescriptor", {"redis": {"addr": "localhost:6379"}}),
    ("http.net", {"http": {"addr": "/run/registry.sock"}}),
    # a certificate needs its key and the other way round; clientcas and the rest need both
    ("http.tls", {"http": {"tls": {"certificate": "/path/to/x509/public", "key": "/path/to/x509/private"}}}),
    ("http.debug.prometheus", {"http": {"debug": {"addr": "localhost:5001"}}}),
    ("health.file.0", {"health": {"file": [{"file": "/path/to/checked/file"}]}}),
    ("health.http.0", {"health": {"http": [{"uri": "http://server.to.check/"}]}}),
    ("health.tcp.0", {"health": {"tcp": [{"addr": "redis-server.domain.com:6379"}]}}),
    # an upstream needs its URL, and credentials come in pairs
    ("proxy.", {"proxy": {"remoteurl": "https://registry-1.docker.io"}}),
    ("proxy.username", {"proxy": {"password": "password"}}),
    ("proxy.password", {"proxy": {"username": "username"}}),
    # an enabled endpoint needs both a name and a url
    ("notifications.endpoints.0", {"notifications": {"endpoints": [{"name": "alistener",
                                                                    "url": "https://my.listener.com/event"}]}}),
]


def _set(tree: Any, parts: list[str], value: Any) -> Any:
    """tree with value at the dotted parts; a numeric part indexes a list (earlier slots copied)."""
    head, rest = parts[0], parts[1:]
    if head.isdigit():
        items = list(tree) if isinstance(tree, list) else []
        index = int(head)
        while len(items) <= index:
            items.append(_set(None, rest, value) if rest else value)
        items[index] = _set(items[index], rest, value) if rest else value
        return items
    node = dict(tree) if isinstance(tree, dict) else {}
    node[head] = _set(node.get(head), rest, value) if rest else value
    return node


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = [_merge(x, y) if isinstance(x, dict) and isinstance(y, dict) else x
                        for x, y in zip(out[key], value)]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif key not in out:
            out[key] = value
    return out


def _tree(key: str, value: Any) -> dict:
    tree = _set({}, key.split("."), value)
    for prefix, extra in NEEDS:
        if key.startswith(prefix):
            tree = _merge(tree, extra)
    return tree


def _without_indexes(path: str) -> str:
    return ".".join(p for p in path.split(".") if not p.isdigit())


def _load(tmp_path: Path, key: str, value: Any) -> Config:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(_tree(key, value), sort_keys=False))
    return load_config(str(path), environ={})


def test_every_documented_key_has_one_disposition():
    keys = [row[0] for row in KEYS]
    assert len(keys) == len(set(keys))
    assert all(row[2] in (IMPLEMENTED, REFUSED, COSMETIC) for row in KEYS)
    # every table entry of config.py is met by some documented key (nothing stale there)
    refused_paths = {_without_indexes(k) for k, _, d, _, _ in KEYS if d == REFUSED}
    cosmetic_paths = {_without_indexes(k) for k, _, d, _, _ in KEYS if d == COSMETIC}
    former = ("policy", "compatibility", "reporting", "log.reportcaller", "validation.enabled")  # older docs
    for entry in REFUSED_KEYS:
        assert entry in former or any(p == entry or p.startswith(entry + ".") for p in refused_paths), entry
    for entry in COSMETIC_KEYS:
        if entry in REFUSED_KEYS:  # cosmetic only when disabled: test_disabled_endpoints_are_cosmetic
            continue
        assert entry in former or any(p == entry or p.startswith(entry + ".") for p in cosmetic_paths), entry


@pytest.mark.parametrize("key, value, disposition, getter, expected", KEYS, ids=[row[0] for row in KEYS])
def test_documented_key(tmp_path, caplog, key, value, disposition, getter, expected):
    caplog.set_level(logging.WARNING)
    if disposition == REFUSED:
        with pytest.raises(ConfigError) as raised:
            _load(tmp_path, key, value)
        message = str(raised.value)
        assert raised.value.key is not None and _without_indexes(raised.value.key) == _without_indexes(key), message
        assert message.startswith(raised.value.key) and "not supported by Stratus" in message
        return
    config = _load(tmp_path, key, value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if disposition == COSMETIC:
        named = [w for w in warnings if any(_without_indexes(key).startswith(e) and e in w for e in COSMETIC_KEYS)]
        assert len(warnings) == 1 and len(named) == 1, warnings
        return
    assert warnings == [], warnings
    read = getter(config) if getter is not None else _param(config, key)
    assert read == expected


def test_an_enabled_endpoint_without_a_url_is_refused_naming_it(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("notifications:\n  endpoints:\n    - name: a\n      url: http://a\n    - name: b\n")
    with pytest.raises(ConfigError, match=r"^notifications\.endpoints\.1\.url: "):
        load_config(str(path), environ={})


# Keys the access controller reads (and warns about) when it is built at start-up.
CONTROLLER_COSMETIC = [("autoredirect", False), ("autoredirectpath", "/auth/token")]


@pytest.mark.parametrize("key, value", CONTROLLER_COSMETIC)
def test_token_redirect_settings_are_one_warning_at_start_up(tmp_path, caplog, key, value):
    from chalicelib.auth import create_access_controller

    from .token_issuer import TokenIssuer

    caplog.set_level(logging.WARNING)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"auth": TokenIssuer().auth_config(tmp_path, **{key: value})}))
    config = load_config(str(path), environ={})
    assert create_access_controller(config.auth) is not None  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"auth.token.{key}" in warnings[0], warnings


@pytest.mark.parametrize(
    "variables, key",
    [
        ({"REGISTRY_HTTP_TLS_LETSENCRYPT_EMAIL": "ops@example.com"}, "http.tls.letsencrypt.email"),
        ({"REGISTRY_HTTP_TLS_CERTIFICATE": "/c.pem", "REGISTRY_HTTP_TLS_KEY": "/k.pem",
          "REGISTRY_HTTP_TLS_MINIMUMTLS": "tls1.1"}, "http.tls.minimumtls"),
        ({"REGISTRY_PROXY_REMOTEURL": "https://registry-1.docker.io", "REGISTRY_PROXY_EXEC_COMMAND": "helper"},
         "proxy.exec.command"),
    ],
)
def test_stratus_serve_refuses_to_start(tmp_path, variables, key):
    """The acceptance: REGISTRY_HTTP_TLS_* never leaves a plain-HTTP server running silently
    (HTTPS itself: tests/test_server_tls.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(variables, REGISTRY_STORAGE="inmemory", REGISTRY_HTTP_ADDR="127.0.0.1:0")
    done = subprocess.run([sys.executable, "-m", "chalicelib", "serve"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert re.search(rf"configuration error: {re.escape(key)} \(from REGISTRY_", done.stderr), done.stderr
