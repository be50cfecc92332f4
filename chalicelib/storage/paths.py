"""The registry:2 storage layout, so a tree written by the reference registry is ours too.

Functions take plain strings (algorithm name, hex, repository name) and return
driver paths; they know the layout, not what an OCI name or digest means.
"""
from __future__ import annotations

ROOT = "/docker/registry/v2"
REPOSITORIES = f"{ROOT}/repositories"
BLOBS = f"{ROOT}/blobs"


def blob_dir(algorithm: str, hex_: str) -> str:
    return f"{BLOBS}/{algorithm}/{hex_[:2]}/{hex_}"


def blob_data(algorithm: str, hex_: str) -> str:
    return f"{blob_dir(algorithm, hex_)}/data"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers(name: str) -> str:
    return f"{repository(name)}/_layers"


def layer_link(name: str, algorithm: str, hex_: str) -> str:
    return f"{layers(name)}/{algorithm}/{hex_}/link"


def manifests(name: str) -> str:
    return f"{repository(name)}/_manifests"


def manifest_revisions(name: str) -> str:
    return f"{manifests(name)}/revisions"


def manifest_revision_link(name: str, algorithm: str, hex_: str) -> str:
    return f"{manifest_revisions(name)}/{algorithm}/{hex_}/link"


def tags(name: str) -> str:
    return f"{manifests(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, algorithm: str, hex_: str) -> str:
    return f"{tag_dir(name, tag)}/index/{algorithm}/{hex_}/link"


def uploads(name: str) -> str:
    return f"{repository(name)}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_hash_states(name: str, upload_id: str, algorithm: str) -> str:
    return f"{upload_dir(name, upload_id)}/hashstates/{algorithm}"


def upload_hash_state(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    return f"{upload_hash_states(name, upload_id, algorithm)}/{offset}"


def referrers(name: str, algorithm: str, hex_: str) -> str:
    """Referrers of one subject; registry:2 ignores the unknown `_referrers` folder."""
    return f"{repository(name)}/_referrers/{algorithm}/{hex_}"


def referrer_entry(name: str, subject_alg: str, subject_hex: str, algorithm: str, hex_: str) -> str:
    return f"{referrers(name, subject_alg, subject_hex)}/{algorithm}/{hex_}/descriptor"
