"""Content discovery over HTTP: tags/list and _catalog with n/last/Link, and referrers.

The referrers scenario mirrors the one the OCI conformance suite builds: artifacts whose
type is their config's media type, artifacts with `artifactType` and an empty config,
an index artifact, referrers pushed before and after their subject, and a referrer
whose subject was never pushed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import pytest

from .oci_client import (
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Registry,
    assert_error,
    canonical,
    descriptor,
    next_link,
    sha256,
    unique_repo,
)

TAGS = ["test3", "test0", "latest", "v1.10", "test2", "a-b", "v1.0", "test1", "a.b", "v1.9", "a0"]
ANNOTATION = "org.opencontainers.conformance.test"
TYPE_A = "application/vnd.nhl.peanut.butter.bagel"
TYPE_B = "application/vnd.nba.strawberry.jam.croissant"
TYPE_INDEX = "application/vnd.food.stand"


@pytest.fixture(scope="module")
def tagged(oci: Registry) -> str:
    """A repository with one manifest under every name in TAGS."""
    repo = unique_repo("discovery")
    image = oci.push_image(repo, tag=TAGS[0], layers=0)
    for tag in TAGS[1:]:
        assert oci.put_manifest(repo, tag, image.body).status_code == 201
    return repo


def walk(oci: Registry, first: str, key: str) -> tuple[list[str], int]:
    """Every entry of a paginated listing, following Link headers; and the number of pages."""
    entries: list[str] = []
    url: Optional[str] = first
    pages = 0
    while url is not None:
        response = oci.get(url)
        assert response.status_code == 200, response.text
        entries += response.json()[key]
        url = next_link(response)
        pages += 1
        assert pages < 10_000
    return entries, pages


# -- tags ------------------------------------------------------------------------------


def test_tags_list_returns_every_tag_in_lexical_order(oci: Registry, tagged: str) -> None:
    response = oci.tags(tagged)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"name": tagged, "tags": sorted(TAGS)}
    assert "Link" not in response.headers


def test_tags_list_n_limits_the_page_and_links_to_the_next(oci: Registry, tagged: str) -> None:
    response = oci.tags(tagged, n=4)
    assert response.status_code == 200
    assert response.json()["tags"] == sorted(TAGS)[:4]
    link = next_link(response)
    assert link is not None
    assert urlsplit(link).path == f"/v2/{tagged}/tags/list"
    query = parse_qs(urlsplit(link).query)
    assert query == {"n": ["4"], "last": [sorted(TAGS)[3]]}


def test_tags_list_last_starts_after_the_given_tag(oci: Registry, tagged: str) -> None:
    ordered = sorted(TAGS)
    half = len(ordered) // 2
    response = oci.tags(tagged, n=half, last=ordered[half - 1])
    assert response.status_code == 200
    assert response.json()["tags"] == ordered[half:2 * half]


def test_tags_list_last_without_n_returns_the_rest(oci: Registry, tagged: str) -> None:
    assert oci.tags(tagged, last="test1").json()["tags"] == [t for t in sorted(TAGS) if t > "test1"]


def test_tags_list_last_need_not_be_an_existing_tag(oci: Registry, tagged: str) -> None:
    assert oci.tags(tagged, last="m").json()["tags"] == [t for t in sorted(TAGS) if t > "m"]


def test_tags_list_following_links_visits_every_tag_once(oci: Registry, tagged: str) -> None:
    tags, pages = walk(oci, f"/v2/{tagged}/tags/list?n=3", "tags")
    assert tags == sorted(TAGS)
    assert pages == 4


def test_tags_list_n_zero_returns_empty_list_without_link(oci: Registry, tagged: str) -> None:
    response = oci.tags(tagged, n=0)
    assert response.status_code == 200
    assert response.json()["tags"] == []
    assert "Link" not in response.headers


def test_tags_list_n_at_least_the_count_returns_all_without_link(oci: Registry, tagged: str) -> None:
    for n in (len(TAGS), len(TAGS) + 5):
        response = oci.tags(tagged, n=n)
        assert response.json()["tags"] == sorted(TAGS)
        assert "Link" not in response.headers


def test_tags_list_of_unknown_repository_returns_404_name_unknown(oci: Registry) -> None:
    assert_error(oci.tags(unique_repo("discovery")), 404, "NAME_UNKNOWN")


def test_tags_list_of_repository_with_only_untagged_manifests_is_empty(oci: Registry) -> None:
    repo = unique_repo("discovery")
    oci.push_image(repo, layers=0)
    response = oci.tags(repo)
    assert response.status_code == 200
    assert response.json() == {"name": repo, "tags": []}


def test_tags_list_with_invalid_n_returns_400(oci: Registry, tagged: str) -> None:
    for n in ("-1", "abc", "1.5"):
        response = oci.tags(tagged, n=n)
        assert_error(response, 400)


# -- catalog ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog_repos(oci: Registry) -> list[str]:
    prefix = unique_repo("catalog")
    names = [f"{prefix}/r{i}" for i in range(3)]
    for name in names:
        oci.push_image(name, tag="latest", layers=0)
    return names


def test_catalog_lists_repositories_sorted(oci: Registry, catalog_repos: list[str]) -> None:
    repositories, _ = walk(oci, "/v2/_catalog", "repositories")
    assert repositories == sorted(set(repositories))
    assert set(catalog_repos) <= set(repositories)


def test_catalog_pages_with_n_and_link_cover_the_whole_catalog(oci: Registry, catalog_repos: list[str]) -> None:
    whole, _ = walk(oci, "/v2/_catalog", "repositories")
    paged, pages = walk(oci, "/v2/_catalog?n=2", "repositories")
    assert paged == whole
    assert pages >= len(whole) // 2


def test_catalog_last_starts_after_the_given_repository(oci: Registry, catalog_repos: list[str]) -> None:
    response = oci.get("/v2/_catalog", params={"n": 2, "last": catalog_repos[0]})
    assert response.status_code == 200
    assert response.json()["repositories"] == catalog_repos[1:3]
    link = next_link(response)
    if link is not None:
        assert parse_qs(urlsplit(link).query) == {"n": ["2"], "last": [catalog_repos[2]]}


def test_catalog_n_zero_returns_empty_list_without_link(oci: Registry, catalog_repos: list[str]) -> None:
    response = oci.get("/v2/_catalog", params={"n": 0})
    assert response.json()["repositories"] == []
    assert "Link" not in response.headers


def test_catalog_omits_repositories_without_manifests(oci: Registry, catalog_repos: list[str]) -> None:
    blobs_only = unique_repo("catalog")
    oci.push_blob(blobs_only, b"a blob but no manifest")
    repositories, _ = walk(oci, "/v2/_catalog", "repositories")
    assert blobs_only not in repositories
    assert not any(part.startswith("_") for name in repositories for part in name.split("/"))


# -- referrers -------------------------------------------------------------------------


@dataclass
class Referrers:
    repo: str
    subject: Image
    missing_subject: Image
    annotations: dict  # referrer digest -> annotation value
    types: dict  # referrer digest -> expected artifactType (None: omitted)
    media_types: dict  # referrer digest -> manifest media type
    sizes: dict
    orphan: str  # the referrer of the subject that was never pushed


def _artifact(oci: Registry, repo: str, subject: Image, *, config_type: Optional[str] = None,
              artifact_type: Optional[str] = None, payload: bytes, annotation: Optional[str]) -> tuple[str, bytes]:
    """An image manifest artifact: typed by its config's media type, or by artifactType."""
    doc: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if artifact_type:
        doc["artifactType"] = artifact_type
        doc["config"] = descriptor(OCI_EMPTY, EMPTY_JSON)
        doc["layers"] = [descriptor(artifact_type, payload)]
    else:
        doc["config"] = descriptor(config_type, payload)
        doc["layers"] = [descriptor(OCI_EMPTY, EMPTY_JSON)]
    doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.body)}
    if annotation:
        doc["annotations"] = {ANNOTATION: annotation}
    body = canonical(doc)
    response = oci.put_manifest(repo, sha256(body), body, OCI_MANIFEST)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest
    return sha256(body), body


@pytest.fixture(scope="module")
def referrers(oci: Registry) -> Referrers:
    repo = unique_repo("referrers")
    blob_a, blob_b = b"NHL Peanut Butter on my NHL bagel", b"NBA Strawberry Jam on my NBA croissant"
    oci.push_blob(repo, EMPTY_JSON)
    oci.push_blob(repo, blob_a)

    def image_body(author: str) -> bytes:
        return canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": descriptor(OCI_EMPTY, EMPTY_JSON), "layers": [],
                          "annotations": {"author": author}})

    subject_body, missing_body = image_body("subject"), image_body("never pushed")
    subject = Image(repo, sha256(subject_body), subject_body, OCI_MANIFEST, EMPTY_JSON, [])
    missing = Image(repo, sha256(missing_body), missing_body, OCI_MANIFEST, EMPTY_JSON, [])
    annotations, types, media_types, sizes = {}, {}, {}, {}

    def record(digest: str, body: bytes, annotation: str, artifact_type: Optional[str], media_type: str) -> None:
        annotations[digest], types[digest], media_types[digest], sizes[digest] = (
            annotation, artifact_type, media_type, len(body))

    # referrers pushed before their subject
    d, b = _artifact(oci, repo, subject, config_type=TYPE_A, payload=blob_a, annotation="test config a")
    record(d, b, "test config a", TYPE_A, OCI_MANIFEST)
    config_a = (d, b)
    d, b = _artifact(oci, repo, subject, artifact_type=TYPE_A, payload=blob_a, annotation="test layer a")
    record(d, b, "test layer a", TYPE_A, OCI_MANIFEST)
    layer_a = (d, b)
    index = canonical({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": TYPE_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": config_a[0], "size": len(config_a[1])},
                      {"mediaType": OCI_MANIFEST, "digest": layer_a[0], "size": len(layer_a[1])}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.body)},
        "annotations": {ANNOTATION: "test index"},
    })
    response = oci.put_manifest(repo, sha256(index), index, OCI_INDEX)
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject.digest
    record(sha256(index), index, "test index", TYPE_INDEX, OCI_INDEX)

    # the subject, then referrers pushed after it
    assert oci.push_manifest(repo, "tagtest0", subject_body) == subject.digest
    oci.push_blob(repo, blob_b)
    d, b = _artifact(oci, repo, subject, config_type=TYPE_B, payload=blob_b, annotation="test config b")
    record(d, b, "test config b", TYPE_B, OCI_MANIFEST)
    d, b = _artifact(oci, repo, subject, artifact_type=TYPE_B, payload=blob_b, annotation="test layer b")
    record(d, b, "test layer b", TYPE_B, OCI_MANIFEST)

    orphan, _ = _artifact(oci, repo, missing, artifact_type=TYPE_B, payload=blob_b, annotation=None)
    return Referrers(repo, subject, missing, annotations, types, media_types, sizes, orphan)


def assert_referrers_index(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == OCI_INDEX
    doc = response.json()
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == OCI_INDEX
    assert isinstance(doc["manifests"], list)
    return doc["manifests"]


def test_referrers_of_unknown_digest_returns_empty_index(oci: Registry, referrers: Referrers) -> None:
    assert assert_referrers_index(oci.referrers(referrers.repo, sha256(b"hello world"))) == []


def test_referrers_in_unknown_repository_returns_empty_index(oci: Registry) -> None:
    assert assert_referrers_index(oci.referrers(unique_repo("referrers"), sha256(b"hello world"))) == []


def test_referrers_lists_every_manifest_whose_subject_is_the_digest(oci: Registry, referrers: Referrers) -> None:
    manifests = assert_referrers_index(oci.referrers(referrers.repo, referrers.subject.digest))
    assert sorted(m["digest"] for m in manifests) == sorted(referrers.annotations)
    for m in manifests:
        digest = m["digest"]
        assert m["annotations"] == {ANNOTATION: referrers.annotations[digest]}
        assert m["mediaType"] == referrers.media_types[digest]
        assert m["size"] == referrers.sizes[digest]
        assert m.get("artifactType") == referrers.types[digest]


def test_referrers_filter_by_artifact_type_sets_oci_filters_applied(oci: Registry, referrers: Referrers) -> None:
    response = oci.referrers(referrers.repo, referrers.subject.digest, artifactType=TYPE_A)
    manifests = assert_referrers_index(response)
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    expected = sorted(d for d, t in referrers.types.items() if t == TYPE_A)
    assert len(expected) == 2
    assert sorted(m["digest"] for m in manifests) == expected
    for m in manifests:
        assert m["annotations"][ANNOTATION] == referrers.annotations[m["digest"]]


def test_referrers_filter_matches_index_artifact_type(oci: Registry, referrers: Referrers) -> None:
    response = oci.referrers(referrers.repo, referrers.subject.digest, artifactType=TYPE_INDEX)
    manifests = assert_referrers_index(response)
    assert [m["mediaType"] for m in manifests] == [OCI_INDEX]


def test_referrers_filter_matching_nothing_returns_empty_list(oci: Registry, referrers: Referrers) -> None:
    response = oci.referrers(referrers.repo, referrers.subject.digest, artifactType="application/vnd.none")
    assert assert_referrers_index(response) == []
    assert response.headers["OCI-Filters-Applied"] == "artifactType"


def test_referrers_without_filter_has_no_oci_filters_applied(oci: Registry, referrers: Referrers) -> None:
    assert "OCI-Filters-Applied" not in oci.referrers(referrers.repo, referrers.subject.digest).headers


def test_referrers_of_a_subject_never_pushed(oci: Registry, referrers: Referrers) -> None:
    manifests = assert_referrers_index(oci.referrers(referrers.repo, referrers.missing_subject.digest))
    assert [m["digest"] for m in manifests] == [referrers.orphan]
    assert manifests[0]["artifactType"] == TYPE_B


def test_referrers_are_scoped_to_the_repository(oci: Registry, referrers: Referrers) -> None:
    other = unique_repo("referrers")
    oci.push_blob(other, EMPTY_JSON)
    oci.push_manifest(other, "subject", referrers.subject.body)
    assert assert_referrers_index(oci.referrers(other, referrers.subject.digest)) == []


def test_pushing_a_referrer_again_does_not_duplicate_it(oci: Registry, referrers: Referrers) -> None:
    digest = next(d for d, t in referrers.types.items() if t == TYPE_B)
    body = oci.manifest(referrers.repo, digest).content
    assert oci.put_manifest(referrers.repo, "again", body).status_code == 201
    manifests = assert_referrers_index(oci.referrers(referrers.repo, referrers.subject.digest))
    assert len(manifests) == len({m["digest"] for m in manifests}) == len(referrers.annotations)


def test_index_referrer_without_artifact_type_omits_it(oci: Registry) -> None:
    repo = unique_repo("referrers")
    subject = oci.push_image(repo, layers=0)
    child = oci.push_image(repo, layers=0)
    index = canonical({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child.digest, "size": len(child.body)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.body)},
    })
    response = oci.put_manifest(repo, sha256(index), index, OCI_INDEX)
    assert response.headers["OCI-Subject"] == subject.digest
    manifests = assert_referrers_index(oci.referrers(repo, subject.digest))
    assert manifests == [{"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index)}]


def test_referrers_with_invalid_digest_returns_400(oci: Registry, referrers: Referrers) -> None:
    assert_error(oci.referrers(referrers.repo, "sha256:nothex"), 400, "DIGEST_INVALID")
