"""API Gateway proxy events <-> api.http, for the Lambda handler in app.py.

Handles REST API (payload 1.0, also what `chalice local` produces) and HTTP API
(payload 2.0) events. Bodies arrive base64-encoded when binary; responses are
always sent base64-encoded, which API Gateway turns back into bytes.
"""
from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Optional

from ..api import Headers, Request, Response
from ..api.http import parse_query

Event = Mapping[str, Any]


def _body(event: Event) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return bytes(body) if isinstance(body, (bytes, bytearray)) else str(body).encode("utf-8")


def _rest_query(event: Event) -> dict[str, list[str]]:
    multi = event.get("multiValueQueryStringParameters")
    if multi:
        return {k: list(v) for k, v in multi.items()}
    single = event.get("queryStringParameters")
    return {k: [v] for k, v in single.items()} if single else {}


def request_from_event(event: Event, base_url: Optional[str] = None) -> Request:
    """The api Request an API Gateway (or chalice local) event describes."""
    if event.get("version") == "2.0":
        http = event["requestContext"]["http"]
        method, path = http["method"], event.get("rawPath") or http.get("path", "/")
        query = parse_query(event.get("rawQueryString", ""))
        headers = Headers(event.get("headers") or {})
        stage = event["requestContext"].get("stage", "$default")
        prefix = "" if stage == "$default" or not path.startswith(f"/{stage}/") else f"/{stage}"
        path = path[len(prefix):]
    else:
        context = event.get("requestContext") or {}
        method = context.get("httpMethod") or event.get("httpMethod", "GET")
        # event["path"] is relative to the stage; requestContext.path is what the client used
        path = event.get("path") or context.get("path") or "/"
        full = context.get("path") or path
        prefix = full[: -len(path)] if full.endswith(path) and full != path else ""
        query = _rest_query(event)
        pairs = list((event.get("headers") or {}).items())
        for name, values in (event.get("multiValueHeaders") or {}).items():
            pairs.extend((name, v) for v in values)
        headers = Headers(pairs)
    body = _body(event)
    host = headers.get("host") or "localhost"
    scheme = headers.get("x-forwarded-proto", "https" if "." in host and not host.startswith("127.") else "http")
    return Request(
        method=method.upper(),
        path=path,
        query=query,
        headers=headers,
        body=io.BytesIO(body),
        content_length=len(body),
        base_url=base_url or f"{scheme}://{host}{prefix}",
        remote_addr=_source_ip(event.get("requestContext") or {}),
    )


def _source_ip(context: dict) -> str:
    """The client's address: REST (1.0) events carry it in identity, HTTP API (2.0) in http."""
    for part in ("http", "identity"):
        address = (context.get(part) or {}).get("sourceIp")
        if address:
            return address
    return ""


def response_to_event(response: Response, payload_v2: bool = False) -> dict[str, Any]:
    """The proxy-integration result; API Gateway recomputes Content-Length except on HEAD."""
    body = response.body_bytes()
    values: dict[str, list[str]] = {}
    for name, value in response.headers:
        values.setdefault(name, []).append(value)
    result: dict[str, Any] = {
        "statusCode": response.status,
        "body": base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": True,
    }
    if payload_v2:
        result["headers"] = {name: ",".join(v) for name, v in values.items()}
    else:
        result["headers"] = {name: v[0] for name, v in values.items() if len(v) == 1}
        result["multiValueHeaders"] = {name: v for name, v in values.items() if len(v) > 1}
    return result
