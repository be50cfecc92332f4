"""Bearer-token access control: the Docker/OCI token flow with JWTs from a trusted issuer.

A client without a token gets 401 with `WWW-Authenticate: Bearer realm=...,service=...,
scope="repository:<name>:pull,push"`, asks the realm (the token server) for a token
with that scope, and retries with `Authorization: Bearer <jwt>`. The JWT must be
signed (RS*, ES*, PS*) by a key the registry trusts — a certificate chain in the
header (`x5c`) that leads to `rootcertbundle`, or a `kid` naming a key of the
`jwks` file or of a root certificate — and its claims must say: `iss` is `issuer`,
`aud` includes `service`, the time is within `nbf`..`exp` (60 s leeway), and the
`access` list covers what the request needs. A token that lacks an action gets
401 with `error="insufficient_scope"`, an unusable one `error="invalid_token"`.

Signature and claim checks are PyJWT's; what is ours is choosing the key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, NamedTuple, Optional

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..api.app import Access
from ..api.http import Request, Response
from ..config import ConfigError
from .challenge import bearer_challenge, unauthorized
from .params import Parameters

log = logging.getLogger("stratus.auth.token")

LEEWAY = 60  # seconds of clock skew allowed on exp and nbf, as the reference registry
# Never `none`, never HMAC (a public key must not become a shared secret).
SUPPORTED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
DEFAULT_ALGORITHMS = SUPPORTED_ALGORITHMS
_MAX_TOKEN = 32 * 1024
_MAX_CHAIN = 8


class InvalidToken(Exception):
    """Why a token was refused; logged at debug level, never sent."""


# ------------------------------------------------------------------ trusted keys


def _spki(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def libtrust_key_id(public_key: Any) -> str:
    """The `kid` older token servers (docker_auth, GitLab) put in their tokens:
    base32 of the first 240 bits of SHA-256 over the DER public key, in groups of 4."""
    text = base64.b32encode(hashlib.sha256(_spki(public_key)).digest()[:30]).decode()
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rfc7638_thumbprint(public_key: Any) -> Optional[str]:
    """The JWK thumbprint (RFC 7638) newer registries use as the `kid` of a root certificate's key."""
    if isinstance(public_key, rsa.RSAPublicKey):
        rsa_numbers = public_key.public_numbers()
        members = {
            "e": _b64url(rsa_numbers.e.to_bytes((rsa_numbers.e.bit_length() + 7) // 8, "big")),
            "kty": "RSA",
            "n": _b64url(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
        }
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name)
        if curve is None:
            return None
        size = (public_key.curve.key_size + 7) // 8
        ec_numbers = public_key.public_numbers()
        members = {
            "crv": curve,
            "kty": "EC",
            "x": _b64url(ec_numbers.x.to_bytes(size, "big")),
            "y": _b64url(ec_numbers.y.to_bytes(size, "big")),
        }
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    else:
        return None
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


class TrustedKeys:
    """The root certificates and the keys a `kid` may name."""

    def __init__(self, roots: list[x509.Certificate], jwks: dict[str, tuple[Any, Optional[str]]]):
        self.roots = roots
        self._root_der = {root.public_bytes(serialization.Encoding.DER) for root in roots}
        # kid -> (public key, the algorithm the JWK is restricted to, if any)
        self.by_kid: dict[str, tuple[Any, Optional[str]]] = {}
        for root in roots:
            key = root.public_key()
            for kid in (rfc7638_thumbprint(key), libtrust_key_id(key)):
                if kid:
                    self.by_kid[kid] = (key, None)
        self.by_kid.update(jwks)

    def key_for(self, header: dict) -> tuple[Any, Optional[str], Optional[datetime]]:
        """(public key, the algorithm it is restricted to, when its trust ends if it does)."""
        x5c = header.get("x5c")
        if x5c is not None:
            return self._verify_chain(x5c)
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self.by_kid:
            return (*self.by_kid[kid], None)
        raise InvalidToken("token is signed by an untrusted key" if kid else "token names no signing key")

    def _verify_chain(self, x5c: Any) -> tuple[Any, None, datetime]:
        """The leaf's public key, once the chain in `x5c` leads to a root certificate,
        and the end of the shortest validity period along the way."""
        if not isinstance(x5c, list) or not x5c or len(x5c) > _MAX_CHAIN or not all(isinstance(c, str) for c in x5c):
            raise InvalidToken("malformed x5c")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken(f"unparsable x5c certificate: {exc}") from None
        now = datetime.now(timezone.utc)
        for cert in chain:
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise InvalidToken("x5c certificate outside its validity period")
        current, intermediates = chain[0], chain[1:]
        trusted_until = min(cert.not_valid_after_utc for cert in chain)
        for _ in range(_MAX_CHAIN + 1):
            if current.public_bytes(serialization.Encoding.DER) in self._root_der:
                return chain[0].public_key(), None, trusted_until
            root = self._issuer_among(current, self.roots)
            if root is not None:
                if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
                    raise InvalidToken("root certificate outside its validity period")
                return chain[0].public_key(), None, min(trusted_until, root.not_valid_after_utc)
            issuer = self._issuer_among(current, intermediates)
            if issuer is None:
                raise InvalidToken("x5c chain does not lead to a trusted root certificate")
            intermediates = [c for c in intermediates if c is not issuer]
            current = issuer
        raise InvalidToken("x5c chain too long")

    @staticmethod
    def _issuer_among(cert: x509.Certificate, candidates: list[x509.Certificate]) -> Optional[x509.Certificate]:
        for candidate in candidates:
            if candidate.subject != cert.issuer or not _is_ca(candidate):
                continue
            try:
                cert.verify_directly_issued_by(candidate)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return candidate
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def load_root_certificates(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(
            f"auth.token.rootcertbundle: cannot read {path!r}: {exc.strerror}", key="auth.token.rootcertbundle"
        ) from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(
            f"auth.token.rootcertbundle: {path!r} is not a PEM certificate bundle ({exc})",
            key="auth.token.rootcertbundle",
        ) from None


def load_jwks(path: str) -> dict[str, tuple[Any, Optional[str]]]:
    key = "auth.token.jwks"
    try:
        with open(path, "rb") as f:
            document = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc.strerror}", key=key) from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {path!r} is not JSON ({exc})", key=key) from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(f"{key}: {path!r} is not a JWK set (an object with 'keys')", key=key)
    keys: dict[str, tuple[Any, Optional[str]]] = {}
    for number, member in enumerate(document["keys"]):
        if not isinstance(member, dict) or not member.get("kid"):
            raise ConfigError(f"{key}: key {number} of {path!r} has no 'kid'", key=key)
        if "d" in member:
            raise ConfigError(f"{key}: key {member['kid']!r} is a private key; give the public key", key=key)
        try:
            jwk = jwt.PyJWK(member)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ConfigError(f"{key}: key {member['kid']!r} is unusable: {exc}", key=key) from None
        keys[member["kid"]] = (jwk.key, member.get("alg"))
    return keys


# ------------------------------------------------------------------- the token


Granted = dict[tuple[str, str], set[str]]  # (type, name) -> the actions the token grants


def _granted(claims: dict) -> Granted:
    access = claims.get("access", [])
    if not isinstance(access, list):
        raise InvalidToken("access claim is not a list")
    granted: Granted = {}
    for entry in access:
        if not isinstance(entry, dict):
            raise InvalidToken("access entry is not an object")
        type_, name, actions = entry.get("type"), entry.get("name"), entry.get("actions") or []
        if not isinstance(type_, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("malformed access entry")
        granted.setdefault((type_, name), set()).update(a for a in actions if isinstance(a, str))
    return granted


def covers(granted: Granted, access: Access) -> bool:
    actions = granted.get((access.type, access.name), set())
    return "*" in actions or access.action in actions


class Accepted(NamedTuple):
    claims: dict
    granted: Granted  # the access claim, read once


class _AcceptedTokens:
    """Tokens this process accepted, each until its `exp` (or its certificates) runs out.

    A client sends the same token with every request of a pull or push; verifying it
    again (parsing the x5c chain, checking its signatures and the token's) cost ~0.5 ms,
    several times the rest of a manifest GET. Keyed by the token's SHA-256, so only the
    exact bytes that were verified hit; `nbf` and the end of validity are checked at
    every use; refused tokens are never kept. The trust configuration is fixed for the
    life of the process, so nothing else can change the outcome.
    """

    SIZE = 4096

    def __init__(self) -> None:
        self._entries: OrderedDict[bytes, tuple[Accepted, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, now: float) -> Optional[Accepted]:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            accepted, valid_from, valid_until = entry
            if not valid_from <= now < valid_until:  # PyJWT refuses exp <= now - leeway
                if now >= valid_until:
                    del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return accepted

    def put(self, token: str, accepted: Accepted, valid_from: float, valid_until: float) -> None:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            self._entries[key] = (accepted, valid_from, valid_until)
            self._entries.move_to_end(key)
            while len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)


def _number(claims: dict, name: str, default: float) -> float:
    value = claims.get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


class TokenAccessController:
    def __init__(self, realm: str, service: str, issuer: str, keys: TrustedKeys, algorithms: list[str]):
        self.realm = realm
        self.service = service
        self.issuer = issuer
        self.keys = keys
        self.algorithms = algorithms
        self._accepted = _AcceptedTokens()

    def verify(self, token: str) -> dict:
        """The claims of a token this registry accepts; InvalidToken otherwise."""
        return self.accept(token).claims

    def accept(self, token: str) -> Accepted:
        """The claims and granted access of a token this registry accepts; InvalidToken otherwise."""
        if len(token) > _MAX_TOKEN:
            raise InvalidToken("token too large")
        now = time.time()
        accepted = self._accepted.get(token, now)
        if accepted is not None:
            return accepted
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken(f"signing algorithm {str(alg)[:20]!r} is not accepted")
        key, restricted_to, trusted_until = self.keys.key_for(header)
        if restricted_to is not None and restricted_to != alg:
            raise InvalidToken(f"key is for {restricted_to}, token uses {alg}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.service,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        accepted = Accepted(claims, _granted(claims))
        # the window PyJWT just checked, and no further than the signing certificates
        valid_until = _number(claims, "exp", now) + LEEWAY
        if trusted_until is not None:
            valid_until = min(valid_until, trusted_until.timestamp())
        self._accepted.put(token, accepted, _number(claims, "nbf", now) - LEEWAY, valid_until)
        return accepted

    def authorize(self, request: Request, access: list[Access]) -> Optional[Response]:
        scheme, _, token = (request.headers.get("Authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return unauthorized(bearer_challenge(self.realm, self.service, access), access)
        try:
            granted = self.accept(token).granted
        except InvalidToken as exc:
            log.debug("bearer token refused: %s", exc)
            return unauthorized(
                bearer_challenge(self.realm, self.service, access, "invalid_token"), access, "invalid token"
            )
        if not all(covers(granted, item) for item in access if not item.optional):
            return unauthorized(
                bearer_challenge(self.realm, self.service, access, "insufficient_scope"),
                access,
                "insufficient scope: the token does not grant this access",
            )
        return None


def from_parameters(params: Parameters) -> TokenAccessController:
    realm = params.string("realm")
    service = params.string("service")
    issuer = params.string("issuer")
    bundle = params.string("rootcertbundle", None)
    jwks_path = params.string("jwks", None)
    algorithms = params.strings("signingalgorithms", DEFAULT_ALGORITHMS)
    for alg in algorithms:
        if alg not in SUPPORTED_ALGORITHMS:
            raise params.fail("signingalgorithms", f"a list of {', '.join(SUPPORTED_ALGORITHMS)}", alg)
    roots = load_root_certificates(bundle) if bundle else []
    jwks = load_jwks(jwks_path) if jwks_path else {}
    if not roots and not jwks:
        raise ConfigError(
            "auth.token: expected 'rootcertbundle' (PEM certificates) or 'jwks' (a JWK set file) "
            "with at least one key the token issuer signs with",
            key="auth.token.rootcertbundle",
        )
    return TokenAccessController(realm, service, issuer, TrustedKeys(roots, jwks), algorithms)
