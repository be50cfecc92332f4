"""The owner of a Stratus process, and the one place that wires the layers.

``Stratus.load()`` reads and validates the configuration (``ConfigError`` naming the
key), sets up logging, applies the platform's limits (``Platform``: what the front
of Lambda, Azure Functions or `stratus serve` lets through), builds the api once, on
first use, and runs the scheduled maintenance (upload purging, garbage collection).
Adapters (chalicelib/adapters: the servers, API Gateway, Azure Functions, the CLI)
hold one and only translate requests and responses; ``build_api`` is the wiring it
uses, also what tests call to get an api without a process around it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

from . import aws_runtime
from .api import APISettings, RegistryAPI
from .config import Config, ConfigError, DIRECT_READ_BUDGET, load_config
from .registry import Registry, RegistryOptions
from .storage import create_driver

log = logging.getLogger("stratus")

# ----------------------------------------------------------------------------- platforms

FUNCTIONS_BODY_LIMIT = 104_857_600  # the Functions host's request body limit: 100 MB
FUNCTIONS_BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"
FUNCTIONS_GC_BUDGET = 480.0  # seconds of gc per timer tick: 8 of host.json's 10-minute functionTimeout


@dataclass(frozen=True)
class Platform:
    """Where the process runs, and the limits of the front that hands it requests.

    ``chunk_max_length`` is http.chunkmaxlength when the configuration sets none (the api
    advertises it and answers a longer chunk with SIZE_INVALID instead of letting the
    front refuse it); ``chunk_cap`` is a hard limit a configured value is lowered to.
    ``direct_uploads`` is storage.directupload.enabled's default: on where requests are
    limited. ``gc_budget`` bounds one scheduled gc invocation when the platform gives no
    remaining time (None: run to the end)."""

    name: str  # "server" | "lambda" | "functions"
    chunk_max_length: Optional[int] = None
    chunk_cap: Optional[int] = None
    direct_uploads: bool = False
    gc_budget: Optional[float] = None

    def apply(self, config: Config) -> Config:
        """config with this platform's limits and defaults in place (applying twice changes nothing).
        Raises ConfigError for what this platform's front cannot honour."""
        tls = config.http.tls
        if tls is not None and self.name != "server":
            if tls.clientcas:
                # the front (API Gateway, the Functions host) terminates TLS: client
                # certificates would be accepted unchecked, never silently
                raise ConfigError(
                    f"http.tls.clientcas: not supported by Stratus on {self.name}: TLS ends at the platform's "
                    "front; require client certificates there (an API Gateway custom domain's truststore, "
                    "App Service client certificates)", key="http.tls.clientcas")
            log.warning("http.tls is not applied on %s: the platform's front serves TLS", self.name)
        direct = config.storage.directupload
        if direct.enabled is None:
            storage = dataclasses.replace(config.storage,
                                          directupload=dataclasses.replace(direct, enabled=self.direct_uploads))
            config = dataclasses.replace(config, storage=storage)
        configured = config.http.chunk_max_length
        chunk = self.chunk_max_length if configured is None else configured
        if self.chunk_cap is not None and chunk is not None and chunk > self.chunk_cap:
            log.warning("http.chunkmaxlength %d exceeds the %s request limit; using %d", chunk, self.name,
                        self.chunk_cap)
            chunk = self.chunk_cap
        if chunk != configured:
            config = dataclasses.replace(config, http=dataclasses.replace(config.http, chunk_max_length=chunk))
        return config


SERVER = Platform("server")
# A Lambda invocation carries at most 6 MB of event and binary bodies arrive base64-encoded,
# so ~4.4 MiB is the most a PATCH can bring: 4 MiB unless configured.
LAMBDA = Platform("lambda", chunk_max_length=aws_runtime.LAMBDA_CHUNK_MAX_LENGTH, direct_uploads=True)


def functions_platform(environ: Optional[Mapping[str, str]] = None) -> Platform:
    """Azure Functions: the host refuses bodies over its limit (100 MB unless the app
    setting FUNCTIONS_REQUEST_BODY_SIZE_LIMIT raises it); gc works 8 minutes a tick."""
    environ = os.environ if environ is None else environ
    text = environ.get(FUNCTIONS_BODY_LIMIT_SETTING, "").strip()
    limit = int(text) if text.isdigit() and int(text) > 0 else FUNCTIONS_BODY_LIMIT
    return Platform("functions", chunk_max_length=limit, chunk_cap=limit, direct_uploads=True,
                    gc_budget=FUNCTIONS_GC_BUDGET)


def detect_platform(environ: Optional[Mapping[str, str]] = None) -> Platform:
    """Lambda when its runtime's variables say so, else a server. The Functions adapter
    names its platform itself (its worker's variables are not a contract)."""
    return LAMBDA if aws_runtime.on_lambda(environ) else SERVER


def build_cache(config: Config):
    kind = config.storage.cache_blobdescriptor
    if not kind:
        return None
    if kind == "redis":
        from .cache.redis import RedisBlobDescriptorCache

        return RedisBlobDescriptorCache.from_config(config.redis)
    from .cache.memory import InMemoryBlobDescriptorCache

    return InMemoryBlobDescriptorCache(config.storage.cache_blobdescriptor_size)


def build_access_controller(config: Config):
    if config.auth is None or config.auth.name == "none":
        return None
    from .auth import create_access_controller

    return create_access_controller(config.auth)


def http_secret(config: Config) -> Union[bytes, Callable[[], bytes]]:
    """The key of upload `_state` tokens, or a callable fetching it on first use."""
    if config.http.secret:
        return config.http.secret.encode()
    parameter = aws_runtime.secret_parameter(config)
    if parameter:  # SSM Parameter Store or Secrets Manager, read once per process
        # ...and only when a token is signed or checked: a cold GET /v2/ or a pull
        # imports no boto3 and makes no SSM call for it
        return lambda: aws_runtime.fetch_secret(parameter).encode()
    # Without a shared secret, an upload started on one process cannot continue on
    # another: fine for one server, wrong for functions or several replicas.
    log.warning("http.secret is not set; generated one for this process only")
    return secrets.token_bytes(32)


def build_registry(config: Config, tracer=None, recorder=None) -> Registry:
    storage = config.storage
    driver = create_driver(storage.driver, storage.parameters)
    # AWS S3 reads its writes; an S3-compatible endpoint (Ceph RGW ...) may not
    eventual = storage.driver in ("s3", "azure") and getattr(driver, "may_be_eventually_consistent", True)
    options = RegistryOptions(
        delete_enabled=storage.delete_enabled,
        redirect=not storage.redirect_disable,
        redirect_expiry=int(storage.redirect_expiry),
        read_only=storage.readonly,
        stat_retries=3 if eventual else 0,
        immutable_tags=storage.tag_immutable,
        proxy=config.proxy,
    )
    cache = build_cache(config)
    if recorder is not None:  # chalicelib.metrics, inside the tracer: a subsegment times the call as counted
        from .metrics import MetricsCache, MetricsDriver

        driver, cache = MetricsDriver(driver, recorder), None if cache is None else MetricsCache(cache, recorder)
    if tracer is not None:
        driver, cache = tracer.wrap_driver(driver), tracer.wrap_cache(cache)
    return Registry(driver, cache, options)


def direct_upload_options(config: Config):
    """storage.directupload as the api takes it; None when off (unset: the platform's
    default, on Lambda and Azure Functions, see Platform)."""
    from .registry.direct_uploads import DirectUploadOptions

    direct = config.storage.directupload
    enabled = direct.enabled if direct.enabled is not None else detect_platform().direct_uploads
    if not enabled:
        return None
    # ranged reads in flight: 8, fewer when each is larger, so memory stays within the budget
    readers = max(1, min(8, DIRECT_READ_BUDGET // direct.readsize))
    return DirectUploadOptions(part_size=direct.partsize, expiry=int(direct.expiry), verify_time=direct.verifytime,
                               read_size=direct.readsize, readers=readers)


def build_api(config: Optional[Config] = None, platform: Optional[Platform] = None) -> Any:
    """The api the adapters serve: a RegistryAPI, or one wrapped (notifications, metrics,
    X-Ray, http.prefix) that handles requests the same way. The platform's limits apply
    (detected when not given)."""
    from .prefix import with_prefix

    config = (platform or detect_platform()).apply(config or load_config())
    return with_prefix(_build_api(config), config.http.prefix)


def _build_api(config: Config) -> Any:
    http = config.http
    # bytes, or a callable read on first use: the api's StateSigner takes either
    secret: Any = http_secret(config)
    settings = APISettings(
        secret=secret,
        # http.host names the server; the api's URLs are under http.prefix on it
        base_url=http.host.rstrip("/") + http.prefix.rstrip("/") if http.host else None,
        relative_urls=http.relativeurls,
        chunk_min_length=http.chunk_min_length,
        chunk_max_length=http.chunk_max_length,  # the platform's when not configured (Platform.apply)
        catalog_max_entries=config.catalog.maxentries,
        extra_headers=tuple((k, v) for k, values in (http.headers or {}).items() for v in values),
        direct_upload=direct_upload_options(config),
    )
    from . import metrics, notifications, tracing

    tracer = tracing.from_config(config)  # None unless X-Ray is on: nothing is wrapped
    recorder = metrics.from_config(config)  # None unless metrics are on: likewise
    # notifications innermost, so metrics and traces count what a function's send adds
    if tracer is None and recorder is None:
        return notifications.wrap_api(RegistryAPI(build_registry(config), settings, build_access_controller(config)),
                                      config)  # the api itself unless an endpoint is enabled
    api = notifications.wrap_api(
        RegistryAPI(build_registry(config, tracer, recorder), settings, build_access_controller(config),
                    **({"context_factory": tracer.context} if tracer is not None else {})), config)
    if recorder is not None:
        api = metrics.MetricsAPI(api, recorder)
    return tracer.wrap_api(api) if tracer is not None else api


def configure_logging(config: Config) -> None:
    """log.level, log.formatter with log.fields (chalicelib.logs) and log.accesslog.disabled.

    The formatter goes on the root logger's handlers: on Lambda and Azure Functions the
    runtime's own, so lines still reach CloudWatch or the host; elsewhere one stderr
    handler of ours. Calling it again (a test, a second config) replaces, never adds."""
    from .logs import ACCESS_LOGGERS, AccessLogFilter, formatter_for

    level = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
    root = logging.getLogger()
    root.setLevel(level.get(config.log.level, logging.INFO))
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter = formatter_for(config.log.formatter, config.log.fields)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    # Chalice gives its app's logger, "stratus" (ours too), a stdout handler of its own,
    # no propagation and level ERROR: on Lambda every stratus.* line below an error was
    # dropped and the rest bypassed the runtime's handler. Ours all go to the root's.
    package = logging.getLogger("stratus")
    for handler in package.handlers[:]:
        package.removeHandler(handler)
    package.propagate = True
    package.setLevel(logging.NOTSET)
    for name in ACCESS_LOGGERS:
        access = logging.getLogger(name)
        for old in [f for f in access.filters if isinstance(f, AccessLogFilter)]:
            access.removeFilter(old)
        if config.log.accesslog_disabled:
            access.addFilter(AccessLogFilter())


# ------------------------------------------------------------------------------- the owner


class Stratus:
    """One process's registry: its configuration (validated, the platform's limits
    applied), its api (built once, on first use, whichever thread asks first), and its
    scheduled maintenance. Adapters hold one and translate requests for ``api``."""

    def __init__(self, config: Config, platform: Platform = SERVER):
        self.platform = platform
        self.config = platform.apply(config)
        self._api: Any = None
        self._storage: Optional[tuple[Any, Any]] = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Optional[str] = None, platform: Optional[Platform] = None,
             environ: Optional[Mapping[str, str]] = None) -> "Stratus":
        """The configuration file at path (else $REGISTRY_CONFIGURATION_PATH, else defaults)
        with the REGISTRY_* overrides, logging set up from it. Raises ConfigError."""
        environ = os.environ if environ is None else environ
        config = load_config(path, environ=environ)
        configure_logging(config)
        return cls(config, platform or detect_platform(environ))

    @property
    def api(self) -> Any:
        if self._api is None:
            with self._lock:
                if self._api is None:
                    self._api = build_api(self.config, self.platform)
        return self._api

    def storage(self) -> tuple[Any, Any]:
        """(driver, descriptor cache): the api's when it is built, else made once for
        maintenance alone (a scheduled function never builds an api, nor needs the secret)."""
        if self._api is not None:
            registry = self._api.registry
            return registry.driver, registry.cache
        with self._lock:
            if self._storage is None:
                storage = self.config.storage
                self._storage = (create_driver(storage.driver, storage.parameters), build_cache(self.config))
            return self._storage

    # -- scheduled maintenance ----------------------------------------------------------

    def purge_uploads(self) -> dict:
        """Remove uploads older than storage.maintenance.uploadpurging.age (the scheduled
        functions' daily purge): {"purged": [paths], "dryrun": bool[, "skipped": why]}."""
        from datetime import timedelta

        from .context import background
        from .registry.maintenance import purge_uploads

        storage, purging = self.config.storage, self.config.storage.upload_purging
        if not purging.enabled or storage.readonly:
            return {"purged": [], "dryrun": purging.dryrun, "skipped": "disabled" if not purging.enabled else "readonly"}
        removed = purge_uploads(background(), self.storage()[0], timedelta(seconds=purging.age),
                                dry_run=purging.dryrun)
        log.info("upload purge removed %d upload(s)%s", len(removed), " (dry run)" if purging.dryrun else "")
        return {"purged": removed, "dryrun": purging.dryrun}

    def collect_garbage(self, remaining: Optional[float] = None) -> dict:
        """One scheduled gc invocation: continue the run _gc/checkpoint holds, or start one
        once storage.maintenance.gc.interval has passed (registry.maintenance.scheduled_gc).
        It works for storage.maintenance.gc.budget, capped by `remaining` (the invocation's
        time left, on Lambda) or else by the platform's budget, then saves its progress."""
        from .context import background
        from .registry.maintenance import invocation_budget, scheduled_gc

        storage = self.config.storage
        if remaining is not None:
            budget = invocation_budget(storage.gc_budget, remaining)
        else:
            budget = storage.gc_budget if storage.gc_budget is not None else self.platform.gc_budget
        driver, cache = self.storage()
        return scheduled_gc(background(), driver, storage, cache, budget=budget)

    def start_upload_purger(self) -> None:
        """For a long-running server: purge abandoned uploads in the background, first after
        a jittered minute or so (replicas sharing a bucket do not purge in lockstep), then
        every storage.maintenance.uploadpurging.interval."""
        import random

        purging = self.config.storage.upload_purging
        if not purging.enabled or self.config.storage.readonly:
            return

        def run() -> None:
            delay = 60 + random.uniform(0, 60)
            while True:
                threading.Event().wait(delay)
                try:
                    self.purge_uploads()
                except Exception:
                    log.exception("upload purging failed")
                delay = purging.interval

        threading.Thread(target=run, name="upload-purger", daemon=True).start()
