"""Bearer-token access control against a token issuer written for the tests (keys made per run)."""
from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import jwt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization

from chalicelib.auth import create_access_controller
from chalicelib.config import AuthConfig, ConfigError

from .clients_images import assert_same_image, needs_tools, pull, push, session_image
from .servers import stratus_server
from .test_auth_htpasswd import call, error_codes, make_api, push_image
from .token_issuer import SERVICE, Signer, TokenIssuer

ZERO = "sha256:" + "0" * 64


def pull_push(name: str) -> dict:
    return {"type": "repository", "name": name, "actions": ["pull", "push"]}


def pull_only(name: str) -> dict:
    return {"type": "repository", "name": name, "actions": ["pull"]}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def challenge(response) -> str:
    return response.header("WWW-Authenticate") or ""


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(users={
        "pusher": ("push-pw", {"*": ["pull", "push", "delete"], "catalog": []}),
        "reader": ("read-pw", {"*": ["pull"]}),
    })


@pytest.fixture
def api(tmp_path: Path, issuer: TokenIssuer):
    root = tmp_path / "data"
    root.mkdir()
    return make_api(root, issuer.auth_config(tmp_path, realm="https://auth.test/token"))


def test_base_without_a_token_answers_the_bearer_challenge(api) -> None:
    r = call(api, "GET", "/v2/")
    assert r.status == 401
    assert challenge(r) == f'Bearer realm="https://auth.test/token",service="{SERVICE}"'
    assert error_codes(r) == ["UNAUTHORIZED"]


def test_base_with_any_valid_token_answers_200(api, issuer: TokenIssuer) -> None:
    assert call(api, "GET", "/v2/", headers=bearer(issuer.token([]))).status == 200


def test_push_without_a_token_names_the_scope_it_needs(api) -> None:
    r = call(api, "POST", "/v2/team/app/blobs/uploads/")
    assert r.status == 401
    assert challenge(r) == (
        f'Bearer realm="https://auth.test/token",service="{SERVICE}",scope="repository:team/app:pull,push"'
    )
    body = json.loads(r.body_bytes())
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert body["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "team/app", "Action": "pull"},
        {"Type": "repository", "Name": "team/app", "Action": "push"},
    ]


def test_pull_only_token_is_refused_push_with_insufficient_scope(api, issuer: TokenIssuer) -> None:
    push_image(api, "team/app", "v1", bearer(issuer.token([pull_push("team/app")])))
    token = issuer.token([pull_only("team/app")])
    assert call(api, "GET", "/v2/team/app/manifests/v1", headers=bearer(token)).status == 200
    for method, path in (("POST", "/v2/team/app/blobs/uploads/"), ("PUT", "/v2/team/app/manifests/v2")):
        r = call(api, method, path, headers=bearer(token))
        assert r.status == 401
        assert error_codes(r) == ["UNAUTHORIZED"]
        assert challenge(r).endswith(',scope="repository:team/app:pull,push",error="insufficient_scope"')


def test_token_for_another_repository_does_not_open_this_one(api, issuer: TokenIssuer) -> None:
    r = call(api, "GET", "/v2/team/app/tags/list", headers=bearer(issuer.token([pull_push("team/other")])))
    assert r.status == 401
    assert 'error="insufficient_scope"' in challenge(r)


def test_wildcard_actions_cover_everything(api, issuer: TokenIssuer) -> None:
    token = issuer.token([{"type": "repository", "name": "team/app", "actions": ["*"]}])
    push_image(api, "team/app", "v1", bearer(token))
    assert call(api, "DELETE", "/v2/team/app/manifests/v1", headers=bearer(token)).status == 202


def test_delete_needs_the_delete_action(api, issuer: TokenIssuer) -> None:
    push_image(api, "team/app", "v1", bearer(issuer.token([pull_push("team/app")])))
    r = call(api, "DELETE", "/v2/team/app/manifests/v1", headers=bearer(issuer.token([pull_push("team/app")])))
    assert r.status == 401
    assert challenge(r).endswith('scope="repository:team/app:delete",error="insufficient_scope"')
    token = issuer.token([{"type": "repository", "name": "team/app", "actions": ["delete"]}])
    assert call(api, "DELETE", "/v2/team/app/manifests/v1", headers=bearer(token)).status == 202


def test_catalog_needs_registry_catalog(api, issuer: TokenIssuer) -> None:
    r = call(api, "GET", "/v2/_catalog", headers=bearer(issuer.token([pull_push("team/app")])))
    assert r.status == 401
    assert challenge(r).endswith('scope="registry:catalog:*",error="insufficient_scope"')
    token = issuer.token([{"type": "registry", "name": "catalog", "actions": ["*"]}])
    assert call(api, "GET", "/v2/_catalog", headers=bearer(token)).status == 200


def test_tokens_signed_through_a_jwks_kid_are_accepted(api, issuer: TokenIssuer) -> None:
    push_image(api, "jwks/app", "v1", bearer(issuer.token([pull_push("jwks/app")], signer=issuer.jwks())))


def test_kid_naming_a_root_certificate_key_is_accepted(controller, issuer: TokenIssuer) -> None:
    from chalicelib.auth.token import libtrust_key_id, rfc7638_thumbprint

    for kid in (rfc7638_thumbprint(issuer.root_key.public_key()), libtrust_key_id(issuer.root_key.public_key())):
        token = issuer.token([pull_only("a")], signer=Signer(issuer.root_key, "ES256", {"kid": kid}))
        assert controller.verify(token)["access"] == [pull_only("a")]


def test_audience_list_including_the_service_is_accepted(api, issuer: TokenIssuer) -> None:
    token = issuer.token([pull_only("team/app")], aud=["other-service", SERVICE])
    assert call(api, "GET", "/v2/", headers=bearer(token)).status == 200


def test_expiry_allows_sixty_seconds_of_clock_skew(api, issuer: TokenIssuer) -> None:
    now = int(time.time())
    assert call(api, "GET", "/v2/", headers=bearer(issuer.token([], exp=now - 30))).status == 200
    assert call(api, "GET", "/v2/", headers=bearer(issuer.token([], nbf=now + 30))).status == 200


def _tampered(token: str) -> str:
    header, claims, signature = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    doc["access"] = [pull_push("team/app")]
    forged = base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _refused_tokens(issuer: TokenIssuer) -> dict[str, str]:
    now = int(time.time())
    access = [pull_push("team/app")]
    public_pem = issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs256 = jwt.api_jws.PyJWS()
    hs256_token = hs256.encode(
        json.dumps(issuer.claims(access)).encode(), hashlib.sha256(public_pem).digest(), algorithm="HS256",
        headers={"kid": issuer.jwks_kid},
    )
    none_token = jwt.encode(issuer.claims(access), None, algorithm="none", headers={"kid": issuer.jwks_kid})
    return {
        "expired": issuer.token(access, exp=now - 120),
        "not yet valid": issuer.token(access, nbf=now + 120),
        "no expiry": issuer.token(access, exp=None),
        "wrong audience": issuer.token(access, aud="someone-else"),
        "no audience": issuer.token(access, aud=None),
        "wrong issuer": issuer.token(access, iss="evil-issuer"),
        "tampered": _tampered(issuer.token([pull_only("team/app")])),
        "alg none": none_token,
        "alg none, empty signature stripped": none_token.rstrip("."),
        "HS256 with the public key": hs256_token,
        "untrusted chain": issuer.token(access, signer=issuer.rogue()),
        "unknown kid": issuer.token(access, signer=Signer(issuer.rsa_key, "RS256", {"kid": "nope"})),
        "no key named": issuer.token(access, signer=Signer(issuer.rsa_key, "RS256", {})),
        "jwks key with the wrong alg": issuer.token(access, signer=Signer(issuer.rsa_key, "RS512",
                                                                                       {"kid": issuer.jwks_kid})),
        "garbage": "not.a.jwt",
        "empty segments": "..",
        "malformed x5c": issuer.token(access, signer=Signer(issuer.leaf_key, "ES256",
                                                                         {"x5c": ["!!not base64!!"]})),
        "x5c is not a list": issuer.token(access, signer=Signer(issuer.leaf_key, "ES256",
                                                                             {"x5c": "abc"})),
        "huge": "a" * 40000,
        "access is not a list": issuer.token({"type": "repository"}),
    }


REFUSED = [
    "expired", "not yet valid", "no expiry", "wrong audience", "no audience", "wrong issuer", "tampered",
    "alg none", "alg none, empty signature stripped", "HS256 with the public key", "untrusted chain",
    "unknown kid", "no key named", "jwks key with the wrong alg", "garbage", "empty segments",
    "malformed x5c", "x5c is not a list", "huge", "access is not a list",
]


def test_every_refused_case_is_tested(issuer: TokenIssuer) -> None:
    assert sorted(_refused_tokens(issuer)) == sorted(REFUSED)


@pytest.mark.parametrize("case", REFUSED)
def test_unusable_tokens_are_refused_as_invalid(api, issuer: TokenIssuer, case: str) -> None:
    token = _refused_tokens(issuer)[case]
    r = call(api, "POST", "/v2/team/app/blobs/uploads/", headers=bearer(token))
    assert r.status == 401, case
    assert error_codes(r) == ["UNAUTHORIZED"]
    assert challenge(r).endswith('scope="repository:team/app:pull,push",error="invalid_token"'), challenge(r)
    assert token[:40] not in r.body_bytes().decode()


def _push_private_blob(api, issuer: TokenIssuer, data: bytes) -> str:
    """Pushes data to private/src only; returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    owner = bearer(issuer.token([pull_push("private/src")]))
    assert call(api, "POST", "/v2/private/src/blobs/uploads/", f"digest={digest}", owner, data).status == 201
    return digest


def test_mount_challenge_asks_for_pull_on_the_source_too(api, issuer: TokenIssuer) -> None:
    r = call(api, "POST", "/v2/team/app/blobs/uploads/", f"mount=sha256:{'a' * 64}&from=team/base")
    assert r.status == 401
    assert challenge(r).endswith('scope="repository:team/app:pull,push repository:team/base:pull"'), challenge(r)
    # a token for the target alone is not refused: without pull on `from` it uploads instead
    target_only = bearer(issuer.token([pull_push("team/app")]))
    r = call(api, "POST", "/v2/team/app/blobs/uploads/", f"mount=sha256:{'a' * 64}&from=team/base", target_only)
    assert r.status == 202
    # an unusable `from` is no scope to ask for
    r = call(api, "POST", "/v2/team/app/blobs/uploads/", f"mount=sha256:{'a' * 64}&from=../x")
    assert challenge(r).endswith('scope="repository:team/app:pull,push"'), challenge(r)


def test_mount_from_a_repository_the_token_cannot_pull_falls_back_to_an_upload(api, issuer: TokenIssuer) -> None:
    digest = _push_private_blob(api, issuer, b"a private layer")
    outsider = bearer(issuer.token([pull_push("outsider/dst")]))
    r = call(api, "POST", "/v2/outsider/dst/blobs/uploads/", f"mount={digest}&from=private/src", outsider)
    assert r.status == 202
    assert r.header("Location") and "/v2/outsider/dst/blobs/uploads/" in r.header("Location")
    assert call(api, "HEAD", f"/v2/outsider/dst/blobs/{digest}", headers=outsider).status == 404

    allowed = bearer(issuer.token([pull_push("outsider/dst"), pull_only("private/src")]))
    r = call(api, "POST", "/v2/outsider/dst/blobs/uploads/", f"mount={digest}&from=private/src", allowed)
    assert r.status == 201
    assert call(api, "HEAD", f"/v2/outsider/dst/blobs/{digest}", headers=outsider).status == 200


def test_anonymous_pull_with_token_auth(tmp_path: Path, issuer: TokenIssuer) -> None:
    root = tmp_path / "data"
    root.mkdir()
    config = issuer.auth_config(tmp_path, realm="https://auth.test/token", anonymouspull=True)
    api = make_api(root, config)
    push_image(api, "public/app", "v1", bearer(issuer.token([pull_push("public/app")])))
    assert call(api, "GET", "/v2/public/app/manifests/v1").status == 200
    r = call(api, "POST", "/v2/public/app/blobs/uploads/")
    assert r.status == 401 and 'scope="repository:public/app:pull,push"' in challenge(r)
    assert call(api, "GET", "/v2/").status == 401


@pytest.mark.parametrize("parameters, key", [
    ({"service": "s", "issuer": "i", "rootcertbundle": "/x"}, "auth.token.realm"),
    ({"realm": "r", "service": "s", "issuer": "i"}, "auth.token.rootcertbundle"),
    ({"realm": "r", "service": "s", "issuer": "i", "rootcertbundle": "/nonexistent.pem"}, "auth.token.rootcertbundle"),
    ({"realm": "r", "service": "s", "issuer": "i", "jwks": "/nonexistent.json"}, "auth.token.jwks"),
    ({"realm": "r", "service": "s", "issuer": "i", "rootcertbundle": "ROOT", "signingalgorithms": ["HS256"]},
     "auth.token.signingalgorithms"),
    ({"realm": "r", "service": "s", "issuer": "i", "rootcertbundle": "ROOT", "signingalgorithms": ["none"]},
     "auth.token.signingalgorithms"),
])
def test_bad_token_configuration_names_the_key(tmp_path: Path, issuer: TokenIssuer, parameters: dict, key: str) -> None:
    bundle, _ = issuer.write_trust(tmp_path)
    parameters = {k: (str(bundle) if v == "ROOT" else v) for k, v in parameters.items()}
    with pytest.raises(ConfigError) as caught:
        create_access_controller(AuthConfig("token", parameters))
    assert caught.value.key == key


def test_a_private_jwk_is_refused_in_configuration(tmp_path: Path, issuer: TokenIssuer) -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(issuer.rsa_key))
    private["kid"] = "k"
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [private]}))
    with pytest.raises(ConfigError, match="private key"):
        create_access_controller(AuthConfig("token", {"realm": "r", "service": "s", "issuer": "i",
                                                      "jwks": str(tmp_path / "jwks.json")}))


# -- the whole flow over HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, issuer: TokenIssuer):
    base = tmp_path_factory.mktemp("token-server")
    root = base / "data"
    root.mkdir()
    with issuer.serve() as realm:
        config = base / "config.yml"
        config.write_text(yaml.safe_dump({"version": "0.1", "auth": issuer.auth_config(base, realm=realm)}))
        with stratus_server(root, config=config) as url:
            yield url, realm


def _token(realm: str, user: str, password: str, scope: str) -> str:
    r = requests.get(realm, params={"service": SERVICE, "scope": scope}, auth=(user, password), timeout=10)
    r.raise_for_status()
    return r.json()["token"]


def test_client_token_flow_over_http(token_server) -> None:
    url, realm = token_server
    r = requests.post(f"{url}/v2/flow/app/blobs/uploads/", timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{realm}",service="{SERVICE}",scope="repository:flow/app:pull,push"'
    )
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"

    # the reader asks for pull,push and is granted pull only: the push is refused
    token = _token(realm, "reader", "read-pw", "repository:flow/app:pull,push")
    r = requests.post(f"{url}/v2/flow/app/blobs/uploads/", headers=bearer(token), timeout=10)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].endswith('error="insufficient_scope"')
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"

    token = _token(realm, "pusher", "push-pw", "repository:flow/app:pull,push")
    r = requests.post(f"{url}/v2/flow/app/blobs/uploads/", headers=bearer(token), timeout=10)
    assert r.status_code == 202


@needs_tools
def test_skopeo_pushes_through_the_token_server(token_server, tmp_path_factory: pytest.TempPathFactory,
                                                tmp_path: Path) -> None:
    url, _ = token_server
    source = session_image(tmp_path_factory.mktemp("token-images"), "small")
    push(source.path, "v1", url, "tokens/app", "v1", "--dest-creds=pusher:push-pw")
    copy = tmp_path / "copy"
    pull(url, "tokens/app", "v1", copy, "v1", "--src-creds=reader:read-pw")
    assert_same_image(source, "v1", type(source)(copy), "v1")
    with pytest.raises(AssertionError, match=r"(?i)unauthorized|authentication required|insufficient"):
        push(source.path, "v1", url, "tokens/other", "v1", "--dest-creds=reader:read-pw")


def test_mount_without_from_needs_pull_on_every_repository(api, issuer: TokenIssuer) -> None:
    digest = _push_private_blob(api, issuer, b"a layer somewhere in the registry")
    outsider = bearer(issuer.token([pull_push("outsider/dst")]))
    r = call(api, "POST", "/v2/outsider/dst/blobs/uploads/", f"mount={digest}", outsider)
    assert r.status == 202
    assert call(api, "HEAD", f"/v2/outsider/dst/blobs/{digest}", headers=outsider).status == 404


# -- accepted tokens are remembered until they expire ----------------------------------


@pytest.fixture
def controller(tmp_path: Path, issuer: TokenIssuer):
    return create_access_controller(AuthConfig("token", issuer.auth_config(tmp_path)["token"]))


def _count_verifications(monkeypatch) -> list:
    import chalicelib.auth.token as token_module

    calls: list = []
    real_decode = token_module.jwt.decode

    def counting(*args, **kwargs):
        calls.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(token_module.jwt, "decode", counting)
    return calls


def test_a_token_is_verified_once_then_remembered(controller, issuer: TokenIssuer, monkeypatch) -> None:
    calls = _count_verifications(monkeypatch)
    for signer in (issuer.x5c(), issuer.jwks()):
        token = issuer.token([pull_only("a")], signer=signer)
        for _ in range(5):
            assert controller.verify(token)["access"] == [pull_only("a")]
    assert len(calls) == 2


def test_refused_tokens_are_never_remembered(controller, issuer: TokenIssuer, monkeypatch) -> None:
    good = issuer.token([pull_only("a")])
    header, payload, signature = good.split(".")
    forged_payload = base64.urlsafe_b64encode(
        json.dumps({**jwt.decode(good, options={"verify_signature": False}), "access": [pull_push("*")]}).encode()
    ).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    calls = _count_verifications(monkeypatch)
    for token in (forged, issuer.token([pull_only("a")], aud="another-service")):
        for _ in range(3):
            with pytest.raises(Exception, match="Invalid|invalid|audience|Signature"):
                controller.verify(token)
    assert len(calls) == 6
    controller.verify(good)  # the real token is still accepted, and only it
    assert controller.verify(good)["access"] == [pull_only("a")]


def _set_clock(monkeypatch, seconds: float) -> None:
    """Move the clock both this registry and PyJWT read."""
    import datetime as dt

    import jwt.api_jwt

    import chalicelib.auth.token as token_module

    class At(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.fromtimestamp(seconds, tz)

    monkeypatch.setattr(token_module.time, "time", lambda: seconds)
    monkeypatch.setattr(token_module, "datetime", At)
    monkeypatch.setattr(jwt.api_jwt, "datetime", At)


def test_a_remembered_token_expires_with_its_exp(controller, issuer: TokenIssuer, monkeypatch) -> None:
    import chalicelib.auth.token as token_module

    token = issuer.token([pull_only("a")], lifetime=30)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert controller.verify(token)
    calls = _count_verifications(monkeypatch)
    _set_clock(monkeypatch, exp + token_module.LEEWAY - 5)
    assert controller.verify(token)  # still inside exp + leeway: remembered
    assert calls == []
    _set_clock(monkeypatch, exp + token_module.LEEWAY + 5)
    with pytest.raises(token_module.InvalidToken, match="expired"):
        controller.verify(token)
    assert calls == [1]  # forgotten, verified again, refused


def test_a_remembered_x5c_token_ends_with_its_certificates(tmp_path: Path, monkeypatch) -> None:
    import chalicelib.auth.token as token_module
    from tests.token_issuer import _certificate

    issuer = TokenIssuer()
    controller = create_access_controller(AuthConfig("token", issuer.auth_config(tmp_path)["token"]))
    # a leaf certificate that expires long before the token does
    leaf = _certificate("short-lived signer", issuer.leaf_key, issuer.intermediate, issuer.intermediate_key,
                        ca=False, days=1)
    chain = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in (leaf, issuer.intermediate)]
    token = issuer.token([pull_only("a")], signer=Signer(issuer.leaf_key, "ES256", {"x5c": chain}),
                         lifetime=10 * 86400)
    assert controller.verify(token)
    chain_ends = min(c.not_valid_after_utc for c in (leaf, issuer.intermediate, issuer.root)).timestamp()
    _set_clock(monkeypatch, chain_ends - 10)
    assert controller.verify(token)
    _set_clock(monkeypatch, chain_ends + 1)
    with pytest.raises(token_module.InvalidToken, match="validity period"):
        controller.verify(token)


def test_remembered_tokens_are_bounded(controller, issuer: TokenIssuer, monkeypatch) -> None:
    import chalicelib.auth.token as token_module

    monkeypatch.setattr(token_module._AcceptedTokens, "SIZE", 3)
    tokens = [issuer.token([pull_only(f"r{i}")]) for i in range(5)]
    for token in tokens:
        controller.verify(token)
    assert len(controller._accepted._entries) == 3
