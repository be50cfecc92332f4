"""The Lambda entry point: Chalice routes every /v2/ request to the registry api.

Chalice's own request handling is bypassed on purpose: it rejects Content-Types a
route does not list and binary responses without a matching Accept, while a
registry must take any Content-Type (or none) and send bytes to any client. The
routes below exist so that `chalice deploy` creates the API Gateway resources and
`chalice local` can match paths; the events themselves go to chalicelib.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from chalice import Chalice, Cron, Rate

from chalicelib.apigateway import request_from_event, response_to_event

APP_NAME = "stratus"


class RegistryChalice(Chalice):
    _api = None

    def registry_api(self):
        # Built on first use, once per instance: cold starts that only answer
        # GET /v2/ never pay for a storage SDK.
        if self._api is None:
            from chalicelib.bootstrap import build_api, configure_logging
            from chalicelib.config import load_config

            config = load_config()
            configure_logging(config)
            RegistryChalice._api = build_api(config)
        return self._api

    def __call__(self, event: Any, context: Any) -> dict:
        if not isinstance(event, dict) or "requestContext" not in event:
            return super().__call__(event, context)
        self.lambda_context = context
        request = request_from_event(event)
        response = self.registry_api().handle(request)
        return response_to_event(response, payload_v2=event.get("version") == "2.0")


app = RegistryChalice(app_name=APP_NAME)
app.api.binary_types = ["*/*"]
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


# -- the auth challenge through a REST API -----------------------------------------------------
# A REST API renames a Lambda proxy response's WWW-Authenticate to
# x-amzn-Remapped-WWW-Authenticate, so docker never sees the registry's challenge. With
# STRATUS_GATEWAY_AUTHORIZER=true in the stage's environment_variables (chalice deploy
# imports this module with them, as each function does), the /v2 routes get a TOKEN
# authorizer, and API Gateway answers every refusal itself, from gateway responses that
# carry the challenge (gateway_responses(), put on the API after each deploy by
# scripts/gateway_responses.py): a request without Authorization gets UNAUTHORIZED
# without any function running, one the registry's access controller refuses gets
# ACCESS_DENIED, made a 401. HTTP APIs pass the header through and need none of this.
GATEWAY_AUTHORIZER = os.environ.get("STRATUS_GATEWAY_AUTHORIZER", "").strip().lower() == "true"


class GatewayAccess:
    """The registry's access controller, built once per authorizer instance (no storage)."""

    _controller: Any = None
    _built = False

    @classmethod
    def controller(cls) -> Any:
        if not cls._built:
            from chalicelib.auth import create_access_controller
            from chalicelib.config import load_config

            cls._controller, cls._built = create_access_controller(load_config().auth), True
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
    from chalicelib.api import base, blobs, catalog, manifests, referrers, tags, uploads
    from chalicelib.api.app import Scope, match_route
    from chalicelib.context import Context

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
    from chalicelib.api.http import Request

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
    from chalicelib.auth.challenge import basic_challenge, bearer_challenge

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


def registry_auth(auth_request: Any) -> dict:
    """The authorizer function (handler app.registry_auth): Chalice hands it an AuthRequest."""
    return gateway_authorize({"authorizationToken": auth_request.token, "methodArn": auth_request.method_arn})


route_authorizer = None
if GATEWAY_AUTHORIZER:
    # ttl 0: a policy covers one methodArn, so a cached one would refuse the client's next
    # request; Chalice's TOKEN authorizer takes the token from the Authorization header
    registry_auth = route_authorizer = app.authorizer(ttl_seconds=0)(registry_auth)


@app.route("/v2", methods=["GET", "HEAD"], content_types=["*/*"], authorizer=route_authorizer)
def v2_base() -> None:  # pragma: no cover - RegistryChalice.__call__ answers
    raise NotImplementedError


@app.route("/v2/{proxy+}", methods=ALL_METHODS, content_types=["*/*"], authorizer=route_authorizer)
def v2_proxy(proxy: Optional[str] = None) -> None:  # pragma: no cover
    raise NotImplementedError


def _greedy_local_routes() -> None:
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

    local.RouteMatcher = GreedyRouteMatcher
    # the handler class is bound as a default argument, so patch it in place
    local.ChaliceRequestHandler._send_http_response_with_body = send_head_length
    local.ChaliceRequestHandler._parse_payload = parse_chunked_payload


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


if os.environ.get("AWS_CHALICE_CLI_MODE") == "true":
    _greedy_local_routes()


# -- scheduled maintenance ---------------------------------------------------------------------


@app.schedule(Cron(17, 3, "*", "*", "?", "*"), name="purge_uploads",
              description="Removes uploads abandoned longer than storage.maintenance.uploadpurging.age")
def purge_uploads(event: Any) -> dict:
    """Daily (03:17 UTC, as the Azure timer): remove uploads started longer ago than
    storage.maintenance.uploadpurging.age (168h), with the purge `stratus purge-uploads`
    and the Azure timer run. S3's lifecycle rule aborts the multipart parts of such an
    upload, but its startedat, pending tail and hash states would stay forever.

    `chalice deploy` makes it a function of its own (`<app>-<stage>-purge_uploads`,
    handler app.purge_uploads) with an EventBridge rule; infra/terraform/aws does the same.
    """
    import logging
    from datetime import timedelta

    from chalicelib.config import load_config
    from chalicelib.context import background
    from chalicelib.registry.maintenance import purge_uploads as purge
    from chalicelib.storage import create_driver

    config = load_config()
    storage, purging = config.storage, config.storage.upload_purging
    if not purging.enabled or storage.readonly:
        return {"purged": [], "dryrun": purging.dryrun, "skipped": "disabled" if not purging.enabled else "readonly"}
    driver = create_driver(storage.driver, storage.parameters)  # no api, no secret: only storage
    removed = purge(background(), driver, timedelta(seconds=purging.age), dry_run=purging.dryrun)
    logging.getLogger("stratus").info("upload purge removed %d upload(s)%s", len(removed),
                                      " (dry run)" if purging.dryrun else "")
    return {"purged": removed, "dryrun": purging.dryrun}


@app.schedule(Rate(15, unit=Rate.MINUTES), name="collect_garbage",
              description="Garbage collection with retention, continued from its checkpoint in storage")
def collect_garbage(event: Any) -> dict:
    """Every 15 minutes: continue the garbage collection (with retention policies) that
    _gc/checkpoint holds, or start one if storage.maintenance.gc.interval (24h) has
    passed since the last ended. Each invocation works for its budget (the Lambda's
    remaining time less a margin, or storage.maintenance.gc.budget if shorter), saves
    its progress and returns; `stratus gc` runs the same code to the end. Why a run
    spread over invocations is as safe as one: chalicelib/registry/maintenance.py.

    `chalice deploy` makes it a function of its own (`<app>-<stage>-collect_garbage`,
    handler app.collect_garbage) with an EventBridge rule; give it the longest timeout
    (900 s) and no concurrency beyond 1.
    """
    from chalicelib.bootstrap import build_cache, configure_logging
    from chalicelib.config import load_config
    from chalicelib.context import background
    from chalicelib.registry.maintenance import invocation_budget, scheduled_gc
    from chalicelib.storage import create_driver

    config = load_config()
    configure_logging(config)
    context = getattr(event, "context", None)  # Chalice's event carries the Lambda context
    remaining = context.get_remaining_time_in_millis() / 1000.0 if context is not None else None
    driver = create_driver(config.storage.driver, config.storage.parameters)
    return scheduled_gc(background(), driver, config.storage, build_cache(config),
                        budget=invocation_budget(config.storage.gc_budget, remaining))
