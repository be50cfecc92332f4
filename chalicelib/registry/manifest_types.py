"""Parsing and validation of manifest bodies, by media type.

Accepted: Docker schema2 manifest and manifest list, OCI image manifest and index
(artifactType, subject and annotations included), and the OCI artifact manifest of
the 1.1 release candidates. Docker schema1 is refused: it is signed over a form of
JSON we would have to canonicalize, and no current client needs it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ..digest import Digest, DigestError
from .errors import ManifestInvalidError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
OCI_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"

IMAGE_MANIFESTS = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEXES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
SUPPORTED = IMAGE_MANIFESTS | INDEXES | {OCI_ARTIFACT_MANIFEST}
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    artifact_type: Optional[str] = None
    annotations: Optional[dict] = None
    platform: Optional[dict] = None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    body: bytes
    blobs: tuple[Descriptor, ...] = ()       # config and layers/blobs that must be linked
    manifests: tuple[Descriptor, ...] = ()   # children of an index that must exist
    subject: Optional[Descriptor] = None
    artifact_type: Optional[str] = None
    annotations: dict = field(default_factory=dict)


def media_type_of(body: bytes) -> str:
    """The media type of a stored manifest, read back the way registry:2 does."""
    try:
        doc = json.loads(body)
    except ValueError:
        return OCI_MANIFEST
    if not isinstance(doc, dict):
        return OCI_MANIFEST
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in doc else DOCKER_SCHEMA1
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_manifest(body: bytes, content_type: Optional[str]) -> Manifest:
    try:
        # NaN/Infinity are Python extensions other clients cannot read back
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestInvalidError(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:  # nesting deeper than the parser's stack
        raise ManifestInvalidError("manifest is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestInvalidError("manifest must be a JSON object")
    content_type = (content_type or "").split(";", 1)[0].strip().lower() or None
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestInvalidError("mediaType must be a string")
    if content_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED) or doc.get("schemaVersion") == 1:
        raise ManifestInvalidError("Docker schema1 manifests are not supported; push schema2 or OCI")
    media_type = body_type or content_type or media_type_of(body)
    if body_type and content_type and content_type in SUPPORTED and body_type != content_type:
        raise ManifestInvalidError(f"mediaType {body_type!r} does not match Content-Type {content_type!r}")
    if media_type not in SUPPORTED:
        raise ManifestInvalidError(f"unsupported manifest media type {media_type!r}")
    if media_type == OCI_ARTIFACT_MANIFEST:
        return _artifact(doc, body)
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalidError("schemaVersion must be 2")
    if media_type in INDEXES:
        return _index(doc, body, media_type)
    return _image(doc, body, media_type)


def _image(doc: dict, body: bytes, media_type: str) -> Manifest:
    if "manifests" in doc:
        raise ManifestInvalidError("an image manifest must not have 'manifests'")
    config = _descriptor(doc.get("config"), "config")
    layers = doc.get("layers")
    if layers is None and media_type == OCI_MANIFEST:
        layers = []
    if not isinstance(layers, list):
        raise ManifestInvalidError("layers must be a list of descriptors")
    layer_descriptors = [_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
    # foreign layers (with urls) are fetched from elsewhere and need not be here
    blobs = [config] + [d for d in layer_descriptors if not d.urls]
    artifact_type = _optional_str(doc, "artifactType")
    return Manifest(
        media_type=media_type,
        body=body,
        blobs=tuple(blobs),
        subject=_subject(doc),
        artifact_type=artifact_type or config.media_type,
        annotations=_annotations(doc),
    )


def _index(doc: dict, body: bytes, media_type: str) -> Manifest:
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise ManifestInvalidError("manifests must be a list of descriptors")
    children = [_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests)]
    return Manifest(
        media_type=media_type,
        body=body,
        manifests=tuple(children),
        subject=_subject(doc),
        artifact_type=_optional_str(doc, "artifactType"),
        annotations=_annotations(doc),
    )


def _artifact(doc: dict, body: bytes) -> Manifest:
    artifact_type = _optional_str(doc, "artifactType")
    if not artifact_type:
        raise ManifestInvalidError("an artifact manifest needs artifactType")
    blobs = doc.get("blobs", [])
    if not isinstance(blobs, list):
        raise ManifestInvalidError("blobs must be a list of descriptors")
    return Manifest(
        media_type=OCI_ARTIFACT_MANIFEST,
        body=body,
        blobs=tuple(_descriptor(b, f"blobs[{i}]") for i, b in enumerate(blobs)),
        subject=_subject(doc),
        artifact_type=artifact_type,
        annotations=_annotations(doc),
    )


def _subject(doc: dict) -> Optional[Descriptor]:
    if doc.get("subject") is None:
        return None
    return _descriptor(doc["subject"], "subject")


def _annotations(doc: dict) -> dict:
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ManifestInvalidError("annotations must map strings to strings")
    return annotations


def _optional_str(doc: dict, key: str) -> Optional[str]:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestInvalidError(f"{key} must be a string")
    return value or None


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalidError(f"{where} must be a descriptor object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalidError(f"{where}.mediaType must be a non-empty string")
    try:
        raw_digest = value.get("digest")
        digest = Digest.parse(raw_digest if isinstance(raw_digest, str) else "")
    except DigestError as exc:
        raise ManifestInvalidError(f"{where}.digest: {exc}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalidError(f"{where}.size must be a non-negative integer")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalidError(f"{where}.urls must be a list of strings")
    annotations = value.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise ManifestInvalidError(f"{where}.annotations must be an object")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise ManifestInvalidError(f"{where}.platform must be an object")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalidError(f"{where}.artifactType must be a string")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=tuple(urls),
        artifact_type=artifact_type,
        annotations=annotations,
        platform=platform,
    )
