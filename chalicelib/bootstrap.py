"""Builds the registry and its API from a Config: the one place that wires layers.

Adapters (server, Chalice, Azure Functions) call build_api once per process and
reuse the result across requests, so clients and pools live as long as the process.
"""
from __future__ import annotations

import logging
import secrets
from typing import Any, Callable, Optional, Union

from . import aws_runtime
from .api import APISettings, RegistryAPI
from .config import Config, DIRECT_READ_BUDGET, load_config
from .registry import Registry, RegistryOptions
from .storage import create_driver

log = logging.getLogger("stratus")


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
    """storage.directupload as the api takes it; None when off (by default, off except on
    Lambda; the Azure Functions adapter turns it on in its own config)."""
    from .registry.direct_uploads import DirectUploadOptions

    direct = config.storage.directupload
    enabled = direct.enabled if direct.enabled is not None else aws_runtime.on_lambda()
    if not enabled:
        return None
    # ranged reads in flight: 8, fewer when each is larger, so memory stays within the budget
    readers = max(1, min(8, DIRECT_READ_BUDGET // direct.readsize))
    return DirectUploadOptions(part_size=direct.partsize, expiry=int(direct.expiry), verify_time=direct.verifytime,
                               read_size=direct.readsize, readers=readers)


def build_api(config: Optional[Config] = None) -> Any:
    """The api the adapters serve: a RegistryAPI, or one wrapped (notifications, metrics,
    X-Ray, http.prefix) that handles requests the same way."""
    from .prefix import with_prefix

    config = config or load_config()
    return with_prefix(_build_api(config), config.http.prefix)


def _build_api(config: Config) -> Any:
    http = config.http
    settings = APISettings(
        secret=http_secret(config),
        # http.host names the server; the api's URLs are under http.prefix on it
        base_url=http.host.rstrip("/") + http.prefix.rstrip("/") if http.host else None,
        relative_urls=http.relativeurls,
        chunk_min_length=http.chunk_min_length,
        # a Lambda request carries ~4.4 MiB of binary body: 4 MiB unless configured
        chunk_max_length=http.chunk_max_length if http.chunk_max_length is not None
        else aws_runtime.default_chunk_max_length(),
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
