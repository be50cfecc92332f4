"""Property-based bad input over every endpoint: no 5xx, spec error codes, a clean storage root.

Most requests go in-process through RegistryAPI.handle over a filesystem root (fast
enough for >10,000 of them); a smaller sample goes over HTTP to `stratus serve`.
Each test is one class of bad input and asserts, after its requests, that the
storage root holds nothing outside the registry:2 layout (and that every blob and
link there is what its path says). Counts per class are printed at the end.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import http.client
import json
import os
import re
import string
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import quote, urlencode

import bcrypt
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.api import Request
from chalicelib.api.http import FileBody
from chalicelib.bootstrap import build_api
from chalicelib.config import config_from_mapping
from chalicelib.registry.names import _COMPONENT, NAME_RE, TAG_RE

from .oci_client import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, SPEC_ERROR_CODES, sha256
from .servers import stratus_server

CHUNK_MAX = 64 * 1024
MANIFEST_MAX = 4 * 1024 * 1024
MEDIA_TYPES = [
    OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.artifact.manifest.v1+json", "application/json", "text/plain", "", "application/x-unknown",
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
]
PASSWORD = "fuzz-password"

COUNTS: collections.Counter = collections.Counter()
STATUSES: collections.Counter = collections.Counter()


# --------------------------------------------------------------------------- the registries


def _config(root: Path, auth: Optional[dict] = None) -> dict:
    config = {
        "storage": {"filesystem": {"rootdirectory": str(root)}, "redirect": {"disable": True},
                    "delete": {"enabled": True}},
        "http": {"secret": "fuzz-secret", "chunkmaxlength": CHUNK_MAX},
    }
    if auth:
        config["auth"] = auth
    return config


class Seed:
    """Valid content the fuzz can aim near: a repository with an image, an index, a referrer."""

    def __init__(self, api) -> None:
        self.api = api
        self.name = "seed/app"
        self.config = b'{"architecture":"amd64","os":"linux"}'
        self.layer = b"seed layer " * 100
        self.blobs = [self._blob(self.config), self._blob(self.layer)]
        self.manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blobs[0],
                       "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": self.blobs[1],
                        "size": len(self.layer)}],
        }
        self.manifest_digest = self._manifest(self.manifest, "v1", OCI_MANIFEST)
        body = json.dumps(self.manifest).encode()
        self.index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": self.manifest_digest, "size": len(body),
             "platform": {"architecture": "amd64", "os": "linux"}}]}
        self.index_digest = self._manifest(self.index, "multi", OCI_INDEX)
        referrer = dict(self.manifest, artifactType="application/vnd.example.sbom",
                        subject={"mediaType": OCI_MANIFEST, "digest": self.manifest_digest, "size": len(body)})
        self.referrer_digest = self._manifest(referrer, sha256(json.dumps(referrer).encode()), OCI_MANIFEST)
        self.digests = [*self.blobs, self.manifest_digest, self.index_digest, self.referrer_digest]
        # enough tags and repositories for pagination to have pages
        for i in range(25):
            self._manifest(self.manifest, f"t{i:02d}", OCI_MANIFEST)
        for i in range(12):
            self._manifest(self.manifest, "v1", OCI_MANIFEST, name=f"seed/r{i:02d}")

    def _blob(self, data: bytes) -> str:
        digest = sha256(data)
        r = self.api.handle(Request.from_bytes("POST", f"/v2/{self.name}/blobs/uploads/", f"digest={digest}", {}, data))
        assert r.status == 201, r.body_bytes()
        return digest

    def _manifest(self, doc: dict, reference: str, media_type: str, name: str = "") -> str:
        body = json.dumps(doc).encode()
        if name:  # another repository: its blobs first
            for digest in self.blobs:
                r = self.api.handle(Request.from_bytes("POST", f"/v2/{name}/blobs/uploads/",
                                                       f"mount={digest}&from={self.name}"))
                assert r.status == 201, r.body_bytes()
        r = self.api.handle(Request.from_bytes("PUT", f"/v2/{name or self.name}/manifests/{reference}", "",
                                               {"Content-Type": media_type}, body))
        assert r.status == 201, r.body_bytes()
        return r.header("Docker-Content-Digest")

    def new_upload(self, name: Optional[str] = None) -> tuple[str, str, str]:
        """(name, upload id, _state token) of a fresh upload session."""
        name = name or self.name
        r = self.api.handle(Request.from_bytes("POST", f"/v2/{name}/blobs/uploads/"))
        COUNTS["upload sessions: POST to start"] += 1
        check(r, "POST")
        assert r.status == 202, r.body_bytes()
        location = r.header("Location")
        upload_id = location.split("/blobs/uploads/", 1)[1].split("?", 1)[0]
        state = location.split("_state=", 1)[1]
        return name, upload_id, state


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # tmpfs when there is one: the filesystem driver fsyncs every commit, which on a
    # disk costs ~15 ms a write and would make 10,000 requests take minutes
    if os.access("/dev/shm", os.W_OK):
        with tempfile.TemporaryDirectory(prefix="stratus-fuzz-", dir="/dev/shm") as base:
            yield Path(base)
    else:
        yield tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def registry(fuzz_base: Path):
    """(api, seed, storage root). The root's parent holds nothing else, so a stray write shows."""
    root = fuzz_base / "open" / "data"
    root.mkdir(parents=True)
    api = build_api(config_from_mapping(_config(root)))
    return api, Seed(api), root


@pytest.fixture(scope="module")
def guarded(fuzz_base: Path):
    """An htpasswd-protected registry (cost-4 bcrypt, so a check costs ~1 ms)."""
    root = fuzz_base / "guarded" / "data"
    root.mkdir(parents=True)
    htpasswd = fuzz_base / "htpasswd"
    htpasswd.write_bytes(b"fuzzer:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)) + b"\n")
    api = build_api(config_from_mapping(_config(root, {"htpasswd": {"realm": "fuzz", "path": str(htpasswd)}})))
    return api, root


@pytest.fixture(scope="module", autouse=True)
def report_counts(request: pytest.FixtureRequest):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not COUNTS:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(f"bad-input requests: {sum(COUNTS.values())} in {len(COUNTS)} classes")
        for name, count in sorted(COUNTS.items()):
            reporter.write_line(f"  {count:6d}  {name}")
        reporter.write_line("  statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(STATUSES.items())))


# ---------------------------------------------------------------------------- the invariants


def check(response, method: str, root: Optional[Path] = None) -> None:
    """What every response must be, whatever the request was."""
    status = response.status
    assert status < 500, (status, _body(response))
    for key, value in response.headers:
        assert not re.search(r"[\r\n\0]", f"{key}{value}"), (key, value)
    assert response.header("Docker-Distribution-API-Version") == "registry/2.0"
    body = _body(response)
    if status >= 400:
        doc = json.loads(body)
        assert doc["errors"], doc
        for error in doc["errors"]:
            assert error["code"] in SPEC_ERROR_CODES, doc
            assert isinstance(error["message"], str)
        assert response.header("Content-Type") == "application/json"
        text = body.decode("utf-8", "replace")
        assert "Traceback" not in text
        if root is not None:
            assert str(root) not in text
    if status in (401,):
        assert response.header("WWW-Authenticate")
    length = response.header("Content-Length")
    if length is not None and method != "HEAD" and status != 304:
        assert int(length) == len(body), (length, len(body))


def _body(response) -> bytes:
    if isinstance(response.body, FileBody):
        return b"".join(response.body)  # also closes the file
    return response.body_bytes()


_ALG_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_NAME = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_DIGEST_PART = r"(?P<alg>sha256|sha384|sha512)/(?P<hex>[0-9a-f]+)"
_REPO = rf"docker/registry/v2/repositories/(?P<name>{_NAME})"
_LAYOUT = [
    re.compile(r"^docker/registry/v2/blobs/(?P<alg>sha256|sha384|sha512)/(?P<prefix>[0-9a-f]{2})/(?P<hex>[0-9a-f]+)/data$"),
    re.compile(rf"^{_REPO}/_layers/{_DIGEST_PART}/link$"),
    re.compile(rf"^{_REPO}/_manifests/revisions/{_DIGEST_PART}/link$"),
    re.compile(rf"^{_REPO}/_manifests/tags/(?P<tag>[^/]+)/current/link$"),
    re.compile(rf"^{_REPO}/_manifests/tags/(?P<tag>[^/]+)/index/{_DIGEST_PART}/link$"),
    re.compile(rf"^{_REPO}/_uploads/[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}/"
               r"(?:data|startedat|hashstates/(?:sha256|sha384|sha512)/\d+)$"),
    re.compile(rf"^{_REPO}/_referrers/(?:sha256|sha384|sha512)/[0-9a-f]+/{_DIGEST_PART}/descriptor$"),
]


def assert_layout(root: Path) -> int:
    """Every file under root is a registry:2 path; blobs hash to their path, links name it."""
    beside = [p.name for p in root.parent.iterdir() if not re.match(r"^stratus-\d+\.log$", p.name)]
    assert beside == [root.name], f"something was written beside the root: {beside}"
    files = 0
    for directory, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            assert not os.path.islink(os.path.join(directory, entry)), entry
        for filename in filenames:
            files += 1
            rel = os.path.relpath(os.path.join(directory, filename), root)
            match = next((m for m in (p.match(rel) for p in _LAYOUT) if m), None)
            assert match is not None, f"outside the layout: {rel}"
            groups = match.groupdict()
            if groups.get("name"):
                assert len(groups["name"]) <= 255 and NAME_RE.match(groups["name"]), rel
            if groups.get("tag"):
                assert TAG_RE.match(groups["tag"]), rel
            if groups.get("hex"):
                assert len(groups["hex"]) == _ALG_HEX[groups["alg"]], rel
                digest = f"{groups['alg']}:{groups['hex']}"
                data = Path(directory, filename).read_bytes()
                if rel.endswith("/link"):
                    assert data.decode() == digest, rel
                elif rel.startswith("docker/registry/v2/blobs/"):
                    assert groups["prefix"] == groups["hex"][:2], rel
                    assert getattr(hashlib, groups["alg"])(data).hexdigest() == groups["hex"], rel
    return files


# ------------------------------------------------------------------------------ strategies

_any_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
)
_path_text = st.lists(
    st.sampled_from(list(string.ascii_letters + string.digits + "/._-:%?#@!$&'()*+,;= ~\\\"<>^`{|}")
                    + ["\x00", "\r", "\n", "\t", "é", "ß", "\u202e", "😀", "..", "//", "%2e%2e", "%2F", "%00"]),
    max_size=40,
).map("".join)
_alnum = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum, st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), _alnum), max_size=2),
)
valid_names = st.lists(_component, min_size=1, max_size=4).map("/".join)
bad_names = st.one_of(
    _path_text,
    st.sampled_from(["", "..", "a/..", "../a", "a//b", "/a", "a/", "A", "a/B", "a b", "a\x00b", "_uploads",
                     "a/_manifests", "a/_uploads/x", "a.", "-a", "a--", "a__b__", "a" * 256, "a/" * 130 + "a",
                     "a%2fb", "seed/app/../../etc", "seed/app/_layers", "é", "a\nb"]),
    st.lists(st.sampled_from(["a", "b0", "x.y", "x_y", "x__y", "x-y", "x--y", "..", "_", "-", "A", ""]),
             min_size=1, max_size=6).map("/".join),
)


def names(seed: Seed):
    return st.one_of(st.just(seed.name), valid_names, bad_names)


def digests(seed: Seed):
    hexes = st.text("0123456789abcdef", min_size=0, max_size=130)
    return st.one_of(
        st.sampled_from(seed.digests),
        st.builds(lambda alg, h: f"{alg}:{h}", st.sampled_from(["sha256", "sha384", "sha512"]), hexes),
        st.builds(lambda alg, h: f"{alg}:{h}",
                  st.sampled_from(["md5", "sha1", "SHA256", "sha256+b64", "sha-256", "", "blake3", "sha256:sha256"]),
                  hexes),
        st.sampled_from(seed.digests).map(str.upper),
        st.sampled_from(seed.digests).map(lambda d: d[:-1]),
        st.sampled_from(seed.digests).map(lambda d: d + "0"),
        st.builds(lambda alg: f"{alg}:" + "0" * _ALG_HEX[alg], st.sampled_from(list(_ALG_HEX))),
        _any_text,
    )


def references(seed: Seed):
    return st.one_of(
        st.sampled_from(["v1", "multi", "latest", "missing"]),
        st.from_regex(TAG_RE, fullmatch=True),
        digests(seed),
        st.sampled_from(["", ".", "..", "-a", "a" * 129, "a/b", "tag:with:colons", "%2e%2e", "_", "é"]),
        _any_text,
    )


_numbers = st.one_of(
    st.integers(0, 20),
    st.integers(-5, 10**20),
    st.sampled_from([0, 1, 2**31, 2**63, 10**19, 10**25]),
)
range_values = st.one_of(
    st.builds(lambda a, b: f"bytes={min(a, b)}-{max(a, b)}", st.integers(0, 40), st.integers(0, 40)),
    st.builds(lambda a, b: f"bytes={a}-{b}", _numbers, _numbers),
    st.builds(lambda a: f"bytes={a}-", _numbers),
    st.builds(lambda b: f"bytes=-{b}", _numbers),
    st.builds(lambda a, b: f"bytes={a}-{b},{b}-{a}", _numbers, _numbers),
    st.sampled_from(["bytes=", "bytes=-", "bytes=a-b", "items=0-1", "bytes 0-1", "bytes=0-1/2", "0-1", "", " ",
                     "bytes=²-3", "bytes=١-٢", "bytes=00000000000000000000001-2", "bytes=-0"]),
    _any_text,
)
content_ranges = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", _numbers, _numbers),
    st.builds(lambda a, b, t: f"bytes {a}-{b}/{t}", _numbers, _numbers, st.one_of(_numbers, st.just("*"))),
    st.builds(lambda a, b: f"bytes={a}-{b}", _numbers, _numbers),
    st.sampled_from(["", "-", "0-", "-1", "a-b", "0-1-2", "bytes */5", "١-٢", "²-³", "0-" + "9" * 30, " 0-0 "]),
    _any_text,
)
query_numbers = st.one_of(st.integers(-10, 10**12).map(str), st.sampled_from(["", "²", "١", "0x10", "1e3", " 1",
                                                                               "9" * 40, "-0", "+1", "NaN"]), _any_text)
header_values = st.one_of(_any_text, st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=30))
random_headers = st.dictionaries(
    st.sampled_from(["Range", "Content-Range", "Content-Type", "If-None-Match", "Accept", "Authorization",
                     "Content-Length", "Transfer-Encoding", "Host", "X-Forwarded-Proto", "Expect", "Cookie",
                     "X-Anything", "Docker-Upload-UUID", "OCI-Chunk-Min-Length"]),
    header_values, max_size=4,
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), _any_text),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(_any_text, st.sampled_from(
                                   ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest",
                                    "size", "subject", "artifactType", "annotations", "blobs", "urls"])),
                                   children, max_size=5)),
    max_leaves=12,
)


def mutated_manifests(seed: Seed):
    """A valid manifest or index with one part changed to something wrong."""

    def mutate(base: dict, path: list, value, delete: bool) -> bytes:
        doc = json.loads(json.dumps(base))
        node = doc
        for key in path[:-1]:
            if isinstance(node, list):
                node = node[0] if node else {}
            else:
                node = node.setdefault(key, [{}] if isinstance(key, str) and key in ("layers", "manifests") else {})
        last = path[-1]
        if isinstance(node, list):
            node = node[0] if node else {}
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
        return json.dumps(doc).encode()

    paths = st.sampled_from([
        ["schemaVersion"], ["mediaType"], ["config"], ["config", "digest"], ["config", "size"],
        ["config", "mediaType"], ["layers"], ["layers", 0, "digest"], ["layers", 0, "size"], ["layers", 0, "urls"],
        ["subject"], ["subject", "digest"], ["artifactType"], ["annotations"], ["manifests"],
        ["manifests", 0, "digest"], ["manifests", 0, "mediaType"], ["manifests", 0, "platform"], ["blobs"],
    ])
    values = st.one_of(json_values, digests(seed), st.sampled_from(MEDIA_TYPES),
                       st.sampled_from([-1, 0, 2**64, 1.5, "12", None, [], {}]),
                       st.builds(lambda d: {"mediaType": OCI_MANIFEST, "digest": d, "size": 10}, digests(seed)))
    return st.builds(mutate, st.sampled_from([seed.manifest, seed.index]), paths, values, st.booleans())


def manifest_bodies(seed: Seed):
    return st.one_of(
        mutated_manifests(seed),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=600),
        st.sampled_from([b"", b"{", b"null", b"[]", b'{"schemaVersion":1}', b"\xff\xfe", b'{"a":' * 500 + b"1" + b"}" * 500,
                         b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","config":{}}']),
        st.just(json.dumps(seed.manifest).encode()),
    )


bodies = st.one_of(st.binary(max_size=300), st.integers(0, CHUNK_MAX + 10).map(lambda n: b"\x01" * n))
# Content-Length as sent: true ("="), absent (None: streamed), off by a little, or a big lie
length_lies = st.one_of(st.just("="), st.none(), st.integers(-3, 3), st.sampled_from([CHUNK_MAX + 1, 10**12]))


def lie(body: bytes, how) -> Optional[int]:
    if how == "=":
        return len(body)
    if how is None or how > 3:
        return how
    return max(-1, len(body) + how)


# Each class of bad input and how many requests it sends (its examples, one request
# each): together at least 10,000, which test_bad_input_total_is_at_least_ten_thousand
# checks by itself and every class's test checks it really sent.
EXAMPLES: dict[str, int] = {
    "repository names (every endpoint)": 1600,
    "tags/list and _catalog: n, last, raw query strings": 800,
    "manifest references (GET/HEAD/DELETE), If-None-Match, Accept": 1100,
    "manifest PUT bodies (mutated manifests, JSON, bytes), Content-Type": 2200,
    "blob digests (GET/HEAD/DELETE), Range, If-None-Match": 1300,
    "upload POST: ?digest=, ?mount=&from=, bodies, lengths": 1300,
    "upload sessions: PATCH/PUT/GET/DELETE, Content-Range, _state, ids": 2200,
    "referrers: digests, artifactType": 500,
    "random headers on every endpoint": 800,
    "random methods and raw paths": 600,
    "Authorization headers (htpasswd registry)": 900,
    "bearer tokens (token-auth registry): signed with odd claims, forged, garbage": 700,
    "over HTTP (stratus serve)": 400,
}


def fuzz(label: str) -> settings:
    # Under CI the examples are fixed (derandomize), so a landing is judged on the
    # same inputs every time; a developer's run explores new ones each time.
    return settings(max_examples=EXAMPLES[label], deadline=None, database=None, print_blob=True,
                    derandomize=bool(os.environ.get("CI")), suppress_health_check=list(HealthCheck))


def run_every_example(run: Callable[[], None], label: str) -> None:
    """Run a class's hypothesis test and check that it sent a request per example."""
    before = COUNTS[label]
    run()
    assert COUNTS[label] - before >= EXAMPLES[label], (label, COUNTS[label] - before)


def send(api, method: str, path: str, query: dict | str | None = None, headers: Optional[dict] = None,
         body: bytes = b"", content_length: Optional[int] = -1, root: Optional[Path] = None):
    query_string = query if isinstance(query, str) else urlencode(query or {}, doseq=True)
    request = Request.from_bytes(method, path, query_string, headers or {}, body, base_url="http://fuzz.test")
    if content_length != -1:
        request.content_length = content_length
    response = api.handle(request)
    check(response, method, root)
    STATUSES[response.status] += 1
    return response


# ---------------------------------------------------------------------------- the classes


@pytest.fixture(scope="module")
def seed(registry) -> Seed:
    return registry[1]


def test_names_on_every_endpoint(registry) -> None:
    api, seed, root = registry
    endpoints = [
        ("GET", "tags/list"), ("HEAD", "tags/list"), ("GET", "manifests/v1"), ("HEAD", "manifests/v1"),
        ("PUT", "manifests/v1"), ("DELETE", "manifests/none"), ("GET", f"blobs/{seed.blobs[0]}"),
        ("DELETE", f"blobs/{'sha256:' + '0' * 64}"), ("POST", "blobs/uploads/"),
        ("GET", "blobs/uploads/00000000-0000-4000-8000-000000000000"), ("GET", f"referrers/{seed.manifest_digest}"),
    ]

    @fuzz("repository names (every endpoint)")
    @given(name=names(seed), endpoint=st.sampled_from(endpoints))
    def run(name: str, endpoint: tuple[str, str]) -> None:
        method, rest = endpoint
        COUNTS["repository names (every endpoint)"] += 1
        body = json.dumps(seed.manifest).encode() if method == "PUT" else b""
        r = send(api, method, f"/v2/{name}/{rest}", headers={"Content-Type": OCI_MANIFEST}, body=body, root=root)
        if not NAME_RE.match(name) or len(name) > 255:
            # an invalid name never reaches storage, whatever the endpoint
            assert r.status in (400, 404, 405), r.status

    run_every_example(run, "repository names (every endpoint)")
    assert_layout(root)


def test_pagination_of_tags_and_catalog(registry) -> None:
    api, seed, root = registry

    @fuzz("tags/list and _catalog: n, last, raw query strings")
    @given(catalog=st.booleans(), name=st.one_of(st.just(seed.name), names(seed)),
           n=st.one_of(st.none(), query_numbers), last=st.one_of(st.none(), _any_text, references(seed)),
           raw=st.one_of(st.none(), _path_text))
    def run(catalog, name, n, last, raw) -> None:
        COUNTS["tags/list and _catalog: n, last, raw query strings"] += 1
        query = {k: v for k, v in (("n", n), ("last", last)) if v is not None}
        query_string = raw if raw is not None else urlencode(query)
        path = "/v2/_catalog" if catalog else f"/v2/{name}/tags/list"
        r = send(api, "GET", path, query_string, root=root)
        if r.status == 200:
            doc = json.loads(_body(r) or b"{}")
            listed = doc.get("repositories", doc.get("tags")) or []
            assert listed == sorted(listed)

    run_every_example(run, "tags/list and _catalog: n, last, raw query strings")
    assert_layout(root)


def test_manifest_references_and_conditional_reads(registry) -> None:
    api, seed, root = registry

    @fuzz("manifest references (GET/HEAD/DELETE), If-None-Match, Accept")
    @given(name=st.one_of(st.just(seed.name), names(seed)), reference=references(seed),
           method=st.sampled_from(["GET", "HEAD", "DELETE"]),
           if_none_match=st.one_of(st.none(), header_values, st.sampled_from(seed.digests).map(lambda d: f'"{d}"')),
           accept=st.one_of(st.none(), st.sampled_from(MEDIA_TYPES)))
    def run(name, reference, method, if_none_match, accept) -> None:
        COUNTS["manifest references (GET/HEAD/DELETE), If-None-Match, Accept"] += 1
        headers = {k: v for k, v in (("If-None-Match", if_none_match), ("Accept", accept)) if v is not None}
        if method == "DELETE" and reference in ("v1", "multi") or reference in seed.digests and method == "DELETE":
            method = "GET"  # keep the seed for the other classes
        send(api, method, f"/v2/{name}/manifests/{reference}", headers=headers, root=root)

    run_every_example(run, "manifest references (GET/HEAD/DELETE), If-None-Match, Accept")
    assert_layout(root)


def test_manifest_put_bodies(registry) -> None:
    api, seed, root = registry

    @fuzz("manifest PUT bodies (mutated manifests, JSON, bytes), Content-Type")
    @given(body=manifest_bodies(seed), how=length_lies,
           name=st.one_of(st.just("fuzz/manifests"), st.just(seed.name), names(seed)),
           reference=st.one_of(st.sampled_from(["fuzzed", "v2"]), references(seed)),
           content_type=st.one_of(st.sampled_from(MEDIA_TYPES), header_values, st.none()))
    def run(body, how, name, reference, content_type) -> None:
        COUNTS["manifest PUT bodies (mutated manifests, JSON, bytes), Content-Type"] += 1
        length = lie(body, how)
        if name == seed.name and reference in ("v1", "multi"):
            reference = "fuzzed"
        headers = {"Content-Type": content_type} if content_type is not None else {}
        r = send(api, "PUT", f"/v2/{name}/manifests/{reference}", headers=headers, body=body,
                 content_length=length, root=root)
        if r.status == 201:
            assert r.header("Docker-Content-Digest") == sha256(body)

    run_every_example(run, "manifest PUT bodies (mutated manifests, JSON, bytes), Content-Type")
    assert_layout(root)


def test_oversized_manifests_are_refused_before_they_are_read(registry) -> None:
    api, seed, root = registry
    big = b" " * (MANIFEST_MAX + 1)
    for length in (len(big), None, 10**15):
        COUNTS["oversized bodies (manifest > 4 MiB, chunk > max)"] += 1
        r = send(api, "PUT", f"/v2/{seed.name}/manifests/huge", headers={"Content-Type": OCI_MANIFEST},
                 body=big if length != 10**15 else b"{}", content_length=length, root=root)
        assert r.status == 413
    chunk = b"x" * (CHUNK_MAX + 1)
    for query, streamed in (({}, False), ({}, True), ({"digest": sha256(chunk)}, False),
                            ({"digest": sha256(chunk)}, True)):
        COUNTS["oversized bodies (manifest > 4 MiB, chunk > max)"] += 1
        _, upload_id, state = seed.new_upload("fuzz/big")
        length = None if streamed else len(chunk)
        if query:
            r = send(api, "POST", "/v2/fuzz/big/blobs/uploads/", query, body=chunk, content_length=length, root=root)
        else:
            r = send(api, "PATCH", f"/v2/fuzz/big/blobs/uploads/{upload_id}", {"_state": state},
                     body=chunk, content_length=length, root=root)
        assert r.status == 413
        assert r.header("OCI-Chunk-Max-Length") == str(CHUNK_MAX)
    assert_layout(root)


def test_blob_digests_and_ranges(registry) -> None:
    api, seed, root = registry

    @fuzz("blob digests (GET/HEAD/DELETE), Range, If-None-Match")
    @given(name=st.one_of(st.just(seed.name), names(seed)), digest=st.one_of(st.sampled_from(seed.blobs),
                                                                               digests(seed)),
           method=st.sampled_from(["GET", "HEAD", "GET", "DELETE"]),
           range_=st.one_of(st.none(), range_values), if_none_match=st.one_of(st.none(), header_values))
    def run(name, digest, method, range_, if_none_match) -> None:
        COUNTS["blob digests (GET/HEAD/DELETE), Range, If-None-Match"] += 1
        if method == "DELETE" and digest in seed.digests:
            method = "HEAD"
        headers = {k: v for k, v in (("Range", range_), ("If-None-Match", if_none_match)) if v is not None}
        r = send(api, method, f"/v2/{name}/blobs/{digest}", headers=headers, root=root)
        if r.status == 206:
            start, end, size = map(int, re.match(r"bytes (\d+)-(\d+)/(\d+)$", r.header("Content-Range")).groups())
            assert 0 <= start <= end < size

    run_every_example(run, "blob digests (GET/HEAD/DELETE), Range, If-None-Match")
    assert_layout(root)


def test_upload_starts_monolithic_and_mounts(registry) -> None:
    api, seed, root = registry

    @fuzz("upload POST: ?digest=, ?mount=&from=, bodies, lengths")
    @given(body=bodies, empty=st.booleans(), how=length_lies, name=st.one_of(st.just("fuzz/uploads"), names(seed)),
           digest=st.one_of(st.none(), digests(seed)), mount=st.one_of(st.none(), digests(seed)),
           source=st.one_of(st.none(), st.just(seed.name), names(seed)),
           extra=st.dictionaries(st.sampled_from(["digest", "mount", "from", "_state", "n", "x"]), _any_text,
                                 max_size=2))
    def run(body, empty, how, name, digest, mount, source, extra) -> None:
        COUNTS["upload POST: ?digest=, ?mount=&from=, bodies, lengths"] += 1
        query = dict(extra)
        for key, value in (("digest", digest), ("mount", mount), ("from", source)):
            if value is not None:
                query[key] = value
        if digest is None and empty:
            body = b""
        length = lie(body, how)
        r = send(api, "POST", f"/v2/{name}/blobs/uploads/", query, body=body, content_length=length, root=root)
        if r.status == 201:
            assert r.header("Docker-Content-Digest")
        # a mount that succeeds answers 201 without reading the body at all
        if len(body) > CHUNK_MAX and (length is None or length > CHUNK_MAX) and "digest" in query \
                and "mount" not in query:
            assert r.status != 201, "a body over the chunk maximum was stored"

    run_every_example(run, "upload POST: ?digest=, ?mount=&from=, bodies, lengths")
    assert_layout(root)


def test_upload_sessions_chunks_content_range_and_state(registry) -> None:
    api, seed, root = registry
    sessions: list[tuple[str, str, str]] = []

    def tampered(state: str, how: int) -> str:
        payload, _, mac = state.partition(".")
        if how == 0:
            return payload + "." + mac[::-1]
        if how == 1:
            doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            doc["o"] = doc["o"] + 100
            return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode() + "." + mac
        if how == 2:
            return payload
        return state[: len(state) // 2]

    random_ids = st.one_of(st.uuids().map(str), _path_text.filter(lambda s: "/" not in s and s))

    @fuzz("upload sessions: PATCH/PUT/GET/DELETE, Content-Range, _state, ids")
    @given(method=st.sampled_from(["PATCH", "PATCH", "PUT", "GET", "DELETE"]),
           fresh=st.integers(0, 9), which=st.sampled_from(["real", "real", "real", "tampered", "foreign", "random",
                                                           "none"]),
           index=st.integers(0, 19), how_tampered=st.integers(0, 3), random_id=random_ids, random_state=_any_text,
           digest=digests(seed), body=bodies, content_range=st.one_of(st.none(), content_ranges), how=length_lies)
    def run(method, fresh, which, index, how_tampered, random_id, random_state, digest, body, content_range,
            how) -> None:
        COUNTS["upload sessions: PATCH/PUT/GET/DELETE, Content-Range, _state, ids"] += 1
        if not sessions or fresh == 0:
            sessions.append(seed.new_upload("fuzz/sessions"))
            del sessions[:-20]
        # an index, not sampled_from(sessions): what is drawn must not depend on state
        name, upload_id, state = sessions[index % len(sessions)]
        query: dict = {}
        if which == "real":
            query["_state"] = state
        elif which == "tampered":
            query["_state"] = tampered(state, how_tampered)
        elif which == "foreign":
            other = seed.new_upload(seed.name)
            query["_state"] = other[2]
        elif which == "random":
            upload_id = random_id
            query["_state"] = random_state
        if method == "PUT":
            query["digest"] = digest
        if method not in ("PATCH", "PUT"):
            body = b""
        headers = {}
        if content_range is not None:
            headers["Content-Range"] = content_range
        length = lie(body, how)
        r = send(api, method, f"/v2/{name}/blobs/uploads/{upload_id}", query, headers, body, length, root)
        if len(body) > CHUNK_MAX and (length is None or length > CHUNK_MAX):
            assert r.status not in (201, 202), "a chunk over the maximum was taken"
        if r.status == 202 and r.header("Location"):  # continue from where the registry says
            location = r.header("Location")
            sessions.append((name, upload_id, location.split("_state=", 1)[1]))
        if r.status in (201, 204) and method in ("PUT", "DELETE"):
            sessions[:] = [s for s in sessions if s[1] != upload_id]
        if r.status == 416:
            assert r.header("Range") and r.header("Location")

    run_every_example(run, "upload sessions: PATCH/PUT/GET/DELETE, Content-Range, _state, ids")
    assert_layout(root)


def test_referrers_and_artifact_type_filters(registry) -> None:
    api, seed, root = registry

    @fuzz("referrers: digests, artifactType")
    @given(name=st.one_of(st.just(seed.name), names(seed)), digest=digests(seed),
           artifact_type=st.one_of(st.none(), _any_text, st.just("application/vnd.example.sbom")),
           method=st.sampled_from(["GET", "HEAD"]))
    def run(name, digest, artifact_type, method) -> None:
        COUNTS["referrers: digests, artifactType"] += 1
        query = {"artifactType": artifact_type} if artifact_type is not None else {}
        r = send(api, method, f"/v2/{name}/referrers/{digest}", query, root=root)
        if r.status == 200 and method == "GET":
            assert json.loads(_body(r))["mediaType"] == OCI_INDEX

    run_every_example(run, "referrers: digests, artifactType")
    assert_layout(root)


def test_random_headers_on_every_endpoint(registry) -> None:
    api, seed, root = registry
    uploads: list[str] = []

    endpoints = [
        ("GET", "/v2/"), ("GET", "/v2/_catalog"), ("GET", f"/v2/{seed.name}/tags/list"),
        ("GET", f"/v2/{seed.name}/manifests/v1"), ("HEAD", f"/v2/{seed.name}/manifests/{seed.index_digest}"),
        ("PUT", "/v2/fuzz/headers/manifests/h"), ("GET", f"/v2/{seed.name}/blobs/{seed.blobs[1]}"),
        ("POST", "/v2/fuzz/headers/blobs/uploads/"), ("PATCH", "/v2/fuzz/headers/blobs/uploads/{upload}"),
        ("GET", "/v2/fuzz/headers/blobs/uploads/{upload}"),
        ("GET", f"/v2/{seed.name}/referrers/{seed.manifest_digest}"),
    ]

    @fuzz("random headers on every endpoint")
    @given(endpoint=st.sampled_from(endpoints), headers=random_headers, body=st.binary(max_size=50))
    def run(endpoint, headers, body) -> None:
        COUNTS["random headers on every endpoint"] += 1
        if not uploads:
            _, upload_id, _ = seed.new_upload("fuzz/headers")
            uploads.append(upload_id)
        method, path = endpoint[0], endpoint[1].replace("{upload}", uploads[-1])
        if method == "PUT":
            body = json.dumps(seed.manifest).encode()
        r = send(api, method, path, headers=headers, body=body, root=root)
        if method == "PATCH" and r.status != 202:
            uploads.clear()

    run_every_example(run, "random headers on every endpoint")
    assert_layout(root)


def test_random_methods_and_paths(registry) -> None:
    api, seed, root = registry

    @fuzz("random methods and raw paths")
    @given(method=st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                                             "CONNECT", "PROPFIND", "get", ""]), st.text(string.ascii_letters,
                                                                                         max_size=8)),
           path=st.one_of(_path_text.map(lambda p: "/v2/" + p), _path_text, st.sampled_from([
               "/v2", "/v2/", "/v2//", "/v2/_catalog/", "/v2/../v2/", "/v2/a/blobs/uploads", "/v2/a/blobs/",
               "/v2/a/manifests/", "/v2/a/tags/list/", "/v2/a/referrers/", "/", "", "/v1/_ping"])),
           body=st.binary(max_size=40))
    def run(method, path, body) -> None:
        COUNTS["random methods and raw paths"] += 1
        send(api, method, path, body=body, root=root)

    run_every_example(run, "random methods and raw paths")
    assert_layout(root)


def test_authorization_headers_against_htpasswd(guarded) -> None:
    api, root = guarded
    good = "Basic " + base64.b64encode(f"fuzzer:{PASSWORD}".encode()).decode()
    credentials = st.one_of(
        st.just(good),
        st.builds(lambda u, p: "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode(), _any_text, _any_text),
        st.builds(lambda b: "Basic " + base64.b64encode(b).decode(), st.binary(max_size=80)),
        st.builds(lambda s, t: f"{s} {t}", st.sampled_from(["Basic", "basic", "Bearer", "Digest", "", "BASIC"]),
                  header_values),
        header_values,
    )

    @fuzz("Authorization headers (htpasswd registry)")
    @given(authorization=st.one_of(st.none(), credentials), name=st.one_of(st.just("fuzz/guarded"), valid_names, bad_names),
           endpoint=st.sampled_from([("GET", "/v2/"), ("GET", "/v2/_catalog"), ("GET", "tags/list"),
                                     ("POST", "blobs/uploads/"), ("GET", "manifests/latest"),
                                     ("DELETE", "manifests/latest"), ("HEAD", f"blobs/sha256:{'0' * 64}")]))
    def run(authorization, name, endpoint) -> None:
        COUNTS["Authorization headers (htpasswd registry)"] += 1
        method, rest = endpoint
        path = rest if rest.startswith("/v2/") else f"/v2/{name}/{rest}"
        headers = {"Authorization": authorization} if authorization is not None else {}
        r = send(api, method, path, headers=headers, root=root)
        if authorization != good and r.status != 404 and r.status != 400:
            assert r.status == 401, (authorization, r.status)
            assert r.header("WWW-Authenticate") == 'Basic realm="fuzz"'

    run_every_example(run, "Authorization headers (htpasswd registry)")
    assert_layout(root)


def test_bearer_tokens_against_token_auth(fuzz_base: Path) -> None:
    from .token_issuer import Signer, TokenIssuer

    issuer = TokenIssuer()
    trust = fuzz_base / "token-trust"
    trust.mkdir()
    root = fuzz_base / "tokens" / "data"
    root.mkdir(parents=True)
    api = build_api(config_from_mapping(_config(root, issuer.auth_config(trust, realm="https://auth.fuzz/token"))))
    signers = [issuer.x5c(), issuer.jwks(), issuer.rogue(), Signer(issuer.rsa_key, "RS256", {"kid": "other"})]
    claim_values = st.one_of(json_values, st.sampled_from([issuer.service, issuer.issuer, [issuer.service]]))
    access = st.one_of(
        json_values,
        st.lists(st.fixed_dictionaries({"type": st.sampled_from(["repository", "registry", 1]),
                                        "name": st.sampled_from(["fuzz/app", "catalog", "*", ""]),
                                        "actions": st.one_of(st.lists(st.sampled_from(["pull", "push", "*", "delete"]),
                                                                      max_size=3), json_values)}), max_size=3),
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def sign(signer: Signer, overrides: dict, grants) -> str:
        try:
            return jwt.encode(issuer.claims(grants, **overrides), signer.key, algorithm=signer.alg,
                              headers=signer.header)
        except (TypeError, ValueError):  # PyJWT will not encode some odd claims: sign them unchecked
            return jwt.api_jws.PyJWS().encode(
                json.dumps(issuer.claims(grants, **overrides)).encode(), signer.key, algorithm=signer.alg,
                headers=signer.header)

    signed = st.builds(
        sign,
        st.sampled_from(signers),
        st.dictionaries(st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub"]), claim_values, max_size=3),
        access,
    )
    forged = st.builds(
        lambda header, claims, signature: f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
                                          f"{b64(signature)}",
        st.one_of(json_values, st.fixed_dictionaries({"alg": st.sampled_from(["none", "HS256", "RS256", "ES256", 7]),
                                                      "kid": st.one_of(st.just(issuer.jwks_kid), json_values),
                                                      "x5c": json_values})),
        json_values, st.binary(max_size=80),
    )
    tokens = st.one_of(signed, forged, _any_text, st.builds(lambda t: t[:-3] + "abc", signed))

    @fuzz("bearer tokens (token-auth registry): signed with odd claims, forged, garbage")
    @given(token=tokens, scheme=st.sampled_from(["Bearer", "bearer", "Basic", "", "BEARER"]),
           endpoint=st.sampled_from([("GET", "/v2/"), ("GET", "/v2/_catalog"), ("GET", "/v2/fuzz/app/tags/list"),
                                     ("POST", "/v2/fuzz/app/blobs/uploads/"), ("DELETE", "/v2/fuzz/app/manifests/x"),
                                     ("GET", "/v2/fuzz/app/manifests/latest")]))
    def run(token, scheme, endpoint) -> None:
        COUNTS["bearer tokens (token-auth registry): signed with odd claims, forged, garbage"] += 1
        method, path = endpoint
        r = send(api, method, path, headers={"Authorization": f"{scheme} {token}"}, root=root)
        if r.status == 401:
            assert r.header("WWW-Authenticate").startswith('Bearer realm="https://auth.fuzz/token",service=')

    run_every_example(run, "bearer tokens (token-auth registry): signed with odd claims, forged, garbage")
    assert_layout(root)


def test_bad_input_total_is_at_least_ten_thousand() -> None:
    # self-contained: the classes' budgets, each of which its own test checks it spent
    assert len(EXAMPLES) == 13
    assert sum(EXAMPLES.values()) >= 10_000, EXAMPLES


# ---------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def served(fuzz_base: Path):
    base = fuzz_base / "http"
    base.mkdir()
    root = base / "data"
    root.mkdir()
    with stratus_server(root, env={"REGISTRY_HTTP_CHUNKMAXLENGTH": str(CHUNK_MAX)}) as url:
        yield url, root


def _http(url: str, method: str, path: str, query: str, headers: dict, body: bytes):
    host, port = url.split("://", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        target = quote(path, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_http_sample(served) -> None:
    url, root = served
    ascii_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)

    @fuzz("over HTTP (stratus serve)")
    @given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
           name=st.one_of(st.just("http/app"), valid_names, _path_text), rest=st.sampled_from([
               "tags/list", "manifests/latest", "manifests/sha256:" + "0" * 64, "blobs/uploads/",
               "blobs/sha256:" + "0" * 64, "blobs/uploads/00000000-0000-4000-8000-000000000000",
               "referrers/sha256:" + "0" * 64, "manifests/%2e%2e"]),
           query=st.one_of(st.just(""), st.builds(lambda k, v: urlencode({k: v}), st.sampled_from(
               ["digest", "mount", "from", "n", "last", "_state", "artifactType"]), ascii_values)),
           headers=st.dictionaries(st.sampled_from(["Range", "Content-Range", "Content-Type", "If-None-Match",
                                                    "Authorization"]), ascii_values, max_size=3),
           body=st.one_of(st.binary(max_size=200), st.sampled_from([b"{}", b'{"schemaVersion":2}'])))
    def run(method, name, rest, query, headers, body) -> None:
        COUNTS["over HTTP (stratus serve)"] += 1
        path = f"/v2/{name}/{rest}"
        if not name or "\x00" in name or "\r" in name or "\n" in name:
            path = f"/v2/x/{rest}"
        status, response_headers, response_body = _http(url, method, path, query, headers, body)
        assert status < 500, (status, response_body[:300])
        lowered = {k.lower(): v for k, v in response_headers.items()}
        if status >= 400 and method != "HEAD":
            doc = json.loads(response_body)
            assert all(e["code"] in SPEC_ERROR_CODES for e in doc["errors"]), doc
            assert lowered.get("content-type") == "application/json"

    run_every_example(run, "over HTTP (stratus serve)")
    assert_layout(root)
