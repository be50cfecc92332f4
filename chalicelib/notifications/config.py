"""The ``notifications`` section, typed: registry:2's keys plus Stratus's own.

registry:2 keys (docs/notifications.md has the table):

    notifications:
      events: {includereferences: bool}
      endpoints:
        - name, url, headers, timeout, threshold, backoff, disabled,
          ignoredmediatypes, ignore: {mediatypes, actions}

Stratus adds (absent from registry:2, so a reference config never sets them):

    notifications:
      queue: {size: 1000, directory: <path> | "" (memory only), redis: false}
      delivery: background | sync          # default: sync on Lambda / Functions
      eventbridge: {bus, source, detailtype, region, endpoint, ...endpoint keys}
      eventgrid: {endpoint, key, schema: eventgrid | cloudevents, ...endpoint keys}

Parsed by chalicelib.config at load time, so a bad value stops start-up with the
key path; nothing here imports an SDK.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

ACTIONS = ("push", "pull", "delete", "mount")


@dataclass(frozen=True)
class EndpointConfig:
    """One destination: a webhook (the reference's endpoint) or a native bus."""

    name: str
    kind: str = "webhook"  # webhook | eventbridge | eventgrid
    url: str = ""
    headers: dict[str, list[str]] = field(default_factory=dict)
    timeout: float = 1.0  # the reference's defaults (notifications/endpoint.go)
    threshold: int = 10
    backoff: float = 1.0
    disabled: bool = False
    # ignoredmediatypes and ignore.mediatypes, merged as the reference merges them
    ignored_mediatypes: tuple[str, ...] = ()
    ignored_actions: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # the native target's own keys

    def ignores(self, action: str, media_type: str) -> bool:
        return action in self.ignored_actions or (bool(media_type) and media_type in self.ignored_mediatypes)


@dataclass(frozen=True)
class NotificationsConfig:
    endpoints: tuple[EndpointConfig, ...] = ()
    include_references: bool = False
    queue_size: int = 1000  # per endpoint; a full queue drops (logged, counted)
    queue_directory: Optional[str] = None  # None: the default for the driver; "": memory only
    queue_redis: bool = False  # the queue in Redis (the `redis` section's server) instead
    delivery: Optional[str] = None  # None: sync on functions, background elsewhere

    @property
    def active(self) -> tuple[EndpointConfig, ...]:
        return tuple(e for e in self.endpoints if not e.disabled)


def parse(section: Any) -> NotificationsConfig:
    """``section`` is chalicelib.config's _Section over ``notifications``."""
    from ..config import _check_list

    events = section.section("events")
    include_references = events.boolean("includereferences", False)
    events.warn_unknown()
    endpoints = [_webhook(item) for item in _check_list(section, "endpoints")]
    for key, kind in (("eventbridge", "eventbridge"), ("eventgrid", "eventgrid")):
        if section.value(key) is not _missing():
            endpoints.append(_native(section.section(key), kind))
    names = [e.name for e in endpoints]
    for name in names:
        if names.count(name) > 1:
            raise section.fail("endpoints", "endpoints with distinct names", name)
    queue = section.section("queue")
    queue_size = queue.integer("size", 1000, minimum=1)
    directory = queue.string("directory", None)
    in_redis = queue.boolean("redis", False)
    queue.warn_unknown()
    delivery = section.choice("delivery", ("background", "sync"), None)
    section.warn_unknown()
    return NotificationsConfig(tuple(endpoints), include_references, queue_size, directory, in_redis, delivery)


def _missing() -> Any:
    from ..config import _MISSING

    return _MISSING


def _common(section: Any) -> dict[str, Any]:
    """The keys every endpoint takes, checked as the reference reads them."""
    from ..config import _headers

    ignore = section.section("ignore")
    mediatypes = _strings(section, "ignoredmediatypes") + _strings(ignore, "mediatypes")
    actions = _strings(ignore, "actions")
    for action in actions:
        if action not in ACTIONS:
            raise ignore.fail("actions", "actions among " + ", ".join(ACTIONS), action)
    ignore.warn_unknown()
    return dict(
        headers=_headers(section),
        timeout=section.duration("timeout", 1.0) or 1.0,  # zero or absent: the reference's 1s
        threshold=section.integer("threshold", 10, minimum=0) or 10,
        backoff=section.duration("backoff", 1.0) or 1.0,
        disabled=section.boolean("disabled", False),
        ignored_mediatypes=tuple(mediatypes),
        ignored_actions=tuple(actions),
    )


def _webhook(section: Any) -> EndpointConfig:
    name = section.string("name", None)
    if not name:
        raise section.fail("name", "a name for the endpoint", name if name is not None else _missing())
    disabled = section.boolean("disabled", False)
    url = section.string("url", None)
    if not disabled and not _is_http_url(url):
        raise section.fail("url", "an absolute http(s) URL to POST events to", url if url else _missing())
    endpoint = EndpointConfig(name=name, kind="webhook", url=url or "", **_common(section))
    section.warn_unknown()
    return endpoint


def _native(section: Any, kind: str) -> EndpointConfig:
    options: dict[str, Any] = {}
    if kind == "eventbridge":
        options["bus"] = section.string("bus", "default")
        options["source"] = section.string("source", "stratus.registry")
        options["region"] = section.string("region", None)
        options["endpoint"] = section.string("endpoint", None)  # a test's moto server, a VPC endpoint
        url = options["endpoint"] or ""
    else:
        url = section.string("endpoint", None)
        if not _is_http_url(url):
            raise section.fail("endpoint", "the topic's https endpoint URL", url if url else _missing())
        options["key"] = section.string("key", None)  # None: DefaultAzureCredential
        options["schema"] = section.choice("schema", ("eventgrid", "cloudevents"), "eventgrid", fold_case=True)
        options["source"] = section.string("source", "stratus.registry")
    endpoint = EndpointConfig(name=section.string("name", kind), kind=kind, url=url, options=options,
                              **_common(section))
    section.warn_unknown()
    return endpoint


def _strings(section: Any, key: str) -> list[str]:
    value = section.value(key)
    if value is _missing():
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict) and all(str(k).isdigit() for k in value):  # REGISTRY_..._0 overrides
        value = [value[k] for k in sorted(value, key=int)]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise section.fail(key, "a list of strings", value)
    return list(value)


def _is_http_url(url: Optional[str]) -> bool:
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
