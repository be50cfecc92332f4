"""Where events go: the reference's webhook POST, or a cloud's own bus.

A sink's `send(events)` delivers them as one unit or raises; retries, queues and
counting are the endpoint's (chalicelib.notifications.delivery). SDK clients are
built on first use and kept for the process (one per function instance).
"""
from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from .config import EndpointConfig
from .events import EVENTS_MEDIA_TYPE, envelope


class DeliveryError(Exception):
    pass


class WebhookSink:
    """POST the reference's envelope; any 2xx or 3xx is accepted, as the reference does."""

    batch = 1  # the reference sends one event per envelope

    def __init__(self, config: EndpointConfig):
        self.config = config
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def send(self, events: list[dict]) -> None:
        body = envelope(events)
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._netloc, timeout=self.config.timeout)
        try:
            connection.putrequest("POST", self._target)
            connection.putheader("Content-Type", EVENTS_MEDIA_TYPE)
            connection.putheader("Content-Length", str(len(body)))
            for name, values in self.config.headers.items():
                for value in values:
                    connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            response.read()
            if not 200 <= response.status < 400:
                raise DeliveryError(f"{self.config.url}: response status {response.status} unaccepted")
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"{self.config.url}: {exc}") from exc
        finally:
            connection.close()


def detail_type(event: dict) -> str:
    """EventBridge's detail-type and Event Grid's eventType: the kind of target and the action."""
    target = event.get("target") or {}
    media_type = target.get("mediaType", "")
    kind = "Blob" if media_type == "application/octet-stream" or "/blobs/" in target.get("url", "") else "Manifest"
    if event.get("action") == "delete" and target.get("tag") and not target.get("digest"):
        kind = "Tag"
    return f"{kind} {event.get('action', '').capitalize()}"


class EventBridgeSink:
    """PutEvents on the configured bus: one entry per event, its detail the webhook's event."""

    batch = 10  # PutEvents takes at most 10 entries

    def __init__(self, config: EndpointConfig):
        self.config = config
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                options = self.config.options
                self._client = boto3.session.Session().client(
                    "events", region_name=options.get("region"), endpoint_url=options.get("endpoint") or None,
                    config=Config(connect_timeout=self.config.timeout, read_timeout=self.config.timeout,
                                  retries={"max_attempts": 1}),
                )
            return self._client

    def send(self, events: list[dict]) -> None:
        options = self.config.options
        entries = [{"Source": options["source"], "DetailType": detail_type(e), "Detail": json.dumps(e),
                    "EventBusName": options["bus"], "Resources": []} for e in events]
        try:
            result = self.client().put_events(Entries=entries)
        except Exception as exc:  # botocore's errors, without importing them on the request path
            raise DeliveryError(f"eventbridge {options['bus']}: {exc}") from exc
        if result.get("FailedEntryCount"):
            failed = [e for e in result.get("Entries", []) if e.get("ErrorCode")]
            raise DeliveryError(f"eventbridge {options['bus']}: {len(failed)} entries failed: {failed[:1]}")


class EventGridSink:
    """Publish to a custom topic with azure-eventgrid, in Event Grid or CloudEvents schema."""

    batch = 10

    def __init__(self, config: EndpointConfig):
        self.config = config
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from azure.eventgrid import EventGridPublisherClient

                key = self.config.options.get("key")
                if key:
                    from azure.core.credentials import AzureKeyCredential

                    credential: Any = AzureKeyCredential(key)
                else:
                    from azure.identity import DefaultAzureCredential

                    credential = DefaultAzureCredential()
                self._client = EventGridPublisherClient(self.config.url, credential)
            return self._client

    def send(self, events: list[dict]) -> None:
        options = self.config.options
        if options["schema"] == "cloudevents":
            from azure.core.messaging import CloudEvent

            batch: list[Any] = [CloudEvent(source=options["source"], type=_event_type(e), data=e, id=e["id"])
                                for e in events]
        else:
            from azure.eventgrid import EventGridEvent

            batch = [EventGridEvent(subject=_subject(e), event_type=_event_type(e), data=e, data_version="1.0",
                                    id=e["id"]) for e in events]
        try:
            self.client().send(batch, timeout=self.config.timeout)
        except Exception as exc:  # azure-core's errors, likewise
            raise DeliveryError(f"eventgrid {self.config.url}: {exc}") from exc


def _event_type(event: dict) -> str:
    return "Stratus.Registry." + detail_type(event).replace(" ", "")


def _subject(event: dict) -> str:
    target = event.get("target") or {}
    return "/".join(p for p in (target.get("repository", ""), target.get("tag") or target.get("digest", "")) if p)


def sink_for(config: EndpointConfig) -> Any:
    return {"webhook": WebhookSink, "eventbridge": EventBridgeSink, "eventgrid": EventGridSink}[config.kind](config)
