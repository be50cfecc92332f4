"""Notifications: registry:2's webhook events, and EventBridge / Event Grid on the clouds.

Off unless an endpoint is enabled; then chalicelib.bootstrap wraps the api with
`wrap_api`. Nothing here runs, and no SDK is imported, for a registry without
notifications. docs/notifications.md describes the configuration and the delivery.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

log = logging.getLogger("stratus.notifications")

SPOOL_SUFFIX = "-notifications"


def on_function(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Lambda or Azure Functions: no thread runs between invocations."""
    from .. import aws_runtime

    environ = os.environ if environ is None else environ
    return aws_runtime.on_lambda(environ) or "FUNCTIONS_WORKER_RUNTIME" in environ


def spool_directory(config: Any) -> Optional[str]:
    """notifications.queue.directory; by default, beside a filesystem root (never inside
    it: registry:2 and the gc read that tree); "" or another driver: in memory only."""
    directory = config.notifications.queue_directory
    if directory is not None:
        return directory or None
    if config.storage.driver == "filesystem":
        root = str(config.storage.parameters.get("rootdirectory") or "").rstrip("/")
        if root:
            return root + SPOOL_SUFFIX
    return None


def wrap_api(api: Any, config: Any, sinks: Optional[dict] = None) -> Any:
    """The api with notifications, or the api itself when no endpoint is enabled."""
    settings = config.notifications
    if not settings.active:
        return api
    from .api import NotifyingAPI
    from .delivery import Notifier
    from .events import Source

    background = settings.delivery == "background" if settings.delivery else not on_function()
    spool, where = _spool(config) if background else (None, "")
    notifier = Notifier(settings, lambda: api.registry, background, spool, sinks)
    for endpoint in notifier.endpoints:
        log.info("notifications: endpoint %s (%s %s), %s delivery%s", endpoint.config.name, endpoint.config.kind,
                 endpoint.config.url, "background" if background else "synchronous",
                 f", spooled in {where}" if where else "")
    return NotifyingAPI(api, notifier, Source.for_process(config.http.addr))


def _spool(config: Any) -> tuple[Any, str]:
    """The durable queue's factory and where it is: Redis with queue.redis, else a
    directory (spool_directory), else none (memory)."""
    from .queues import spool_in_directory, spool_in_redis

    settings = config.notifications
    if settings.queue_redis:
        if not config.redis.addr:
            from ..config import ConfigError

            raise ConfigError("notifications.queue.redis: needs redis.addr to be set", key="notifications.queue.redis")
        from ..cache.redis import connect

        return spool_in_redis(lambda: connect(config.redis), settings.queue_size), f"redis {config.redis.addr}"
    directory = spool_directory(config)
    if directory:
        return spool_in_directory(directory, settings.queue_size), directory
    return None, ""
