"""The reference registry's events, built from a handled request and its response.

The shape is registry:2's (docker/distribution 2.8, notifications/event.go): an
envelope ``{"events": [...]}`` sent as ``application/vnd.docker.distribution.events.v1+json``,
each event ``{id, timestamp, action, target, request, actor, source}`` with the keys in
that order and the reference's omissions (a zero size, an empty tag, no references).

One request makes at most one event here; which one is decided from the route, the
method and the status alone, so the api's handlers know nothing of notifications.
What only storage knows (a committed blob's size, a HEAD's references) is left as a
`Pending.resolve` step that runs off the request path (the delivery thread) or, on a
function, just before sending.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
BLOB_MEDIA_TYPE = "application/octet-stream"  # what the reference's blob descriptors carry
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class Source:
    """The node that generated the event: hostname:port and this process's id."""

    addr: str
    instance_id: str

    @classmethod
    def for_process(cls, http_addr: str) -> "Source":
        port = http_addr.rpartition(":")[2] if ":" in http_addr else ""
        host = socket.gethostname() or http_addr
        return cls(f"{host}:{port}" if port.isdigit() else host, str(uuid.uuid4()))

    def record(self) -> dict[str, str]:
        return _compact({"addr": self.addr, "instanceID": self.instance_id})


@dataclass
class Pending:
    """An event whose target may still miss what only storage knows."""

    event: dict[str, Any]
    repository: str = ""
    digest: str = ""
    need_size: bool = False
    need_references: bool = False
    manifest: Optional[bytes] = field(default=None, repr=False)  # the body, when the request had it

    @property
    def action(self) -> str:
        return self.event["action"]

    @property
    def media_type(self) -> str:
        return self.event["target"].get("mediaType", "")

    def resolve(self, registry: Any, include_references: bool) -> dict[str, Any]:
        """The finished event; storage is asked only for what the response did not say."""
        target = self.event["target"]
        if self.need_size or (include_references and self.need_references and self.manifest is None):
            from ..context import background
            from ..digest import Digest

            ctx, digest = background(), Digest.parse(self.digest)
            repo = registry.repository(self.repository)
            try:
                if self.need_size:
                    _set_size(target, repo.blobs.stat(ctx, digest).size)
                elif include_references:
                    self.manifest = repo.manifests.get(ctx, digest).body
            except Exception:  # gone since (deleted): the event still goes, as the response was sent
                pass
        if include_references and self.need_references and self.manifest is not None:
            references = manifest_references(self.manifest)
            if references:
                target["references"] = references
        return self.event


def _set_size(target: dict[str, Any], size: int) -> None:
    """mediaType, size, digest, length, ... : the reference's key order, zero omitted."""
    ordered = {"mediaType": target.pop("mediaType", None), "size": size, "digest": target.pop("digest", None),
               "length": size}
    rest = {k: v for k, v in target.items() if k not in ("size", "length")}
    target.clear()
    target.update(_compact(ordered))
    target.update(rest)


def new_event(action: str, target: dict[str, Any], request: dict[str, Any], actor: dict[str, Any],
              source: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": go_timestamp(time.time()),
        "action": action,
        "target": target,
        "request": request,
        "actor": actor,
        "source": source,
    }


def target(media_type: str = "", size: Optional[int] = None, digest: str = "", repository: str = "",
           from_repository: str = "", url: str = "", tag: str = "") -> dict[str, Any]:
    return _compact({
        "mediaType": media_type, "size": size, "digest": digest, "length": size, "repository": repository,
        "fromRepository": from_repository, "url": url, "tag": tag,
    })


def _compact(fields: dict[str, Any]) -> dict[str, Any]:
    """Go's omitempty: no empty strings, zeros, empty lists or maps."""
    return {k: v for k, v in fields.items() if v not in (None, "", 0, [], {})}


def go_timestamp(seconds: float) -> str:
    """time.Time's JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed), in UTC."""
    whole = int(seconds)
    micros = int(round((seconds - whole) * 1_000_000))
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    fraction = f"{micros:06d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def request_record(request: Any, request_id: str) -> dict[str, Any]:
    """id and method and useragent always (the reference has no omitempty on them)."""
    host = request.headers.get("host") or request.base_url.partition("://")[2]
    return {
        "id": request_id,
        **_compact({"addr": remote_addr(request), "host": host}),
        "method": request.method.upper(),
        "useragent": request.headers.get("user-agent") or "",
    }


def remote_addr(request: Any) -> str:
    """The first X-Forwarded-For address, else X-Real-Ip, else the peer (as the reference)."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        first = forwarded.split(",")[0].strip()
        if _is_ip(first):
            return first
    real = (request.headers.get("x-real-ip") or "").strip()
    if real and _is_ip(real):
        return real
    return request.remote_addr or ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def actor_name(request: Any, access_controller: Any = None) -> str:
    """The authenticated user: the access controller's word if it has one, else the Basic
    user name (the reference's fallback) or a bearer token's subject. Only called for a
    request the access controller let through, so the token was verified already."""
    named = getattr(access_controller, "user_name", None)
    if callable(named):
        name = named(request)
        if name:
            return name
    authorization = request.headers.get("authorization") or ""
    scheme, _, credentials = authorization.partition(" ")
    try:
        if scheme.lower() == "basic":
            return base64.b64decode(credentials.strip()).decode("utf-8").partition(":")[0]
        if scheme.lower() == "bearer":
            payload = credentials.strip().split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            return str(claims.get("sub") or "") if isinstance(claims, dict) else ""
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        pass
    return ""


# ------------------------------------------------------------------ manifests


def manifest_media_type(body: bytes, content_type: Optional[str]) -> str:
    """What the reference reports for a pushed manifest: its own mediaType field, else the
    request's Content-Type, else the OCI type its shape says."""
    doc = _json(body)
    declared = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared:
        return declared
    if content_type:
        return content_type.split(";")[0].strip()
    return OCI_INDEX if isinstance(doc, dict) and "manifests" in doc else OCI_MANIFEST


def manifest_references(body: bytes) -> list[dict[str, Any]]:
    """Manifest.References() of the reference: an index's manifests (with their
    platform), else an image's config then layers."""
    doc = _json(body)
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("manifests"), list):
        return [_descriptor(d, platform=True) for d in doc["manifests"] if isinstance(d, dict)]
    found = [doc["config"]] if isinstance(doc.get("config"), dict) else []
    found += [d for d in doc.get("layers") or [] if isinstance(d, dict)]
    return [_descriptor(d) for d in found]


def _descriptor(d: dict[str, Any], platform: bool = False) -> dict[str, Any]:
    """distribution.Descriptor's fields in its order; unknown fields (artifactType) dropped."""
    out = _compact({"mediaType": d.get("mediaType"), "size": d.get("size"), "digest": d.get("digest"),
                    "urls": d.get("urls"), "annotations": dict(sorted((d.get("annotations") or {}).items()))})
    p = d.get("platform")
    if platform and isinstance(p, dict):
        out["platform"] = {"architecture": p.get("architecture", ""), "os": p.get("os", ""),
                           **_compact({"os.version": p.get("os.version"), "os.features": p.get("os.features"),
                                       "variant": p.get("variant")})}
    return out


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def envelope(events: list[dict[str, Any]]) -> bytes:
    """The body the reference POSTs: json.MarshalIndent(envelope, "", "   ")."""
    return json.dumps({"events": events}, indent=3, ensure_ascii=False).encode()
