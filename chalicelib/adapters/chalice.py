"""The Chalice app's glue (app.py): the REST API's TOKEN authorizer and its gateway
responses, and what `chalice local` needs to behave like API Gateway.

The authorizer answers with the registry's own access controller, built from the
configuration once per instance, without storage: see app.py for when it is on
(STRATUS_GATEWAY_AUTHORIZER).
"""
from __future__ import annotations

from typing import Any, Optional


class GatewayAccess:
    """The registry's access controller, built once per authorizer instance (no storage)."""

    _controller: Any = None
    _built = False

    @classmethod
    def controller(cls) -> Any:
        if not cls._built:
            from ..bootstrap import build_access_controller
            from ..config import load_config

            cls._controller, cls._built = build_access_controller(load_config()), True
        return cls._controller


def method_and_path(method_arn: str) -> tuple[str, str]:
    """(method, path) of `arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD>/<path>`
    (a digest's colon stays in the path: only the ARN's first five colons separate)."""
    resource = method_arn.split(":", 5)[5]
    parts = resource.split("/", 3)
    return parts[2], "/" + (parts[3] if len(parts) > 3 else "")


def needed_access(request: Any) -> list:
    """The access the api would ask of the controller for this request; [] for what it
    answers without asking (an unknown path or method: 404 or 405 from the function)."""
    from ..api import base, blobs, catalog, manifests, referrers, tags, uploads
    from ..api.app import Scope, match_route
    from ..context import Context

    route, params = match_route(request.path)
    modules = {"base": base, "catalog": catalog, "tags": tags, "manifest": manifests, "uploads": uploads,
               "upload": uploads, "blob": blobs, "referrers": referrers}
    if route is None:
        return []
    return modules[route].access(Scope(None, request, Context(), params))  # type: ignore[arg-type]


def gateway_authorize(event: dict, context: Any = None) -> dict:
    """A TOKEN authorizer's answer (an IAM policy for the methodArn, caching off): the
    registry's own controller decides, as the function will again. The query string is
    not in a TOKEN event, so a mount's optional pull on `from` is left to the function."""
    from ..api.http import Request

    token, method_arn = event.get("authorizationToken") or "", event["methodArn"]
    method, path = method_and_path(method_arn)
    request = Request.from_bytes(method, path, headers={"Authorization": token})
    controller = GatewayAccess.controller()
    refusal = None if controller is None else controller.authorize(request, needed_access(request))
    result: dict = {
        "principalId": _principal(token),
        "policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Deny" if refusal else "Allow", "Resource": method_arn}]},
    }
    if refusal is not None:
        import json

        errors = json.loads(refusal.body_bytes()).get("errors") or [{}]
        result["context"] = {"code": str(errors[0].get("code", "UNAUTHORIZED")),
                             "message": str(errors[0].get("message", "authentication required"))}
    return result


def _principal(token: str) -> str:
    """The Basic user name, or the kind of credentials (never a secret)."""
    import base64
    import binascii

    scheme, _, value = token.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        if user and user.isprintable() and len(user) <= 128:
            return user
    return scheme.lower()[:16] or "anonymous"


def gateway_responses(auth: Any) -> dict[str, dict]:
    """The REST API's UNAUTHORIZED and ACCESS_DENIED gateway responses (PutGatewayResponse's
    shape) for an `auth` config: 401, the registry's challenge for GET /v2/ as a static
    WWW-Authenticate (gateway response headers are not remapped), and the spec's error
    body; ACCESS_DENIED's message is the registry's, through $context.authorizer."""
    from ..auth.challenge import basic_challenge, bearer_challenge

    params = auth.parameters
    if auth.name == "htpasswd":
        challenge = basic_challenge(params.get("realm", "Stratus Registry"))
    elif auth.name in ("token", "silly"):
        challenge = bearer_challenge(params["realm"], params["service"], [])
    else:
        raise ValueError(f"auth {auth.name!r}: the gateway authorizer needs htpasswd, token or silly auth")
    if "'" in challenge:
        raise ValueError("a static gateway response header cannot hold a single quote: change the realm")
    headers = {"gatewayresponse.header.WWW-Authenticate": f"'{challenge}'",
               "gatewayresponse.header.Docker-Distribution-API-Version": "'registry/2.0'"}

    def body(message: str) -> dict[str, str]:
        return {"application/json": '{"errors":[{"code":"UNAUTHORIZED","message":"%s"}]}' % message}

    return {
        "UNAUTHORIZED": {"statusCode": "401", "responseParameters": headers,
                         "responseTemplates": body("authentication required")},
        "ACCESS_DENIED": {"statusCode": "401", "responseParameters": headers,
                          "responseTemplates": body("$context.authorizer.message")},
    }


def greedy_local_routes() -> None:
    """Teach `chalice local` the `{proxy+}` routes API Gateway understands.

    chalice local matches one path segment per `{param}`, so a repository name
    with slashes would never reach /v2/{proxy+}; API Gateway needs no help.
    """
    import chalice.local as local

    class GreedyRouteMatcher(local.RouteMatcher):
        def match_route(self, url: str) -> local.MatchResult:
            try:
                return super().match_route(url)
            except ValueError:
                pass
            from urllib.parse import parse_qs, urlparse

            parsed = urlparse(url)
            for route in self.route_urls:
                if route.endswith("+}"):
                    prefix, _, param = route.rpartition("/{")
                    if parsed.path.startswith(prefix + "/") and len(parsed.path) > len(prefix) + 1:
                        captured = {param[:-2]: parsed.path[len(prefix) + 1:]}
                        return local.MatchResult(route, captured, parse_qs(parsed.query, keep_blank_values=True))
            raise ValueError(f"No matching route found for: {url}")

    send_with_body = local.ChaliceRequestHandler._send_http_response_with_body

    def send_head_length(handler: Any, code: int, headers: dict, body: Any) -> None:
        # a HEAD answers with the size a GET would send, not that of its empty body
        length = headers.pop("Content-Length", None)
        if handler.command != "HEAD" or length is None:
            return send_with_body(handler, code, headers, body)
        handler.send_response(code)
        handler.send_header("Content-Length", length)
        handler._send_headers(headers)

    parse_payload = local.ChaliceRequestHandler._parse_payload

    def parse_chunked_payload(handler: Any) -> tuple[dict, Optional[bytes]]:
        # docker, podman and skopeo stream a layer they compress on the fly with
        # Transfer-Encoding: chunked; API Gateway assembles such a body, chalice
        # local would read none and then parse the chunks as the next request
        if "chunked" not in handler.headers.get("Transfer-Encoding", "").lower():
            return parse_payload(handler)
        body = _read_chunked(handler.rfile)
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        return headers, body

    setattr(local, "RouteMatcher", GreedyRouteMatcher)
    # the handler class is bound as a default argument, so patch it in place
    setattr(local.ChaliceRequestHandler, "_send_http_response_with_body", send_head_length)
    setattr(local.ChaliceRequestHandler, "_parse_payload", parse_chunked_payload)


def _read_chunked(stream: Any) -> bytes:
    """The body of an HTTP/1.1 chunked request (RFC 9112 section 7.1), trailers dropped."""
    parts = []
    while True:
        size = int(stream.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        parts.append(stream.read(size))
        stream.readline(1024)  # the CRLF closing the chunk
    while stream.readline(65536) not in (b"\r\n", b"\n", b""):
        pass
    return b"".join(parts)
