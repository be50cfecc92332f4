"""Direct-to-storage uploads (docs/direct-uploads.md) through the real HTTP api:
`stratus serve` over moto S3 and over Azurite with storage.directupload on, and the
Lambda app (where it is on by default). Part bytes go to the presigned URLs with
plain HTTP, as `stratus relay` or any client would send them; Azurite checks SAS
signatures, moto does not check presigned ones.
"""
from __future__ import annotations

import base64
import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests as http

from tests.azurite import Azurite
from tests.lambda_gateway import LambdaGateway, lambda_gateway
from tests.moto_server import MotoS3
from tests.servers import stratus_server

MiB = 1 << 20
S3_PART = 5 * MiB  # the smallest part S3 takes
AZURE_PART = 1 * MiB
HEADER = "stratus-direct-upload"


def random_bytes(size: int, seed: int) -> bytes:
    return hashlib.shake_256(f"direct-{seed}".encode()).digest(size)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def json(self) -> dict:
        return json.loads(self.body)

    def code(self) -> str:
        return self.json()["errors"][0]["code"]

    def target(self) -> str:
        """The Location as path?query, to send the next request to."""
        parts = urlsplit(self.header("Location"))
        return f"{parts.path}?{parts.query}" if parts.query else parts.path


Call = Callable[..., Reply]


def served(base: str) -> Call:
    """Requests to a running `stratus serve`."""

    def call(method: str, target: str, headers: Optional[dict] = None, body: bytes = b"", auth=None) -> Reply:
        r = http.request(method, base + target, headers=headers, data=body, auth=auth, timeout=120,
                         allow_redirects=False)
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    return call


def through(gateway: LambdaGateway) -> Call:
    """Requests through the stand-in for API Gateway in front of the Lambda app."""
    client = gateway.client()

    def call(method: str, target: str, headers: Optional[dict] = None, body: bytes = b"", auth=None) -> Reply:
        assert auth is None
        path, _, query = target.partition("?")
        r = client(method, path, query, headers, body)
        return Reply(r.status, dict(r.headers), r.body)

    return call


def start(call: Call, name: str) -> Reply:
    started = call("POST", f"/v2/{name}/blobs/uploads/")
    assert started.status == 202, started.body
    return started


def ask_parts(call: Call, session: Reply, parts: str, part_size: Optional[int] = None, **kw) -> Reply:
    query = f"&parts={parts}" + (f"&partsize={part_size}" if part_size is not None else "")
    return call("POST", session.target() + query, **kw)


def send_part(part: dict, data: bytes) -> int:
    """A part's bytes to its URL, with plain HTTP: no SDK, no credentials of ours."""
    r = http.request(part["method"], part["url"], headers=part["headers"], data=data, timeout=120)
    return r.status_code


def send_parts(grant: dict, data: bytes, skip: tuple[int, ...] = ()) -> None:
    size = grant["partSize"]
    for part in grant["parts"]:
        n = part["number"]
        if n in skip:
            continue
        piece = data[(n - 1) * size:n * size]
        status = send_part(part, piece)
        assert status in (200, 201), status


def complete(call: Call, session: Reply, digest: str, max_rounds: int = 50) -> tuple[Reply, list[int]]:
    """PUT ?digest= until it is no longer 202; returns the last reply and the offsets reported."""
    offsets = []
    target = session.target()
    for _ in range(max_rounds):
        done = call("PUT", f"{target}&digest={digest}")
        if done.status != 202:
            return done, offsets
        offsets.append(int(done.header("Stratus-Verify-Offset")))
        assert done.header("Range") == f"0-{max(offsets[-1] - 1, 0)}"  # "0-0" for nothing yet, as ever
        target = done.target()
    raise AssertionError("verification never finished")


def direct_push(call: Call, name: str, data: bytes, part_size: int) -> tuple[Reply, list[int]]:
    session = start(call, name)
    count = -(-len(data) // part_size)
    granted = ask_parts(call, session, f"1-{count}", part_size)
    assert granted.status == 200, granted.body
    send_parts(granted.json(), data)
    return complete(call, session, sha256(data))


def pull(call: Call, name: str, digest: str) -> bytes:
    got = call("GET", f"/v2/{name}/blobs/{digest}")
    if got.status == 307:
        return http.get(got.header("Location"), timeout=120).content
    assert got.status == 200, got.status
    return got.body


# -- storage views -------------------------------------------------------------------------


@dataclass
class S3View:
    moto: MotoS3
    bucket: str

    def keys(self, prefix: str) -> list[str]:
        pages = self.moto.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def multipart_uploads(self) -> list[tuple[str, str]]:
        listed = self.moto.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [(u["Key"], u["UploadId"]) for u in listed]

    def pending(self) -> list[str]:
        return [key for key, _ in self.multipart_uploads()]


@dataclass
class AzureView:
    azurite: Azurite
    container: str

    def keys(self, prefix: str) -> list[str]:
        client = self.azurite.service_client().get_container_client(self.container)
        return [b.name for b in client.list_blobs(name_starts_with=prefix, include=["uncommittedblobs"])]

    def pending(self) -> list[str]:
        return [k for k in self.keys("docker/registry/v2/repositories/") if "/_uploads/" in k and k.endswith("/data")]


BLOBS = "docker/registry/v2/blobs/"


def uploads_of(view, name: str) -> list[str]:
    return view.keys(f"docker/registry/v2/repositories/{name}/_uploads/")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_registry(moto_s3: MotoS3, tmp_path_factory) -> Iterator[tuple[Call, S3View]]:
    bucket = moto_s3.create_bucket()
    env = moto_s3.environment(bucket, REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED="true",
                              REGISTRY_STORAGE_DIRECTUPLOAD_PARTSIZE=str(S3_PART))
    with stratus_server(tmp_path_factory.mktemp("direct-s3") / "root", env=env) as url:
        yield served(url), S3View(moto_s3, bucket)


@pytest.fixture(scope="module")
def azure_registry(azurite: Azurite, tmp_path_factory) -> Iterator[tuple[Call, AzureView]]:
    container = azurite.new_container()
    env = azurite.environment(container, REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED="true",
                              REGISTRY_STORAGE_DIRECTUPLOAD_PARTSIZE=str(AZURE_PART))
    with stratus_server(tmp_path_factory.mktemp("direct-azure") / "root", env=env) as url:
        yield served(url), AzureView(azurite, container)


@pytest.fixture(params=["s3", "azure"])
def registry(request) -> tuple[Call, object, int]:
    """Each test on both drivers: (call, storage view, part size)."""
    if request.param == "s3":
        call, view = request.getfixturevalue("s3_registry")
        return call, view, S3_PART
    call, view = request.getfixturevalue("azure_registry")
    return call, view, AZURE_PART


@pytest.fixture
def lambda_app(moto_s3: MotoS3) -> Callable[..., object]:
    """The Lambda app behind API Gateway's limits (tests/lambda_gateway.py), every request
    on a freshly built instance, over a new bucket: `with lambda_app(**env) as (call, view, gateway)`."""

    @contextmanager
    def start_gateway(**env: str) -> Iterator[tuple[Call, S3View, LambdaGateway]]:
        bucket = moto_s3.create_bucket()
        variables = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "direct-secret", **env}
        with lambda_gateway(variables, mode="http", instances="cold") as gateway:
            yield through(gateway), S3View(moto_s3, bucket), gateway
        gateway.assert_nothing_over_the_limit_reached_the_function()

    return start_gateway


# -- the whole way -----------------------------------------------------------------------------


def test_multi_part_blob_goes_straight_to_storage_and_pulls_back_identical(registry) -> None:
    call, view, part_size = registry
    name = f"direct/whole-{part_size}"
    data = random_bytes(2 * part_size + part_size // 3, seed=part_size)
    session = start(call, name)
    assert session.header(HEADER) in ("s3-multipart", "azure-blocks")
    granted = ask_parts(call, session, "1-3", part_size)
    assert granted.status == 200, granted.body
    grant = granted.json()
    assert grant["kind"] == session.header(HEADER)
    assert grant["partSize"] == part_size and grant["uploaded"] == []
    assert [p["number"] for p in grant["parts"]] == [1, 2, 3]
    send_parts(grant, data)

    status = call("GET", session.target())  # the contiguous run of parts from part 1
    assert status.status == 204 and status.header("Range") == f"0-{len(data) - 1}"
    assert status.header(HEADER) == grant["kind"]
    again = ask_parts(call, session, "3-3")  # a client that lost track learns what is stored
    assert [(p["number"], p["size"]) for p in again.json()["uploaded"]] == [
        (1, part_size), (2, part_size), (3, len(data) - 2 * part_size)]

    done, _ = complete(call, session, sha256(data))
    assert done.status == 201, done.body
    assert done.header("Docker-Content-Digest") == sha256(data)
    assert pull(call, name, sha256(data)) == data
    assert call("HEAD", f"/v2/{name}/blobs/{sha256(data)}").header("Content-Length") == str(len(data))
    assert uploads_of(view, name) == []
    assert not [k for k in view.pending() if name in k]


def test_wrong_digest_is_refused_and_leaves_nothing(registry) -> None:
    call, view, part_size = registry
    name = f"direct/wrong-{part_size}"
    data = random_bytes(part_size + 1000, seed=7)
    session = start(call, name)
    send_parts(ask_parts(call, session, "1-2", part_size).json(), data)
    wrong = sha256(b"not these bytes")
    refused, _ = complete(call, session, wrong)
    assert refused.status == 400 and refused.code() == "DIGEST_INVALID"
    for digest in (wrong, sha256(data)):
        assert view.keys(f"{BLOBS}sha256/{digest[7:9]}/{digest[7:]}") == []
        assert call("HEAD", f"/v2/{name}/blobs/{digest}").status == 404
    assert uploads_of(view, name) == []
    assert not [k for k in view.pending() if name in k]
    assert call("GET", session.target()).code() == "BLOB_UPLOAD_UNKNOWN"


def test_missing_part_is_refused_and_the_upload_kept(registry) -> None:
    call, view, part_size = registry
    name = f"direct/missing-{part_size}"
    data = random_bytes(2 * part_size + 10, seed=8)
    session = start(call, name)
    grant = ask_parts(call, session, "1-3", part_size).json()
    send_parts(grant, data, skip=(2,))
    status = call("GET", session.target())
    assert status.header("Range") == f"0-{part_size - 1}"  # part 1 only: part 2 is missing
    refused, _ = complete(call, session, sha256(data))
    assert refused.status == 400 and refused.code() == "BLOB_UPLOAD_INVALID"
    assert "part 2" in refused.json()["errors"][0]["message"]
    assert view.keys(f"{BLOBS}sha256/{sha256(data)[7:9]}/") == []
    # the client sends what is missing and tries again
    send_parts({**grant, "parts": [p for p in grant["parts"] if p["number"] == 2]}, data)
    done, _ = complete(call, session, sha256(data))
    assert done.status == 201, done.body
    assert pull(call, name, sha256(data)) == data


def test_completing_without_parts_is_refused(registry) -> None:
    call, _, part_size = registry
    session = start(call, f"direct/no-parts-sent-{part_size}")
    assert ask_parts(call, session, "1-1", part_size).status == 200
    refused, _ = complete(call, session, sha256(b""))
    assert refused.status == 400 and refused.code() == "BLOB_UPLOAD_INVALID"
    assert refused.json()["errors"][0]["message"] == "no parts were uploaded"


def test_short_part_before_the_last_is_refused(registry) -> None:
    call, _, part_size = registry
    name = f"direct/short-{part_size}"
    data = random_bytes(2 * part_size, seed=9)
    session = start(call, name)
    grant = ask_parts(call, session, "1-2", part_size).json()
    assert send_part(grant["parts"][0], data[:part_size - 1]) in (200, 201)
    assert send_part(grant["parts"][1], data[part_size:]) in (200, 201)
    refused, _ = complete(call, session, sha256(data))
    assert refused.status == 400 and refused.code() == "BLOB_UPLOAD_INVALID"


def test_bodies_on_a_direct_upload_are_refused(registry) -> None:
    call, view, part_size = registry
    name = f"direct/bodies-{part_size}"
    session = start(call, name)
    assert ask_parts(call, session, "1-1", part_size).status == 200
    patched = call("PATCH", session.target(), {"Content-Type": "application/octet-stream"}, b"abc")
    assert patched.status == 400 and patched.code() == "BLOB_UPLOAD_INVALID"
    put = call("PUT", session.target() + f"&digest={sha256(b'abc')}", {"Content-Type": "application/octet-stream"},
               b"abc")
    assert put.status == 400 and put.code() == "BLOB_UPLOAD_INVALID"
    assert call("GET", session.target()).status == 204  # still there, still empty
    assert call("DELETE", session.target()).status == 204
    assert call("GET", session.target()).status == 404
    assert not [k for k in view.pending() if name in k]  # the multipart upload / staged blocks went too


def test_only_an_empty_upload_enters_direct_mode(registry) -> None:
    call, _, part_size = registry
    session = start(call, f"direct/nonempty-{part_size}")
    patched = call("PATCH", session.target(), {"Content-Type": "application/octet-stream"}, b"x" * 100)
    assert patched.status == 202
    refused = ask_parts(call, patched, "1-1", part_size)
    assert refused.status == 416 and refused.code() == "BLOB_UPLOAD_INVALID"
    assert refused.header("Range") == "0-99"


@pytest.mark.parametrize("parts, partsize, status, code", [
    ("0-1", None, 400, "BLOB_UPLOAD_INVALID"),
    ("3-2", None, 400, "BLOB_UPLOAD_INVALID"),
    ("1-", None, 400, "BLOB_UPLOAD_INVALID"),
    ("a-b", None, 400, "BLOB_UPLOAD_INVALID"),
    ("", None, 400, "BLOB_UPLOAD_INVALID"),
    ("1-101", None, 400, "BLOB_UPLOAD_INVALID"),  # more than 100 URLs in one request
    ("9999-10001", None, 400, "BLOB_UPLOAD_INVALID"),  # past the last part number
    ("1-2", "lots", 400, "SIZE_INVALID"),
    ("1-2", "-5", 400, "SIZE_INVALID"),
    ("1-2", "0", 400, "SIZE_INVALID"),
    ("1-2", str(6 << 30), 400, "SIZE_INVALID"),  # more than either store takes in one part
])
def test_bad_parts_requests_get_oci_errors(registry, parts, partsize, status, code) -> None:
    call, _, _ = registry
    session = start(call, "direct/bad-input")
    query = f"&parts={parts}" + (f"&partsize={partsize}" if partsize is not None else "")
    refused = call("POST", session.target() + query)
    assert refused.status == status, refused.body
    assert refused.code() == code


def test_part_size_is_fixed_by_the_first_parts_request(registry) -> None:
    call, _, part_size = registry
    session = start(call, "direct/fixed-size")
    assert ask_parts(call, session, "1-1", part_size).status == 200
    assert ask_parts(call, session, "2-2").json()["partSize"] == part_size
    refused = ask_parts(call, session, "2-2", part_size * 2)
    assert refused.status == 400 and refused.code() == "BLOB_UPLOAD_INVALID"


def test_parts_request_needs_the_uploads_state(registry) -> None:
    call, _, _ = registry
    session = start(call, "direct/state")
    path = urlsplit(session.header("Location")).path
    assert call("POST", f"{path}?parts=1-1").code() == "BLOB_UPLOAD_UNKNOWN"
    other = start(call, "direct/state")
    forged = f"{path}?_state={parse_qs(urlsplit(other.header('Location')).query)['_state'][0]}&parts=1-1"
    assert call("POST", forged).status == 404


def test_s3_small_part_size_is_refused(s3_registry) -> None:
    call, _ = s3_registry
    refused = ask_parts(call, start(call, "direct/s3-small"), "1-1", S3_PART - 1)
    assert refused.status == 400 and refused.code() == "SIZE_INVALID"


def test_upload_purging_removes_a_direct_upload_with_its_parts(registry) -> None:
    from datetime import timedelta

    from chalicelib.context import Context
    from chalicelib.registry.maintenance import purge_uploads
    from chalicelib.storage import create_driver

    call, view, part_size = registry
    name = f"direct/purged-{part_size}"
    session = start(call, name)
    send_parts(ask_parts(call, session, "1-2", part_size).json(), random_bytes(part_size + 1, seed=15))
    assert [k for k in view.pending() if name in k]
    parameters = (view.moto.parameters(view.bucket) if isinstance(view, S3View)
                  else view.azurite.driver_parameters(view.container))
    driver = create_driver("s3" if isinstance(view, S3View) else "azure", parameters)
    removed = purge_uploads(Context(), driver, timedelta(seconds=0))
    assert any(session.header("Docker-Upload-UUID") in r for r in removed)
    assert uploads_of(view, name) == [] and not [k for k in view.pending() if name in k]
    assert call("GET", session.target()).status == 404


# -- scope of the URLs -------------------------------------------------------------------------


def test_s3_part_url_names_only_its_own_upload(s3_registry) -> None:
    """moto does not check presigned signatures, so what we can show is what the URL
    names: this upload's key and multipart upload, one part number, all signed."""
    call, view = s3_registry
    name = "direct/s3-scope"
    one, two = start(call, name), start(call, name)
    url_one = ask_parts(call, one, "1-1", S3_PART).json()["parts"][0]["url"]
    ask_parts(call, two, "1-1", S3_PART)
    id_one = one.header("Docker-Upload-UUID")
    key_one = f"docker/registry/v2/repositories/{name}/_uploads/{id_one}/data"
    (multipart_one,) = [u for k, u in view.multipart_uploads() if k == key_one]
    parts = urlsplit(url_one)
    query = parse_qs(parts.query)
    assert parts.path == f"/{view.bucket}/{key_one}"
    assert query["uploadId"] == [multipart_one] and query["partNumber"] == ["1"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Signature"][0]
    assert "X-Amz-Expires" in query
    # What S3 would check (moto does not): the signature holds for this URL only, so
    # pointing it at the other upload's key or multipart upload breaks it.
    assert sigv4_query_signature_valid(url_one)
    id_two = two.header("Docker-Upload-UUID")
    (multipart_two,) = [u for k, u in view.multipart_uploads() if k == key_one.replace(id_one, id_two)]
    assert not sigv4_query_signature_valid(url_one.replace(id_one, id_two))
    assert not sigv4_query_signature_valid(url_one.replace(multipart_one, multipart_two))
    assert not sigv4_query_signature_valid(url_one.replace("partNumber=1", "partNumber=2"))


def sigv4_query_signature_valid(url: str) -> bool:
    """Whether a presigned URL's SigV4 query signature is right for the URL as it stands,
    checked as S3 checks it (our own implementation of the AWS SigV4 steps, not boto's)."""
    import hmac
    from urllib.parse import quote

    from tests.moto_server import REGION, SECRET_KEY

    parts = urlsplit(url)
    pairs = [tuple(p.split("=", 1)) for p in parts.query.split("&")]
    given = dict(pairs)["X-Amz-Signature"]
    decoded = sorted((unquote(k), unquote(v)) for k, v in pairs if k != "X-Amz-Signature")
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in decoded)
    fields = dict(decoded)
    canonical = "\n".join(["PUT", quote(unquote(parts.path), safe="/-_.~"), canonical_query,
                           f"host:{parts.netloc}\n", fields["X-Amz-SignedHeaders"], "UNSIGNED-PAYLOAD"])
    date = fields["X-Amz-Date"]
    scope = fields["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET_KEY).encode()
    for piece in (date[:8], REGION, "s3", "aws4_request"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), given)


def test_azure_part_url_cannot_write_another_upload(azure_registry, azurite) -> None:
    """Azurite checks SAS signatures: a URL of one upload's blob, pointed at another's, fails."""
    call, view = azure_registry
    name = "direct/azure-scope"
    one, two = start(call, name), start(call, name)
    part_one = ask_parts(call, one, "1-1", AZURE_PART).json()["parts"][0]
    ask_parts(call, two, "1-1", AZURE_PART)
    id_one, id_two = one.header("Docker-Upload-UUID"), two.header("Docker-Upload-UUID")
    assert id_one in part_one["url"]
    aimed = {**part_one, "url": part_one["url"].replace(id_one, id_two)}
    assert send_part(aimed, b"intruder") == 403
    assert send_part(part_one, b"own bytes") == 201
    stored = call("GET", two.target())
    assert stored.header("Range") == "0-0" and call("GET", one.target()).header("Range") == "0-8"
    # write-only: the same SAS cannot read the blob it writes
    read = http.get(part_one["url"].split("&comp=")[0], timeout=30)
    assert read.status_code == 403


# -- Lambda: on by default, verification across invocations ------------------------------------


def test_lambda_offers_direct_uploads_by_default(lambda_app) -> None:
    """No storage.directupload in the environment: on, because AWS_LAMBDA_FUNCTION_NAME is set.
    A blob larger than a Lambda request can carry goes in; its bytes never reach the function."""
    with lambda_app() as (call, view, gateway):
        session = start(call, "direct/lambda")
        assert session.header(HEADER) == "s3-multipart"
        data = random_bytes(2 * S3_PART + 3, seed=11)  # 10 MiB: over the 6 MB a Lambda event carries
        done, _ = direct_push(call, "direct/lambda-push", data, S3_PART)
        assert done.status == 201, done.body
        assert pull(call, "direct/lambda-push", sha256(data)) == data
        assert max(r.body_bytes for r in gateway.records()) == 0  # not one byte of the blob passed through


def test_verification_continues_across_puts_on_fresh_instances(lambda_app) -> None:
    """A tiny verifytime: the first PUT (a fresh instance) assembles the parts and answers
    202, each next one hashes one read and answers 202 with where it stopped, continuing
    from the stored hash state, and the move into place gets a PUT of its own."""
    with lambda_app(REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME="1ms") as (call, view, gateway):
        name = "direct/slow-verify"
        data = random_bytes(8 * S3_PART + 100, seed=12)  # 40 MiB: three 16 MiB reads
        done, offsets = direct_push(call, name, data, S3_PART)
        assert done.status == 201, done.body
        assert offsets[0] == 0 and offsets[-1] == len(data)  # assembled; ...; verified, to move
        assert len(offsets) >= 4 and offsets == sorted(set(offsets))
        # instances="cold": the registry is built afresh for each of these PUTs
        assert len([r for r in gateway.invocations() if r.method == "PUT"]) == len(offsets) + 1
        assert [k for k in view.keys("docker/registry/v2/repositories/") if "/hashstates/" in k] == []
        assert pull(call, name, sha256(data)) == data


def test_interrupted_verification_with_a_wrong_digest_is_still_refused(lambda_app) -> None:
    with lambda_app(REGISTRY_STORAGE_DIRECTUPLOAD_VERIFYTIME="1ms") as (call, view, _):
        name = "direct/slow-wrong"
        data = random_bytes(4 * S3_PART, seed=13)
        session = start(call, name)
        send_parts(ask_parts(call, session, "1-4", S3_PART).json(), data)
        wrong = sha256(data + b"!")
        first = call("PUT", f"{session.target()}&digest={wrong}")  # assembles, then time is up
        assert first.status == 202 and first.header("Stratus-Verify-Offset") == "0"
        assert call("GET", first.target()).header("Range") == f"0-{len(data) - 1}"  # all assembled
        late = ask_parts(call, first, "1-1")
        assert late.status == 400 and late.code() == "BLOB_UPLOAD_INVALID"  # no more parts now
        refused, offsets = complete(call, first, wrong)
        assert offsets and refused.status == 400 and refused.code() == "DIGEST_INVALID"
        assert view.keys(BLOBS) == []
        assert uploads_of(view, name) == [] and view.multipart_uploads() == []


def test_parts_request_without_push_access_gets_the_patch_challenge(lambda_app, tmp_path) -> None:
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(b"alice:" + bcrypt.hashpw(b"secret-pw", bcrypt.gensalt(rounds=4)) + b"\n")
    auth = {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "direct",
            "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd)}
    alice = {"Authorization": "Basic " + base64.b64encode(b"alice:secret-pw").decode()}
    with lambda_app(**auth) as (call, _, _gateway):
        session = call("POST", "/v2/direct/auth/blobs/uploads/", alice)
        assert session.status == 202
        patch = call("PATCH", session.target(), {"Content-Type": "application/octet-stream"}, b"x")
        parts = call("POST", session.target() + "&parts=1-1")
        assert parts.status == patch.status == 401
        assert parts.header("WWW-Authenticate") == patch.header("WWW-Authenticate")
        assert parts.header("WWW-Authenticate").startswith("Basic realm=")
        assert parts.code() == patch.code()
        wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:guess").decode()}
        assert call("POST", session.target() + "&parts=1-1", wrong).status == 401
        granted = call("POST", session.target() + "&parts=1-1", alice)
        assert granted.status == 200 and granted.json()["parts"][0]["url"]


def test_azure_functions_app_offers_direct_uploads_by_default(azurite: Azurite, tmp_path: Path) -> None:
    """The function app behind the stand-in Functions host, no storage.directupload set."""
    from tests.functions_host import functions_host

    container = azurite.new_container()
    env = azurite.environment(container, REGISTRY_HTTP_SECRET="direct-secret", PYTHON_ENABLE_INIT_INDEXING="1")
    with functions_host(env, tmp_path) as host:
        call = served(host.url)
        session = start(call, "direct/functions")
        assert session.header(HEADER) == "azure-blocks"
        data = random_bytes(3 * AZURE_PART + 5, seed=14)
        done, _ = direct_push(call, "direct/functions-push", data, AZURE_PART)
        assert done.status == 201, done.body
        assert pull(call, "direct/functions-push", sha256(data)) == data
        assert max(r.body_bytes for r in host.records()) == 0  # the blob's bytes went to Azurite only


# -- when it is not offered ------------------------------------------------------------------------


def test_stratus_serve_does_not_offer_it_by_default(moto_s3: MotoS3, tmp_path: Path) -> None:
    env = moto_s3.environment(moto_s3.create_bucket())
    with stratus_server(tmp_path / "root", env=env) as url:
        call = served(url)
        session = start(call, "direct/off")
        assert session.header(HEADER) is None
        refused = ask_parts(call, session, "1-1")
        assert refused.status == 405 and refused.code() == "UNSUPPORTED"


def test_filesystem_driver_cannot_offer_it(tmp_path: Path) -> None:
    with stratus_server(tmp_path / "root", env={"REGISTRY_STORAGE_DIRECTUPLOAD_ENABLED": "true"}) as url:
        call = served(url)
        session = start(call, "direct/fs")
        assert session.header(HEADER) is None
        refused = ask_parts(call, session, "1-1")
        assert refused.status == 405 and refused.code() == "UNSUPPORTED"
        # an ordinary push still works
        done = call("PUT", session.target() + f"&digest={sha256(b'abc')}", {"Content-Type": "application/octet-stream"},
                    b"abc")
        assert done.status == 201


def test_on_by_default_on_lambda_and_functions_only(monkeypatch) -> None:
    from chalicelib.bootstrap import direct_upload_options, functions_platform
    from chalicelib.config import config_from_mapping

    default = config_from_mapping({})
    off = config_from_mapping({"storage": {"directupload": {"enabled": False}}})
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert direct_upload_options(default) is None  # stratus serve
    functions = direct_upload_options(functions_platform({}).apply(default))
    assert functions is not None and functions.part_size == 16 * MiB
    assert direct_upload_options(functions_platform({}).apply(off)) is None
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "stratus")
    assert direct_upload_options(default) is not None
    assert direct_upload_options(off) is None


def test_post_to_an_upload_without_parts_is_405(registry) -> None:
    call, _, _ = registry
    session = start(call, "direct/no-parts")
    refused = call("POST", session.target())
    assert refused.status == 405 and refused.code() == "UNSUPPORTED"
    assert "POST" in refused.header("Allow") and "PATCH" in refused.header("Allow")
