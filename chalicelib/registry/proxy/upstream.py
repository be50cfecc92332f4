"""The upstream registry as the pull-through cache talks to it: one urllib3 pool per
upstream, and the authentication a client meets there.

Authentication follows what docker and skopeo do: a request goes out with what worked
before for its scope; a 401 names the scheme in WWW-Authenticate. Basic is answered with
the configured credentials; Bearer by asking the challenge's realm for a token for
`repository:<name>:pull` (with the credentials as Basic, or anonymously without them),
kept per scope until shortly before it expires.

The password may be kept out of the configuration (`passwordparameter`: an SSM
parameter or a Secrets Manager secret, as aws_runtime reads http.secret): it is read
once per process when the upstream first asks for credentials, so a cold start that
never meets a challenge imports no boto3; a refusal of it reads it again next time
(it was rotated).
"""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Optional
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3

from ... import aws_runtime

log = logging.getLogger("stratus.proxy")

# A token is renewed this long before the expiry its issuer announced, so that one
# sent just before the end is not refused in flight.
TOKEN_MARGIN = 10.0
DEFAULT_TOKEN_LIFETIME = 60.0  # the token spec's default when expires_in is absent
MAX_REDIRECTS = 5
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class UpstreamUnavailable(Exception):
    """The upstream did not answer (refused, timed out, reset) or answered 5xx/429."""


class UpstreamStatusError(Exception):
    """The upstream answered with a status the caller did not expect."""

    def __init__(self, status: int, what: str):
        super().__init__(f"upstream answered {status} for {what}")
        self.status = status


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" | "bearer"
    params: Mapping[str, str]


def parse_challenge(header: Optional[str]) -> Optional[Challenge]:
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


class Upstream:
    def __init__(self, url: str, username: Optional[str] = None, password: Optional[str] = None,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0, pool_size: int = 16,
                 password_parameter: Optional[str] = None):
        self.url = url.rstrip("/")
        self._username = username
        self._password = password
        self._password_parameter = password_parameter if username is not None and password is None else None
        self.http = urllib3.PoolManager(
            num_pools=8, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )
        self._lock = threading.Lock()
        self._challenge: Optional[Challenge] = None  # what the upstream asked for last
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, renew after)

    @property
    def has_credentials(self) -> bool:
        return self._username is not None and (self._password is not None or self._password_parameter is not None)

    @property
    def _basic(self) -> Optional[str]:
        """The Basic credentials, the password read from its parameter when first needed."""
        if not self.has_credentials:
            return None
        password = self._password
        if password is None:
            assert self._password_parameter is not None
            try:
                password = aws_runtime.fetch_secret(self._password_parameter)
            except Exception as exc:  # unreadable (no grant, deleted): as an upstream that cannot be asked
                raise UpstreamUnavailable(f"the upstream password ({self._password_parameter}) could not be read: "
                                          f"{type(exc).__name__}") from exc
        return "Basic " + base64.b64encode(f"{self._username}:{password}".encode()).decode()

    def _refused(self) -> None:
        """Our credentials were refused: a parameter's password is read again next time
        (it may have been rotated since this process read it)."""
        if self._password_parameter is not None:
            aws_runtime.forget_secret(self._password_parameter)

    @property
    def anonymous(self) -> bool:
        """Whether the upstream has asked for no credentials so far: its URLs open to anyone."""
        return self._challenge is None

    # -- requests ----------------------------------------------------------------------

    def request(self, method: str, path: str, scope: str, headers: Optional[Mapping[str, str]] = None,
                stream: bool = False, follow_redirects: bool = True) -> urllib3.BaseHTTPResponse:
        """The upstream's response to method path, authenticated for scope.

        UpstreamUnavailable when it cannot be reached or answers 5xx/429; any other
        status (a 401 no credentials of ours answer among them: Docker Hub says 401 for
        a repository that does not exist) is the caller's to read. With stream the body
        is left unread."""
        for attempt in range(2):
            sent = dict(headers or {})
            authorization = self._authorization(scope)
            if authorization:
                sent["Authorization"] = authorization
            response = self._send(method, self.url + path, sent, stream, follow_redirects)
            if response.status == 401 and attempt == 1 and authorization:
                self._refused()
            if response.status != 401 or attempt == 1:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            if challenge is None or not self._answer(challenge, scope):
                break  # the caller reads a refusal we cannot answer like a 404
            response.drain_conn()
            response.release_conn()
        if response.status >= 500 or response.status == 429:
            response.drain_conn()
            response.release_conn()
            raise UpstreamUnavailable(f"{method} {path}: upstream answered {response.status}")
        return response

    def _send(self, method: str, url: str, headers: dict, stream: bool,
              follow_redirects: bool) -> urllib3.BaseHTTPResponse:
        origin = urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.http.request(method, url, headers=headers, preload_content=not stream,
                                             redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                raise UpstreamUnavailable(f"{method} {url}: {exc}") from exc
            location = response.headers.get("Location")
            if not (follow_redirects and response.status in (301, 302, 303, 307, 308) and location):
                return response
            response.drain_conn()
            response.release_conn()
            url = urljoin(url, location)
            if urlsplit(url).netloc != origin:
                # a blob store's presigned URL carries its own authorization, and ours
                # must not leak to another host
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        raise UpstreamUnavailable(f"{method} {url}: more than {MAX_REDIRECTS} redirects")

    # -- authentication ------------------------------------------------------------------

    def _authorization(self, scope: str) -> Optional[str]:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic
        if challenge.scheme == "bearer":
            token = self._token(challenge, scope)
            return f"Bearer {token}" if token else None
        return None

    def _answer(self, challenge: Challenge, scope: str) -> bool:
        """Whether a retry can carry something new for this challenge."""
        if challenge.scheme == "basic":
            self._challenge = challenge
            return self.has_credentials
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            with self._lock:
                self._challenge = challenge
                self._tokens.pop(scope, None)  # refused: whatever we held is stale
            return self._token(challenge, scope) is not None
        return False

    def _token(self, challenge: Challenge, scope: str) -> Optional[str]:
        with self._lock:
            held = self._tokens.get(scope)
            if held is not None and held[1] > time.monotonic():
                return held[0]
            token, lifetime = self._fetch_token(challenge, scope)
            if token is not None:
                self._tokens[scope] = (token, time.monotonic() + max(0.0, lifetime - TOKEN_MARGIN))
            return token

    def _fetch_token(self, challenge: Challenge, scope: str) -> tuple[Optional[str], float]:
        realm = challenge.params["realm"]
        query = {"scope": scope}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        headers = {"Authorization": self._basic} if self._basic else {}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        try:
            response = self.http.request("GET", url, headers=headers, redirect=True)
        except urllib3.exceptions.HTTPError as exc:
            raise UpstreamUnavailable(f"token from {realm}: {exc}") from exc
        if response.status >= 500:
            raise UpstreamUnavailable(f"token from {realm}: {response.status}")
        if response.status != 200:
            log.warning("upstream token realm %s refused %s with %s", realm, scope, response.status)
            if response.status == 401 and headers:
                self._refused()
            return None, 0.0
        try:
            doc = json.loads(response.data)
            token = doc.get("token") or doc.get("access_token")
            lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            log.warning("upstream token realm %s answered no token", realm)
            return None, 0.0
        return (token if isinstance(token, str) and token else None), lifetime
