"""htpasswd access control: Basic challenges, bcrypt checks, sources, anonymous pull,
and skopeo pushing and pulling with credentials through `stratus serve`."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import bcrypt
import pytest
import yaml

from chalicelib.api import Request
from chalicelib.auth import AnonymousPull, create_access_controller
from chalicelib.auth.htpasswd import Htpasswd, HtpasswdAccessController
from chalicelib.bootstrap import build_api
from chalicelib.config import AuthConfig, ConfigError, config_from_mapping, load_config

from .oci_conformance import requires_conformance, run_oci_conformance
from .clients_images import assert_same_image, needs_tools, pull, push, session_image, skopeo
from .moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoS3
from .servers import stratus_server

PASSWORD = "s3cret-Passw0rd"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def htpasswd_file(directory: Path, users: dict[str, str], cost: int = 4, extra: bytes = b"") -> Path:
    path = directory / "htpasswd"
    lines = [f"{user}:".encode() + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=cost)) for user, pw in users.items()]
    path.write_bytes(b"\n".join(lines) + b"\n" + extra)
    return path


def make_api(root: Path, auth: dict):
    return build_api(config_from_mapping({
        "storage": {"filesystem": {"rootdirectory": str(root)}, "redirect": {"disable": True}},
        "http": {"secret": "test-secret"},
        "auth": auth,
    }))


def call(api, method: str, path: str, query: str = "", headers: dict | None = None, body: bytes = b""):
    return api.handle(Request.from_bytes(method, path, query, headers or {}, body, base_url="http://registry.test"))


def error_codes(response) -> list[str]:
    return [e["code"] for e in json.loads(response.body_bytes())["errors"]]


def push_image(api, name: str, tag: str, headers: dict) -> str:
    """Monolithic blob uploads and a manifest PUT; returns the manifest digest."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes " + name.encode()
    descriptors = []
    for data, media_type in ((config, "application/vnd.oci.image.config.v1+json"),
                             (layer, "application/vnd.oci.image.layer.v1.tar")):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = call(api, "POST", f"/v2/{name}/blobs/uploads/", f"digest={digest}", headers, data)
        assert r.status == 201, r.body_bytes()
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptors[0],
                           "layers": descriptors[1:]}).encode()
    r = call(api, "PUT", f"/v2/{name}/manifests/{tag}", "", {**headers, "Content-Type": OCI_MANIFEST}, manifest)
    assert r.status == 201, r.body_bytes()
    return r.header("Docker-Content-Digest")


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    return htpasswd_file(tmp_path, {"alice": PASSWORD, "bob": "other"}, extra=b"carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")


@pytest.fixture
def api(tmp_path: Path, htpasswd: Path):
    root = tmp_path / "data"
    root.mkdir()
    return make_api(root, {"htpasswd": {"realm": "Stratus test", "path": str(htpasswd)}})


# -- challenges and credentials -----------------------------------------------------------


def test_base_without_credentials_answers_the_basic_challenge(api) -> None:
    r = call(api, "GET", "/v2/")
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="Stratus test"'
    assert error_codes(r) == ["UNAUTHORIZED"]
    assert r.header("Content-Type") == "application/json"
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"


def test_valid_credentials_reach_every_endpoint(api) -> None:
    auth = basic("alice", PASSWORD)
    assert call(api, "GET", "/v2/", headers=auth).status == 200
    digest = push_image(api, "team/app", "v1", auth)
    assert call(api, "GET", "/v2/team/app/manifests/v1", headers=auth).status == 200
    assert call(api, "GET", f"/v2/team/app/manifests/{digest}", headers=auth).status == 200
    assert json.loads(call(api, "GET", "/v2/team/app/tags/list", headers=auth).body_bytes())["tags"] == ["v1"]
    assert json.loads(call(api, "GET", "/v2/_catalog", headers=auth).body_bytes())["repositories"] == ["team/app"]
    assert call(api, "DELETE", "/v2/team/app/manifests/v1", headers=auth).status == 202


def test_wrong_password_is_refused(api) -> None:
    r = call(api, "GET", "/v2/team/app/tags/list", headers=basic("alice", PASSWORD + "x"))
    assert r.status == 401
    assert error_codes(r) == ["UNAUTHORIZED"]
    assert r.header("WWW-Authenticate") == 'Basic realm="Stratus test"'


def test_unknown_user_is_refused(api) -> None:
    r = call(api, "GET", "/v2/", headers=basic("mallory", PASSWORD))
    assert r.status == 401
    assert error_codes(r) == ["UNAUTHORIZED"]


def test_non_bcrypt_entries_never_authenticate(api) -> None:
    # carol's {SHA} entry holds the SHA-1 of "password"
    assert call(api, "GET", "/v2/", headers=basic("carol", "password")).status == 401


@pytest.mark.parametrize("header", [
    "Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer abc",
    "Basic " + base64.b64encode(b"\xff\xfe:pw").decode(), "basic " + "A" * 10000, "Digest username=alice",
])
def test_malformed_authorization_gets_the_challenge(api, header: str) -> None:
    r = call(api, "GET", "/v2/", headers={"Authorization": header})
    assert r.status == 401
    assert error_codes(r) == ["UNAUTHORIZED"]
    assert r.header("WWW-Authenticate").startswith("Basic ")


def test_password_longer_than_72_bytes_matches_as_bcrypt_truncates(tmp_path: Path) -> None:
    long_password = "p" * 100
    path = htpasswd_file(tmp_path, {"long": long_password[:72]})
    controller = create_access_controller(AuthConfig("htpasswd", {"realm": "r", "path": str(path)}))
    assert controller.authorize(Request.from_bytes("GET", "/v2/", headers=basic("long", long_password)), []) is None


@pytest.fixture
def bcrypt_checks(monkeypatch) -> list[bytes]:
    """The hash of every bcrypt.checkpw the htpasswd controller makes from now on."""
    from chalicelib.auth import htpasswd as module

    hashes: list[bytes] = []
    checkpw = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        hashes.append(hashed)
        return checkpw(password, hashed)

    monkeypatch.setattr(module.bcrypt, "checkpw", counting)
    return hashes


def bcrypt_cost(hashed: bytes) -> int:
    """The cost a bcrypt hash was made with ($2b$<cost>$...): what checking it takes."""
    return int(hashed.split(b"$")[2])


def test_unknown_user_costs_as_much_as_a_wrong_password(tmp_path: Path, bcrypt_checks: list[bytes]) -> None:
    users = Htpasswd.parse(htpasswd_file(tmp_path, {"alice": PASSWORD, "bob": "x"}, cost=8).read_bytes(), "test")
    assert not users.check("alice", b"wrong password")
    assert not users.check("nobody-at-all", b"wrong password")
    assert not users.check("nobody-at-all", PASSWORD.encode())
    # one bcrypt each, against alice's entry, then against a dummy hash of the same cost
    wrong_password, unknown_user, unknown_again = bcrypt_checks
    assert wrong_password == users.entries["alice"]
    assert unknown_user not in users.entries.values()
    assert bcrypt_cost(unknown_user) == bcrypt_cost(wrong_password) == 8
    assert unknown_again == unknown_user


def test_failed_logins_are_never_remembered(tmp_path: Path, bcrypt_checks: list[bytes]) -> None:
    path = htpasswd_file(tmp_path, {"alice": PASSWORD}, cost=8)
    controller = create_access_controller(AuthConfig("htpasswd", {"realm": "r", "path": str(path)}))
    wrong = Request.from_bytes("GET", "/v2/", headers=basic("alice", "guess"))
    for _ in range(3):
        assert controller.authorize(wrong, []).status == 401
    assert len(bcrypt_checks) == 3  # each guess pays a bcrypt
    right = Request.from_bytes("GET", "/v2/", headers=basic("alice", PASSWORD))
    for _ in range(3):
        assert controller.authorize(right, []) is None
    assert len(bcrypt_checks) == 4  # a verified login is remembered
    assert controller.authorize(wrong, []).status == 401
    assert len(bcrypt_checks) == 5  # and does not open the door to the next guess


def test_htpasswd_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = htpasswd_file(tmp_path, {"alice": PASSWORD})
    controller = create_access_controller(AuthConfig("htpasswd", {"realm": "r", "path": str(path)}))
    request = Request.from_bytes("GET", "/v2/", headers=basic("dave", "new"))
    assert controller.authorize(request, []).status == 401
    htpasswd_file(tmp_path, {"alice": PASSWORD, "dave": "new"})
    assert controller.authorize(request, []) is None
    htpasswd_file(tmp_path, {"alice": "changed"})
    assert controller.authorize(Request.from_bytes("GET", "/v2/", headers=basic("alice", PASSWORD)), []).status == 401


# -- sources and configuration -------------------------------------------------------------------


def test_entries_from_an_environment_variable(monkeypatch, tmp_path: Path) -> None:
    a = "alice:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    b = "bob:" + bcrypt.hashpw(b"other", bcrypt.gensalt(4)).decode()
    for value in (f"{a}\n{b}\n", f"{a} {b}"):
        monkeypatch.setenv("STRATUS_TEST_HTPASSWD", value)
        controller = create_access_controller(AuthConfig("htpasswd", {"realm": "r", "env": "STRATUS_TEST_HTPASSWD"}))
        assert controller.authorize(Request.from_bytes("GET", "/v2/", headers=basic("bob", "other")), []) is None
        assert controller.authorize(Request.from_bytes("GET", "/v2/", headers=basic("bob", "x")), []).status == 401


def test_entries_from_an_s3_object(monkeypatch, tmp_path: Path, moto_s3: MotoS3) -> None:
    # the function's own boto3 client, pointed at the S3 endpoint the way a deployment's is
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    s3 = moto_s3.client()
    bucket = moto_s3.create_bucket()
    s3.put_object(Bucket=bucket, Key="registry/htpasswd", Body=htpasswd_file(tmp_path, {"alice": PASSWORD}).read_bytes())
    controller = create_access_controller(
        AuthConfig("htpasswd", {"realm": "r", "path": f"s3://{bucket}/registry/htpasswd", "refresh": 0})
    )
    assert controller.authorize(Request.from_bytes("GET", "/v2/", headers=basic("alice", PASSWORD)), []) is None
    s3.put_object(Bucket=bucket, Key="registry/htpasswd", Body=htpasswd_file(tmp_path, {"erin": "e"}).read_bytes())
    assert controller.authorize(Request.from_bytes("GET", "/v2/", headers=basic("erin", "e")), []) is None


def test_configured_through_registry_environment_variables(tmp_path: Path, htpasswd: Path) -> None:
    config = load_config(environ={
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path),
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "from env",
        "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd),
        "REGISTRY_AUTH_HTPASSWD_ANONYMOUSPULL": "true",
    })
    controller = create_access_controller(config.auth)
    assert isinstance(controller, AnonymousPull)
    assert isinstance(controller.controller, HtpasswdAccessController)
    assert controller.controller.realm == "from env"


@pytest.mark.parametrize("parameters, key", [
    ({"realm": "r"}, "auth.htpasswd.path"),
    ({"realm": "r", "path": "/nonexistent/htpasswd"}, "auth.htpasswd.path"),
    ({"realm": "r", "path": "/x", "env": "Y"}, "auth.htpasswd.path"),
    ({"realm": "r", "env": "STRATUS_TEST_UNSET_VARIABLE"}, "auth.htpasswd.env"),
    ({"realm": "r", "path": "s3://"}, "auth.htpasswd.path"),
    ({"realm": "r", "path": "/x", "anonymouspull": "sometimes"}, "auth.htpasswd.anonymouspull"),
    ({"realm": ["r"], "path": "/x"}, "auth.htpasswd.realm"),
])
def test_bad_htpasswd_configuration_names_the_key(parameters: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_access_controller(AuthConfig("htpasswd", parameters))
    assert caught.value.key == key
    assert str(caught.value).startswith(key.rsplit(".", 1)[0])


def test_no_auth_section_is_an_open_registry(tmp_path: Path) -> None:
    api = build_api(config_from_mapping({"storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
                                         "http": {"secret": "s"}}))
    assert api.access_controller is None
    assert call(api, "GET", "/v2/").status == 200
    assert call(api, "POST", "/v2/open/repo/blobs/uploads/").status == 202


# -- every refusal carries the error body ---------------------------------------------------------


REQUESTS = [
    ("GET", "/v2/", ""), ("HEAD", "/v2/", ""), ("GET", "/v2/_catalog", ""),
    ("GET", "/v2/a/b/tags/list", ""), ("GET", "/v2/a/manifests/latest", ""), ("HEAD", "/v2/a/manifests/latest", ""),
    ("PUT", "/v2/a/manifests/latest", ""), ("DELETE", "/v2/a/manifests/latest", ""),
    ("GET", "/v2/a/blobs/sha256:" + "0" * 64, ""), ("DELETE", "/v2/a/blobs/sha256:" + "0" * 64, ""),
    ("POST", "/v2/a/blobs/uploads/", ""), ("POST", "/v2/a/blobs/uploads/", "mount=sha256:" + "0" * 64 + "&from=b"),
    ("PATCH", "/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000", ""),
    ("PUT", "/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000", "digest=sha256:" + "0" * 64),
    ("GET", "/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000", ""),
    ("DELETE", "/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000", ""),
    ("GET", "/v2/a/referrers/sha256:" + "0" * 64, ""),
]


@pytest.mark.parametrize("method, path, query", REQUESTS)
def test_every_endpoint_refuses_without_credentials_with_the_spec_body(api, method: str, path: str, query: str) -> None:
    r = call(api, method, path, query)
    assert r.status == 401
    assert error_codes(r) == ["UNAUTHORIZED"]
    assert r.header("WWW-Authenticate") == 'Basic realm="Stratus test"'


# -- anonymous pull ------------------------------------------------------------------------------


@pytest.fixture
def public_api(tmp_path: Path, htpasswd: Path):
    root = tmp_path / "public"
    root.mkdir()
    return make_api(root, {"htpasswd": {"realm": "r", "path": str(htpasswd), "anonymouspull": True}})


def test_anonymous_pull_reads_without_credentials_and_pushes_with_them(public_api) -> None:
    auth = basic("alice", PASSWORD)
    digest = push_image(public_api, "public/app", "v1", auth)
    for method, path in (("GET", "/v2/public/app/manifests/v1"), ("HEAD", f"/v2/public/app/manifests/{digest}"),
                         ("GET", "/v2/public/app/tags/list"), ("GET", f"/v2/public/app/referrers/{digest}")):
        assert call(public_api, method, path).status == 200, path
    # skopeo answers a Basic challenge with empty credentials when it has none
    assert call(public_api, "GET", "/v2/public/app/manifests/v1", headers=basic("", "")).status == 200


@pytest.mark.parametrize("method, path, query", [
    ("POST", "/v2/public/app/blobs/uploads/", ""), ("PUT", "/v2/public/app/manifests/v2", ""),
    ("DELETE", "/v2/public/app/manifests/v1", ""), ("GET", "/v2/_catalog", ""), ("GET", "/v2/", ""),
])
def test_anonymous_pull_still_refuses_everything_else(public_api, method: str, path: str, query: str) -> None:
    r = call(public_api, method, path, query)
    assert r.status == 401
    assert error_codes(r) == ["UNAUTHORIZED"]
    assert r.header("WWW-Authenticate") == 'Basic realm="r"'


def test_anonymous_pull_refuses_wrong_credentials(public_api) -> None:
    assert call(public_api, "GET", "/v2/public/app/tags/list", headers=basic("alice", "wrong")).status == 401


# -- real clients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-images")


@pytest.fixture(scope="module")
def htpasswd_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("htpasswd-server")
    root = base / "data"
    root.mkdir()
    path = htpasswd_file(base, {"alice": PASSWORD, "bob": "other"}, cost=6)
    config = base / "config.yml"
    config.write_text(yaml.safe_dump({"version": "0.1", "auth": {"htpasswd": {"realm": "Stratus", "path": str(path)}}}))
    with stratus_server(root, config=config) as url:
        yield url, root


@needs_tools
def test_skopeo_pushes_and_pulls_with_credentials(htpasswd_server, images: Path, tmp_path: Path) -> None:
    url, root = htpasswd_server
    source = session_image(images, "small")
    push(source.path, "v1", url, "private/app", "v1", f"--dest-creds=alice:{PASSWORD}")
    copy = tmp_path / "copy"
    pull(url, "private/app", "v1", copy, "v1", f"--src-creds=alice:{PASSWORD}")
    assert_same_image(source, "v1", type(source)(copy), "v1")
    log = (root.parent / f"stratus-{url.rsplit(':', 1)[1]}.log").read_text()
    assert PASSWORD not in log


@needs_tools
@pytest.mark.parametrize("creds", [f"alice:{PASSWORD}x", f"mallory:{PASSWORD}", None])
def test_skopeo_is_refused_with_bad_or_no_credentials(htpasswd_server, images: Path, creds) -> None:
    url, _ = htpasswd_server
    source = session_image(images, "small")
    extra = [f"--dest-creds={creds}"] if creds else ["--dest-no-creds"]
    with pytest.raises(AssertionError, match=r"(?i)unauthorized|authentication required|invalid username"):
        push(source.path, "v1", url, "refused/app", "v1", *extra)


@needs_tools
def test_skopeo_pulls_anonymously_when_anonymous_pull_is_on(tmp_path: Path, images: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    path = htpasswd_file(tmp_path, {"alice": PASSWORD}, cost=6)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"auth": {"htpasswd": {"realm": "R", "path": str(path), "anonymouspull": True}}}))
    source = session_image(images, "small")
    with stratus_server(root, config=config) as url:
        with pytest.raises(AssertionError, match=r"(?i)unauthorized|authentication required"):
            push(source.path, "v1", url, "public/app", "v1", "--dest-no-creds")
        push(source.path, "v1", url, "public/app", "v1", f"--dest-creds=alice:{PASSWORD}")
        copy = tmp_path / "copy"
        pull(url, "public/app", "v1", copy, "v1", "--src-no-creds")
        assert_same_image(source, "v1", type(source)(copy), "v1")
        skopeo("inspect", "--raw", "--tls-verify=false", "--no-creds", f"docker://{url.split('://')[1]}/public/app:v1")


@requires_conformance
def test_oci_conformance_suite_with_htpasswd_credentials(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    path = htpasswd_file(tmp_path, {"conformance": PASSWORD}, cost=6)
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"auth": {"htpasswd": {"realm": "Stratus", "path": str(path)}}}))
    monkeypatch.setenv("OCI_USERNAME", "conformance")
    monkeypatch.setenv("OCI_PASSWORD", PASSWORD)
    with stratus_server(root, config=config) as url:
        assert run_oci_conformance(url, tmp_path).returncode == 0
