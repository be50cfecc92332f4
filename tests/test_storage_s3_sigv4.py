"""The S3 driver's botocore-free read path: SigV4 signing equal to botocore's byte for
byte, the addresses the boto3 client would use, and reads against moto's server."""
from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests as http

from chalicelib import aws_light, keepalive, sigv4
from chalicelib.context import Context
from chalicelib.storage import InvalidOffsetError, PathNotFoundError, StorageError
from chalicelib.storage.s3 import S3Driver, from_parameters, parse_parameters
from chalicelib.storage.s3 import client as s3_client
from chalicelib.storage.s3 import light
from tests.moto_server import MotoS3
from tests.servers import serving

NOW = datetime(2026, 12, 5, 0, 7, 9, tzinfo=timezone.utc)
CREDENTIALS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzE//token+/=")
KEYS = [
    "docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data",
    "a b/c+d=e~f/ü/雪/x%y&z?q#r",
    "with  two spaces/and*star!/(paren)'quote'/@at:colon;semi,comma$",
]


@pytest.fixture
def frozen_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's signers read the clock through this one function."""
    import botocore.auth

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: NOW.replace(tzinfo=None))


def _botocore_credentials(credentials: sigv4.Credentials) -> Any:
    from botocore.credentials import Credentials

    return Credentials(credentials.access_key, credentials.secret_key, credentials.token)


# -- signing: equal to botocore's ------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [CREDENTIALS.token, None], ids=["session-token", "no-token"])
@pytest.mark.parametrize("scheme, host, region", [
    ("https", "my-bucket.s3.eu-west-1.amazonaws.com", "eu-west-1"),
    ("http", "127.0.0.1:9000", "us-east-1"),
])
@pytest.mark.parametrize("method, headers", [("GET", {}), ("GET", {"range": "bytes=5-"}), ("HEAD", {})])
def test_authorization_header_equals_botocores(frozen_botocore, key, token, scheme, host, region, method,
                                               headers) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    credentials = CREDENTIALS._replace(token=token)
    path = "/" + sigv4.encode_path(key)
    ours = sigv4.sign_headers(method, host, path, "", dict(headers), credentials, region, NOW)

    request = AWSRequest(method=method, url=f"{scheme}://{host}{path}", headers=dict(headers))
    S3SigV4Auth(_botocore_credentials(credentials), "s3", region).add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"] == "20261205T000709Z"
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")


def test_authorization_header_with_a_query_equals_botocores(frozen_botocore) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    query = [("list-type", "2"), ("prefix", "a b/ü+=~"), ("max-keys", "1"), ("continuation-token", "1/x+y=")]
    canonical = sigv4.canonical_query(query)
    ours = sigv4.sign_headers("GET", "s3.amazonaws.com", "/bucket/", canonical, {}, CREDENTIALS, "us-east-1", NOW)
    request = AWSRequest(method="GET", url=f"https://s3.amazonaws.com/bucket/?{canonical}")
    S3SigV4Auth(_botocore_credentials(CREDENTIALS), "s3", "us-east-1").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("token", [CREDENTIALS.token, None], ids=["session-token", "no-token"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_presigned_url_equals_botocores(frozen_botocore, key, token, method) -> None:
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    credentials = CREDENTIALS._replace(token=token)
    path = "/bucket/" + sigv4.encode_path(key)
    ours = "https://s3.ap-southeast-2.amazonaws.com" + sigv4.presign(
        method, "s3.ap-southeast-2.amazonaws.com", path, credentials, "ap-southeast-2", NOW, 1200)
    request = AWSRequest(method=method, url=f"https://s3.ap-southeast-2.amazonaws.com{path}")
    S3SigV4QueryAuth(_botocore_credentials(credentials), "s3", "ap-southeast-2", expires=1200).add_auth(request)
    assert ours == request.url


def test_signature_matches_aws_documented_example() -> None:
    """AWS's own worked example (S3 API reference, "Example: GET Object" with a Range, in
    "Signature Calculations for the Authorization Header: Transferring Payload in a Single Chunk")."""
    moment = datetime(2013, 5, 24, tzinfo=timezone.utc)
    ours = sigv4.sign_headers("GET", "examplebucket.s3.amazonaws.com", "/test.txt", "", {"range": "bytes=0-9"},
                              sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                              "us-east-1", moment)
    assert ours["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


# -- addressing: where the boto3 client sends requests and points presigned URLs ----------


ADDRESSING = [
    ({"region": "us-east-1"}, "my-bucket"),
    ({"region": "eu-west-1"}, "my-bucket"),
    ({"region": "eu-west-1"}, "my.bucket"),
    ({"region": "us-east-1"}, "my.bucket"),
    ({"region": "eu-west-1", "forcepathstyle": True}, "my-bucket"),
    ({"region": "us-east-1", "forcepathstyle": True}, "my-bucket"),
    ({"region": "eu-west-1"}, "ab"),
    ({"region": "eu-west-1", "forcepathstyle": True}, "ab"),
    ({"region": "eu-west-1"}, "Upper_Case"),
    ({"region": "eu-west-1"}, "Upper-Case"),
    ({"region": "us-east-1"}, "ab"),
    ({"region": "us-east-1", "regionendpoint": "http://127.0.0.1:5000"}, "my-bucket"),
    ({"region": "us-east-1", "regionendpoint": "https://minio.example.com"}, "my-bucket"),
    ({"region": "us-east-1", "regionendpoint": "https://minio.example.com:443/base"}, "my-bucket"),
    ({"region": "eu-west-1", "regionendpoint": "s3.eu-west-1.amazonaws.com"}, "my.bucket"),
    ({"region": "us-east-1", "regionendpoint": "minio.local:9000", "secure": False}, "Upper_Case"),
]


def _client_for(params: dict[str, Any]) -> Any:
    """A boto3 client built the way client.py builds the driver's, not shared with it."""
    return s3_client._build(parse_parameters(params).connection, "off")


@pytest.mark.parametrize("config, bucket", ADDRESSING, ids=[f"{c}-{b}" for c, b in ADDRESSING])
def test_requests_and_presigned_urls_go_where_the_clients_do(frozen_botocore, monkeypatch, config, bucket) -> None:
    monkeypatch.setattr(light, "_now", lambda: NOW)
    params = {"bucket": bucket, "accesskey": CREDENTIALS.access_key, "secretkey": CREDENTIALS.secret_key,
              "sessiontoken": CREDENTIALS.token, **config}
    connection = parse_parameters(params).connection
    reads = light.LightReads(connection, bucket, CREDENTIALS)
    client = _client_for(params)
    key = KEYS[1]
    assert reads.presign("GET", key, 300) == client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300)
    assert reads.presign("HEAD", key, 60) == client.generate_presigned_url(
        "head_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60)

    sent: list[str] = []

    class Sent(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        sent.append(request.url)
        raise Sent()

    client.meta.events.register("before-send.s3", capture)
    with pytest.raises(Sent):
        client.get_object(Bucket=bucket, Key=key)
    address = reads.address
    assert f"{address.scheme}://{address.netloc}{address.prefix}/{sigv4.encode_path(key)}" == sent[0]


@pytest.mark.parametrize("connection_params, environ, usable", [
    ({"region": "eu-west-1"}, {}, True),
    ({"region": "eu-west-1"}, {"AWS_PROFILE": "dev"}, False),
    ({"region": "eu-west-1"}, {"HTTPS_PROXY": "http://proxy:3128"}, False),
    ({"region": "eu-west-1"}, {"AWS_ENDPOINT_URL_S3": "http://elsewhere"}, False),
    ({"region": "eu-west-1", "regionendpoint": "http://here"}, {"AWS_ENDPOINT_URL_S3": "http://elsewhere"}, True),
    ({"region": "cn-north-1"}, {}, False),
    ({"region": "us-gov-west-1"}, {}, False),
    ({"region": "eu-west-1", "usedualstack": True}, {}, False),
    ({"region": "eu-west-1", "accelerate": True}, {}, False),
    ({"region": "eu-west-1", "usefipsendpoint": True}, {}, False),
    ({"region": "us-east-1", "regionendpoint": "http://minio", "v4auth": False}, {}, False),
])
def test_light_reads_only_where_the_client_would_read_alike(connection_params, environ, usable, monkeypatch,
                                                           tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/config of the machine's
    connection = parse_parameters({"bucket": "b", **connection_params}).connection
    assert light.usable(connection, environ) is usable


def test_an_aws_config_file_leaves_reads_to_the_client(monkeypatch, tmp_path) -> None:
    connection = parse_parameters({"bucket": "b", "region": "eu-west-1"}).connection
    monkeypatch.setenv("HOME", str(tmp_path))
    assert light.usable(connection, {})
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    assert not light.usable(connection, {})


def test_credentials_come_from_the_config_then_the_environment_else_the_provider_chain() -> None:
    configured = parse_parameters({"bucket": "b", "region": "eu-west-1", "accesskey": "A", "secretkey": "S",
                                   "sessiontoken": "T"}).connection
    environ = {"AWS_ACCESS_KEY_ID": "EA", "AWS_SECRET_ACCESS_KEY": "ES", "AWS_SESSION_TOKEN": "ET"}
    assert light.credentials_for(configured, environ) == ("A", "S", "T")
    plain = parse_parameters({"bucket": "b", "region": "eu-west-1"}).connection
    assert light.credentials_for(plain, environ) == ("EA", "ES", "ET")  # what Lambda sets
    assert light.credentials_for(plain, {"AWS_ACCESS_KEY_ID": "EA", "AWS_SECRET_ACCESS_KEY": "ES"}) == ("EA", "ES", None)
    assert light.credentials_for(plain, {"AWS_ACCESS_KEY_ID": "EA"}) is None  # a profile, IMDS, SSO: botocore's


# -- against moto's server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


ROOT = "r oot/ü+=~"  # storage paths are [A-Za-z0-9._-]; a root directory may hold anything


@pytest.fixture
def driver(moto_s3: MotoS3, bucket: str) -> Iterator[S3Driver]:
    driver = from_parameters(moto_s3.parameters(bucket, rootdirectory=ROOT))
    # (off on a machine with ~/.aws/config or a proxy variable, where the client reads)
    assert driver.bucket.reads is not None, "the light path is not active"
    yield driver


def _counted() -> Counter:
    return s3_client.requests.snapshot()


def test_reads_ranges_heads_and_404s_without_botocore_requests(driver, moto_s3, bucket) -> None:
    ctx, base = Context(), f"/t-{uuid.uuid4().hex[:8]}"
    data = bytes(range(256)) * 40
    path = f"{base}/dir.x/da_ta-1"
    moto_s3.client().put_object(Bucket=bucket, Key=f"{ROOT}{path}", Body=data, Metadata={"k": "v"})
    before = _counted()
    assert driver.get_content(ctx, path) == data
    with driver.reader(ctx, path, 1000) as stream:
        assert stream.read(10) == data[1000:1010]  # closed with bytes unread: the connection is dropped
    with driver.reader(ctx, path, 1000) as stream:
        assert stream.read() == data[1000:]
    with driver.reader(ctx, path, len(data)) as stream:
        assert stream.read() == b""
    with pytest.raises(InvalidOffsetError):
        driver.reader(ctx, path, len(data) + 1)
    info = driver.stat(ctx, path)
    assert info.size == len(data) and not info.is_dir
    assert abs(info.mod_time - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert driver.stat(ctx, f"{base}/dir.x").is_dir  # a prefix: ListObjectsV2, also light
    assert driver.list(ctx, base) == [f"{base}/dir.x"]
    assert [i.path for i in driver.walk(ctx, base)] == [f"{base}/dir.x", path]
    with pytest.raises(PathNotFoundError):
        driver.get_content(ctx, f"{base}/missing")
    with pytest.raises(PathNotFoundError):
        driver.stat(ctx, f"{base}/missing")
    with pytest.raises(PathNotFoundError):
        driver.reader(ctx, f"{base}/missing", 5)
    counts = _counted()
    counts.subtract(before)
    # the reader past the end: GET (416), then HEAD; stat of a directory or a missing
    # file: HEAD (404), then a list
    assert +counts == Counter({"GetObject": 7, "HeadObject": 5, "ListObjectsV2": 4})
    assert driver.bucket.reads.head(f"{ROOT}{path}")["Metadata"] == {"k": "v"}


@pytest.mark.parametrize("key", KEYS)
def test_keys_that_need_encoding_are_read_listed_and_presigned(driver, moto_s3, bucket, key) -> None:
    reads = driver.bucket.reads
    full = f"{uuid.uuid4().hex[:8]}/{key}"
    moto_s3.client().put_object(Bucket=bucket, Key=full, Body=b"0123456789")
    assert reads.head(full)["ContentLength"] == 10
    assert reads.get(full, "bytes=3-")["Body"].read() == b"3456789"
    (page,) = reads.list_pages(full.split("/")[0] + "/")
    assert [c["Key"] for c in page["Contents"]] == [full]
    assert http.get(reads.presign("GET", full, 60), timeout=10).content == b"0123456789"


def test_presigned_url_is_served_and_carries_its_expiry(driver, moto_s3, bucket) -> None:
    ctx, base = Context(), f"/t-{uuid.uuid4().hex[:8]}"
    path = f"{base}/served"
    driver.put_content(ctx, path, b"served by S3")
    before = time.time()
    url = driver.redirect_url(ctx, "GET", path, 1200)
    assert http.get(url, timeout=10).content == b"served by S3"
    assert http.get(url, headers={"Range": "bytes=7-8"}, timeout=10).content == b"by"
    head = driver.redirect_url(ctx, "HEAD", path, 60)
    assert http.head(head, timeout=10).headers["content-length"] == "12"
    # moto does not check query signatures or expiry; S3 refuses the URL once
    # X-Amz-Date + X-Amz-Expires has passed, and the signature covers both
    query = parse_qs(urlsplit(url).query)
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert query["X-Amz-Expires"] == ["1200"]
    assert before - 2 <= signed_at.timestamp() <= time.time()
    assert driver.redirect_url(ctx, "DELETE", path, 60) is None


class _FlakyS3(BaseHTTPRequestHandler):
    """An S3 stand-in answering from a script: (status, code) per request, then 200.
    Status 0 hangs up without an answer; code "short" sends fewer bytes than announced;
    code "region:<name>" answers as S3 does for a bucket in another region."""

    script: list[tuple[int, str]] = []
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append(self.headers.get("Authorization", ""))
        status, code = self.script.pop(0) if self.script else (200, "")
        if status == 0:
            self.close_connection = True
            return
        if code == "short":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
            return
        if code.startswith("region:"):
            self.send_response(status)
            self.send_header("x-amz-bucket-region", code.split(":", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if status >= 300:
            body = f"<Error><Code>{code}</Code><Message>scripted &amp; failing</Message></Error>".encode()
        else:
            body = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Sat, 05 Dec 2026 00:07:09 GMT")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Driver, type[_FlakyS3]]]:
    monkeypatch.setattr(aws_light, "backoff", lambda attempt, throttled, retry_after=None: 0.0)
    _FlakyS3.script, _FlakyS3.seen = [], []
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _FlakyS3)) as port:
        yield _driver_at(f"http://127.0.0.1:{port}"), _FlakyS3


def test_transient_errors_and_throttling_are_retried_as_the_client_does(flaky_s3) -> None:
    driver, s3 = flaky_s3
    s3.script = [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout")]
    assert driver.get_content(Context(), "/f") == b"ok"
    assert len(s3.seen) == 4 and len(set(s3.seen)) >= 1  # each attempt signed afresh


def test_retries_stop_after_five_attempts(flaky_s3) -> None:
    driver, s3 = flaky_s3
    s3.script = [(503, "SlowDown")] * 6
    with pytest.raises(StorageError, match="SlowDown: scripted & failing"):
        driver.get_content(Context(), "/f")
    assert len(s3.seen) == 5


@pytest.mark.parametrize("status, code", [(403, "AccessDenied"), (400, "InvalidArgument"), (409, "Conflict")])
def test_other_errors_fail_at_once_with_the_clients_code(flaky_s3, status, code) -> None:
    driver, s3 = flaky_s3
    s3.script = [(status, code)]
    with pytest.raises(StorageError, match=f"{code}: scripted & failing") as raised:
        driver.get_content(Context(), "/f")
    assert not isinstance(raised.value, PathNotFoundError)
    assert len(s3.seen) == 1


def test_a_dropped_connection_is_retried(flaky_s3) -> None:
    driver, s3 = flaky_s3
    s3.script = [(0, ""), (0, "")]
    assert driver.get_content(Context(), "/f") == b"ok"
    assert len(s3.seen) == 3


def test_a_body_cut_short_is_a_storage_error(flaky_s3) -> None:
    driver, s3 = flaky_s3
    s3.script = [(200, "short")]
    with pytest.raises(StorageError, match="reading the object"):
        driver.get_content(Context(), "/f")


def test_a_bucket_in_another_region_is_read_through_the_client(flaky_s3, monkeypatch) -> None:
    """S3 answers 301 with the bucket's region; botocore's redirector knows what to do."""
    driver, s3 = flaky_s3
    s3.script = [(301, "region:eu-west-1")]
    asked: list[dict] = []

    class Client:
        def get_object(self, **kwargs: Any) -> dict:
            asked.append(kwargs)
            return {"Body": _Bytes(b"from the client"), "Metadata": {}}

    monkeypatch.setattr(type(driver.bucket), "client", property(lambda self: Client()))
    assert driver.get_content(Context(), "/f") == b"from the client"
    assert asked == [{"Bucket": driver.bucket.name, "Key": "f"}] and len(s3.seen) == 1


class _Bytes:
    def __init__(self, data: bytes):
        self._data = data

    def read(self, size: Any = None) -> bytes:
        data, self._data = self._data, b""
        return data

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.tls_certs import make_certificates

    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_endpoint(certificates, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The scripted stand-in over TLS, with a certificate for 127.0.0.1 from the test CA."""
    monkeypatch.setattr(aws_light, "backoff", lambda attempt, throttled, retry_after=None: 0.0)
    _FlakyS3.script, _FlakyS3.seen = [], []
    with _tls_server(certificates.server_cert, certificates.server_key) as url:
        yield url


def _driver_at(endpoint: str, **extra: Any) -> S3Driver:
    """A driver for a fresh bucket at a stand-in endpoint, with static credentials (light reads)."""
    return from_parameters({"bucket": f"stand-in-{uuid.uuid4().hex[:6]}", "region": "us-east-1",
                            "regionendpoint": endpoint, "accesskey": "a", "secretkey": "s", **extra})


def test_https_endpoints_are_verified_against_aws_ca_bundle(tls_endpoint, certificates, monkeypatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificates.ca))
    assert _driver_at(tls_endpoint).get_content(Context(), "/f") == b"ok"

    monkeypatch.setenv("AWS_CA_BUNDLE", str(certificates.ca.with_name("other-ca.pem")))
    _FlakyS3.seen = []
    with pytest.raises(StorageError, match="CERTIFICATE_VERIFY_FAILED"):
        _driver_at(tls_endpoint).get_content(Context(), "/f")
    # (a refused handshake is a connection error: retried, as botocore's SSLError is)
    assert _FlakyS3.seen == []
    assert _driver_at(tls_endpoint, skipverify=True).get_content(Context(), "/f") == b"ok"


# -- the connection pool: keep-alive, stale connections, bodies left unread -------------------

BIG = 256 * 1024


class _KeepAliveS3(_FlakyS3):
    """The scripted stand-in on HTTP/1.1 keep-alive connections, counting those it accepts.
    Code "big" answers BIG bytes; "hangup" answers, then closes the connection without
    saying so (as a server does to a connection idle past its timeout)."""

    protocol_version = "HTTP/1.1"
    connections: list[int] = []

    def setup(self) -> None:
        _KeepAliveS3.connections.append(1)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802
        code = self.script[0][1] if self.script else ""
        if code not in ("big", "hangup"):
            super().do_GET()
            return
        self.script.pop(0)
        self.seen.append(self.headers.get("Authorization", ""))
        body = bytes(range(256)) * (BIG // 256) if code == "big" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client read a part and hung up
            pass
        self.close_connection = code == "hangup"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-body is what the tests do


@pytest.fixture
def keepalive_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Driver, type[_KeepAliveS3]]]:
    monkeypatch.setattr(aws_light, "backoff", lambda attempt, throttled, retry_after=None: 0.0)
    _FlakyS3.script, _FlakyS3.seen, _KeepAliveS3.connections = [], [], []
    with serving(_QuietServer(("127.0.0.1", 0), _KeepAliveS3)) as port:
        yield _driver_at(f"http://127.0.0.1:{port}"), _KeepAliveS3


def test_sequential_requests_share_one_kept_alive_connection(keepalive_s3) -> None:
    driver, s3 = keepalive_s3
    for _ in range(3):
        assert driver.get_content(Context(), "/f") == b"ok"
    assert (len(s3.seen), len(s3.connections)) == (3, 1)


@pytest.mark.parametrize("checked", [True, False], ids=["seen-idle", "met-on-send"])
def test_a_pooled_connection_the_server_closed_is_replaced_without_a_retry(keepalive_s3, monkeypatch,
                                                                           checked) -> None:
    """The server closed the kept connection after its answer. Either the pool sees it
    closed before using it, or the request sent on it fails at once (with the idle check
    off): then it is sent again on a new connection, neither counted as a retry nor
    charged to the retry quota."""
    driver, s3 = keepalive_s3
    if not checked:
        monkeypatch.setattr(keepalive, "closed", lambda sock: False)
    s3.script = [(200, "hangup")]
    before = _counted()
    assert driver.get_content(Context(), "/f") == b"ok"
    time.sleep(0.05)  # the server's FIN arrives
    assert driver.get_content(Context(), "/f") == b"ok"
    counts = _counted()
    counts.subtract(before)
    assert +counts == Counter({"GetObject": 2})
    assert (len(s3.seen), len(s3.connections)) == (2, 2)
    assert driver.bucket.reads._quota == light.QUOTA_CAPACITY


def test_a_connection_whose_body_was_left_unread_is_not_reused(keepalive_s3, monkeypatch) -> None:
    driver, s3 = keepalive_s3
    # (the pool's idle check would see the unread bytes too; the rule must not rest on it)
    monkeypatch.setattr(keepalive, "closed", lambda sock: False)
    ctx, data = Context(), bytes(range(256)) * (BIG // 256)
    before = _counted()
    s3.script = [(200, "big")]
    with driver.reader(ctx, "/f") as stream:
        assert stream.read(10) == data[:10]
    assert driver.get_content(ctx, "/f") == b"ok"  # on a new connection...
    assert driver.get_content(ctx, "/f") == b"ok"  # ...kept
    assert len(s3.connections) == 2
    # a body read to the end (in parts), closed or not, leaves its connection to the next request
    s3.script = [(200, "big"), (200, "big")]
    with driver.reader(ctx, "/f") as stream:
        assert b"".join(iter(lambda: stream.read(100_000), b"")) == data
    assert driver.bucket.reads.get(driver._key("/f"))["Body"].read() == data  # read, never closed
    assert driver.get_content(ctx, "/f") == b"ok"
    assert (len(s3.seen), len(s3.connections)) == (6, 2)
    counts = _counted()
    counts.subtract(before)
    assert +counts == Counter({"GetObject": 6})  # none failed and was retried
    assert driver.bucket.reads._quota == light.QUOTA_CAPACITY


# -- TLS against a self-signed certificate ----------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """Self-signed server certificates: for 127.0.0.1, and for a name that is not it."""
    directory, made = tmp_path_factory.mktemp("self-signed"), {}
    for name, san in (("ip", "IP:127.0.0.1"), ("elsewhere", "DNS:elsewhere.example")):
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                        "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=60)
        made[name] = (cert, key)
    return made


@contextmanager
def _tls_server(cert: Any, key: Any) -> Iterator[str]:
    import ssl

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyS3)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with serving(server) as port:
        yield f"https://127.0.0.1:{port}"


def test_a_self_signed_endpoint_is_refused_when_verifying_and_read_when_not(self_signed, monkeypatch) -> None:
    monkeypatch.setattr(aws_light, "backoff", lambda attempt, throttled, retry_after=None: 0.0)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    _FlakyS3.script, _FlakyS3.seen = [], []
    with _tls_server(*self_signed["ip"]) as endpoint:
        with pytest.raises(StorageError, match="Could not reach .*CERTIFICATE_VERIFY_FAILED"):
            _driver_at(endpoint).get_content(Context(), "/f")
        assert _FlakyS3.seen == []
        assert _driver_at(endpoint, skipverify=True).get_content(Context(), "/f") == b"ok"
        monkeypatch.setenv("AWS_CA_BUNDLE", str(self_signed["ip"][0]))  # trusted: read
        assert _driver_at(endpoint).get_content(Context(), "/f") == b"ok"
    # trusted, but for another name: the hostname is checked too
    monkeypatch.setenv("AWS_CA_BUNDLE", str(self_signed["elsewhere"][0]))
    with _tls_server(*self_signed["elsewhere"]) as endpoint:
        with pytest.raises(StorageError, match="address mismatch"):
            _driver_at(endpoint).get_content(Context(), "/f")
        assert _driver_at(endpoint, skipverify=True).get_content(Context(), "/f") == b"ok"
    assert len(_FlakyS3.seen) == 3
