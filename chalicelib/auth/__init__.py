"""Access controllers: who may do what, decided before a handler touches storage.

The `auth` section picks one, as in the reference registry:

- ``htpasswd: {realm, path | env}``: HTTP Basic against bcrypt entries; any listed
  user may do anything.
- ``token: {realm, service, issuer, rootcertbundle | jwks}``: bearer JWTs whose
  ``access`` claim must cover each request.
- ``silly: {realm, service}``: any Authorization header passes (development only).
- no ``auth`` section: an open registry.

Each method also takes ``anonymouspull: true``: requests without credentials may
then pull (manifests, blobs, tags, referrers), while push, delete and the catalog
still need them. ``GET /v2/`` keeps answering with the challenge, so clients that
have credentials still discover how to send them.

An AccessController's ``authorize(request, access)`` returns None to let the request
through, or the 401 response (spec error body, WWW-Authenticate challenge) to send.
"""
from __future__ import annotations

from typing import Optional

from ..api.app import Access, AccessController
from ..api.http import Request, Response
from ..config import AuthConfig, ConfigError
from .challenge import bearer_challenge, unauthorized
from .credentials import has_credentials
from .params import Parameters

__all__ = ["AnonymousPull", "SillyAccessController", "create_access_controller"]


class AnonymousPull:
    """Lets requests without credentials pull; everything else goes to the controller."""

    def __init__(self, controller: AccessController):
        self.controller = controller

    def authorize(self, request: Request, access: list[Access]) -> Optional[Response]:
        pull_only = bool(access) and all(a.type == "repository" and a.action == "pull" for a in access)
        if pull_only and not has_credentials(request):
            return None
        return self.controller.authorize(request, access)


class SillyAccessController:
    """The reference registry's `silly` method: any Authorization header is enough."""

    def __init__(self, realm: str, service: str):
        self.realm = realm
        self.service = service

    def authorize(self, request: Request, access: list[Access]) -> Optional[Response]:
        if (request.headers.get("Authorization") or "").strip():
            return None
        return unauthorized(bearer_challenge(self.realm, self.service, access), access)


def create_access_controller(config: AuthConfig) -> Optional[AccessController]:
    """The controller `auth.<method>` configures; None for an open registry. Raises ConfigError."""
    if config.name == "none":
        return None
    params = Parameters(config.name, config.parameters)
    anonymous_pull = params.boolean("anonymouspull", False)
    controller: AccessController
    if config.name == "htpasswd":
        from . import htpasswd

        controller = htpasswd.from_parameters(params)
    elif config.name == "token":
        from . import token

        controller = token.from_parameters(params)
    elif config.name == "silly":
        controller = SillyAccessController(params.string("realm"), params.string("service"))
    else:
        raise ConfigError(f"auth: unknown method {config.name!r}", key=f"auth.{config.name}")
    # the reference's token redirect options: known, but Stratus does not act on them
    params.warn_unknown(ignored=("autoredirect", "autoredirectpath") if config.name == "token" else ())
    return AnonymousPull(controller) if anonymous_pull else controller
