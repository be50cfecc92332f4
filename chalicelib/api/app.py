"""The registry's HTTP application: routes /v2/ requests to the endpoint handlers.

Every adapter (the self-hosted server, Chalice, Azure Functions) turns its
request into an api.http.Request and calls RegistryAPI.handle.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol

from ..context import Context
from ..registry import Registry, RegistryError
from ..registry.direct_uploads import DirectUploadOptions, kind as direct_kind
from ..registry.errors import PaginationNumberInvalidError, RangeInvalidError
from ..registry.proxy import PushToMirrorError, UpstreamContentError, UpstreamUnavailableError
from ..storage import StorageError
from .errors import HTTPError, error_response, from_registry_error
from .http import Request, Response
from .upload_state import StateSigner

log = logging.getLogger("stratus.api")

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")


@dataclass(frozen=True)
class Access:
    """One resource/action pair a request needs, in the token spec's terms."""

    type: str  # "repository" | "registry"
    name: str  # repository name, or "catalog"
    action: str  # "pull" | "push" | "delete" | "*"
    # Asked for in a challenge's scope but not required: a cross-repository mount's pull
    # on `from`, which a client should request in its token while a token without it
    # still pushes (the mount then falls back to a plain upload).
    optional: bool = False


class AccessController(Protocol):
    def authorize(self, request: Request, access: list[Access]) -> Optional[Response]:
        """None to let the request through, or the 401/403 response to send."""
        ...


@dataclass(frozen=True)
class APISettings:
    secret: bytes
    base_url: Optional[str] = None  # http.host; else the request's own
    relative_urls: bool = False
    chunk_min_length: int = 0
    chunk_max_length: Optional[int] = None
    catalog_max_entries: int = 1000
    extra_headers: tuple[tuple[str, str], ...] = ()
    # storage.directupload; None: the extension is off (docs/direct-uploads.md)
    direct_upload: Optional[DirectUploadOptions] = None


Handler = Callable[["Scope"], Response]


@dataclass
class Scope:
    """Everything one request's handler needs."""

    api: "RegistryAPI"
    request: Request
    ctx: Context
    params: dict

    @property
    def registry(self) -> Registry:
        return self.api.registry

    @property
    def settings(self) -> APISettings:
        return self.api.settings

    def url(self, path: str) -> str:
        """Absolute URL for a Location header, unless relative URLs are configured."""
        if self.settings.relative_urls:
            return path
        return (self.settings.base_url or self.request.base_url).rstrip("/") + path


_NAME = r"(?P<name>[^?#]+?)"
# (pattern, route, a literal every path the pattern matches contains): match_route
# tries a pattern only when its literal is in the path. Blob and manifest requests,
# most of the traffic, came 7th and 4th, and each failed pattern scanned the path
# with a lazy name group: 7 regex matches were a tenth of a blob HEAD's handler CPU.
ROUTES: list[tuple[re.Pattern, str, str]] = [
    (re.compile(r"^/v2/?$"), "base", "/v2"),
    (re.compile(r"^/v2/_catalog$"), "catalog", "/v2/_catalog"),
    (re.compile(rf"^/v2/{_NAME}/tags/list$"), "tags", "/tags/list"),
    (re.compile(rf"^/v2/{_NAME}/manifests/(?P<reference>[^/]+)$"), "manifest", "/manifests/"),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/?$"), "uploads", "/blobs/uploads"),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<upload_id>[^/]+)$"), "upload", "/blobs/uploads/"),
    (re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>[^/]+)$"), "blob", "/blobs/"),
    (re.compile(rf"^/v2/{_NAME}/referrers/(?P<digest>[^/]+)$"), "referrers", "/referrers/"),
]


# The methods of each route that change a repository (an upload's GET reads only its own
# session, but no session can exist in a mirrored repository).
_WRITES = {
    "manifest": ("PUT", "DELETE"),
    "uploads": ("POST",),
    "upload": ("GET", "PATCH", "PUT", "POST", "DELETE"),
    "blob": ("DELETE",),
}


def match_route(path: str) -> tuple[Optional[str], dict]:
    for pattern, route, literal in ROUTES:
        if literal in path:
            m = pattern.match(path)
            if m:
                return route, m.groupdict()
    return None, {}


class RegistryAPI:
    def __init__(
        self,
        registry: Registry,
        settings: APISettings,
        access_controller: Optional[AccessController] = None,
        context_factory: Callable[[Request], Context] = lambda request: Context(),
    ):
        from . import base, blobs, catalog, direct_uploads, manifests, referrers, tags, uploads

        self.registry = registry
        self.settings = settings
        self.signer = StateSigner(settings.secret)
        self.access_controller = access_controller
        self.context_factory = context_factory
        # what the discovery header says, when the extension is on and the driver can presign
        self.direct_kind = direct_kind(registry.driver) if settings.direct_upload is not None else None
        # route -> (method -> handler, the access a request of that route needs)
        self.routes: dict[str, tuple[Mapping[str, Handler], Callable[[Scope], list[Access]]]] = {
            "base": (base.HANDLERS, base.access),
            "catalog": (catalog.HANDLERS, catalog.access),
            "tags": (tags.HANDLERS, tags.access),
            "manifest": (manifests.HANDLERS, manifests.access),
            "uploads": (uploads.COLLECTION_HANDLERS, uploads.access),
            # POST ?parts= is authorised as a PATCH to the upload is
            "upload": ({**uploads.HANDLERS, "POST": direct_uploads.request_parts}, uploads.access),
            "blob": (blobs.HANDLERS, blobs.access),
            "referrers": (referrers.HANDLERS, referrers.access),
        }

    def may_mount_from(self, scope: Scope, source: str) -> bool:
        """Mounting reads the source repository, so it needs pull access there
        ("*" when the blob may come from any repository)."""
        if self.access_controller is None:
            return True
        return self.access_controller.authorize(scope.request, [Access("repository", source, "pull")]) is None

    def _fill_request(self, route: str, scope: Scope) -> bool:
        if route != "blob" or self.registry.proxies is None:
            return False
        from .proxy_blobs import is_fill_request

        return is_fill_request(scope)

    def _refuse_writes_to_mirrors(self, route: str, method: str, params: dict) -> None:
        """A mirrored repository holds the upstream's content only: like the reference's
        proxy, every push or delete there is UNSUPPORTED (uploads, manifests, blobs)."""
        proxies = self.registry.proxies
        if proxies is None or route not in _WRITES or method not in _WRITES[route]:
            return
        mirror = proxies.mirror_for(params.get("name", ""))
        if mirror is not None:
            raise PushToMirrorError({"name": params.get("name", "")[:200],
                                     "reason": f"a pull-through cache of {mirror.config.remoteurl}"})

    def handle(self, request: Request) -> Response:
        response = self._dispatch(request)
        response.headers.append(API_VERSION_HEADER)
        response.headers.extend(self.settings.extra_headers)
        return response

    def _dispatch(self, request: Request) -> Response:
        route, params = match_route(request.path)
        if route is None:
            return error_response("UNSUPPORTED", "no such endpoint", {"path": request.path[:200]}, status=404)
        methods, access = self.routes[route]
        method = request.method.upper()
        handler = methods.get(method)
        if handler is None:
            return error_response(
                "UNSUPPORTED", f"method {method} not allowed", status=405,
                headers=[("Allow", ", ".join(sorted(methods)))],
            )
        ctx = self.context_factory(request)
        scope = Scope(self, request, ctx, params)
        try:
            if self.access_controller is not None and not self._fill_request(route, scope):
                denied = self.access_controller.authorize(request, access(scope))
                if denied is not None:
                    return denied
            self._refuse_writes_to_mirrors(route, method, params)
            return handler(scope)
        except HTTPError as exc:
            return exc.response
        except RegistryError as exc:
            return from_registry_error(exc, status_of(exc))
        except StorageError as exc:
            log.error("storage error on %s %s: %s", method, request.path, exc)
            return error_response("UNKNOWN", "storage backend error", status=503)
        except Exception:
            log.exception("unhandled error on %s %s", method, request.path)
            return error_response("UNKNOWN", "internal error", status=500)


def status_of(exc: RegistryError) -> Optional[int]:
    """The few domain errors whose status is not their code's usual one
    (a read-only registry's UNSUPPORTED is the usual 405)."""
    if isinstance(exc, RangeInvalidError):
        return 416
    if isinstance(exc, PaginationNumberInvalidError):  # a bad query, not a bad method
        return 400
    if isinstance(exc, UpstreamUnavailableError):
        return 503
    if isinstance(exc, UpstreamContentError):  # the upstream's fault, not the client's
        return 502
    return None
