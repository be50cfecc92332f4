"""GET /v2/<name>/referrers/<digest>: an image index of the manifests whose subject it is."""
from __future__ import annotations

from ..registry.manifest_types import OCI_INDEX
from .app import Access, Scope
from .http import Response, json_response
from .params import parse_digest, repository


def get(scope: Scope) -> Response:
    repo = repository(scope)
    subject = parse_digest(scope.params["digest"])
    artifact_type = scope.request.arg("artifactType") or None
    descriptors = repo.referrers.list(scope.ctx, subject, artifact_type)
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    headers = [("OCI-Filters-Applied", "artifactType")] if artifact_type is not None else []
    return json_response(doc, headers, head=scope.request.method == "HEAD", content_type=OCI_INDEX)


def access(scope: Scope) -> list[Access]:
    return [Access("repository", scope.params["name"], "pull")]


HANDLERS = {"GET": get, "HEAD": get}
