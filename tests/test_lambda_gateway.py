"""The API Gateway + Lambda stand-in (tests/lambda_gateway.py) in front of the real
app over S3 on moto: what the platform refuses never reaches the function, what it
lets through does, and the record says which was which."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import pytest

from .lambda_gateway import (
    EVENT_LIMIT,
    PAYLOAD_LIMIT,
    RESPONSE_LIMIT,
    GatewayClient,
    IncomingRequest,
    LambdaGateway,
    http_event,
    lambda_gateway,
    rest_event,
)
from .moto_server import MotoS3

MiB = 1 << 20
SECRET = "gateway-test-secret"


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


def function_env(moto_s3: MotoS3, bucket: str, **extra: str) -> dict[str, str]:
    return {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": SECRET, **extra}


@pytest.fixture(scope="module", params=["http", "rest"])
def gateway(request, moto_s3: MotoS3, bucket: str, tmp_path_factory) -> Iterator[LambdaGateway]:
    """The function with chunks up to 8 MiB allowed, so only the platform limits what arrives."""
    env = function_env(moto_s3, bucket, REGISTRY_HTTP_CHUNKMAXLENGTH="8MiB")
    with lambda_gateway(env, request.param, workdir=tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


def last_record(gw: LambdaGateway):
    return gw.records()[-1]


# -- the events -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, stage, in_path", [("rest", "api", False), ("rest", "api", True),
                                                  ("http", "$default", False), ("http", "dev", True)])
def test_an_event_reads_back_as_the_request_the_client_sent(mode, stage, in_path) -> None:
    """The app's own adapter (chalicelib.adapters.apigateway) finds in the event what was sent."""
    from chalicelib.adapters.apigateway import request_from_event

    prefix = f"/{stage}" if in_path else ""
    body = bytes(range(256)) * 3
    sent = IncomingRequest(
        "PATCH", f"{prefix}/v2/a/b/blobs/uploads/u1", "_state=s.t&digest=sha256%3Aab", [
            ("Host", "127.0.0.1:5000"), ("Content-Type", "application/json"), ("Content-Range", "0-767"),
            ("Transfer-Encoding", "chunked"), ("Connection", "keep-alive"), ("X-Forwarded-For", "203.0.113.9"),
        ], body, "127.0.0.1", 5000)
    if mode == "rest":
        event = rest_event(sent, "/v2/a/b/blobs/uploads/u1", "/v2/{proxy+}", "a/b/blobs/uploads/u1", stage, "id")
    else:
        event = http_event(sent, "/v2/{proxy+}", "a/b/blobs/uploads/u1", stage, "id")
    event = json.loads(json.dumps(event))  # as Lambda delivers it
    got = request_from_event(event)
    assert (got.method, got.path) == ("PATCH", "/v2/a/b/blobs/uploads/u1")
    assert got.query == {"_state": ["s.t"], "digest": ["sha256:ab"]}
    assert got.body.read() == body and event["isBase64Encoded"]  # not UTF-8: base64 even as JSON
    assert got.base_url == f"http://127.0.0.1:5000{prefix}"
    assert got.remote_addr == "127.0.0.1"
    assert got.headers.get("Content-Range") == "0-767"
    assert got.headers.get("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
    assert "transfer-encoding" not in got.headers and "connection" not in got.headers


# -- the invocation payload limit -------------------------------------------------------------


def monolithic_post(client: GatewayClient, name: str, body: bytes, pads: tuple[int, int]):
    """A single-POST upload of body; pads lengthen a header seen once per copy and the
    User-Agent (which events also copy into requestContext), to tune the event's size."""
    headers = {"Content-Type": "application/octet-stream", "X-Pad": "p" * pads[0], "User-Agent": "u" * pads[1]}
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return client("POST", f"/v2/{name}/blobs/uploads/", f"digest={digest}", headers, body), digest


def event_size_of(gw: LambdaGateway, name: str, body_length: int, pads: tuple[int, int]) -> int:
    monolithic_post(gw.client(), name, os.urandom(body_length), pads)
    return last_record(gw).event_bytes


def fit(gw: LambdaGateway, name: str, target: int) -> tuple[int, tuple[int, int]]:
    """(body length, pads) of a monolithic POST whose event is exactly target bytes.

    The event grows by 4 bytes per 3 body bytes (base64) and by a fixed number per pad
    character; both rates are measured, not assumed, from small probes of the same shape
    (a 7-digit Content-Length, as the target's)."""
    probe = 1_000_002  # a multiple of 3: no '=' padding
    base_pads = (10, 10)
    size = event_size_of(gw, name, probe, base_pads)
    per_pad = (event_size_of(gw, name, probe, (11, 10)) - size, event_size_of(gw, name, probe, (10, 11)) - size)
    fixed = size - probe // 3 * 4 - per_pad[0] * base_pads[0] - per_pad[1] * base_pads[1]
    body = (target - fixed - 200) // 4 * 3
    while body > 0:
        rest = target - fixed - body // 3 * 4
        for a in range(10, 200):
            b, remainder = divmod(rest - per_pad[0] * a, per_pad[1])
            if remainder == 0 and b >= 10:
                return body, (a, b)
        body -= 3
    raise AssertionError("no request shape gives that event size")


def test_one_byte_over_the_event_limit_never_reaches_the_function(gateway: LambdaGateway) -> None:
    name = f"limits/{gateway.mode}"
    client = gateway.client()
    for target, fits in ((EVENT_LIMIT, True), (EVENT_LIMIT + 1, False)):
        length, pads = fit(gateway, name, target)
        reply, digest = monolithic_post(client, name, os.urandom(length), pads)
        record = last_record(gateway)
        assert record.event_bytes == target and record.body_bytes == length
        if fits:
            assert reply.status == 201, reply.body
            assert record.reached_function and record.function_status == 201
            assert client("HEAD", f"/v2/{name}/blobs/{digest}").status == 200
        else:
            assert reply.status == 413
            assert reply.body == b'{"message":"Request Too Long"}'
            assert not record.reached_function and record.function_status is None
            assert record.outcome == "request-too-long"
            assert client("HEAD", f"/v2/{name}/blobs/{digest}").status == 404
    gateway.assert_nothing_over_the_limit_reached_the_function()


def test_base64_counts_against_the_limit(gateway: LambdaGateway) -> None:
    """4.6 MiB of layer is under 6 MB but its base64 is not: the ~4.4 MiB wall."""
    body = os.urandom(4_800_000)
    reply, _ = monolithic_post(gateway.client(), "limits/base64", body, (0, 5))
    record = last_record(gateway)
    assert reply.status == 413 and not record.reached_function
    assert record.body_bytes < EVENT_LIMIT < record.event_bytes
    assert record.event_bytes > len(body) * 4 // 3


def test_a_text_body_is_not_inflated_on_an_http_api(moto_s3, bucket, tmp_path) -> None:
    """HTTP APIs pass JSON as text: a 5 MB manifest reaches the function (which refuses
    it itself, over its 4 MiB manifest limit), where a REST API's base64 is refused first."""
    manifest = json.dumps({"schemaVersion": 2, "padding": "x" * 5_000_000}).encode()
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    outcomes = {}
    for mode in ("http", "rest"):
        with lambda_gateway(function_env(moto_s3, bucket), mode, workdir=tmp_path) as gw:
            reply = gw.client()("PUT", "/v2/limits/text/manifests/v1", "", headers, manifest)
            record = last_record(gw)
            outcomes[mode] = (reply.status, record.reached_function)
            if mode == "http":
                assert record.event_bytes < len(manifest) * 4 // 3
                assert reply.json()["errors"][0]["code"] in ("MANIFEST_INVALID", "SIZE_INVALID")
            else:
                assert reply.body == b'{"message":"Request Too Long"}'
    assert outcomes == {"http": (413, True), "rest": (413, False)}


def test_a_body_over_the_gateway_payload_limit_is_refused_and_the_connection_kept(gateway) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    try:
        body = b"\0" * (PAYLOAD_LIMIT + 1)
        connection.request("PATCH", "/v2/limits/huge/blobs/uploads/x", body=body)
        response = connection.getresponse()
        assert response.status == 413 and response.read() == b'{"message":"Request Too Long"}'
        connection.request("GET", "/v2/")  # the whole body was read: the next request is whole too
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b"{}"
    finally:
        connection.close()
    refused = [r for r in gateway.records() if r.body_bytes == PAYLOAD_LIMIT + 1]
    assert len(refused) == 1 and refused[0].event_bytes is None and not refused[0].reached_function


def test_a_chunked_body_is_assembled_into_one_event(gateway: LambdaGateway) -> None:
    client = gateway.client()
    data = os.urandom(300_000)
    started = client("POST", "/v2/limits/chunked/blobs/uploads/")
    path, query = started.location()
    pieces = iter([data[:1000], data[1000:1001], data[1001:]])
    patched = client("PATCH", path, query, {"Content-Type": "application/octet-stream"}, pieces, chunked=True)
    assert patched.status == 202, patched.body
    assert patched.header("Range") == f"0-{len(data) - 1}"
    record = last_record(gateway)
    assert record.body_bytes == len(data) and record.reached_function
    path, query = patched.location()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client("PUT", path, f"{query}&digest={digest}").status == 201


# -- responses ---------------------------------------------------------------------------------


def test_a_response_over_the_lambda_limit_is_a_502(moto_s3, bucket, tmp_path) -> None:
    """With redirects off the function sends blob bytes itself: ~4.5 MiB is the most."""
    env = function_env(moto_s3, bucket, REGISTRY_STORAGE_REDIRECT_DISABLE="true")
    with lambda_gateway(env, "http", workdir=tmp_path) as gw:
        client = gw.client()
        data = os.urandom(5 * MiB)
        digest = client.push_blob("limits/response", data, chunk=4 * MiB)
        whole = client("GET", f"/v2/limits/response/blobs/{digest}")
        record = last_record(gw)
        assert whole.status == 502 and whole.body == b'{"message":"Internal server error"}'
        assert record.reached_function and record.function_status == 200
        assert record.response_bytes > RESPONSE_LIMIT and record.outcome == "response-too-large"
        part = client("GET", f"/v2/limits/response/blobs/{digest}", headers={"Range": f"bytes=0-{MiB - 1}"})
        assert part.status == 206 and part.body == data[:MiB]


@contextmanager
def black_hole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers: a storage call that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("mode", ["http", "rest"])
def test_the_gateway_gives_up_after_its_timeout(moto_s3, bucket, tmp_path, mode) -> None:
    with black_hole() as endpoint:
        env = function_env(moto_s3, bucket, REGISTRY_STORAGE_S3_REGIONENDPOINT=endpoint)
        with lambda_gateway(env, mode, timeout=1.5, workdir=tmp_path) as gw:
            client = gw.client()
            reply = client("GET", "/v2/hangs/tags/list")
            assert reply.status == 504 and reply.body == b'{"message":"Endpoint request timed out"}'
            record = last_record(gw)
            assert record.reached_function and record.outcome == "timeout" and record.function_status is None
            assert client("GET", "/v2/").status == 200  # the gateway itself is not stuck


def test_isolated_instances_scale_as_lambda_does(moto_s3, bucket, tmp_path) -> None:
    """An idle instance takes the next invocation; one still busy (here, past the gateway's
    timeout) cannot, so a new instance - a process of its own - starts for it."""
    with black_hole() as endpoint:
        env = function_env(moto_s3, bucket, REGISTRY_STORAGE_S3_REGIONENDPOINT=endpoint)
        with lambda_gateway(env, "http", instances="isolated", timeout=5, workdir=tmp_path) as gw:
            client = gw.client()
            assert client("GET", "/v2/").status == 200 and client("GET", "/v2/").status == 200
            first, second = gw.records()
            assert first.instance == second.instance and first.instance != gw.pid
            assert client("GET", "/v2/hangs/tags/list").status == 504
            assert last_record(gw).instance == first.instance
            assert client("GET", "/v2/").status == 200
            assert last_record(gw).instance not in (first.instance, gw.pid)


# -- what a REST API does to headers and paths -----------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_env(moto_s3: MotoS3, bucket: str) -> dict[str, str]:
    import bcrypt

    entry = "alice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    return function_env(moto_s3, bucket, REGISTRY_AUTH="htpasswd", REGISTRY_AUTH_HTPASSWD_REALM="Stratus",
                        REGISTRY_AUTH_HTPASSWD_ENV="STRATUS_HTPASSWD", STRATUS_HTPASSWD=entry)


def test_a_rest_api_remaps_the_challenge_header(htpasswd_env, tmp_path) -> None:
    """What a docker client meets behind a REST API: no WWW-Authenticate to answer."""
    challenges = {}
    for mode in ("http", "rest"):
        with lambda_gateway(htpasswd_env, mode, workdir=tmp_path) as gw:
            reply = gw.client()("GET", "/v2/")
            assert reply.status == 401
            assert reply.json()["errors"][0]["code"] == "UNAUTHORIZED"
            challenges[mode] = (reply.header("WWW-Authenticate"), reply.header("x-amzn-Remapped-WWW-Authenticate"))
    assert challenges["http"] == ('Basic realm="Stratus"', None)
    assert challenges["rest"] == (None, 'Basic realm="Stratus"')


@pytest.mark.parametrize("head_length", ["function", "body"])
def test_a_rest_api_sends_its_own_content_length(moto_s3, bucket, tmp_path, head_length) -> None:
    """The function's Content-Length comes back remapped; a HEAD keeps it or not as chosen
    (undocumented on AWS: "body" shows what would break if a HEAD said 0)."""
    env = function_env(moto_s3, bucket, REGISTRY_STORAGE_REDIRECT_DISABLE="true")
    with lambda_gateway(env, "rest", head_content_length=head_length, workdir=tmp_path) as gw:
        client = gw.client()
        data = os.urandom(1000)
        digest = client.push_blob("lengths/app", data, chunk=MiB)
        got = client("GET", f"/v2/lengths/app/blobs/{digest}")
        assert got.body == data and got.header("Content-Length") == "1000"
        assert got.header("x-amzn-Remapped-Content-Length") == "1000"
        head = client("HEAD", f"/v2/lengths/app/blobs/{digest}")
        assert head.status == 200 and head.body == b""
        if head_length == "function":
            assert (head.header("Content-Length"), head.header("x-amzn-Remapped-Content-Length")) == ("1000", None)
        else:
            assert (head.header("Content-Length"), head.header("x-amzn-Remapped-Content-Length")) == ("0", "1000")


def test_a_stage_in_the_path_reaches_the_function_and_comes_back_in_locations(moto_s3, bucket, tmp_path) -> None:
    with lambda_gateway(function_env(moto_s3, bucket), "rest", stage_in_path=True, workdir=tmp_path) as gw:
        assert gw.url.endswith(":%d/api" % gw.port)
        client = gw.client()
        started = client("POST", "/v2/staged/app/blobs/uploads/")
        assert started.status == 202
        assert started.header("Location").startswith(f"{gw.url}/v2/staged/app/blobs/uploads/")
        path, query = started.location()
        assert client("GET", path, query).status == 204  # the Location leads back through the stage
        bare = GatewayClient(f"http://127.0.0.1:{gw.port}")("GET", "/v2/")
        assert bare.status == 403 and bare.json() == {"message": "Forbidden"}
        assert not last_record(gw).reached_function


@pytest.mark.parametrize("method, path", [("GET", "/"), ("GET", "/v3/"), ("POST", "/v2")])
def test_a_path_or_method_without_a_route_never_reaches_the_function(gateway, method, path) -> None:
    reply = gateway.client()(method, path)
    expected = (403, {"message": "Missing Authentication Token"}) if gateway.mode == "rest" else \
        (404, {"message": "Not Found"})
    assert (reply.status, reply.json()) == expected
    record = last_record(gateway)
    assert record.outcome == "missing-route" and not record.reached_function and record.event_bytes is None


# -- the record --------------------------------------------------------------------------------


def test_the_record_says_what_each_request_was_and_did(gateway: LambdaGateway) -> None:
    client = gateway.client()
    before = len(gateway.records())
    started = client("POST", "/v2/records/app/blobs/uploads/")
    path, query = started.location()
    piece = os.urandom(123_456)
    client("PATCH", path, query, {"Content-Type": "application/octet-stream"}, piece)
    client("PATCH", path, query, {"Content-Type": "application/octet-stream"}, os.urandom(5 * MiB))
    post, patch, refused = gateway.records()[before:]
    assert (post.method, post.path, post.query, post.body_bytes) == ("POST", "/v2/records/app/blobs/uploads/", "", 0)
    assert post.reached_function and post.status == post.function_status == 202 and post.response_base64
    assert post.instance == gateway.pid  # one warm instance: the gateway's own process
    assert (patch.method, patch.path, patch.query) == ("PATCH", path, query)
    assert patch.body_bytes == len(piece) and patch.event_bytes > len(piece) * 4 // 3
    assert patch.reached_function and patch.status == 202 and patch.outcome == "ok"
    assert patch.response_bytes > 0
    assert refused.body_bytes == 5 * MiB and refused.event_bytes > EVENT_LIMIT
    assert not refused.reached_function and refused.status == 413 and refused.response_bytes is None
