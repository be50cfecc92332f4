"""GET /v2/<name>/referrers/<digest>: an image index of the manifests whose subject it is."""
from __future__ import annotations

import json

from ..registry.manifest_types import OCI_INDEX
from .app import Access, Scope
from .http import Response
from .params import parse_digest, repository


def get(scope: Scope) -> Response:
    repo = repository(scope)
    subject = parse_digest(scope.params["digest"])
    artifact_type = scope.request.arg("artifactType") or None
    descriptors = repo.referrers.list(scope.ctx, subject, artifact_type)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
    headers = [("Content-Type", OCI_INDEX), ("Content-Length", str(len(body)))]
    if artifact_type is not None:
        headers.append(("OCI-Filters-Applied", "artifactType"))
    return Response(200, headers, b"" if scope.request.method == "HEAD" else body)


def access(scope: Scope) -> list[Access]:
    return [Access("repository", scope.params["name"], "pull")]


HANDLERS = {"GET": get, "HEAD": get}
