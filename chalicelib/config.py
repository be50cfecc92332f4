"""Registry configuration: a YAML file shaped like the reference registry's, plus
``REGISTRY_*`` environment overrides, validated once at start-up.

The file has the reference registry's (distribution/distribution) sections:
``version``, ``log``, ``storage`` (one driver plus ``delete``, ``redirect``,
``cache``, ``maintenance``, ``tag``), ``auth``, ``http``, ``redis``,
``notifications``, ``health``, ``catalog``, ``tags``, and Stratus's ``tracing`` and
``metrics``. Every key the reference documents is implemented, refused at start-up
with its path named (REFUSED_KEYS: what an operator would rely on and Stratus does
not do, security-relevant keys such as ``http.tls`` always among them), or accepted
with one warning line (COSMETIC_KEYS); docs/configuration.md has the table.

Every bad value raises ``ConfigError`` whose message starts with the key path
(and the environment variable, when one set it) and says what was expected.

Stratus defaults that differ from the reference registry on purpose:
``storage.delete.enabled`` is true; ``storage.cache.blobdescriptor`` is
``inmemory`` (not "no cache"); ``http.addr`` is ``127.0.0.1:5000``; a bare
number as a duration means seconds (the reference reads nanoseconds).

Heavy imports stay out: PyYAML is imported only when a file or a ``REGISTRY_*``
variable has to be parsed, so a Lambda configured by defaults never loads it.
"""
from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .durations import parse_duration, parse_size
from .notifications.config import NotificationsConfig

__all__ = [
    "AuthConfig",
    "CatalogConfig",
    "Config",
    "DirectUploadConfig",
    "ConfigError",
    "HTTPConfig",
    "LogConfig",
    "RedisConfig",
    "RedisPoolConfig",
    "StorageConfig",
    "DebugConfig",
    "HealthConfig",
    "MetricsConfig",
    "TLSConfig",
    "TracingConfig",
    "UploadPurgingConfig",
    "config_from_mapping",
    "load_config",
    "parse_duration",
    "parse_size",
]

log = logging.getLogger("stratus.config")

CONFIG_PATH_ENV = "REGISTRY_CONFIGURATION_PATH"
ENV_PREFIX = "REGISTRY_"
SUPPORTED_VERSIONS = ("0.1",)
LOG_LEVELS = ("error", "warn", "info", "debug")
LOG_FORMATTERS = ("text", "json")
AUTH_METHODS = ("htpasswd", "token", "silly", "none")
BLOB_DESCRIPTOR_CACHES = ("inmemory", "redis")
# Keys under `storage` that configure the registry, not a driver.
STORAGE_SETTINGS = ("delete", "redirect", "cache", "maintenance", "tag", "directupload")
DEFAULT_ROOTDIRECTORY = "/var/lib/registry"

# Top-level sections Stratus reads, and those the reference defines that Stratus
# accepts without acting on them (kept in `raw`, warned about).
_SECTIONS = (
    "version", "log", "loglevel", "storage", "auth", "http", "redis",
    "notifications", "health", "catalog", "tracing", "metrics", "tags", "proxy",
)
# Sections of the reference (current or former) that Stratus does not implement:
# each is refused or warned about by _account_for_unimplemented below.
_REFERENCE_ONLY_SECTIONS = (
    "middleware", "reporting", "compatibility", "validation", "policy",
)


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range.

    ``key`` is the dotted key path (``storage.delete.enabled``) when the error is
    about one key, else None; the message always starts with it.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------- model


@dataclass
class LogConfig:
    level: str = "info"  # error | warn | info | debug
    formatter: str = "text"  # text | json
    fields: dict[str, Any] = field(default_factory=dict)  # static fields on every line
    accesslog_disabled: bool = False  # log.accesslog.disabled


@dataclass
class UploadPurgingConfig:
    enabled: bool = True
    age: float = 168 * 3600.0  # seconds an upload may sit before it is purged
    interval: float = 24 * 3600.0  # seconds between purges
    dryrun: bool = False


MiB = 1 << 20
# storage.directupload.partsize limits per driver: S3 UploadPart takes 5 MiB to 5 GiB
# (all parts but the last); an Azure block is at most 4000 MiB.
DIRECT_PART_SIZE_LIMITS = {"s3": (5 * MiB, 5 << 30), "azure": (1, 4000 * MiB)}
DIRECT_EXPIRY_MAX = 7 * 24 * 3600.0  # the longest an S3 presigned URL may live
# What a read-back holds in memory at most: readers x readsize (a function has ~1 GiB)
DIRECT_READ_BUDGET = 128 * MiB


@dataclass
class DirectUploadConfig:
    """storage.directupload: presigned part URLs for an upload's bytes (docs/direct-uploads.md)."""

    enabled: bool | None = None  # None: on where the platform limits requests (Lambda, Functions)
    partsize: int = 16 * MiB  # part size when the client proposes none
    expiry: float = 20 * 60.0  # seconds each part URL stays valid
    verifytime: float = 20.0  # seconds one PUT may spend verifying before it answers 202
    readsize: int = 16 * MiB  # bytes per ranged read of the read-back


@dataclass(frozen=True)
class RetentionPolicy:
    """storage.maintenance.retention.policies[i]: applied by `stratus gc` to the
    repositories whose name matches the glob `repositories` (the first policy that
    matches a repository is its policy)."""

    repositories: str = "*"
    keeptags: int | None = None  # keep the newest N tags by push time, untag the rest
    untaggedage: float | None = None  # delete untagged manifests older than this (seconds)


@dataclass(frozen=True)
class ImmutableTagRule:
    """storage.tag.immutable[i]: in the repositories whose name matches the glob
    `repository`, a tag matching the glob `tags` is neither moved nor deleted once
    pushed. Globs are path globs: `*` and `?` stay inside one path segment, `**`
    crosses `/`, `[...]` is a class (a tag has no `/`, so there `*` is fnmatch's)."""

    repository: str
    tags: str = "*"

    def matches(self, name: str, tag: str) -> bool:
        return _path_glob(self.repository).fullmatch(name) is not None and \
            _path_glob(self.tags).fullmatch(tag) is not None


_GLOBS: dict[str, "re.Pattern[str]"] = {}


def _path_glob(pattern: str) -> "re.Pattern[str]":
    """A path glob as a regular expression (compiled once); ValueError for an unclosed class."""
    compiled = _GLOBS.get(pattern)
    if compiled is None:
        compiled = _GLOBS[pattern] = re.compile(_glob_regex(pattern))
    return compiled


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                raise ValueError(f"unclosed [ in {pattern!r}")
            body = pattern[i + 1:end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass
class StorageConfig:
    driver: str = "filesystem"
    # The driver's own parameters, unvalidated: the driver checks its keys.
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"rootdirectory": DEFAULT_ROOTDIRECTORY}
    )
    delete_enabled: bool = True  # the reference defaults to False
    redirect_disable: bool = False
    redirect_expiry: float = 20 * 60.0  # seconds a presigned URL stays valid
    cache_blobdescriptor: str | None = "inmemory"  # "inmemory" | "redis" | None (off)
    cache_blobdescriptor_size: int = 10000
    upload_purging: UploadPurgingConfig = field(default_factory=UploadPurgingConfig)
    readonly: bool = False  # storage.maintenance.readonly.enabled
    # storage.maintenance.gc.graceperiod: gc never deletes blobs or manifests younger
    gc_graceperiod: float = 3600.0
    retention: tuple[RetentionPolicy, ...] = ()  # storage.maintenance.retention.policies
    tag_concurrency_limit: int = 0  # storage.tag.concurrencylimit; 0 = implementation default
    tag_immutable: tuple[ImmutableTagRule, ...] = ()  # storage.tag.immutable
    # storage.maintenance.gc.{enabled,dryrun,deleteuntagged,budget,interval}: the scheduled gc
    # (Lambda, Azure timer); budget None = the invocation's remaining time
    gc_enabled: bool = True
    gc_dryrun: bool = False
    gc_deleteuntagged: bool = False
    gc_budget: float | None = None
    gc_interval: float = 24 * 3600.0  # a scheduled invocation starts a new run this long after the last ended
    directupload: DirectUploadConfig = field(default_factory=DirectUploadConfig)


@dataclass
class HTTPConfig:
    addr: str = "127.0.0.1:5000"  # host:port for tcp, a socket path for unix
    host: str | None = None  # external base URL for Location headers
    prefix: str = "/"  # always starts and ends with "/"
    secret: str | None = None  # None: the server generates one and warns
    # http.secretparameter: an SSM parameter or Secrets Manager secret holding http.secret
    # (aws_runtime; STRATUS_HTTP_SECRET_PARAMETER wins)
    secretparameter: str | None = None
    relativeurls: bool = False
    headers: dict[str, list[str]] = field(default_factory=dict)
    chunk_min_length: int = 0  # http.chunkminlength, bytes
    chunk_max_length: int | None = None  # http.chunkmaxlength, bytes; None = no limit
    net: str = "tcp"  # tcp | unix
    # seconds in-flight requests get to finish after SIGTERM; None: as long as they take
    draintimeout: float | None = None
    tls: "TLSConfig | None" = None  # http.tls; None: plain HTTP
    timeouts: "HTTPTimeouts" = field(default_factory=lambda: HTTPTimeouts())  # http.timeout
    # http.maxconcurrentuploads: requests with a body served at once; more get 503 + Retry-After
    max_concurrent_uploads: int = 64
    debug: "DebugConfig" = field(default_factory=lambda: DebugConfig())  # http.debug


@dataclass
class TLSConfig:
    """http.tls for `stratus serve` (chalicelib/tls.py builds the context)."""

    certificate: str
    key: str
    clientcas: list[str] = field(default_factory=list)  # CA files: mutual TLS when set
    clientauth: str = "require-and-verify-client-cert"  # or verify-client-cert-if-given
    minimumtls: str = "tls1.2"  # tls1.2 | tls1.3
    ciphersuites: list[str] = field(default_factory=list)  # Go's names; empty: OpenSSL's defaults


@dataclass
class HTTPTimeouts:
    """http.timeout (`stratus serve`): each bounds a wait on one client, in seconds."""

    readheader: float = 30.0  # for a request's line and headers, from its first byte or the connection's start
    read: float = 60.0  # with no byte of a request body arriving
    write: float = 60.0  # with a client taking no byte of a response
    idle: float = 75.0  # for the next request on a keep-alive connection


@dataclass
class DebugConfig:
    """http.debug: a second listener for /debug/health and, if enabled, Prometheus metrics."""

    addr: str | None = None  # host:port; None: no debug server
    prometheus_enabled: bool = False  # http.debug.prometheus.enabled
    prometheus_path: str = "/metrics"  # http.debug.prometheus.path


@dataclass
class AuthConfig:
    name: str  # htpasswd | token | silly | none
    parameters: dict[str, Any] = field(default_factory=dict)  # raw, the controller checks them


@dataclass
class RedisPoolConfig:
    maxidle: int | None = None  # None: the client's default
    maxactive: int | None = None
    idletimeout: float | None = None  # seconds


@dataclass
class RedisConfig:
    addr: str | None = None  # host:port; None = Redis not configured
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    dialtimeout: float | None = None  # seconds; None: the client's default
    readtimeout: float | None = None
    writetimeout: float | None = None
    pool: RedisPoolConfig = field(default_factory=RedisPoolConfig)


@dataclass
class CatalogConfig:
    maxentries: int = 1000


@dataclass
class TracingConfig:
    xray: bool = False
    # whether tracing.xray is set at all: unset, a Lambda function that traces is traced
    xray_configured: bool = False


@dataclass
class StorageDriverCheck:
    """health.storagedriver: a periodic probe of the storage (a stat of its root)."""

    enabled: bool = False
    interval: float = 10.0  # seconds between probes
    threshold: int = 1  # consecutive failures before the check reads unhealthy


@dataclass
class FileCheck:
    """health.file[]: unhealthy while the file exists (to take an instance out of rotation)."""

    file: str
    interval: float = 10.0


@dataclass
class HTTPCheck:
    """health.http[]: a HEAD of uri must answer statuscode."""

    uri: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    statuscode: int = 200
    timeout: float = 3.0
    interval: float = 10.0
    threshold: int = 1


@dataclass
class TCPCheck:
    """health.tcp[]: a TCP connection to addr must open."""

    addr: str
    timeout: float = 3.0
    interval: float = 10.0
    threshold: int = 1


@dataclass
class HealthConfig:
    storagedriver: StorageDriverCheck = field(default_factory=StorageDriverCheck)
    file: list[FileCheck] = field(default_factory=list)
    http: list[HTTPCheck] = field(default_factory=list)
    tcp: list[TCPCheck] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return self.storagedriver.enabled or bool(self.file or self.http or self.tcp)


@dataclass
class MetricsConfig:
    """metrics (Stratus's own section): CloudWatch Embedded Metric Format log lines on Lambda."""

    emf: bool = False  # metrics.emf.enabled
    namespace: str = "Stratus"  # metrics.emf.namespace


@dataclass(frozen=True)
class ProxyUpstream:
    """One mirrored registry (docs/proxy.md): repositories named `prefix` + <name> are
    pulled from `remoteurl` as <name>; the reference's `proxy.remoteurl` is the one
    upstream with the empty prefix, so it mirrors every repository."""

    remoteurl: str
    prefix: str = ""
    username: str | None = None
    password: str | None = None
    ttl: float = 300.0  # seconds a cached tag is served before it is re-validated upstream
    # where the password is kept instead (an SSM parameter or Secrets Manager secret, as
    # http.secretparameter), read when the upstream first asks for credentials
    passwordparameter: str | None = None


@dataclass
class ProxyConfig:
    """proxy: the pull-through cache; no upstreams means it is off."""

    upstreams: list[ProxyUpstream] = field(default_factory=list)
    # On a function: an uncached blob up to this size is copied into storage within the
    # request; a larger one is sent to the upstream's own URL while a copy runs (docs/proxy.md).
    inlinelimit: int = 256 * MiB
    # How long the lease on one blob's upstream fetch lasts unless its holder renews it
    # (every third of it): how soon another process takes over from a dead holder.
    leasettl: float = 30.0


@dataclass
class Config:
    version: str = "0.1"
    log: LogConfig = field(default_factory=LogConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    auth: AuthConfig | None = None
    redis: RedisConfig = field(default_factory=RedisConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)  # chalicelib.notifications
    health: HealthConfig = field(default_factory=HealthConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    raw: dict[str, Any] = field(default_factory=dict)  # file + environment, before defaults


# ------------------------------------------------------------------------ loading


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration file at ``path``, apply ``REGISTRY_*`` overrides, validate.

    ``path`` None means ``environ["REGISTRY_CONFIGURATION_PATH"]`` when set, else no
    file (all defaults). ``environ`` None means ``os.environ``. Raises ConfigError.
    """
    if environ is None:
        environ = os.environ
    source = None
    if path is None or path == "":
        path = environ.get(CONFIG_PATH_ENV) or None
        source = CONFIG_PATH_ENV if path else None
    tree = _read_file(os.fspath(path), source) if path is not None else {}
    return config_from_mapping(tree, environ, source=os.fspath(path) if path else None)


def config_from_mapping(
    tree: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Config:
    """Build a Config from an already-parsed tree, as if it had been read from a file.

    ``environ`` defaults to no overrides at all (unlike load_config), which is what
    tests want. ``source`` names the tree's origin in error messages.
    """
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{source or 'configuration'}: expected a mapping at the top level, got {tree!r}")
    copied: dict[str, Any] = copy.deepcopy(dict(tree))
    for key in copied:
        if not isinstance(key, str):
            raise ConfigError(f"{source or 'configuration'}: top-level keys must be strings, got {key!r}")
    _normalize_methods(copied)
    origins = _apply_environment(copied, environ or {})
    return _build(copied, origins)


def _yaml() -> tuple[Any, Any]:
    import yaml  # imported here: it costs a cold start tens of milliseconds

    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# What YAML makes of the values a deployment usually sets (a bucket, a region, a host and
# port, an ARN, a number, a boolean, nothing) is certain without a parser: a word that
# starts with a letter cannot be a number, date or special float, and is a string unless
# it is one of YAML 1.1's booleans or nulls or ends in the ':' of a mapping; nor can an
# IPv4 address (with a port) be anything but a string. Those skip
# importing yaml, ~10 ms of every Lambda cold start; tests/test_config_env_scalars.py
# holds the two to agreeing.
_PLAIN_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_./:@+-]*(?<!:)\Z")
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?::[0-9]+)?\Z")
_YAML_WORDS: dict[str, Any] = {
    **{w: True for w in "yes Yes YES true True TRUE on On ON".split()},
    **{w: False for w in "no No NO false False FALSE off Off OFF".split()},
    **{w: None for w in ("null", "Null", "NULL", "~", "")},
}


def env_scalar(text: str) -> tuple[bool, Any]:
    """(True, value) when `text` is a plain word, an IPv4 address, a YAML boolean or
    null, or a decimal integer; (False, None) when it takes the YAML parser."""
    if text in _YAML_WORDS:
        return True, _YAML_WORDS[text]
    if _PLAIN_WORD.match(text) or _IPV4.match(text):
        return True, text
    if _DECIMAL.match(text):
        return True, int(text)
    return False, None


def _read_file(path: str, source: str | None) -> dict[str, Any]:
    label = f"{source}: configuration file {path!r}" if source else f"configuration file {path!r}"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist", key=source) from None
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read: {exc.strerror or exc}", key=source) from None
    yaml, loader = _yaml()
    try:
        tree = yaml.load(data, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {tree!r}")
    return tree


def _normalize_methods(tree: dict[str, Any]) -> None:
    # The reference accepts `storage: inmemory` and `auth: silly` as short forms.
    for key in ("storage", "auth"):
        if isinstance(tree.get(key), str):
            tree[key] = {tree[key]: {}}


# ----------------------------------------------------------- environment overrides

# dotted key path -> (variable name, its raw text); lets string keys keep the text
# as written ("0123", "a#b") and lets errors name the variable that set a key.
Origins = dict[str, tuple[str, str]]


def _apply_environment(tree: dict[str, Any], environ: Mapping[str, str]) -> Origins:
    """Apply ``REGISTRY_<SECTION>_<KEY>...=value`` variables to ``tree`` in place.

    Rules, following the reference registry:

    * Variables apply in lexical order of their names, so ``REGISTRY_STORAGE`` (or
      ``REGISTRY_AUTH``) is applied before ``REGISTRY_STORAGE_S3_BUCKET``.
    * The name after ``REGISTRY_`` is split on ``_``; each part is one level of the
      tree. Keys match existing keys case-insensitively. Where an existing key
      itself contains underscores (an Azure ``max_retries``), the longest run of
      parts that joins with ``_`` into an existing key wins: at a node holding
      ``max_retries``, ``MAX_RETRIES`` is that key, not ``max`` then ``retries``.
      A part that matches nothing creates a lower-cased key (the reference names
      multiword keys without underscores: ``rootdirectory``, ``blobdescriptorsize``).
      Within a list, a part is an index; the index one past the end appends.
    * At the top level only known sections are created, so unrelated variables such
      as Kubernetes' ``REGISTRY_PORT`` / ``REGISTRY_SERVICE_HOST`` are ignored with
      a warning rather than turned into configuration.
    * The value is parsed as YAML ("true" is a boolean, "5" an integer, "{a: 1}" a
      mapping, "" null); text that is not valid YAML is kept as a plain string.
      Keys that expect a string get the text exactly as written.
    * ``REGISTRY_STORAGE=<driver>`` selects the storage driver: other driver
      sections are dropped, ``delete``/``redirect``/``cache``/``maintenance``/``tag``
      are kept, and so are the parameters when the file already configures that
      same driver. ``REGISTRY_AUTH=<method>`` likewise replaces the auth method.
      A mapping value replaces the whole section, as in the reference.
    * ``REGISTRY_CONFIGURATION_PATH`` names the file and is not a key.
    """
    origins: Origins = {}
    names = sorted(n for n in environ if n.startswith(ENV_PREFIX) and n != CONFIG_PATH_ENV)
    if not names:
        return origins
    for name in names:
        text = environ[name]
        parts = name[len(ENV_PREFIX):].split("_")
        if not all(parts):
            log.warning("ignoring environment variable %s: empty key between underscores", name)
            continue
        plain, value = env_scalar(text)
        if not plain:
            yaml, loader = _yaml()
            try:
                value = yaml.load(text, Loader=loader)
            except yaml.YAMLError:
                value = text
        _set_from_env(tree, name, parts, value, text, origins)
    return origins


def _set_from_env(
    tree: dict[str, Any], name: str, parts: list[str], value: Any, text: str, origins: Origins
) -> None:
    key, end = _match_key(tree, parts, 0)
    if key not in tree and key not in _SECTIONS + _REFERENCE_ONLY_SECTIONS:
        log.warning("ignoring environment variable %s: %r is not a configuration section", name, key)
        return
    if end == len(parts) and key in ("storage", "auth") and isinstance(value, str):
        keep = STORAGE_SETTINGS if key == "storage" else ()
        _choose_method(tree, key, value, keep)
        origins[f"{key}.{value}"] = (name, text)
        return

    node: Any = tree
    path: list[str] = []
    i = 0
    step: Any  # a key of a mapping or an index of a list
    while True:
        if isinstance(node, list):
            step, end = _list_index(node, parts[i], name, path), i + 1
            if step == len(node):
                node.append(None)
        else:
            step, end = _match_key(node, parts, i)
        path.append(str(step))
        if end == len(parts):
            node[step] = value
            origins[".".join(path)] = (name, text)
            return
        child = node[step] if isinstance(node, list) else node.get(step)
        if child is None:
            child = node[step] = {}
        elif not isinstance(child, (dict, list)):
            raise ConfigError(
                f"{name}: cannot set a key inside {'.'.join(path)}, which holds {child!r}, not a mapping",
                key=".".join(path),
            )
        node, i = child, end


def _match_key(mapping: dict[str, Any], parts: list[str], start: int) -> tuple[str, int]:
    existing = {k.lower(): k for k in mapping if isinstance(k, str)}
    for end in range(len(parts), start, -1):
        found = existing.get("_".join(parts[start:end]).lower())
        if found is not None:
            return found, end
    return parts[start].lower(), start + 1


def _list_index(node: list[Any], part: str, name: str, path: list[str]) -> int:
    where = ".".join(path)
    if not (part.isascii() and part.isdigit()):
        raise ConfigError(f"{name}: {where} is a list, expected an index, got {part!r}", key=where)
    index = int(part)
    if index > len(node):
        raise ConfigError(
            f"{name}: index {index} is past the end of {where} (length {len(node)})", key=where
        )
    return index


def _choose_method(tree: dict[str, Any], section: str, chosen: str, keep: Iterable[str]) -> None:
    current = tree.get(section)
    current = current if isinstance(current, dict) else {}
    replacement = {k: v for k, v in current.items() if k in keep}
    parameters = current.get(chosen)
    replacement[chosen] = parameters if isinstance(parameters, dict) else {}
    tree[section] = replacement


# ------------------------------------------------------------------ typed reading

_MISSING = object()


class _Section:
    """One mapping of the tree, with getters that raise ConfigError naming the key.

    A key that is absent or null (``key:`` with no value) takes its default.
    """

    def __init__(self, mapping: Mapping[str, Any], path: str, origins: Origins):
        self.mapping = mapping
        self.path = path
        self.origins = origins
        self.read: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def label(self, key: str) -> str:
        where = self.key_path(key)
        origin = self.origins.get(where)
        return f"{where} (from {origin[0]})" if origin else where

    def fail(self, key: str, expected: str, value: Any = _MISSING) -> ConfigError:
        got = "" if value is _MISSING else f", got {value!r}"
        return ConfigError(f"{self.label(key)}: expected {expected}{got}", key=self.key_path(key))

    def value(self, key: str) -> Any:
        self.read.add(key)
        value = self.mapping.get(key)
        return _MISSING if value is None else value

    def section(self, key: str) -> _Section:
        value = self.value(key)
        if value is _MISSING:
            value = {}
        elif not isinstance(value, dict):
            raise self.fail(key, "a mapping", value)
        return _Section(value, self.key_path(key), self.origins)

    def mapping_copy(self, key: str) -> dict[str, Any]:
        return copy.deepcopy(dict(self.section(key).mapping))

    def string(self, key: str, default: Any) -> Any:
        value = self.value(key)
        if value is _MISSING:
            return default
        origin = self.origins.get(self.key_path(key))
        if origin is not None:
            # The variable's text as written: YAML would turn a secret "0123" into
            # 83, "yes" into True and "a #b" into "a".
            return origin[1]
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `secret: 12345`: a string to the reference too
        raise self.fail(key, "a string", value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.value(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.fail(key, "a boolean (true or false)", value)

    def integer(self, key: str, default: Any, minimum: int | None = None) -> Any:
        value = self.value(key)
        if value is _MISSING:
            return default
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, expected, value)
        if minimum is not None and value < minimum:
            raise self.fail(key, expected, value)
        return value

    def duration(self, key: str, default: Any, positive: bool = False) -> Any:
        return self._parsed(key, default, parse_duration, positive)

    def size(self, key: str, default: Any, positive: bool = False) -> Any:
        return self._parsed(key, default, parse_size, positive)

    def _parsed(self, key: str, default: Any, parse: Callable[[Any], Any], positive: bool) -> Any:
        value = self.value(key)
        if value is _MISSING:
            return default
        try:
            result = parse(value)
        except ValueError as exc:
            raise ConfigError(f"{self.label(key)}: {exc}", key=self.key_path(key)) from None
        if result < 0 or (positive and result == 0):
            kind = "duration" if parse is parse_duration else "size"
            raise self.fail(key, f"a {'positive' if positive else 'non-negative'} {kind}", value)
        return result

    def choice(self, key: str, choices: Iterable[str], default: Any, fold_case: bool = False) -> Any:
        choices = tuple(choices)
        value = self.string(key, _MISSING)
        if value is _MISSING:
            return default
        candidate = value.lower() if fold_case else value
        if candidate not in choices:
            raise self.fail(key, "one of " + ", ".join(repr(c) for c in choices), value)
        return candidate

    def warn_unknown(self, known: Iterable[str] = ()) -> None:
        for key in self.mapping:
            if key not in self.read and key not in known:
                log.warning("configuration key %s is not known; ignored", self.key_path(str(key)))


# --------------------------------------------------------------------- sections


def _build(tree: dict[str, Any], origins: Origins) -> Config:
    root = _Section(tree, "", origins)
    for key in tree:
        if key not in _SECTIONS + _REFERENCE_ONLY_SECTIONS:
            log.warning("unknown configuration section %r; ignored", key)

    version = root.string("version", SUPPORTED_VERSIONS[0])
    if version not in SUPPORTED_VERSIONS:
        raise root.fail("version", " or ".join(repr(v) for v in SUPPORTED_VERSIONS), version)

    redis = _redis(root.section("redis"))
    storage = _storage(root, origins)
    if storage.cache_blobdescriptor == "redis" and redis.addr is None:
        raise ConfigError(
            "storage.cache.blobdescriptor: 'redis' needs redis.addr to be set",
            key="storage.cache.blobdescriptor",
        )
    config = Config(
        version=version,
        log=_log(root),
        storage=storage,
        http=_http(root.section("http")),
        auth=_auth(root),
        redis=redis,
        notifications=_notifications(root.section("notifications")),
        health=_health(root.section("health")),
        catalog=_catalog(root.section("catalog")),
        tracing=_tracing(root),
        metrics=_metrics(root.section("metrics")),
        proxy=_proxy(root.section("proxy")),
        raw=tree,
    )
    _account_for_unimplemented(tree, config, origins)
    return config


def _log(root: _Section) -> LogConfig:
    section = root.section("log")
    level = section.choice("level", LOG_LEVELS, None, fold_case=True)
    if level is None:
        # `loglevel` is the reference's deprecated spelling; `log.level` wins.
        level = root.choice("loglevel", LOG_LEVELS, "info", fold_case=True)
    formatter = section.choice("formatter", LOG_FORMATTERS + ("logstash",), "text", fold_case=True)
    if formatter == "logstash":
        log.warning("log.formatter 'logstash' is not supported by Stratus; using 'json'")
        formatter = "json"
    fields = section.mapping_copy("fields")
    for name, value in fields.items():
        if not isinstance(name, str) or isinstance(value, (dict, list)):
            raise section.fail("fields", "a mapping of field names to scalar values", {name: value})
    accesslog = section.section("accesslog")
    config = LogConfig(
        level=level,
        formatter=formatter,
        fields=fields,
        accesslog_disabled=accesslog.boolean("disabled", False),
    )
    accesslog.warn_unknown()
    # hooks, reportcaller: accounted for by _account_for_unimplemented
    section.warn_unknown(known=("hooks", "reportcaller"))
    return config


def _storage(root: _Section, origins: Origins) -> StorageConfig:
    value = root.value("storage")
    if value is _MISSING:
        value = {}
    if not isinstance(value, dict):
        raise root.fail("storage", "a storage driver name or a mapping", value)
    section = _Section(value, "storage", origins)

    drivers = [k for k in value if k not in STORAGE_SETTINGS]
    if len(drivers) > 1:
        def described(driver: Any) -> str:
            set_by = {n for p, (n, _) in origins.items() if p.split(".")[:2] == ["storage", str(driver)]}
            return f"{driver} (from {', '.join(sorted(set_by))})" if set_by else str(driver)

        raise ConfigError(
            "storage: expected exactly one storage driver, got "
            + ", ".join(described(d) for d in sorted(drivers, key=str)),
            key="storage",
        )
    driver = drivers[0] if drivers else "filesystem"
    if not isinstance(driver, str) or not driver:
        raise section.fail(str(driver), "a storage driver name", driver)
    parameters = section.value(driver)
    if parameters is _MISSING:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise section.fail(driver, "a mapping of driver parameters", parameters)
    parameters = copy.deepcopy(parameters)
    if driver == "filesystem":
        parameters.setdefault("rootdirectory", DEFAULT_ROOTDIRECTORY)

    delete = section.section("delete")
    redirect = section.section("redirect")
    maintenance = section.section("maintenance")
    purging = maintenance.section("uploadpurging")
    readonly = maintenance.section("readonly")
    gc = maintenance.section("gc")
    tag = section.section("tag")
    descriptor, descriptor_size = _blob_descriptor_cache(section.section("cache"))
    config = StorageConfig(
        driver=driver,
        parameters=parameters,
        delete_enabled=delete.boolean("enabled", True),
        redirect_disable=redirect.boolean("disable", False),
        redirect_expiry=redirect.duration("expiry", 20 * 60.0, positive=True),
        cache_blobdescriptor=descriptor,
        cache_blobdescriptor_size=descriptor_size,
        upload_purging=UploadPurgingConfig(
            enabled=purging.boolean("enabled", True),
            age=purging.duration("age", 168 * 3600.0, positive=True),
            interval=purging.duration("interval", 24 * 3600.0, positive=True),
            dryrun=purging.boolean("dryrun", False),
        ),
        readonly=readonly.boolean("enabled", False),
        gc_graceperiod=gc.duration("graceperiod", 3600.0),
        retention=_retention(maintenance.section("retention")),
        tag_concurrency_limit=tag.integer("concurrencylimit", 0, minimum=0),
        tag_immutable=_immutable_tags(tag),
        gc_enabled=gc.boolean("enabled", True),
        gc_dryrun=gc.boolean("dryrun", False),
        gc_deleteuntagged=gc.boolean("deleteuntagged", False),
        gc_budget=gc.duration("budget", None, positive=True),
        gc_interval=gc.duration("interval", 24 * 3600.0),
        directupload=_direct_upload(section.section("directupload"), driver),
    )
    for part in (delete, redirect, maintenance, purging, readonly, gc, tag):
        part.warn_unknown()
    return config


def _immutable_tags(section: _Section) -> tuple[ImmutableTagRule, ...]:
    """storage.tag.immutable: a list of repository globs (every tag), or of
    {repository: <glob>, tags: <glob>} mappings; both may be mixed."""
    value = section.value("immutable")
    if value is _MISSING or value is None:
        return ()
    if not isinstance(value, list):
        raise section.fail("immutable", "a list of repository globs or {repository, tags} mappings", value)
    rules = []
    for i, item in enumerate(value):
        key = f"immutable[{i}]"
        if isinstance(item, str):
            rule = ImmutableTagRule(repository=item)
        elif isinstance(item, dict):
            entry = _Section(item, section.key_path(key), section.origins)
            repository = entry.string("repository", _MISSING)
            if repository is _MISSING or not repository:
                raise ConfigError(f"{entry.path}.repository: expected a repository glob", key=entry.path)
            rule = ImmutableTagRule(repository=repository, tags=entry.string("tags", "*") or "*")
            entry.warn_unknown()
        else:
            raise section.fail(key, "a repository glob or a {repository, tags} mapping", item)
        for pattern in (rule.repository, rule.tags):
            try:
                _path_glob(pattern)
            except ValueError as exc:
                raise ConfigError(f"{section.label(key)}: {exc}", key=section.key_path(key)) from None
        rules.append(rule)
    return tuple(rules)


def _retention(section: _Section) -> tuple[RetentionPolicy, ...]:
    value = section.value("policies")
    section.warn_unknown()
    if value is _MISSING:
        return ()
    if not isinstance(value, list):
        raise section.fail("policies", "a list of policies", value)
    policies = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise section.fail(f"policies[{i}]", "a mapping (repositories, keeptags, untaggedage)", item)
        policy = _Section(item, section.key_path(f"policies[{i}]"), section.origins)
        parsed = RetentionPolicy(
            repositories=policy.string("repositories", "*"),
            keeptags=policy.integer("keeptags", None, minimum=0),
            untaggedage=policy.duration("untaggedage", None, positive=True),
        )
        policy.warn_unknown()
        if parsed.keeptags is None and parsed.untaggedage is None:
            raise ConfigError(
                f"{policy.path}: expected keeptags or untaggedage (or both)", key=policy.path
            )
        policies.append(parsed)
    return tuple(policies)


def _direct_upload(section: _Section, driver: str) -> DirectUploadConfig:
    value = section.value("enabled")
    enabled = None if value is _MISSING else section.boolean("enabled", False)
    partsize = section.size("partsize", DirectUploadConfig.partsize, positive=True)
    low, high = DIRECT_PART_SIZE_LIMITS.get(driver, (1, None))
    if partsize < low or (high is not None and partsize > high):
        limit = f"between {low} and {high} bytes" if high is not None else f"at least {low} byte"
        raise section.fail("partsize", f"a part size {limit} for the {driver} driver", partsize)
    expiry = section.duration("expiry", DirectUploadConfig.expiry, positive=True)
    if expiry > DIRECT_EXPIRY_MAX:
        raise section.fail("expiry", "a duration of at most 7 days (168h), the longest a presigned URL lives",
                           section.value("expiry"))
    if expiry < 1:
        raise section.fail("expiry", "a duration of at least 1s", section.value("expiry"))
    config = DirectUploadConfig(
        enabled=enabled,
        partsize=partsize,
        expiry=expiry,
        verifytime=section.duration("verifytime", DirectUploadConfig.verifytime, positive=True),
        readsize=section.size("readsize", DirectUploadConfig.readsize, positive=True),
    )
    if config.readsize > DIRECT_READ_BUDGET:
        raise section.fail("readsize", f"a size of at most {DIRECT_READ_BUDGET} bytes", section.value("readsize"))
    section.warn_unknown()
    return config


def _blob_descriptor_cache(cache: _Section) -> tuple[str | None, int]:
    # `layerinfo` is the reference's former name of `blobdescriptor`.
    choices = BLOB_DESCRIPTOR_CACHES + ("none", "")
    current = cache.choice("blobdescriptor", choices, None)
    legacy = cache.choice("layerinfo", choices, None)
    if current is not None and legacy is not None and current != legacy:
        raise ConfigError(
            f"storage.cache: blobdescriptor {current!r} and its former name layerinfo {legacy!r} disagree",
            key="storage.cache.blobdescriptor",
        )
    chosen = current if current is not None else legacy if legacy is not None else "inmemory"
    size = cache.integer("blobdescriptorsize", 10000, minimum=1)
    cache.warn_unknown()
    return (None if chosen in ("none", "") else chosen), size


_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?")


def _is_host_port(addr: str) -> bool:
    """host:port as Go's net.SplitHostPort takes it, with a numeric port.

    An empty host (":5000") means every interface; IPv6 hosts are bracketed.
    """
    if addr.startswith("["):
        host, bracket, rest = addr[1:].partition("]")
        if not bracket or not rest.startswith(":") or not _IPV6.fullmatch(host):
            return False
        port = rest[1:]
    else:
        host, colon, port = addr.rpartition(":")
        if not colon or not _HOSTNAME.fullmatch(host):
            return False
    return bool(_PORT.fullmatch(port)) and int(port) <= 65535


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _http(section: _Section) -> HTTPConfig:
    net = section.choice("net", ("tcp", "unix"), "tcp")
    addr = section.string("addr", None)
    if net == "tcp":
        if addr is None:
            addr = HTTPConfig.addr
        elif not _is_host_port(addr):
            raise section.fail("addr", "host:port, e.g. '127.0.0.1:5000' or ':5000'", addr)
    elif not addr:
        raise section.fail("addr", "a socket path when http.net is 'unix'", addr or _MISSING)

    host = section.string("host", None)
    if host is not None and not _is_absolute_url(host):
        raise section.fail("host", "an absolute http(s) URL such as 'https://registry.example.com'", host)

    prefix = section.string("prefix", "/") or "/"
    if not prefix.startswith("/"):
        raise section.fail("prefix", "a path starting with '/'", prefix)
    if not prefix.endswith("/"):
        prefix += "/"

    chunk_min = section.size("chunkminlength", 0)
    chunk_max = section.size("chunkmaxlength", None, positive=True)
    if chunk_max is not None and chunk_min > chunk_max:
        raise ConfigError(
            f"{section.label('chunkminlength')}: {chunk_min} is larger than http.chunkmaxlength {chunk_max}",
            key="http.chunkminlength",
        )
    config = HTTPConfig(
        addr=addr,
        host=host,
        prefix=prefix,
        secret=section.string("secret", None) or None,
        secretparameter=section.string("secretparameter", None) or None,
        relativeurls=section.boolean("relativeurls", False),
        headers=_headers(section),
        chunk_min_length=chunk_min,
        chunk_max_length=chunk_max,
        net=net,
        draintimeout=section.duration("draintimeout", None),
        tls=_tls(section.section("tls")),
        timeouts=_http_timeouts(section.section("timeout")),
        max_concurrent_uploads=section.integer("maxconcurrentuploads", HTTPConfig.max_concurrent_uploads, minimum=1),
        debug=_debug(section.section("debug")),
    )
    # http2 and h2c: accounted for by _account_for_unimplemented
    section.warn_unknown(known=("http2", "h2c"))
    return config


def _strings(section: _Section, key: str) -> list[str]:
    value = section.value(key)
    if value is _MISSING:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in values):
        raise section.fail(key, "a list of strings", value)
    return list(values)


def _tls(section: _Section) -> TLSConfig | None:
    from .tls import (CIPHER_SUITES, CLIENT_AUTH, MINIMUM_TLS, REFUSED_CLIENT_AUTH, REFUSED_MINIMUM_TLS,
                      TLS13_SUITES)

    if not section.mapping:
        return None
    section.read.add("letsencrypt")  # refused by _account_for_unimplemented, naming its key
    certificate, key = section.string("certificate", None), section.string("key", None)
    if not certificate or not key:
        if section.value("letsencrypt") is not _MISSING and not certificate and not key:
            return None  # letsencrypt alone: refused below with its own reason
        missing = "key" if certificate else "certificate"
        raise section.fail(missing, "a PEM file path (http.tls needs both certificate and key)", _MISSING)
    minimum = section.string("minimumtls", "tls1.2").lower()
    if minimum in REFUSED_MINIMUM_TLS:
        raise ConfigError(f"{section.label('minimumtls')}: not supported by Stratus: {minimum} is not served; "
                          "use tls1.2 or tls1.3", key=section.key_path("minimumtls"))
    if minimum not in MINIMUM_TLS:
        raise section.fail("minimumtls", "one of 'tls1.2', 'tls1.3'", minimum)
    clientauth = section.string("clientauth", CLIENT_AUTH[0]).lower()
    if clientauth in REFUSED_CLIENT_AUTH:
        raise ConfigError(f"{section.label('clientauth')}: not supported by Stratus: {clientauth} accepts a client "
                          "certificate without verifying it; use require-and-verify-client-cert",
                          key=section.key_path("clientauth"))
    if clientauth not in CLIENT_AUTH:
        raise section.fail("clientauth", "one of " + ", ".join(repr(c) for c in CLIENT_AUTH), clientauth)
    suites = _strings(section, "ciphersuites")
    for index, name in enumerate(suites):
        if name not in CIPHER_SUITES and name not in TLS13_SUITES:
            raise ConfigError(f"{section.label('ciphersuites')}: item {index} is not a cipher suite Stratus "
                              "serves (Go's TLS 1.2 names such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256), "
                              f"got {name!r}",
                              key=f"{section.key_path('ciphersuites')}.{index}")
    config = TLSConfig(certificate=certificate, key=key, clientcas=_strings(section, "clientcas"),
                       clientauth=clientauth, minimumtls=minimum, ciphersuites=suites)
    section.warn_unknown()
    return config


def _debug(section: _Section) -> DebugConfig:
    addr = section.string("addr", None) or None
    if addr is not None and not _is_host_port(addr):
        raise section.fail("addr", "host:port, e.g. 'localhost:5001' or ':5001'", addr)
    prometheus = section.section("prometheus")
    path = prometheus.string("path", "/metrics") or "/metrics"
    if not path.startswith("/") or path == "/debug/health":
        raise prometheus.fail("path", "a path starting with '/' other than /debug/health", path)
    config = DebugConfig(addr=addr, prometheus_enabled=prometheus.boolean("enabled", False), prometheus_path=path)
    if config.prometheus_enabled and addr is None:
        log.warning("http.debug.prometheus.enabled: metrics are served on http.debug.addr, which is not set")
    prometheus.warn_unknown()
    section.warn_unknown()
    return config


def _http_timeouts(section: _Section) -> HTTPTimeouts:
    default = HTTPTimeouts()
    timeouts = HTTPTimeouts(**{
        key: section.duration(key, getattr(default, key), positive=True)
        for key in ("readheader", "read", "write", "idle")
    })
    section.warn_unknown()
    return timeouts


def _is_absolute_url(url: str) -> bool:
    from urllib.parse import urlsplit  # only when http.host is set

    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment


def _headers(http: _Section) -> dict[str, list[str]]:
    headers = http.section("headers")
    result: dict[str, list[str]] = {}
    for name, values in headers.mapping.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise http.fail("headers", "header names made of token characters", name)
        if values is None:
            continue
        if not isinstance(values, list):
            values = [values]  # `X-Frame-Options: DENY`, a convenience over the reference
        texts = []
        for value in values:
            if isinstance(value, (dict, list)) or value is None:
                raise headers.fail(name, "a list of header values", values)
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if "\r" in text or "\n" in text:
                raise headers.fail(name, "header values without line breaks", text)
            texts.append(text)
        result[name] = texts
    return result


def _auth(root: _Section) -> AuthConfig | None:
    value = root.value("auth")
    if value is _MISSING or value == {}:
        return None
    if not isinstance(value, dict):
        raise root.fail("auth", "an auth method name or a mapping", value)
    if len(value) > 1:
        raise ConfigError(
            "auth: expected exactly one auth method, got " + ", ".join(sorted(map(str, value))),
            key="auth",
        )
    ((name, parameters),) = value.items()
    if name not in AUTH_METHODS:
        raise ConfigError(
            f"auth: expected one of {', '.join(AUTH_METHODS)}, got {name!r}", key=f"auth.{name}"
        )
    section = _Section(value, "auth", root.origins)
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise section.fail(name, "a mapping of parameters", parameters)
    return AuthConfig(name=name, parameters=copy.deepcopy(parameters))


def _redis(section: _Section) -> RedisConfig:
    addr = section.string("addr", None) or None
    addrs = section.value("addrs")  # the reference's newer spelling, a list
    if addrs is not _MISSING:
        if isinstance(addrs, str):
            addrs = [addrs]
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise section.fail("addrs", "a list of host:port addresses", addrs)
        if len(addrs) > 1:
            raise section.fail("addrs", "a single address (Redis Cluster is not supported)", addrs)
        if addrs and addr is None:
            addr = addrs[0]
    if addr is not None and not _is_host_port(addr):
        raise section.fail("addr", "host:port, e.g. 'redis.example.com:6379'", addr)

    pool = section.section("pool")
    config = RedisConfig(
        addr=addr,
        username=section.string("username", None),
        password=section.string("password", None) or None,
        db=section.integer("db", 0, minimum=0),
        tls=_enabled(section, "tls"),
        dialtimeout=section.duration("dialtimeout", None),
        readtimeout=section.duration("readtimeout", None),
        writetimeout=section.duration("writetimeout", None),
        # The reference's newer flat names fill in what `pool` leaves unset.
        pool=RedisPoolConfig(
            maxidle=pool.integer("maxidle", section.integer("maxidleconns", None, minimum=0), minimum=0),
            maxactive=pool.integer("maxactive", section.integer("poolsize", None, minimum=0), minimum=0),
            idletimeout=pool.duration("idletimeout", section.duration("connmaxidletime", None)),
        ),
    )
    pool.warn_unknown()
    section.warn_unknown()
    return config


def _enabled(parent: _Section, key: str) -> bool:
    """A switch written either as `key: true` or as `key: {enabled: true}`."""
    value = parent.value(key)
    if isinstance(value, dict):
        section = parent.section(key)
        enabled = section.boolean("enabled", False)
        # client certificates and CAs: refused by _account_for_unimplemented
        section.warn_unknown(known=("certificate", "key", "clientcas", "rootcas"))
        return enabled
    try:
        return parent.boolean(key, False)
    except ConfigError:
        raise parent.fail(key, "a boolean or a mapping with 'enabled'", value) from None


def _catalog(section: _Section) -> CatalogConfig:
    config = CatalogConfig(maxentries=section.integer("maxentries", 1000, minimum=1))
    section.warn_unknown()
    return config


def _tracing(root: _Section) -> TracingConfig:
    section = root.section("tracing")
    config = TracingConfig(xray=_enabled(section, "xray"), xray_configured=section.value("xray") is not _MISSING)
    section.warn_unknown()
    return config


def _metrics(section: _Section) -> MetricsConfig:
    emf = section.section("emf")
    config = MetricsConfig(emf=emf.boolean("enabled", False), namespace=emf.string("namespace", "Stratus") or "Stratus")
    emf.warn_unknown()
    section.warn_unknown()
    return config


def _notifications(section: _Section) -> NotificationsConfig:
    from .notifications.config import parse

    return parse(section)


# ------------------------------------------------------------------------- proxy


def _proxy(section: _Section) -> ProxyConfig:
    """The reference's single upstream (remoteurl ...), or Stratus's `upstreams` list."""
    upstreams = [_upstream(item, prefixed=True) for item in _check_list(section, "upstreams")]
    single = [k for k in ("remoteurl", "username", "password", "passwordparameter", "ttl")
              if section.value(k) is not _MISSING]
    if single:
        if upstreams:
            raise section.fail("remoteurl", "either remoteurl (one upstream for every repository) or "
                               "upstreams (one per prefix), not both")
        upstreams = [_upstream(section, prefixed=False)]
    prefixes = [u.prefix for u in upstreams]
    for prefix in prefixes:
        if prefixes.count(prefix) > 1:
            raise section.fail("upstreams", "a distinct prefix per upstream", prefix)
    config = ProxyConfig(upstreams=upstreams, inlinelimit=section.size("inlinelimit", 256 * MiB, positive=True),
                         leasettl=section.duration("leasettl", 30.0, positive=True))
    # exec (a credential helper): refused by _account_for_unimplemented
    section.warn_unknown(known=("exec", "remoteurl", "username", "password", "passwordparameter", "ttl"))
    return config


def _upstream(section: _Section, prefixed: bool) -> ProxyUpstream:
    url = _required_string(section, "remoteurl", "the upstream registry's http(s) URL")
    if not _is_absolute_url(url):
        raise section.fail("remoteurl", "an absolute http(s) URL, e.g. https://registry-1.docker.io", url)
    prefix = ""
    if prefixed:
        prefix = _required_string(section, "prefix", "a repository name prefix ending in '/', e.g. 'docker.io/'")
        if not prefix.endswith("/") or prefix.startswith("/") or "//" in prefix:
            raise section.fail("prefix", "a repository name prefix ending in '/', e.g. 'docker.io/'", prefix)
    upstream = ProxyUpstream(
        remoteurl=url.rstrip("/"),
        prefix=prefix,
        username=section.string("username", None) or None,
        password=section.string("password", None) or None,
        ttl=section.duration("ttl", 300.0),
        passwordparameter=section.string("passwordparameter", None) or None,
    )
    if upstream.password is not None and upstream.passwordparameter is not None:
        raise section.fail("passwordparameter", "password or passwordparameter (where it is kept), not both")
    has_password = upstream.password is not None or upstream.passwordparameter is not None
    if (upstream.username is None) == has_password:
        raise section.fail("password" if upstream.username else "username",
                           "username and password set together (or neither; passwordparameter stands for password)")
    if prefixed:
        section.warn_unknown()
    return upstream


# ------------------------------------------------------------------------ health


def _health(section: _Section) -> HealthConfig:
    driver = section.section("storagedriver")
    config = HealthConfig(
        storagedriver=StorageDriverCheck(
            enabled=driver.boolean("enabled", False),
            interval=driver.duration("interval", 10.0, positive=True),
            threshold=driver.integer("threshold", 1, minimum=1) or 1,
        ),
        file=[_file_check(item) for item in _check_list(section, "file")],
        http=[_http_check(item) for item in _check_list(section, "http")],
        tcp=[_tcp_check(item) for item in _check_list(section, "tcp")],
    )
    driver.warn_unknown()
    section.warn_unknown()
    return config


def _check_list(section: _Section, key: str) -> list[_Section]:
    value = section.value(key)
    if value is _MISSING:
        return []
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.isdigit() for k in value):
        # REGISTRY_HEALTH_FILE_0_FILE without a list in the file: indexes, in order
        value = [value[k] for k in sorted(value, key=int)]
    if not isinstance(value, list):
        raise section.fail(key, "a list of checks", value)
    items = _Section(dict(enumerate(value)), section.key_path(key), section.origins)  # type: ignore[arg-type]
    return [items.section(i) for i in range(len(value))]  # type: ignore[arg-type]


def _required_string(section: _Section, key: str, expected: str) -> str:
    value = section.string(key, None)
    if not value:
        raise section.fail(key, expected, value if value is not None else _MISSING)
    return value


def _file_check(section: _Section) -> FileCheck:
    check = FileCheck(
        file=_required_string(section, "file", "the path of a file whose existence marks the registry unhealthy"),
        interval=section.duration("interval", 10.0, positive=True),
    )
    section.warn_unknown()
    return check


def _http_check(section: _Section) -> HTTPCheck:
    uri = _required_string(section, "uri", "an http(s) URL to send HEAD requests to")
    if not _is_absolute_url(uri):
        raise section.fail("uri", "an absolute http(s) URL", uri)
    check = HTTPCheck(
        uri=uri,
        headers=_headers(section),
        statuscode=section.integer("statuscode", 200, minimum=100),
        timeout=section.duration("timeout", 3.0, positive=True),
        interval=section.duration("interval", 10.0, positive=True),
        threshold=section.integer("threshold", 1, minimum=0) or 1,
    )
    section.warn_unknown()
    return check


def _tcp_check(section: _Section) -> TCPCheck:
    addr = _required_string(section, "addr", "host:port to connect to")
    if not _is_host_port(addr):
        raise section.fail("addr", "host:port to connect to", addr)
    check = TCPCheck(
        addr=addr,
        timeout=section.duration("timeout", 3.0, positive=True),
        interval=section.duration("interval", 10.0, positive=True),
        threshold=section.integer("threshold", 1, minimum=0) or 1,
    )
    section.warn_unknown()
    return check


# ------------------------------------------------- keys Stratus does not act on

# Every key of the reference configuration is implemented (read above into the typed
# Config), refused here, or accepted here with one warning line. A key is refused when
# an operator who sets it expects something Stratus does not do: security-relevant
# keys (TLS, client certificates, manifest URL rules) are always among them, since
# ignoring them would leave the registry less guarded than configured. A key is
# cosmetic when ignoring it changes nothing a client or the operator relies on.
# tests/test_config_keys.py walks the reference's documented keys against these tables.


def _enabled_entries(value: Any, config: Config) -> bool:
    """A list of hooks or endpoints of which at least one is not `disabled: true`."""
    items = value if isinstance(value, list) else [value]
    return any(not (isinstance(item, dict) and item.get("disabled") is True) for item in items)


def _is_true(value: Any, config: Config) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


# key path -> (why it is refused, refused only when this holds, else always)
REFUSED_KEYS: dict[str, tuple[str, Callable[[Any, Config], bool] | None]] = {
    "http.tls.letsencrypt": ("certificates are not obtained over ACME; let a tool made for it (certbot, a "
                             "reverse proxy) renew them and name its files in http.tls.certificate and key", None),
    "log.hooks": ("log hooks (mail on error) are not supported; mark every hook disabled: true or remove them",
                  _enabled_entries),
    "auth.token.autoredirect": ("the token realm is always auth.token.realm; autoredirect is not supported",
                                _is_true),
    "redis.tls.certificate": ("client certificates for Redis are not supported", None),
    "redis.tls.key": ("client certificates for Redis are not supported", None),
    "redis.tls.rootcas": ("custom CAs for Redis are not supported (the system's CAs verify the server)", None),
    "middleware": ("registry, repository and storage middleware (cloudfront, redirect ...) is not supported", None),
    "proxy.exec": ("credential helpers for the upstream are not supported; set proxy.username and "
                   "proxy.password", None),
    "validation.manifests": ("manifest URL rules and index validation settings are not supported", None),
    "policy": ("repository class policies are not supported", None),
    "storage.gcs": ("the gcs storage driver is not available (filesystem, inmemory, s3, azure, rados are)", None),
}

# key path -> what the operator should know (one warning line when the key is set)
COSMETIC_KEYS: dict[str, str] = {
    "http.http2": "stratus serve speaks HTTP/1.1",
    "http.h2c": "stratus serve speaks HTTP/1.1",
    "log.hooks": "log hooks are not supported (every hook here is disabled)",
    "log.reportcaller": "log lines do not name the calling function",
    "storage.tag.concurrencylimit": "tag lookups are not run concurrently",
    "storage.filesystem.maxthreads": "filesystem calls are bounded by the server's threads instead",
    "tags.maxtags": "the tags list is not capped (clients page with ?n=)",
    "validation.disabled": "Stratus validates every manifest it accepts",
    "validation.enabled": "Stratus validates every manifest it accepts",
    "compatibility": "schema1 manifests are refused whatever this says",
    "reporting": "bugsnag and newrelic reporting are not supported",
}


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return _MISSING
        node = node[part]
    return node


def _first_leaf(value: Any, path: str) -> str:
    """The first key set below path (http.tls.certificate for http.tls), to name it."""
    while isinstance(value, (dict, list)) and value:
        key, value = next(iter(value.items())) if isinstance(value, dict) else (0, value[0])
        path = f"{path}.{key}"
    return path


def _account_for_unimplemented(tree: Mapping[str, Any], config: Config, origins: Origins) -> None:
    for path, (reason, when) in REFUSED_KEYS.items():
        value = _lookup(tree, path)
        if value is not _MISSING and (when is None or when(value, config)):
            leaf = _first_leaf(value, path)
            origin = origins.get(leaf) or origins.get(path)
            label = f"{leaf} (from {origin[0]})" if origin else leaf
            raise ConfigError(f"{label}: not supported by Stratus: {reason}", key=leaf)
    for path, note in COSMETIC_KEYS.items():
        if _lookup(tree, path) is not _MISSING:
            log.warning("configuration key %s is accepted but has no effect: %s", path, note)
