"""Both registries behind bearer-token auth, for the request rate with a token.

Every request of a pull carries the client's token; the registry must find it
signed through a certificate chain it trusts and read its claims. The tokens are
made as a token server makes them (tests/token_issuer.py: an ES256 key whose
certificate chain, leaf and intermediate, is in the JWT's `x5c` header, under a
root certificate both registries are given as `rootcertbundle`).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from tests.token_issuer import TokenIssuer

from . import servers

REALM = "https://auth.bench.invalid/token"
LIFETIME = 3600  # seconds: outlives the run


class BenchTokens:
    def __init__(self, workdir: Path):
        self.issuer = TokenIssuer()
        self.bundle, _ = self.issuer.write_trust(workdir)

    def token(self, repository: str) -> str:
        access = [{"type": "repository", "name": repository, "actions": ["pull", "push"]}]
        return self.issuer.token(access, lifetime=LIFETIME)

    def stratus_environment(self) -> dict[str, str]:
        return {
            "REGISTRY_AUTH": "token",
            "REGISTRY_AUTH_TOKEN_REALM": REALM,
            "REGISTRY_AUTH_TOKEN_SERVICE": self.issuer.service,
            "REGISTRY_AUTH_TOKEN_ISSUER": self.issuer.issuer,
            "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(self.bundle),
        }

    def reference_config(self) -> str:
        return (
            "auth:\n  token:\n"
            f"    realm: {REALM}\n    service: {self.issuer.service}\n"
            f"    issuer: {self.issuer.issuer}\n    rootcertbundle: {self.bundle}\n"
        )


@contextmanager
def registries(
    workdir: Path, tokens: BenchTokens, with_reference: bool, workers: Optional[int], tree: Optional[Path]
) -> Iterator[dict[str, servers.RunningServer]]:
    """{"stratus": ..., "reference": ...} serving with token auth on."""
    with servers.stratus(workdir, workers, tree, name="stratus-token",
                         environment=tokens.stratus_environment()) as stratus:
        if not with_reference:
            yield {"stratus": stratus}
            return
        with servers.reference(workdir, tokens.reference_config(), name="reference-token") as reference:
            yield {"stratus": stratus, "reference": reference}
