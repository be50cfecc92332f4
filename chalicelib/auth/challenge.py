"""401 responses: the spec's UNAUTHORIZED body and the WWW-Authenticate challenge.

Clients discover how to authenticate from the challenge, so every refusal carries
one; the body lists the accesses that were needed, as the reference registry does.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..api.app import Access
from ..api.errors import error_response
from ..api.http import Response
from ..registry.names import NAME_RE, NAME_MAX_LENGTH

DEFAULT_MESSAGE = "authentication required"


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string; configuration values only, never client input."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _printable(access: Access) -> bool:
    # A name from the path goes into a response header: only names that are valid
    # repository names (no quotes, spaces, control characters) may appear there.
    if access.type == "registry":
        return access.name == "catalog"
    return len(access.name) <= NAME_MAX_LENGTH and NAME_RE.match(access.name) is not None


def scope_param(access: Iterable[Access]) -> str:
    """`repository:<name>:pull,push registry:catalog:*`: actions grouped per resource."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for item in access:
        if not _printable(item):
            continue
        actions = grouped.setdefault((item.type, item.name), [])
        if item.action not in actions:
            actions.append(item.action)
    return " ".join(f"{type_}:{name}:{','.join(actions)}" for (type_, name), actions in grouped.items())


def basic_challenge(realm: str) -> str:
    return f"Basic realm={_quoted(realm)}"


def bearer_challenge(realm: str, service: str, access: Iterable[Access], error: Optional[str] = None) -> str:
    value = f"Bearer realm={_quoted(realm)},service={_quoted(service)}"
    scope = scope_param(access)
    if scope:
        value += f",scope={_quoted(scope)}"
    if error:
        value += f",error={_quoted(error)}"
    return value


def access_detail(access: Iterable[Access]) -> list[dict]:
    """The body's detail: what the request needed, in the reference registry's shape."""
    return [{"Type": a.type, "Name": a.name[:256], "Action": a.action} for a in access if _printable(a)]


def unauthorized(challenge: str, access: list[Access], message: str = DEFAULT_MESSAGE) -> Response:
    """401 UNAUTHORIZED with the spec's error body and the challenge to answer."""
    return error_response(
        "UNAUTHORIZED", message, access_detail(access) or None, status=401,
        headers=[("WWW-Authenticate", challenge)],
    )
