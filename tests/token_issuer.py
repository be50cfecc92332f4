"""A token issuer for the tests: keys generated per run, tokens as a real token server makes them.

`TokenIssuer` holds a root CA, an intermediate CA and a signing certificate (for
`x5c` chains), plus a separate key published in a JWK set (for `kid`). `serve()`
runs the Docker token endpoint (`GET /token?service=...&scope=...` with Basic
credentials) on a loopback port, granting each user what its policy allows.
"""
from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, urlparse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .servers import serving

SERVICE = "stratus-test"
ISSUER = "stratus-test-issuer"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: Optional[x509.Certificate], issuer_key, ca: bool, days: int = 1):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass
class Signer:
    """One signing key and how a token names it."""

    key: Any
    alg: str
    header: dict


@dataclass
class TokenIssuer:
    service: str = SERVICE
    issuer: str = ISSUER
    # user -> (password, {repository name or "*": actions}); "catalog" grants registry:catalog:*
    users: dict[str, tuple[str, dict[str, list[str]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _certificate("stratus test root", self.root_key, None, self.root_key, ca=True)
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _certificate(
            "stratus test intermediate", self.intermediate_key, self.root, self.root_key, ca=True
        )
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = _certificate("stratus test token signer", self.leaf_key, self.intermediate,
                                 self.intermediate_key, ca=False)
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_kid = "stratus-test-rsa"
        # an issuer nobody trusts, for tokens that must be refused
        self.rogue_key = ec.generate_private_key(ec.SECP256R1())
        self.rogue_root = _certificate("rogue root", self.rogue_key, None, self.rogue_key, ca=True)

    # -- what the registry is configured with ---------------------------------------

    def write_trust(self, directory: Path) -> tuple[Path, Path]:
        """(root certificate bundle, JWK set) files for auth.token.rootcertbundle / jwks."""
        bundle = directory / "root.pem"
        bundle.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        jwk.update(kid=self.jwks_kid, use="sig", alg="RS256")
        jwks = directory / "jwks.json"
        jwks.write_text(json.dumps({"keys": [jwk]}))
        return bundle, jwks

    def auth_config(self, directory: Path, realm: str = "http://127.0.0.1:1/token", **extra) -> dict:
        bundle, jwks = self.write_trust(directory)
        return {"token": {"realm": realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(bundle), "jwks": str(jwks), **extra}}

    # -- signers ---------------------------------------------------------------------

    def x5c(self) -> Signer:
        """ES256 with the chain leaf -> intermediate in the header (root is trusted)."""
        return Signer(self.leaf_key, "ES256", {"x5c": [_der_b64(self.leaf), _der_b64(self.intermediate)]})

    def jwks(self) -> Signer:
        """RS256 with a `kid` naming the key of the JWK set."""
        return Signer(self.rsa_key, "RS256", {"kid": self.jwks_kid})

    def rogue(self) -> Signer:
        """A self-made chain that leads to no trusted root."""
        return Signer(self.rogue_key, "ES256", {"x5c": [_der_b64(self.rogue_root)]})

    # -- tokens ----------------------------------------------------------------------

    def claims(self, access: list[dict], subject: str = "tester", lifetime: int = 300, **overrides) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + lifetime, "nbf": now - 1, "iat": now - 1,
            "jti": uuid.uuid4().hex, "access": access,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, access: list[dict], signer: Optional[Signer] = None, **overrides) -> str:
        signer = signer or self.x5c()
        return jwt.encode(self.claims(access, **overrides), signer.key, algorithm=signer.alg,
                          headers=signer.header)

    # -- the token endpoint ------------------------------------------------------------

    def grant(self, user: Optional[str], scopes: list[str]) -> list[dict]:
        """The intersection of the requested scopes and what the user may do (the spec's rule)."""
        policy = self.users[user][1] if user in self.users else {}
        granted = []
        for scope in scopes:
            for item in scope.split(" "):
                parts = item.split(":")
                if len(parts) < 3:
                    continue
                type_, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
                if type_ == "registry" and name == "catalog":
                    allowed = ["*"] if "catalog" in policy else []
                else:
                    allowed_actions = policy.get(name, policy.get("*", []))
                    allowed = [a for a in actions if a in allowed_actions]
                if allowed:
                    granted.append({"type": type_, "name": name, "actions": allowed})
        return granted

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run the token endpoint on a loopback port; yields its realm URL."""
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                user = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if name not in issuer.users or issuer.users[name][0] != password:
                        self._send(401, {"details": "invalid credentials"})
                        return
                    user = name
                if query.get("service", [None])[0] != issuer.service:
                    self._send(400, {"details": "unknown service"})
                    return
                token = issuer.token(issuer.grant(user, query.get("scope", [])), subject=user or "")
                issued = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                self._send(200, {"token": token, "access_token": token, "expires_in": 300, "issued_at": issued})

            def _send(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
            yield f"http://127.0.0.1:{port}/token"
