"""S3 reads without botocore: HeadObject, GetObject, ListObjectsV2 and presigned GET/HEAD URLs.

A cold Lambda instance that serves a pull needs one or two object reads and maybe a
presigned URL. Through boto3 that costs ~100 ms of imports and ~90 ms more to build
a client (service model and endpoint rules loaded from JSON) before the first byte
is sent. Here the same requests are signed by sigv4.py and sent over the standard
library's http.client, on keep-alive connections kept in a small pool (_Connections):
a few milliseconds. (urllib3 would add 20 ms or so of imports of its own, and of
importlib.metadata, zipfile, bz2, lzma, csv... that its http2 probe pulls in.)

It is used only where it gives what the boto3 client would (`reads_for` decides):

* credentials are static: storage.s3 accesskey/secretkey(/sessiontoken), else
  AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN), which is what Lambda
  gives a function. Anything else (profiles, IMDS, SSO, web identity) needs
  botocore's provider chain and its refreshing, so the client is used;
* the endpoint is one whose addressing the boto3 client's rules give plainly: a
  regionendpoint (path-style, as the client addresses a custom endpoint), or AWS in
  its `aws` partition (virtual-hosted when the bucket name allows, path-style with
  forcepathstyle), without dual-stack, accelerate or FIPS endpoints, proxies, an
  AWS config file or AWS_ENDPOINT_URL* variables, any of which the client would honour;
* SigV4 (v4auth), the default.

Writes always go through the client. Errors carry the code and message the client
would give them (errors.S3RequestError), and failures are retried as the client's
"standard" mode with 5 attempts does. A bucket in another region than configured
(S3 answers 301/400 with x-amz-bucket-region) raises WrongRegion: the caller repeats
the read through the client, whose redirector handles it.
"""
from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Optional
from urllib.parse import unquote_plus, urlsplit

from ... import aws_light, keepalive, sigv4
from ...aws_light import CONNECT_TIMEOUT, READ_TIMEOUT, THROTTLING_CODES, TRANSIENT_STATUS
from .client import per_process, requests
from .errors import S3RequestError
from .params import ConnectionParameters, S3Parameters

if TYPE_CHECKING:
    import http.client
    import ssl

# botocore's "standard" retry mode, as client.py configures it (max_attempts 5)
MAX_ATTEMPTS = 5
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
# The retry quota: a token bucket shared by the process's requests, so that an
# outage is not answered with five times the traffic.
QUOTA_CAPACITY, RETRY_COST, THROTTLING_RETRY_COST, NO_RETRY_INCREMENT = 500, 14, 5, 1
# what a request on a kept-alive connection meets when the server had closed it meanwhile
# (http.client.RemoteDisconnected is a ConnectionResetError)
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)

# a bucket the client addresses virtual-hosted: a DNS label, lower case, 3-63 characters
VIRTUAL_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
HOST_LABEL = re.compile(r"^(?!-)[a-zA-Z0-9-]{1,63}(?<!-)$")
# what would make the boto3 client address or reach S3 otherwise than computed here
_CLIENT_ONLY_ENV = (*aws_light.CLIENT_ONLY_ENV, "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT")
_MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}

_CLIENT_READS = object()  # a process's decision that the boto3 client reads this bucket
_readers: dict[tuple[int, tuple[ConnectionParameters, str]], Any] = {}


class WrongRegion(Exception):
    """The bucket lives in another region than configured; the client follows S3's redirect."""


def credentials_for(connection: ConnectionParameters, environ=os.environ) -> Optional[sigv4.Credentials]:
    """Static credentials, where the boto3 session would find them first; None: the provider chain."""
    if connection.access_key and connection.secret_key:
        return sigv4.Credentials(connection.access_key, connection.secret_key, connection.session_token)
    return aws_light.static_credentials(environ)


def usable(connection: ConnectionParameters, environ=os.environ) -> bool:
    """Whether requests built here go where, and as, the boto3 client's would."""
    if not connection.v4auth or connection.dual_stack or connection.accelerate or connection.fips:
        return False
    if connection.endpoint is None:
        if environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL"):
            return False
        # the `aws` partition (s3.<region>.amazonaws.com); others fall back
        if not aws_light.AWS_REGION.match(connection.region or ""):
            return False
    # nor variables or ~/.aws/config the client would honour (addressing style, endpoints, retries)
    return not aws_light.client_configured(environ, _CLIENT_ONLY_ENV)


def reads_for(params: S3Parameters) -> Optional["LightReads"]:
    """The process's light reader for this bucket, or None where the client must read.
    Decided once per process: the environment and ~/.aws/config are not looked at again
    on every read."""
    reader = per_process(_readers, (params.connection, params.bucket), lambda: _reader(params))
    return reader if isinstance(reader, LightReads) else None


def _reader(params: S3Parameters) -> Any:
    connection = params.connection
    credentials = credentials_for(connection) if usable(connection) else None
    if credentials is None:
        return _CLIENT_READS
    return LightReads(connection, params.bucket, credentials)


class _Address:
    """Where requests for the bucket go, and where presigned URLs point, as the client has it."""

    def __init__(self, connection: ConnectionParameters, bucket: str):
        region = connection.region or "us-east-1"
        if connection.endpoint is not None:
            # a configured endpoint is addressed path-style, under its own path
            parts = urlsplit(connection.endpoint)
            self.scheme, netloc, base = parts.scheme, parts.netloc, parts.path.rstrip("/")
            self.host, self.prefix = _host(self.scheme, netloc), f"{base}/{bucket}"
            # URLs keep the port as configured; the signed Host header drops a default one
            self.netloc = self.presign_netloc = netloc
            self.presign_host, self.presign_prefix = self.host, self.prefix
            return
        self.scheme = "https"
        regional = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
        virtual = bool(VIRTUAL_BUCKET.match(bucket)) and not connection.force_path_style
        self.host, self.prefix = (f"{bucket}.{regional}", "") if virtual else (regional, f"/{bucket}")
        # boto3 presigns on the global endpoint, s3.amazonaws.com, unless path-style is
        # asked for or the bucket's name is no host label (has dots): then the regional one
        self.presign_host, self.presign_prefix = self.host, self.prefix
        if not connection.force_path_style and HOST_LABEL.match(bucket):
            self.presign_host, self.presign_prefix = (
                (f"{bucket}.s3.amazonaws.com", "") if virtual else ("s3.amazonaws.com", f"/{bucket}"))
        self.netloc, self.presign_netloc = self.host, self.presign_host


def _host(scheme: str, netloc: str) -> str:
    """The Host header of a URL: its netloc without the scheme's default port."""
    default = {"http": ":80", "https": ":443"}.get(scheme)
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


class LightReads:
    def __init__(self, connection: ConnectionParameters, bucket: str, credentials: sigv4.Credentials):
        import http.client  # here, not at import: only a process that reads S3 needs it

        self.region = connection.region or "us-east-1"
        self.credentials = credentials
        self.address = _Address(connection, bucket)
        self._pool = _Connections(self.address.scheme, self.address.netloc, connection.max_pool_connections,
                                  connection.verify)
        self._errors: tuple[type[BaseException], ...] = (http.client.HTTPException, OSError)
        self._quota = QUOTA_CAPACITY
        self._quota_lock = threading.Lock()
        self.user_agent = f"stratus-light {connection.user_agent or 'stratus'}"

    # -- operations ------------------------------------------------------------------

    def head(self, key: str) -> dict:
        response = self._send("HeadObject", "HEAD", key)
        return self._object(response)

    def get(self, key: str, range_: Optional[str] = None) -> dict:
        response = self._send("GetObject", "GET", key, {"range": range_} if range_ else None, stream=True)
        found = self._object(response)
        found["Body"] = _Body(response, self._errors)
        return found

    def list_pages(self, prefix: str, delimiter: Optional[str] = None, max_keys: int = 1000) -> Iterator[dict]:
        """Pages of ListObjectsV2 as the client returns them (the keys the driver reads)."""
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max_keys)), ("encoding-type", "url")]
        if delimiter:
            query.append(("delimiter", delimiter))
        while True:
            page = _list_page(self._send("ListObjectsV2", "GET", None, query=query).data)
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            query = [q for q in query if q[0] != "continuation-token"] + [("continuation-token", token)]

    def presign(self, method: str, key: str, expires: int) -> str:
        address = self.address
        url = sigv4.presign(method, address.presign_host, address.presign_prefix + "/" + sigv4.encode_path(key),
                            self.credentials, self.region, _now(), expires)
        return f"{address.scheme}://{address.presign_netloc}{url}"

    # -- requests --------------------------------------------------------------------

    def _send(self, operation: str, method: str, key: Optional[str], headers: Optional[dict[str, str]] = None,
              query: Optional[list[tuple[str, str]]] = None, stream: bool = False) -> Any:
        address = self.address
        path = address.prefix + ("/" + sigv4.encode_path(key) if key is not None else "/")
        canonical = sigv4.canonical_query(query or [])
        target = path + (f"?{canonical}" if canonical else "")
        url = f"{address.scheme}://{address.netloc}{target}"
        attempt, cost = 0, 0
        while True:
            attempt += 1
            requests.count(operation, path)  # counted like the client's requests
            signed = sigv4.sign_headers(method, address.host, path, canonical, dict(headers or {}),
                                        self.credentials, self.region, _now())
            signed["User-Agent"] = self.user_agent  # not signed, as the SDKs leave it
            response, failure, throttled, retry_after = None, None, False, None
            try:
                response = self._exchange(method, target, signed, stream)
            except self._errors as exc:
                failure = S3RequestError(f"Could not reach {url}: {exc}")
                retryable = True
            else:
                if response.status < 300 or response.status == 304:
                    self._release(cost)
                    return response
                failure = self._failure(response, method)
                code = failure.code
                if response.headers.get("x-amz-bucket-region", self.region) != self.region \
                        and response.status in (301, 307, 400):
                    raise WrongRegion(response.headers["x-amz-bucket-region"])
                throttled = code in THROTTLING_CODES or response.status == 429
                retryable = throttled or response.status in TRANSIENT_STATUS or code in TRANSIENT_CODES
                retry_after = response.headers.get("x-amz-retry-after")
            if not retryable or attempt >= MAX_ATTEMPTS:
                raise failure
            cost = THROTTLING_RETRY_COST if throttled else RETRY_COST
            if not self._acquire(cost):
                raise failure
            time.sleep(aws_light.backoff(attempt, throttled, retry_after))

    def _exchange(self, method: str, target: str, headers: dict[str, str], stream: bool) -> "_Response":
        """One request on a pooled connection (redirects are answers, not followed). A kept-
        alive connection the server had closed meanwhile fails at once: the request is sent
        again, once, on a new connection. Without stream the body is read whole (`data`)."""
        pool = self._pool
        conn, reused = pool.take()
        while True:
            try:
                conn.request(method, target, headers=headers)
                raw = conn.getresponse()
            except _STALE:
                conn.close()
                if not reused:
                    raise
                conn, reused = pool.new(), False
                continue
            except BaseException:
                conn.close()
                raise
            response = _Response(raw, conn, pool)
            if not stream:
                response.data  # read to the end: the connection is back in the pool
            return response

    def _failure(self, response: "_Response", method: str) -> S3RequestError:
        """The error as botocore parses it: <Code>/<Message> of the XML body; a HEAD (no
        body) gives the status as its code and the reason phrase as its message."""
        body = b"" if method == "HEAD" else _drain(response)
        response.close()
        code = _xml_text(body, "Code") or str(response.status)
        message = _xml_text(body, "Message") if body else (response.reason or "")
        return S3RequestError(f"{code}: {message}", code, message, response.status)

    def _acquire(self, amount: int) -> bool:
        with self._quota_lock:
            if amount > self._quota:
                return False
            self._quota -= amount
            return True

    def _release(self, cost: int) -> None:
        with self._quota_lock:
            self._quota = min(QUOTA_CAPACITY, self._quota + (cost or NO_RETRY_INCREMENT))

    @staticmethod
    def _object(response: "_Response") -> dict:
        headers = response.headers
        meta = {name.lower()[11:]: value for name, value in headers.items()
                if name.lower().startswith("x-amz-meta-")}
        found: dict[str, Any] = {"ContentLength": int(headers.get("content-length", 0)), "Metadata": meta}
        if headers.get("last-modified"):
            found["LastModified"] = _http_date(headers["last-modified"])
        if headers.get("etag"):
            found["ETag"] = headers["etag"]
        return found


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _drain(response: "_Response") -> bytes:
    try:
        return response.data or b""
    except Exception:  # the error body is a courtesy; the status says enough
        return b""


def _xml_text(body: bytes, tag: str) -> str:
    """The text of the first <tag> of an S3 error document (flat, so a pattern reads it)."""
    found = re.search(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), body, re.S)
    return _unescape(found.group(1).decode("utf-8", "replace")) if found else ""


def _unescape(text: str) -> str:
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
            .replace("&apos;", "'").replace("&amp;", "&"))


def _http_date(value: str) -> Optional[datetime]:
    """An IMF-fixdate (`Sat, 05 Dec 2026 00:01:10 GMT`), parsed without email.utils or _strptime."""
    try:
        _, day, month, year, clock, _ = value.split()
        hour, minute, second = clock.split(":")
        return datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc)
    except (ValueError, KeyError):
        return None


def _list_page(body: bytes) -> dict:
    """A ListObjectsV2 result (encoding-type=url) as the client returns it, keys decoded."""
    from xml.etree import ElementTree  # only listings need it

    root = ElementTree.fromstring(body)
    for element in root.iter():  # drop the namespace: {http://s3.amazonaws.com/doc/2006-03-01/}Key
        element.tag = element.tag.rpartition("}")[2]

    def text(parent: Any, tag: str) -> Optional[str]:
        found = parent.find(tag)
        return None if found is None else (found.text or "")

    contents = []
    for item in root.findall("Contents"):
        entry: dict[str, Any] = {"Key": unquote_plus(text(item, "Key") or ""), "Size": int(text(item, "Size") or 0)}
        modified = text(item, "LastModified")
        if modified:
            entry["LastModified"] = datetime.fromisoformat(modified.replace("Z", "+00:00"))
        contents.append(entry)
    page: dict[str, Any] = {
        "KeyCount": int(text(root, "KeyCount") or len(contents)),
        "IsTruncated": text(root, "IsTruncated") == "true",
        "CommonPrefixes": [{"Prefix": unquote_plus(text(p, "Prefix") or "")} for p in root.findall("CommonPrefixes")],
    }
    if contents:
        page["Contents"] = contents
    token = text(root, "NextContinuationToken")
    if token:
        page["NextContinuationToken"] = token
    return page


class _Connections:
    """Keep-alive connections to the reader's one endpoint, for any thread. At most `size`
    are kept idle (the client's max_pool_connections), the last used first; more may be
    open at once and are closed when done. Only a connection whose response was read to
    the end comes back; one that failed or was left mid-response is closed."""

    def __init__(self, scheme: str, netloc: str, size: int, verify: bool):
        import http.client

        self._http = http.client
        self._https, self._netloc, self._size, self._verify = scheme == "https", netloc, size, verify
        self._context: Optional["ssl.SSLContext"] = None
        self._idle: list["http.client.HTTPConnection"] = []
        self._lock = threading.Lock()

    def take(self) -> tuple["http.client.HTTPConnection", bool]:
        """An idle connection (True: reused) that the server has not closed, else a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.new(), False
            if not keepalive.closed(conn.sock):
                return conn, True
            conn.close()

    def new(self) -> "http.client.HTTPConnection":
        """A connection, connected (and TLS handshaken) within CONNECT_TIMEOUT."""
        conn: http.client.HTTPConnection
        if self._https:
            conn = self._http.HTTPSConnection(self._netloc, timeout=CONNECT_TIMEOUT, context=self._tls())
        else:
            conn = self._http.HTTPConnection(self._netloc, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
            conn.sock.settimeout(READ_TIMEOUT)
        except BaseException:
            conn.close()
            raise
        return conn

    def give(self, conn: "http.client.HTTPConnection") -> None:
        """Back to the pool, unless the server ends the connection (conn.sock None) or the pool is full."""
        if conn.sock is not None:
            with self._lock:
                if len(self._idle) < self._size:
                    self._idle.append(conn)
                    return
        conn.close()

    def incomplete(self, remaining: int) -> Exception:
        return self._http.IncompleteRead(b"", remaining)

    def _tls(self) -> "ssl.SSLContext":
        """One context for the reader's connections, made at the first: as botocore
        verifies (aws_light.tls_context); with verify off, neither CAs nor host names."""
        with self._lock:
            if self._context is None:
                if self._verify:
                    self._context = aws_light.tls_context()
                else:
                    import ssl

                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    self._context = context
            return self._context


class _Response:
    """A response on one of the pool's connections: status, reason and headers, its body
    read whole (`data`) or streamed (read). The connection goes back to the pool once the
    body was read to the end; close() before that, or a failed read, closes it."""

    def __init__(self, raw: "http.client.HTTPResponse", conn: "http.client.HTTPConnection", pool: _Connections):
        self.status, self.reason, self.headers = raw.status, raw.reason, raw.headers
        self._raw: Optional["http.client.HTTPResponse"] = raw
        self._conn, self._pool = conn, pool
        self._data: Optional[bytes] = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = self.read()
        return self._data

    def read(self, amount: Optional[int] = None) -> bytes:
        raw = self._raw
        if raw is None:
            return b""
        try:
            data = raw.read(amount)
            if amount and not data and raw.length:  # http.client says b"" when the server hung up early
                raise self._pool.incomplete(raw.length)
        except BaseException:
            self._discard()
            raise
        if raw.isclosed():  # read to the end
            self._done()
        return data

    def close(self) -> None:
        raw = self._raw
        if raw is None:
            return
        if not raw.isclosed() and raw.length == 0:  # nothing left (a HEAD, an empty body)
            try:
                raw.read()
            except Exception:
                pass
        if raw.isclosed():
            self._done()
        else:
            self._discard()

    def _done(self) -> None:
        self._raw = None
        self._pool.give(self._conn)

    def _discard(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()
        self._conn.close()


class _Body:
    """An object's bytes as they arrive; transport failures become S3RequestError."""

    def __init__(self, response: _Response, errors: tuple[type[BaseException], ...]):
        self._response = response
        self._errors = errors

    def read(self, amount: Optional[int] = None) -> bytes:
        try:
            return self._response.read(amount)
        except self._errors as exc:
            raise S3RequestError(f"reading the object: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._response.close()  # with bytes unread, the connection cannot serve another request
