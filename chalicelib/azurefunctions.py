"""Azure Functions HttpRequest/HttpResponse <-> api.http, for azure_func/function_app.py.

The Functions host hands the Python worker the whole request body as bytes and
takes the whole response body back, so bodies pass through unchanged and blob
reads should stay redirected to Blob Storage (a SAS URL) rather than served here.
The host refuses request bodies over its limit (100 MB unless the app setting
FUNCTIONS_REQUEST_BODY_SIZE_LIMIT raises it), so the api advertises that as
OCI-Chunk-Max-Length and answers a longer chunk with SIZE_INVALID.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
from typing import Any, Mapping, Optional
from urllib.parse import unquote, urlsplit

from .api import Headers, RegistryAPI, Request, Response
from .api.http import parse_query
from .config import Config

log = logging.getLogger("stratus.azurefunctions")

DEFAULT_BODY_LIMIT = 104_857_600  # the Functions host's request body limit: 100 MB
BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"


def body_limit(environ: Mapping[str, str] = os.environ) -> int:
    """The largest request body the host lets through, as this app is configured."""
    text = environ.get(BODY_LIMIT_SETTING, "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return DEFAULT_BODY_LIMIT


def with_platform_limits(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """config with http.chunkmaxlength no larger than a request the host accepts."""
    limit = body_limit(environ)
    configured = config.http.chunk_max_length
    if configured is not None and configured <= limit:
        return config
    if configured is not None:
        log.warning("http.chunkmaxlength %d exceeds the Functions request limit; using %d", configured, limit)
    http = dataclasses.replace(config.http, chunk_max_length=limit)
    return dataclasses.replace(config, http=http)


def request_from_functions(req: Any) -> Request:
    """The api Request an azure.functions.HttpRequest describes."""
    url = urlsplit(req.url)
    headers = Headers(list(req.headers.items()))
    body = req.get_body() or b""
    # The front end terminates TLS; X-Forwarded-Proto says what the client used.
    scheme = (headers.get("x-forwarded-proto") or url.scheme or "https").split(",")[0].strip()
    host = url.netloc or headers.get("host", "localhost")
    forwarded_for = headers.get("x-forwarded-for", "")
    return Request(
        method=req.method.upper(),
        path=unquote(url.path) or "/",
        query=parse_query(url.query),
        headers=headers,
        body=io.BytesIO(body),
        content_length=len(body),
        base_url=f"{scheme}://{host}",
        remote_addr=forwarded_for.split(",")[0].strip(),
    )


def response_to_functions(response: Response, method: str) -> Any:
    """An azure.functions.HttpResponse carrying response's status, headers and body."""
    import azure.functions as func

    body = b"" if method.upper() == "HEAD" else response.body_bytes()
    if method.upper() == "HEAD" and hasattr(response.body, "close"):
        response.body.close()
    merged: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for name, value in response.headers:
        lowered = name.lower()
        names.setdefault(lowered, name)
        merged.setdefault(lowered, []).append(value)
    # The host sets Content-Length from the body; only a HEAD must carry the GET's.
    if method.upper() != "HEAD":
        merged.pop("content-length", None)
    # The worker passes one value per header name; repeated headers join with commas.
    headers = {names[k]: ", ".join(v) for k, v in merged.items()}
    mimetype = headers.get(names.get("content-type", ""), "application/octet-stream")
    return func.HttpResponse(body=body, status_code=response.status, headers=headers, mimetype=mimetype)


class FunctionsRegistry:
    """The registry api for one Functions worker process, built on its first request.

    Building lazily keeps the cold start of the worker's indexing short and lets a
    configuration error surface as a logged 500 on the request instead of a host
    that will not start.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        self._environ = environ
        self._api: Optional[RegistryAPI] = None
        self._config: Optional[Config] = None
        self._lock = threading.Lock()

    @property
    def api(self) -> RegistryAPI:
        if self._api is None:
            with self._lock:
                if self._api is None:
                    self._api = self._build()
        return self._api

    @property
    def config(self) -> Config:
        """The configuration, read once per worker process (the api and the timer share it)."""
        if self._config is None:
            from .config import load_config

            environ = os.environ if self._environ is None else self._environ
            self._config = with_platform_limits(load_config(environ=environ), environ)
        return self._config

    def _build(self) -> RegistryAPI:
        from .bootstrap import build_api, configure_logging

        configure_logging(self.config)
        return build_api(self.config)

    def handle(self, req: Any) -> Any:
        request = request_from_functions(req)
        return response_to_functions(self.api.handle(request), request.method)

    def purge_uploads(self) -> list[str]:
        """Remove uploads older than storage.maintenance.uploadpurging.age (timer trigger)."""
        from datetime import timedelta

        from .context import background
        from .registry.maintenance import purge_uploads

        storage = self.config.storage
        purging = storage.upload_purging
        if not purging.enabled or storage.readonly:
            return []
        driver = self.api.registry.driver
        return purge_uploads(background(), driver, timedelta(seconds=purging.age), dry_run=purging.dryrun)
