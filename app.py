"""The Lambda entry point: Chalice routes every /v2/ request to the registry api.

Chalice's own request handling is bypassed on purpose: it rejects Content-Types a
route does not list and binary responses without a matching Accept, while a
registry must take any Content-Type (or none) and send bytes to any client. The
routes below exist so that `chalice deploy` creates the API Gateway resources and
`chalice local` can match paths; the events themselves go to chalicelib.

This module only wires Chalice: the process is chalicelib.bootstrap.Stratus, events
are translated by chalicelib.adapters.apigateway, the authorizer and `chalice local`'s
fixes live in chalicelib.adapters.chalice.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from chalice import Chalice, Cron, Rate

from chalicelib.adapters.apigateway import request_from_event, response_to_event
from chalicelib.adapters.chalice import (  # noqa: F401 - gateway_responses: scripts/gateway_responses.py
    gateway_authorize, gateway_responses, greedy_local_routes)

APP_NAME = "stratus"


class RegistryChalice(Chalice):
    # The instance's Stratus (chalicelib.bootstrap), loaded by the first request; tests
    # set it back to None to start afresh.
    _owner: Any = None

    def registry_api(self) -> Any:
        # Built on first use, once per instance: cold starts that only answer
        # GET /v2/ never pay for a storage SDK.
        if RegistryChalice._owner is None:
            from chalicelib.bootstrap import Stratus

            RegistryChalice._owner = Stratus.load()
        return RegistryChalice._owner.api

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


if os.environ.get("AWS_CHALICE_CLI_MODE") == "true":
    greedy_local_routes()


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
    from chalicelib.bootstrap import Stratus

    # the configuration read at each run: a scheduled function builds no api, only storage
    return Stratus.load().purge_uploads()


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
    from chalicelib.bootstrap import Stratus

    context = getattr(event, "context", None)  # Chalice's event carries the Lambda context
    remaining = context.get_remaining_time_in_millis() / 1000.0 if context is not None else None
    return Stratus.load().collect_garbage(remaining)
