"""htpasswd access control: HTTP Basic credentials checked against bcrypt entries.

Configured as the reference registry does it (`auth.htpasswd: {realm, path}`), and,
for functions that have no file system to ship a file on, from an environment
variable (`auth.htpasswd.env`) or an S3 object (`path: s3://bucket/key`).

Any user in the file may do anything: htpasswd authenticates, it does not authorize
per repository (use token auth for that). Only bcrypt entries (`htpasswd -B`) are
accepted; others are ignored with a warning. A wrong password and an unknown user
cost the same: an unknown user is checked against a dummy hash of the same cost,
and bcrypt compares in constant time.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from typing import Any, Optional, Protocol

import bcrypt

from ..api.app import Access
from ..api.http import Request, Response
from ..config import ConfigError
from .challenge import basic_challenge, unauthorized
from .credentials import basic_credentials
from .params import Parameters

log = logging.getLogger("stratus.auth.htpasswd")

_BCRYPT = re.compile(rb"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
# bcrypt reads at most 72 bytes of a password (htpasswd truncates likewise)
_BCRYPT_MAX_PASSWORD = 72
_DEFAULT_COST = 10
# Verified credentials are remembered briefly so a push (hundreds of requests) does not
# pay a bcrypt per request; failures are never remembered, so guessing stays slow.
_VERIFIED_TTL = 60.0
_VERIFIED_MAX = 1024


# ---------------------------------------------------------------------- the file


class Htpasswd:
    """Parsed bcrypt entries, user -> hash."""

    def __init__(self, entries: dict[str, bytes]):
        self.entries = entries
        costs = collections.Counter(_cost(h) for h in entries.values())
        cost = costs.most_common(1)[0][0] if costs else _DEFAULT_COST
        # An unknown user is checked against this, so it takes as long as a known one.
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))

    @classmethod
    def parse(cls, text: bytes, origin: str) -> "Htpasswd":
        entries: dict[str, bytes] = {}
        lines = text.splitlines()
        if len(lines) == 1 and b" " in lines[0].strip():
            # a one-line environment variable may hold entries separated by spaces
            lines = lines[0].split()
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            user, colon, hashed = line.partition(b":")
            if not colon or not user:
                log.warning("%s: line %d is not 'user:hash'; ignored", origin, number)
                continue
            try:
                name = user.decode("utf-8")
            except UnicodeDecodeError:
                log.warning("%s: line %d: user name is not UTF-8; ignored", origin, number)
                continue
            if not _BCRYPT.match(hashed):
                log.warning(
                    "%s: line %d: the entry for %r is not bcrypt (create it with `htpasswd -B`); ignored",
                    origin, number, name,
                )
                continue
            entries[name] = hashed
        if not entries:
            log.warning("%s holds no usable bcrypt entries: nobody can log in", origin)
        return cls(entries)

    def check(self, username: str, password: bytes) -> bool:
        entry = self.entries.get(username)
        try:
            matched = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], entry if entry is not None else self._dummy)
        except ValueError:  # e.g. a NUL byte in the password: never a match
            matched = False
        return matched and entry is not None


def _cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a bcrypt hash."""
    m = _BCRYPT.match(hashed)
    if m is None:
        raise ValueError("not a bcrypt hash")
    return int(m.group(1))


# ------------------------------------------------------------- where it comes from


class Source(Protocol):
    origin: str

    def poll(self) -> Optional[bytes]:
        """The file's contents when they changed since the last poll (or on the first), else None."""
        ...


class FileSource:
    """A file on disk, re-read when its modification time or size changes (as registry:2 does)."""

    def __init__(self, path: str):
        self.path = path
        self.origin = path
        self._seen: Optional[tuple[int, int]] = None

    def poll(self) -> Optional[bytes]:
        try:
            info = os.stat(self.path)
        except OSError:
            if self._seen is None:
                raise
            return None  # gone meanwhile: keep serving the last good copy
        seen = (info.st_mtime_ns, info.st_size)
        if seen == self._seen:
            return None
        with open(self.path, "rb") as f:
            text = f.read()
        self._seen = seen
        return text


class EnvironmentSource:
    """An environment variable holding the entries (one per line, or separated by spaces)."""

    def __init__(self, variable: str):
        self.variable = variable
        self.origin = f"${variable}"
        self._read = False

    def poll(self) -> Optional[bytes]:
        if self._read:
            return None
        value = os.environ.get(self.variable)
        if value is None:
            raise KeyError(self.variable)
        self._read = True
        return value.encode("utf-8")


class S3Source:
    """An S3 object, fetched on first use and re-checked at most every `refresh` seconds."""

    def __init__(self, url: str, refresh: float):
        bucket, _, key = url[len("s3://"):].partition("/")
        self.bucket, self.key, self.refresh = bucket, key, refresh
        self.origin = url
        self._etag: Optional[str] = None
        self._checked = 0.0
        self._client: Any = None  # a boto3 S3 client, made on first use

    def poll(self) -> Optional[bytes]:
        now = time.monotonic()
        if self._etag is not None and now - self._checked < self.refresh:
            return None
        if self._client is None:
            import boto3  # only deployments that keep the file in S3 pay for boto3

            self._client = boto3.client("s3")
        from botocore.exceptions import ClientError

        kwargs = {"Bucket": self.bucket, "Key": self.key}
        if self._etag is not None:
            kwargs["IfNoneMatch"] = self._etag
        try:
            obj = self._client.get_object(**kwargs)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 304:
                self._checked = now
                return None
            if self._etag is not None:  # keep the last good copy, try again later
                log.warning("could not re-read %s: %s", self.origin, exc.response.get("Error", {}).get("Code"))
                self._checked = now
                return None
            raise
        self._etag = obj.get("ETag") or ""
        self._checked = now
        return obj["Body"].read()


# ------------------------------------------------------------------ the controller


class HtpasswdAccessController:
    def __init__(self, realm: str, source: Source):
        self.realm = realm
        self.source = source
        self._users: Optional[Htpasswd] = None
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[bytes, float]] = {}

    def users(self) -> Htpasswd:
        with self._lock:
            text = self.source.poll()
            if text is not None:
                self._users = Htpasswd.parse(text, self.source.origin)
                self._verified.clear()
            assert self._users is not None
            return self._users

    def authenticate(self, username: str, password: bytes) -> bool:
        users = self.users()
        entry = users.entries.get(username)
        key = hmac.new(self._key, username.encode() + b"\0" + password, hashlib.sha256).digest()
        remembered = self._verified.get(key)
        if remembered is not None and entry is not None and remembered[1] > time.monotonic():
            if hmac.compare_digest(remembered[0], entry):
                return True
        if not users.check(username, password):
            return False
        with self._lock:
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[key] = (users.entries[username], time.monotonic() + _VERIFIED_TTL)
        return True

    def authorize(self, request: Request, access: list[Access]) -> Optional[Response]:
        credentials = basic_credentials(request.headers.get("Authorization"))
        if credentials is None or not credentials[0]:
            return unauthorized(basic_challenge(self.realm), access)
        if not self.authenticate(*credentials):
            # the user name is not logged: people type passwords into it
            log.info("htpasswd authentication failed for a request from %s", request.remote_addr or "unknown")
            return unauthorized(basic_challenge(self.realm), access, "invalid username or password")
        return None


def from_parameters(params: Parameters) -> HtpasswdAccessController:
    realm = params.string("realm", "Stratus Registry")
    path = params.string("path", None)
    variable = params.string("env", None)
    if (path is None) == (variable is None):
        raise ConfigError(
            "auth.htpasswd: expected exactly one of 'path' (a file, or s3://bucket/key) "
            "and 'env' (the name of an environment variable holding the entries)",
            key="auth.htpasswd.path",
        )
    refresh = params.number("refresh", 60.0)
    source: Source
    if variable is not None:
        source = EnvironmentSource(variable)
    else:
        assert path is not None  # exactly one of the two, as checked above
        if path.startswith("s3://"):
            if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$", path):
                raise params.fail("path", "s3://<bucket>/<key>", path)
            source = S3Source(path, refresh)
        else:
            source = FileSource(path)
    controller = HtpasswdAccessController(realm, source)
    if not isinstance(source, S3Source):  # fail at start-up, not at the first push
        try:
            controller.users()
        except OSError as exc:
            raise ConfigError(
                f"auth.htpasswd.path: cannot read {path!r}: {exc.strerror}", key="auth.htpasswd.path"
            ) from None
        except KeyError:
            raise ConfigError(
                f"auth.htpasswd.env: environment variable {variable} is not set", key="auth.htpasswd.env"
            ) from None
    return controller
