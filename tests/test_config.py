"""Configuration: reference-registry YAML files, REGISTRY_* overrides, clear errors."""
from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chalicelib.config import (
    AuthConfig,
    Config,
    ConfigError,
    config_from_mapping,
    load_config,
    parse_duration,
)
from chalicelib.durations import parse_size

REPO = Path(__file__).resolve().parent.parent

# A config a registry:2 user might bring, written the way the reference documents it.
REFERENCE_CONFIG = """\
version: 0.1
log:
  accesslog:
    disabled: true
  level: debug
  formatter: json
  fields:
    service: registry
    environment: staging
storage:
  s3:
    accesskey: awsaccesskey
    secretkey: awssecretkey
    region: us-west-1
    bucket: bucketname
    encrypt: true
    secure: true
    v4auth: true
    chunksize: 5242880
    rootdirectory: /s3/object/name/prefix
  delete:
    enabled: false
  redirect:
    disable: false
  cache:
    blobdescriptor: redis
    blobdescriptorsize: 5000
  maintenance:
    uploadpurging:
      enabled: true
      age: 72h
      interval: 12h
      dryrun: false
    readonly:
      enabled: false
  tag:
    concurrencylimit: 8
auth:
  htpasswd:
    realm: basic-realm
    path: /auth/htpasswd
http:
  addr: :5000
  prefix: /
  host: https://myregistryaddress.org:5000
  secret: asecretforlocaldevelopment
  relativeurls: false
  draintimeout: 60s
  debug:
    addr: localhost:5001
    prometheus:
      enabled: true
  headers:
    X-Content-Type-Options: [nosniff]
  http2:
    disabled: false
notifications:
  events:
    includereferences: true
  endpoints:
    - name: alistener
      disabled: true
      url: https://my.listener.com/event
      timeout: 1s
      threshold: 10
      backoff: 1s
redis:
  addr: localhost:6379
  password: asecret
  db: 0
  dialtimeout: 10ms
  readtimeout: 10ms
  writetimeout: 10ms
  pool:
    maxidle: 16
    maxactive: 64
    idletimeout: 300s
  tls:
    enabled: false
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
catalog:
  maxentries: 500
validation:
  disabled: false
compatibility:
  schema1:
    enabled: false
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=environ or {})


# ------------------------------------------------------------------ defaults


def test_no_file_and_no_environment_gives_the_defaults():
    config = load_config(environ={})

    assert config == Config()
    assert config.version == "0.1"
    assert (config.log.level, config.log.formatter) == ("info", "text")
    assert config.storage.driver == "filesystem"
    assert config.storage.parameters == {"rootdirectory": "/var/lib/registry"}
    assert config.storage.delete_enabled is True
    assert config.storage.redirect_disable is False
    assert config.storage.redirect_expiry == 20 * 60
    assert config.storage.cache_blobdescriptor == "inmemory"
    assert config.storage.cache_blobdescriptor_size == 10000
    purging = config.storage.upload_purging
    assert (purging.enabled, purging.age, purging.interval, purging.dryrun) == (True, 168 * 3600, 24 * 3600, False)
    assert config.storage.readonly is False
    assert config.http.addr == "127.0.0.1:5000"
    assert (config.http.host, config.http.secret, config.http.prefix, config.http.net) == (None, None, "/", "tcp")
    assert (config.http.chunk_min_length, config.http.chunk_max_length) == (0, None)
    assert config.http.headers == {} and config.http.relativeurls is False
    assert config.auth is None
    assert config.redis.addr is None and config.redis.db == 0 and config.redis.tls is False
    assert config.catalog.maxentries == 1000
    assert config.tracing.xray is False
    assert not config.notifications.active and not config.health.any and config.raw == {}


def test_loading_defaults_does_not_import_yaml():
    # Cold starts pay for PyYAML only when there is something to parse.
    code = (
        "import sys; from chalicelib.config import load_config; "
        "load_config(environ={}); print('yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_text(tmp_path, "") == Config()


def test_file_without_storage_section_defaults_to_filesystem(tmp_path):
    config = load_text(tmp_path, "version: 0.1\nstorage:\n  delete:\n    enabled: false\n")
    assert config.storage.driver == "filesystem"
    assert config.storage.parameters == {"rootdirectory": "/var/lib/registry"}
    assert config.storage.delete_enabled is False


# ------------------------------------------------------ a reference config file


def test_reference_registry_config_file_loads(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stratus.config"):
        config = load_text(tmp_path, REFERENCE_CONFIG)

    assert config.version == "0.1"
    assert config.log.level == "debug" and config.log.formatter == "json"
    assert config.log.fields == {"service": "registry", "environment": "staging"}
    assert config.log.accesslog_disabled is True

    storage = config.storage
    assert storage.driver == "s3"
    assert storage.parameters["bucket"] == "bucketname"
    assert storage.parameters["chunksize"] == 5242880
    assert storage.parameters["encrypt"] is True
    assert storage.delete_enabled is False
    assert storage.cache_blobdescriptor == "redis"
    assert storage.cache_blobdescriptor_size == 5000
    assert (storage.upload_purging.age, storage.upload_purging.interval) == (72 * 3600, 12 * 3600)
    assert storage.tag_concurrency_limit == 8

    assert config.auth == AuthConfig("htpasswd", {"realm": "basic-realm", "path": "/auth/htpasswd"})

    http = config.http
    assert http.addr == ":5000"
    assert http.prefix == "/"
    assert http.host == "https://myregistryaddress.org:5000"
    assert http.secret == "asecretforlocaldevelopment"
    assert http.headers == {"X-Content-Type-Options": ["nosniff"]}
    assert http.draintimeout == 60
    assert (http.debug.addr, http.debug.prometheus_enabled, http.debug.prometheus_path) == (
        "localhost:5001", True, "/metrics")

    redis = config.redis
    assert (redis.addr, redis.password, redis.db, redis.tls) == ("localhost:6379", "asecret", 0, False)
    assert (redis.dialtimeout, redis.readtimeout, redis.writetimeout) == (0.01, 0.01, 0.01)
    assert (redis.pool.maxidle, redis.pool.maxactive, redis.pool.idletimeout) == (16, 64, 300)

    assert config.notifications.endpoints[0].name == "alistener"
    assert (config.health.storagedriver.enabled, config.health.storagedriver.threshold) == (True, 3)
    assert config.health.storagedriver.interval == 10
    assert config.catalog.maxentries == 500

    # What Stratus does not act on but may safely ignore: one warning line each, naming it;
    # nothing else in a documented config is "unknown".
    warned = sorted(r.getMessage().split()[2] for r in caplog.records)
    assert warned == [
        "compatibility", "http.http2",
        "storage.tag.concurrencylimit", "validation.disabled",
    ], warned


@pytest.mark.parametrize(
    "text, key",
    [
        ("http:\n  tls:\n    letsencrypt:\n      email: ops@example.com", "http.tls.letsencrypt.email"),
        ("http:\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n    clientauth: require-any-client-cert",
         "http.tls.clientauth"),
        ("proxy:\n  remoteurl: https://registry-1.docker.io\n  exec:\n    command: helper", "proxy.exec.command"),
        ("validation:\n  manifests:\n    urls:\n      allow: ['^https://']", "validation.manifests.urls"),
    ],
)
def test_reference_keys_stratus_cannot_honour_are_refused(tmp_path, text, key):
    with pytest.raises(ConfigError) as raised:
        load_text(tmp_path, text)
    assert str(raised.value).startswith(key) and "not supported by Stratus" in str(raised.value)


def test_unknown_key_inside_a_section_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stratus.config"):
        config = load_text(tmp_path, "http:\n  adress: 0.0.0.0:5000\n")
    assert config.http.addr == "127.0.0.1:5000"
    assert "http.adress" in caplog.text


def test_unknown_top_level_key_warns_and_is_kept(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="stratus.config"):
        config = load_text(tmp_path, "version: 0.1\nfrobnicate:\n  level: 11\n")
    assert config.raw["frobnicate"] == {"level": 11}
    assert "frobnicate" in caplog.text


def test_short_forms_and_legacy_keys_of_the_reference(tmp_path):
    config = load_text(
        tmp_path,
        """\
        version: "0.1"
        loglevel: WARN
        storage: inmemory
        auth: silly
        """,
    )
    assert config.log.level == "warn"
    assert config.storage.driver == "inmemory" and config.storage.parameters == {}
    assert config.auth == AuthConfig("silly", {})


def test_layerinfo_is_an_alias_of_blobdescriptor(tmp_path):
    config = load_text(tmp_path, "storage:\n  inmemory:\n  cache:\n    layerinfo: inmemory\n")
    assert config.storage.cache_blobdescriptor == "inmemory"


def test_blob_descriptor_cache_can_be_turned_off(tmp_path):
    config = load_text(tmp_path, "storage:\n  cache:\n    blobdescriptor: none\n")
    assert config.storage.cache_blobdescriptor is None


def test_newer_reference_redis_keys_are_understood(tmp_path):
    config = load_text(
        tmp_path,
        """\
        redis:
          addrs: [cache.example.com:6379]
          maxidleconns: 4
          poolsize: 32
          connmaxidletime: 5m
          tls: true
        """,
    )
    assert config.redis.addr == "cache.example.com:6379"
    assert (config.redis.pool.maxidle, config.redis.pool.maxactive, config.redis.pool.idletimeout) == (4, 32, 300)
    assert config.redis.tls is True


def test_configuration_path_comes_from_the_environment(tmp_path):
    path = write(tmp_path, "http:\n  addr: 0.0.0.0:6000\n")
    config = load_config(environ={"REGISTRY_CONFIGURATION_PATH": path})
    assert config.http.addr == "0.0.0.0:6000"
    assert "configuration" not in config.raw  # not a configuration key


def test_explicit_path_wins_over_the_environment(tmp_path):
    chosen = write(tmp_path, "http:\n  addr: 0.0.0.0:6000\n", "a.yml")
    other = write(tmp_path, "http:\n  addr: 0.0.0.0:7000\n", "b.yml")
    config = load_config(chosen, environ={"REGISTRY_CONFIGURATION_PATH": other})
    assert config.http.addr == "0.0.0.0:6000"


def test_config_from_mapping_builds_without_a_file():
    config = config_from_mapping({"storage": {"inmemory": None}, "http": {"secret": "s"}})
    assert config.storage.driver == "inmemory" and config.http.secret == "s"


# ----------------------------------------------------- environment overrides


def test_env_sets_filesystem_rootdirectory(tmp_path):
    config = load_text(
        tmp_path,
        "storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n",
        {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/x"},
    )
    assert config.storage.parameters == {"rootdirectory": "/x"}
    assert config.raw["storage"]["filesystem"]["rootdirectory"] == "/x"


def test_env_sets_http_addr_without_a_file():
    config = load_config(environ={"REGISTRY_HTTP_ADDR": "127.0.0.1:5077"})
    assert config.http.addr == "127.0.0.1:5077"


def test_env_boolean_overrides_file(tmp_path):
    config = load_text(
        tmp_path,
        "storage:\n  delete:\n    enabled: true\n",
        {"REGISTRY_STORAGE_DELETE_ENABLED": "false"},
    )
    assert config.storage.delete_enabled is False


def test_env_storage_chooses_driver_and_keeps_settings(tmp_path):
    config = load_text(
        tmp_path,
        """\
        storage:
          filesystem:
            rootdirectory: /data
          delete:
            enabled: false
          cache:
            blobdescriptorsize: 42
          maintenance:
            readonly:
              enabled: true
        """,
        {"REGISTRY_STORAGE": "inmemory"},
    )
    assert config.storage.driver == "inmemory"
    assert config.storage.parameters == {}
    assert "filesystem" not in config.raw["storage"]
    assert config.storage.delete_enabled is False
    assert config.storage.cache_blobdescriptor_size == 42
    assert config.storage.readonly is True


def test_env_storage_then_parameters_apply_in_order(tmp_path):
    config = load_text(
        tmp_path,
        "storage:\n  filesystem:\n    rootdirectory: /data\n",
        {"REGISTRY_STORAGE_S3_BUCKET": "b", "REGISTRY_STORAGE_S3_REGION": "eu-west-1", "REGISTRY_STORAGE": "s3"},
    )
    assert config.storage.driver == "s3"
    assert config.storage.parameters == {"bucket": "b", "region": "eu-west-1"}


def test_env_storage_naming_the_same_driver_keeps_its_parameters(tmp_path):
    config = load_text(
        tmp_path, "storage:\n  filesystem:\n    rootdirectory: /data\n", {"REGISTRY_STORAGE": "filesystem"}
    )
    assert config.storage.parameters == {"rootdirectory": "/data"}


def test_env_auth_method_and_parameters(tmp_path):
    config = load_text(
        tmp_path,
        "auth:\n  token:\n    realm: https://auth.example.com/token\n",
        {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_PATH": "/etc/htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "r"},
    )
    assert config.auth == AuthConfig("htpasswd", {"path": "/etc/htpasswd", "realm": "r"})


def test_env_parameters_alone_create_the_auth_section():
    config = load_config(environ={"REGISTRY_AUTH_HTPASSWD_PATH": "/etc/htpasswd"})
    assert config.auth == AuthConfig("htpasswd", {"path": "/etc/htpasswd"})


def test_env_values_are_yaml_scalars():
    config = load_config(
        environ={
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTORSIZE": "5",
            "REGISTRY_HTTP_RELATIVEURLS": "true",
            "REGISTRY_REDIS_DIALTIMEOUT": "250ms",
            "REGISTRY_REDIS_ADDR": "redis:6379",
        }
    )
    assert config.storage.cache_blobdescriptor_size == 5
    assert config.http.relativeurls is True
    assert config.redis.dialtimeout == 0.25


def test_env_inline_mapping_and_list_values():
    config = load_config(
        environ={
            "REGISTRY_HTTP_HEADERS": "{X-Content-Type-Options: [nosniff], X-Frame-Options: [DENY]}",
            "REGISTRY_STORAGE": "{inmemory: {}, delete: {enabled: false}}",
        }
    )
    assert config.http.headers == {"X-Content-Type-Options": ["nosniff"], "X-Frame-Options": ["DENY"]}
    assert config.storage.driver == "inmemory" and config.storage.delete_enabled is False


def test_env_matches_keys_case_insensitively_and_creates_lowercase(tmp_path):
    config = load_text(
        tmp_path,
        "storage:\n  s3:\n    regionEndpoint: http://old\n",
        {"REGISTRY_STORAGE_S3_REGIONENDPOINT": "http://new", "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true"},
    )
    assert config.storage.parameters == {"regionEndpoint": "http://new", "forcepathstyle": True}


def test_env_underscored_keys_match_greedily(tmp_path):
    config = load_text(
        tmp_path,
        "storage:\n  azure:\n    max_retries: 3\n    max: 1\n",
        {"REGISTRY_STORAGE_AZURE_MAX_RETRIES": "10"},
    )
    assert config.storage.parameters == {"max_retries": 10, "max": 1}


def test_env_indexes_into_lists(tmp_path):
    config = load_text(
        tmp_path,
        "health:\n  tcp:\n    - addr: a:1\n      threshold: 2\n",
        {"REGISTRY_HEALTH_TCP_0_ADDR": "b:2", "REGISTRY_HEALTH_TCP_1_ADDR": "c:3"},
    )
    assert [(c.addr, c.threshold) for c in config.health.tcp] == [("b:2", 2), ("c:3", 1)]


@pytest.mark.parametrize("text", ["0123", "yes", "a #b", "@x%y!", "*alias", "k: v", "0x1F", "1_000"])
def test_env_string_keys_keep_the_text_as_written(text):
    # YAML would read these as an octal int, a bool, a comment, an error, a mapping...
    config = load_config(environ={"REGISTRY_HTTP_SECRET": text, "REGISTRY_REDIS_PASSWORD": text})
    assert (config.http.secret, config.redis.password) == (text, text)


def test_env_text_that_is_not_yaml_is_kept_as_a_string():
    config = load_config(environ={"REGISTRY_STORAGE_S3_SECRETKEY": "@secret{", "REGISTRY_STORAGE": "s3"})
    assert config.storage.parameters == {"secretkey": "@secret{"}


def test_unrelated_registry_variables_are_ignored(caplog):
    # Kubernetes injects these for a Service named "registry".
    environ = {
        "REGISTRY_PORT": "tcp://10.0.0.1:5000",
        "REGISTRY_PORT_5000_TCP_ADDR": "10.0.0.1",
        "REGISTRY_SERVICE_HOST": "10.0.0.1",
    }
    with caplog.at_level(logging.WARNING, logger="stratus.config"):
        config = load_config(environ=environ)
    assert config.raw == {}
    assert "REGISTRY_SERVICE_HOST" in caplog.text


def test_os_environ_is_the_default(monkeypatch):
    monkeypatch.setenv("REGISTRY_HTTP_ADDR", "127.0.0.1:5999")
    monkeypatch.delenv("REGISTRY_CONFIGURATION_PATH", raising=False)
    assert load_config().http.addr == "127.0.0.1:5999"


# -------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("version: 0.2", "version", "'0.1'"),
        ("log:\n  level: verbose", "log.level", "one of"),
        ("log:\n  formatter: xml", "log.formatter", "one of"),
        ("loglevel: loud", "loglevel", "one of"),
        ("storage:\n  delete:\n    enabled: maybe", "storage.delete.enabled", "a boolean"),
        ("storage:\n  delete:\n    enabled: 1", "storage.delete.enabled", "a boolean"),
        ("storage:\n  delete: true", "storage.delete", "a mapping"),
        ("storage:\n  redirect:\n    expiry: 20 minutes", "storage.redirect.expiry", "a duration"),
        ("storage:\n  redirect:\n    expiry: -5m", "storage.redirect.expiry", "positive duration"),
        ("storage:\n  redirect:\n    disable: no-thanks", "storage.redirect.disable", "a boolean"),
        ("storage:\n  cache:\n    blobdescriptor: memcached", "storage.cache.blobdescriptor", "one of"),
        ("storage:\n  cache:\n    blobdescriptorsize: -1", "storage.cache.blobdescriptorsize", ">= 1"),
        ("storage:\n  cache:\n    blobdescriptorsize: big", "storage.cache.blobdescriptorsize", "an integer"),
        ("storage:\n  cache:\n    blobdescriptor: redis", "storage.cache.blobdescriptor", "redis.addr"),
        ("storage:\n  cache:\n    blobdescriptor: redis\n    layerinfo: inmemory", "storage.cache", "disagree"),
        ("storage:\n  maintenance:\n    uploadpurging:\n      age: 1y", "storage.maintenance.uploadpurging.age", "unknown unit"),
        ("storage:\n  maintenance:\n    uploadpurging:\n      interval: 0s", "storage.maintenance.uploadpurging.interval", "positive"),
        ("storage:\n  maintenance:\n    readonly:\n      enabled: sometimes", "storage.maintenance.readonly.enabled", "a boolean"),
        ("storage:\n  tag:\n    concurrencylimit: -2", "storage.tag.concurrencylimit", ">= 0"),
        ("storage:\n  filesystem:\n    rootdirectory: /a\n  s3:\n    bucket: b", "storage", "exactly one storage driver"),
        ("storage:\n  s3: bucketname", "storage.s3", "a mapping of driver parameters"),
        ("storage: [filesystem]", "storage", "a storage driver name or a mapping"),
        ("auth:\n  htpasswd:\n    path: /a\n  token:\n    realm: r", "auth", "exactly one auth method"),
        ("auth:\n  htpassword:\n    path: /a", "auth", "htpasswd, token, silly, none"),
        ("auth:\n  htpasswd: /etc/htpasswd", "auth.htpasswd", "a mapping of parameters"),
        ("http:\n  addr: localhost", "http.addr", "host:port"),
        ("http:\n  addr: localhost:99999", "http.addr", "host:port"),
        ("http:\n  addr: ::1:5000", "http.addr", "host:port"),
        ("http:\n  net: udp", "http.net", "one of"),
        ("http:\n  net: unix", "http.addr", "socket path"),
        ("http:\n  debug:\n    addr: 5001", "http.debug.addr", "host:port"),
        ("http:\n  debug:\n    prometheus:\n      enabled: sometimes", "http.debug.prometheus.enabled", "a boolean"),
        ("health:\n  storagedriver:\n    interval: 0s", "health.storagedriver.interval", "positive"),
        ("health:\n  storagedriver:\n    threshold: 0", "health.storagedriver.threshold", ">= 1"),
        ("health:\n  tcp:\n    - addr: redis", "health.tcp.0.addr", "host:port"),
        ("health:\n  file: /tmp/x", "health.file", "a list"),
        ("log:\n  fields:\n    a: {b: c}", "log.fields", "scalar"),
        ("http:\n  host: registry.example.com", "http.host", "absolute"),
        ("http:\n  host: ftp://registry.example.com", "http.host", "absolute"),
        ("http:\n  prefix: v2/", "http.prefix", "starting with '/'"),
        ("http:\n  relativeurls: sure", "http.relativeurls", "a boolean"),
        ("http:\n  secret: [a, b]", "http.secret", "a string"),
        ("http:\n  headers: nosniff", "http.headers", "a mapping"),
        ("http:\n  headers:\n    X-A: {b: c}", "http.headers.X-A", "header values"),
        ("http:\n  chunkminlength: -1", "http.chunkminlength", "negative"),
        ("http:\n  chunkmaxlength: 0", "http.chunkmaxlength", "positive size"),
        ("http:\n  chunkmaxlength: 5 parsecs", "http.chunkmaxlength", "unknown unit"),
        ("http:\n  chunkminlength: 10MiB\n  chunkmaxlength: 5MiB", "http.chunkminlength", "larger than"),
        ("http:\n  draintimeout: soon", "http.draintimeout", "a duration"),
        ("redis:\n  addr: redis", "redis.addr", "host:port"),
        ("redis:\n  addr: redis:6379\n  db: -1", "redis.db", ">= 0"),
        ("redis:\n  addr: redis:6379\n  db: one", "redis.db", "an integer"),
        ("redis:\n  addr: redis:6379\n  tls: maybe", "redis.tls", "a boolean or a mapping"),
        ("redis:\n  addr: redis:6379\n  tls:\n    enabled: perhaps", "redis.tls.enabled", "a boolean"),
        ("redis:\n  addr: redis:6379\n  dialtimeout: 10", "", None),  # ints are seconds: fine
        ("redis:\n  addr: redis:6379\n  readtimeout: 10 ms", "redis.readtimeout", "unknown unit"),
        ("redis:\n  pool:\n    maxactive: -3", "redis.pool.maxactive", ">= 0"),
        ("redis:\n  pool:\n    idletimeout: forever", "redis.pool.idletimeout", "a duration"),
        ("redis:\n  addrs: [a:1, b:2]", "redis.addrs", "a single address"),
        ("catalog:\n  maxentries: 0", "catalog.maxentries", ">= 1"),
        ("catalog:\n  maxentries: lots", "catalog.maxentries", "an integer"),
        ("tracing:\n  xray: on-demand", "tracing.xray", "a boolean"),
        ("notifications: [a]", "notifications", "a mapping"),
        ("health: yes", "health", "a mapping"),
        ("http: 5000", "http", "a mapping"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(tmp_path, text, key, expected):
    if expected is None:
        load_text(tmp_path, text)
        return
    with pytest.raises(ConfigError) as raised:
        load_text(tmp_path, text)
    message = str(raised.value)
    assert message.startswith(key + ":") or message.startswith(key + " "), message
    assert expected in message
    assert raised.value.key.startswith(key)


def test_bad_boolean_message_reads_well(tmp_path):
    with pytest.raises(ConfigError, match=r"^storage\.delete\.enabled: expected a boolean \(true or false\), got 'maybe'$"):
        load_text(tmp_path, "storage:\n  delete:\n    enabled: maybe\n")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"^storage\.delete\.enabled \(from REGISTRY_STORAGE_DELETE_ENABLED\): expected a boolean"):
        load_config(environ={"REGISTRY_STORAGE_DELETE_ENABLED": "maybe"})


def test_env_adding_a_second_driver_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"exactly one storage driver, got filesystem \(from REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY\), s3"):
        load_text(tmp_path, "storage:\n  s3:\n    bucket: b\n", {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/x"})


def test_env_adding_a_second_auth_method_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="exactly one auth method, got htpasswd, token"):
        load_text(tmp_path, "auth:\n  token:\n    realm: r\n", {"REGISTRY_AUTH_HTPASSWD_PATH": "/x"})


def test_env_cannot_descend_into_a_scalar():
    with pytest.raises(ConfigError, match=r"^REGISTRY_HTTP_ADDR_PORT: cannot set a key inside http\.addr"):
        load_config(environ={"REGISTRY_HTTP_ADDR": "127.0.0.1:5000", "REGISTRY_HTTP_ADDR_PORT": "1"})


def test_env_list_index_must_be_a_number(tmp_path):
    with pytest.raises(ConfigError, match=r"^REGISTRY_NOTIFICATIONS_ENDPOINTS_FIRST_URL: notifications\.endpoints is a list"):
        load_text(
            tmp_path,
            "notifications:\n  endpoints:\n    - name: a\n",
            {"REGISTRY_NOTIFICATIONS_ENDPOINTS_FIRST_URL": "http://b"},
        )


def test_unparsable_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "version: 0.1\nhttp:\n  addr: [unclosed\n  secret: x\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    message = str(raised.value)
    # The parser notices the unclosed list where the next key starts.
    assert message.startswith(path + ": invalid YAML at line 4, column 9: ")


def test_yaml_tabs_error_names_the_line(tmp_path):
    path = write(tmp_path, "version: 0.1\nhttp:\n\taddr: :5000\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3"):
        load_config(path, environ={})


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- version: 0.1\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(path, environ={})


def test_unsafe_yaml_tags_are_rejected(tmp_path):
    path = write(tmp_path, "version: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML at line 1"):
        load_config(path, environ={})


def test_missing_file_is_an_error(tmp_path):
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"configuration file '.*nope\.yml' does not exist"):
        load_config(missing, environ={})


def test_missing_file_from_environment_names_the_variable(tmp_path):
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match=r"^REGISTRY_CONFIGURATION_PATH: configuration file"):
        load_config(environ={"REGISTRY_CONFIGURATION_PATH": missing})


# ----------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("20m", 1200.0),
        ("1h30m", 5400.0),
        ("100ms", 0.1),
        ("10s", 10.0),
        ("168h", 604800.0),
        ("1.5h", 5400.0),
        ("2h45m30.5s", 9930.5),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("300us", 0.0003),
        ("300µs", 0.0003),
        ("300μs", 0.0003),
        ("1500ns", 0.0000015),
        ("0", 0.0),
        ("-1m", -60.0),
        ("+1m", 60.0),
        (10, 10.0),
        (0, 0.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("", "empty"),
        ("-", "empty"),
        ("10", "missing unit"),
        ("1.5", "missing unit"),
        ("5x", "unknown unit"),
        ("5S", "unknown unit"),
        ("1d", "unknown unit"),
        ("5 s", "unknown unit"),
        (" 5s", "a number"),
        (".s", "a number"),
        ("h", "a number"),
        ("1h-30m", "unknown unit"),
        ("3000000h", "too long"),
        (True, "got True"),
        (None, "got None"),
        ([1], "got [1]"),
        (float("nan"), "got nan"),
    ],
)
def test_parse_duration_rejects(value, reason):
    with pytest.raises(ValueError, match="expected a duration") as raised:
        parse_duration(value)
    assert reason in str(raised.value)


@pytest.mark.parametrize(
    "value, size",
    [
        (0, 0),
        (5242880, 5242880),
        ("5MiB", 5 * 2**20),
        ("5 mib", 5 * 2**20),
        ("100MB", 100 * 10**6),
        ("4.5MiB", 4718592),
        ("1kB", 1000),
        ("2KiB", 2048),
        ("1GiB", 2**30),
        ("12", 12),
        ("12B", 12),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [-1, "-1MiB", "5 parsecs", "MiB", True, 1.5, None, ""])
def test_parse_size_rejects(value):
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(value)


# -- storage.directupload -------------------------------------------------------------------


def test_directupload_defaults_leave_enabled_to_the_platform():
    direct = load_config(environ={}).storage.directupload
    assert direct.enabled is None  # bootstrap: on on Lambda; the Functions adapter: on
    assert (direct.partsize, direct.expiry, direct.verifytime) == (16 << 20, 20 * 60, 20)


def test_directupload_from_file_and_environment(tmp_path):
    text = "storage:\n  s3:\n    bucket: b\n  directupload:\n    enabled: false\n    partsize: 64MiB\n    expiry: 1h\n"
    path = tmp_path / "config.yml"
    path.write_text(text)
    config = load_config(str(path), environ={
        "REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true", "REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME": "25s",
    })
    direct = config.storage.directupload
    assert config.storage.driver == "s3"  # directupload is a setting, not a second driver
    assert (direct.enabled, direct.partsize, direct.expiry, direct.verifytime) == (True, 64 << 20, 3600, 25)


def test_directupload_readsize_bounds_the_read_back_memory(tmp_path):
    from chalicelib.bootstrap import direct_upload_options

    path = tmp_path / "config.yml"
    path.write_text("storage:\n  s3:\n    bucket: b\n  directupload:\n    enabled: true\n    readsize: 64MiB\n")
    options = direct_upload_options(load_config(str(path), environ={}))
    assert (options.read_size, options.readers) == (64 << 20, 2)  # 128 MiB in flight at most
    assert direct_upload_options(load_config(environ={"REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true"})).readers == 8
    path.write_text("storage:\n  s3:\n    bucket: b\n  directupload:\n    readsize: 256MiB\n")
    with pytest.raises(ConfigError, match=r"^storage\.directupload\.readsize: "):
        load_config(str(path), environ={})


def test_env_storage_keeps_the_directupload_section(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("storage:\n  filesystem: {}\n  directupload:\n    partsize: 32MiB\n")
    config = load_config(str(path), environ={"REGISTRY_STORAGE": "azure"})
    assert config.storage.driver == "azure" and config.storage.directupload.partsize == 32 << 20


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("storage:\n  directupload:\n    enabled: often", "storage.directupload.enabled", "a boolean"),
        ("storage:\n  directupload: true", "storage.directupload", "a mapping"),
        ("storage:\n  directupload:\n    partsize: 0", "storage.directupload.partsize", "positive size"),
        ("storage:\n  directupload:\n    partsize: huge", "storage.directupload.partsize", "size"),
        ("storage:\n  s3:\n    bucket: b\n  directupload:\n    partsize: 1MiB", "storage.directupload.partsize",
         "between 5242880 and 5368709120 bytes for the s3 driver"),
        ("storage:\n  s3:\n    bucket: b\n  directupload:\n    partsize: 6GiB", "storage.directupload.partsize",
         "for the s3 driver"),
        ("storage:\n  azure:\n    container: c\n  directupload:\n    partsize: 5000MiB",
         "storage.directupload.partsize", "for the azure driver"),
        ("storage:\n  directupload:\n    expiry: 0s", "storage.directupload.expiry", "positive duration"),
        ("storage:\n  directupload:\n    expiry: 200h", "storage.directupload.expiry", "at most 7 days"),
        ("storage:\n  directupload:\n    expiry: 10ms", "storage.directupload.expiry", "at least 1s"),
        ("storage:\n  directupload:\n    verifytime: -1s", "storage.directupload.verifytime", "positive duration"),
        ("storage:\n  directupload:\n    verifytime: a while", "storage.directupload.verifytime", "a duration"),
    ],
)
def test_bad_directupload_values_name_the_key(tmp_path, text, key, expected):
    with pytest.raises(ConfigError) as raised:
        load_text(tmp_path, text)
    message = str(raised.value)
    assert message.startswith(key + ":"), message
    assert expected in message
    assert raised.value.key == key


def test_bad_directupload_env_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"^storage\.directupload\.partsize \(from REGISTRY_STORAGE_DIRECTUPLOAD_PARTSIZE\)"):
        load_config(environ={"REGISTRY_STORAGE_DIRECTUPLOAD_PARTSIZE": "lots"})
