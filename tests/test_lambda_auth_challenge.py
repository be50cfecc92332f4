"""The auth challenge through both AWS paths (issue 13, item 1), in the API Gateway + Lambda
stand-in over S3 on moto:

* REST API (`chalice deploy`): the function's WWW-Authenticate comes back remapped, so
  app.py's TOKEN authorizer (STRATUS_GATEWAY_AUTHORIZER=true) and the gateway responses
  of app.gateway_responses() make API Gateway answer every refusal itself, challenge
  included, the way tests/lambda_gateway.py emulates it (its docstring cites AWS's pages);
* HTTP API (infra/terraform/aws): the function's own challenge passes through.

Each is proven with `docker login`, push and pull, with htpasswd and with bearer tokens.
"""
from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chalicelib.config import AuthConfig

from .docker_daemon import docker_daemon_fixture  # noqa: F401  (the fixture `docker_daemon`)
from .docker_daemon import DockerDaemon
from .lambda_gateway import LambdaGateway, lambda_gateway
from .moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoS3
from .test_auth_htpasswd import PASSWORD
from .test_clients_docker import REFUSED, push_then_pull_back, registry_host, stored_auth
from .token_issuer import SERVICE, TokenIssuer

SECRET = "auth-challenge-secret"
REALM = "Stratus"


@pytest.fixture(scope="module")
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.create_bucket()


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer(users={"pusher": ("push-pw", {"*": ["pull", "push"]}),
                              "reader": ("read-pw", {"*": ["pull"]})})


@pytest.fixture(scope="module")
def realm(issuer: TokenIssuer) -> Iterator[str]:
    with issuer.serve() as url:
        yield url


def auth_settings(kind: str, directory: Path, issuer: TokenIssuer, realm: str) -> tuple[dict, AuthConfig]:
    """The function's REGISTRY_AUTH* environment and the same auth section as a config."""
    if kind == "htpasswd":
        import bcrypt

        entries = "\n".join(f"{user}:" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()
                            for user, pw in (("alice", PASSWORD), ("bob", "other")))
        env = {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": REALM,
               "REGISTRY_AUTH_HTPASSWD_ENV": "STRATUS_HTPASSWD", "STRATUS_HTPASSWD": entries}
        return env, AuthConfig("htpasswd", {"realm": REALM, "env": "STRATUS_HTPASSWD"})
    token = issuer.auth_config(directory, realm=realm)["token"]
    env = {"REGISTRY_AUTH": "token", **{f"REGISTRY_AUTH_TOKEN_{k.upper()}": v for k, v in token.items()}}
    return env, AuthConfig("token", token)


def expected_challenge(kind: str, realm: str) -> str:
    return f'Basic realm="{REALM}"' if kind == "htpasswd" else f'Bearer realm="{realm}",service="{SERVICE}"'


@contextmanager
def registry(mode: str, kind: str, moto_s3: MotoS3, bucket: str, issuer: TokenIssuer, realm: str,
             directory: Path, stage_in_path: bool = False) -> Iterator[LambdaGateway]:
    """The registry as each AWS path deploys it: REST with the gateway authorizer and its
    gateway responses, the HTTP API with neither. No stage in the path: a custom domain's
    base path mapping at the root (REST), or the $default stage (HTTP API)."""
    directory.mkdir(parents=True, exist_ok=True)
    auth_env, auth = auth_settings(kind, directory, issuer, realm)
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": SECRET, **auth_env}
    responses = None
    if mode == "rest":
        import app

        env["STRATUS_GATEWAY_AUTHORIZER"] = "true"
        responses = app.gateway_responses(auth)
    with lambda_gateway(env, mode, workdir=directory, gateway_responses=responses,
                        stage_in_path=stage_in_path) as gw:
        yield gw


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- what API Gateway answers itself (REST) -------------------------------------------------------


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_rest_api_answers_a_request_without_credentials_with_the_challenge(
        kind, moto_s3, bucket, issuer, realm, tmp_path) -> None:
    with registry("rest", kind, moto_s3, bucket, issuer, realm, tmp_path) as gw:
        reply = gw.client()("GET", "/v2/")
        assert reply.status == 401
        assert reply.header("WWW-Authenticate") == expected_challenge(kind, realm)
        assert reply.header("x-amzn-Remapped-WWW-Authenticate") is None
        assert reply.header("Docker-Distribution-API-Version") == "registry/2.0"
        assert reply.json() == {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        [record] = gw.records()
        assert (record.authorizer, record.outcome, record.reached_function) == \
            ("missing-token", "gateway-response", False)


@pytest.mark.parametrize("kind, credentials", [
    ("htpasswd", basic("alice", PASSWORD + "x")),
    ("htpasswd", basic("mallory", PASSWORD)),
    ("token", {"Authorization": "Bearer not.a.jwt"}),
], ids=["wrong-password", "unknown-user", "garbage-token"])
def test_rest_api_answers_refused_credentials_with_the_challenge(
        kind, credentials, moto_s3, bucket, issuer, realm, tmp_path) -> None:
    with registry("rest", kind, moto_s3, bucket, issuer, realm, tmp_path) as gw:
        reply = gw.client()("GET", "/v2/", headers=credentials)
        assert reply.status == 401
        assert reply.header("WWW-Authenticate") == expected_challenge(kind, realm)
        assert reply.json()["errors"][0]["code"] == "UNAUTHORIZED"
        [record] = gw.records()
        assert (record.authorizer, record.reached_function) == ("deny", False)


@pytest.mark.parametrize("stage_in_path", [False, True], ids=["custom-domain", "execute-api-url"])
def test_rest_api_lets_valid_credentials_through_to_the_function(moto_s3, bucket, issuer, realm, tmp_path,
                                                                 stage_in_path) -> None:
    """Through a custom domain's root mapping or the execute-api URL with its /api stage
    (the methodArn names the stage apart from the path in both)."""
    with registry("rest", "htpasswd", moto_s3, bucket, issuer, realm, tmp_path, stage_in_path) as gw:
        client = gw.client()
        reply = client("GET", "/v2/", headers=basic("alice", PASSWORD))
        assert reply.status == 200, reply.body
        started = client("POST", "/v2/team/app/blobs/uploads/", headers=basic("alice", PASSWORD))
        assert started.status == 202, started.body
        refused = client("POST", "/v2/team/app/blobs/uploads/", headers=basic("alice", "nope"))
        assert refused.status == 401 and refused.header("WWW-Authenticate") == expected_challenge("htpasswd", realm)
        assert [(r.authorizer, r.reached_function, r.function_status) for r in gw.records()] == \
            [("allow", True, 200), ("allow", True, 202), ("deny", False, None)]


def test_rest_api_authorizes_each_request_on_its_own(moto_s3, bucket, issuer, realm, tmp_path) -> None:
    """Caching off: one pull-only token is allowed a pull and refused a push in turn, the
    push refused by the gateway with the message the registry's controller gave."""
    token = {"Authorization": "Bearer " + issuer.token([{"type": "repository", "name": "team/app",
                                                        "actions": ["pull"]}])}
    with registry("rest", "token", moto_s3, bucket, issuer, realm, tmp_path) as gw:
        client = gw.client()
        for _ in range(2):
            pulled = client("GET", "/v2/team/app/tags/list", headers=token)
            assert pulled.status == 404 and pulled.json()["errors"][0]["code"] == "NAME_UNKNOWN"
            pushed = client("POST", "/v2/team/app/blobs/uploads/", headers=token)
            assert pushed.status == 401
            assert pushed.header("WWW-Authenticate") == expected_challenge("token", realm)
            assert pushed.json()["errors"][0]["message"].startswith("insufficient scope")
        assert [(r.method, r.authorizer, r.reached_function) for r in gw.records()] == \
            [("GET", "allow", True), ("POST", "deny", False)] * 2


def test_without_the_authorizer_a_rest_api_hides_the_challenge(moto_s3, bucket, issuer, realm, tmp_path) -> None:
    """The control: the same function behind a REST API with no authorizer (and no gateway
    responses) answers 401 with the challenge only under the remapped name."""
    auth_env, _ = auth_settings("htpasswd", tmp_path, issuer, realm)
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": SECRET, **auth_env}
    with lambda_gateway(env, "rest", workdir=tmp_path) as gw:
        reply = gw.client()("GET", "/v2/")
        assert reply.status == 401 and reply.header("WWW-Authenticate") is None
        assert reply.header("x-amzn-Remapped-WWW-Authenticate") == expected_challenge("htpasswd", realm)
        assert gw.records()[0].authorizer is None


# -- docker login, push and pull through both paths --------------------------------------------


CREDENTIALS = {"htpasswd": ("alice", PASSWORD), "token": ("pusher", "push-pw")}


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
@pytest.mark.parametrize("mode", ["rest", "http"])
def test_docker_login_push_and_pull(docker_daemon: DockerDaemon, mode, kind, moto_s3, bucket, issuer, realm,
                                    tmp_path) -> None:
    with registry(mode, kind, moto_s3, bucket, issuer, realm, tmp_path / "gateway") as gw:
        host = registry_host(gw.url)
        config = docker_daemon.fresh_config(tmp_path / "docker-config")
        image = docker_daemon.image_with_layer(1)
        ref = docker_daemon.tag(image, f"{host}/{mode}-{kind}/app:v1")

        refused = docker_daemon.run("push", ref, config_dir=config)
        assert refused.returncode != 0 and re.search(REFUSED, refused.stderr + refused.stdout), refused
        wrong = docker_daemon.run("login", "--username", CREDENTIALS[kind][0], "--password-stdin", host,
                                  input="not-the-password", config_dir=config)
        assert wrong.returncode != 0 and re.search(REFUSED, wrong.stderr), wrong.stderr

        user, password = CREDENTIALS[kind]
        assert "Login Succeeded" in docker_daemon.login(host, user, password, config_dir=config)
        assert stored_auth(config, host) == f"{user}:{password}"
        push_then_pull_back(docker_daemon, image, ref, config_dir=config)
        docker_daemon.rmi(ref)

        records = gw.records()
        challenged = [r for r in records if r.status == 401]
        assert challenged, "docker was never challenged"
        if mode == "rest":
            # every challenge docker met came from the gateway; the function refused nothing
            assert all(r.outcome == "gateway-response" and not r.reached_function for r in challenged)
            assert {r.authorizer for r in challenged} >= {"missing-token"}
            assert all(r.authorizer == "allow" for r in records if r.reached_function)
        else:
            assert all(r.reached_function and r.function_status == 401 for r in challenged)
            assert all(r.authorizer is None for r in records)
        assert any(r.method == "PUT" and "/manifests/" in r.path and r.status == 201 for r in records)


def test_docker_login_fails_through_a_rest_api_without_the_authorizer(docker_daemon: DockerDaemon, moto_s3,
                                                                      bucket, issuer, realm, tmp_path) -> None:
    """The control for the REST runs above: without the authorizer the challenge arrives
    remapped and docker cannot log in, with the right password."""
    auth_env, _ = auth_settings("htpasswd", tmp_path, issuer, realm)
    env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": SECRET, **auth_env}
    with lambda_gateway(env, "rest", workdir=tmp_path) as gw:
        host = registry_host(gw.url)
        config = docker_daemon.fresh_config(tmp_path / "docker-config")
        done = docker_daemon.run("login", "--username", "alice", "--password-stdin", host, input=PASSWORD,
                                 config_dir=config)
        assert done.returncode != 0, done.stdout
        assert stored_auth(config, host) is None


# -- the post-deploy step ------------------------------------------------------------------------


def test_the_post_deploy_step_puts_the_gateway_responses_on_the_rest_api(moto_s3, tmp_path) -> None:
    """scripts/gateway_responses.py against moto's API Gateway: the responses the stand-in
    was given above are the ones the API ends up with, and the stage is redeployed."""
    import json
    import subprocess
    import sys

    import app
    from tests.servers import ROOT

    client = moto_s3.client("apigateway")
    api_id = client.create_rest_api(name="stratus")["id"]
    root_id = client.get_resources(restApiId=api_id)["items"][0]["id"]
    client.put_method(restApiId=api_id, resourceId=root_id, httpMethod="GET", authorizationType="NONE")
    client.put_integration(restApiId=api_id, resourceId=root_id, httpMethod="GET", type="MOCK")
    client.create_deployment(restApiId=api_id, stageName="api")
    before = len(client.get_deployments(restApiId=api_id)["items"])
    project = tmp_path / "project"
    (project / ".chalice" / "deployed").mkdir(parents=True)
    env = {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": REALM,
           "REGISTRY_AUTH_HTPASSWD_ENV": "STRATUS_HTPASSWD", "STRATUS_GATEWAY_AUTHORIZER": "true"}
    (project / ".chalice" / "config.json").write_text(json.dumps(
        {"version": "2.0", "app_name": "stratus",
         "stages": {"dev": {"api_gateway_stage": "api", "environment_variables": env}}}))
    (project / ".chalice" / "deployed" / "dev.json").write_text(json.dumps(
        {"resources": [{"name": "rest_api", "resource_type": "rest_api", "rest_api_id": api_id}]}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gateway_responses.py"), "--stage", "dev",
         "--project-dir", str(project)],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": moto_s3.endpoint, "AWS_DEFAULT_REGION": REGION,
             "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    assert done.returncode == 0, done.stderr
    expected = app.gateway_responses(AuthConfig("htpasswd", {"realm": REALM, "env": "STRATUS_HTPASSWD"}))
    for kind, response in expected.items():
        put = client.get_gateway_response(restApiId=api_id, responseType=kind)
        assert (put["statusCode"], put["responseParameters"], put["responseTemplates"]) == \
            (response["statusCode"], response["responseParameters"], response["responseTemplates"])
    assert put["responseParameters"]["gatewayresponse.header.WWW-Authenticate"] == f"'Basic realm=\"{REALM}\"'"
    assert len(client.get_deployments(restApiId=api_id)["items"]) == before + 1


def test_chalice_deploys_what_the_stand_in_emulates(tmp_path) -> None:
    """The API definition `chalice deploy` sends (its swagger) gives every /v2 method the
    TOKEN authorizer on Authorization with caching off, which is what the stand-in runs;
    without STRATUS_GATEWAY_AUTHORIZER no method has one."""
    import json
    import subprocess
    import sys

    from tests.servers import ROOT

    script = ("import json, app\nfrom chalice.deploy.swagger import CFNSwaggerGenerator\n"
              "print(json.dumps(CFNSwaggerGenerator().generate_swagger(app.app)))")
    swaggers = {}
    for flag in ("true", ""):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "STRATUS_GATEWAY_AUTHORIZER": flag},
                              check=False)
        assert done.returncode == 0, done.stderr
        swaggers[flag] = json.loads(done.stdout)
    methods = [(path, method, spec) for path, item in swaggers["true"]["paths"].items()
               for method, spec in item.items() if path.startswith("/v2")]
    assert {m for _, m, _ in methods} >= {"get", "head", "put", "post", "patch", "delete"}
    assert all(spec.get("security") == [{"registry_auth": []}] for _, _, spec in methods)
    definition = swaggers["true"]["securityDefinitions"]["registry_auth"]
    assert (definition["in"], definition["name"]) == ("header", "Authorization")
    assert definition["x-amazon-apigateway-authorizer"]["type"] == "token"
    assert definition["x-amazon-apigateway-authorizer"]["authorizerResultTtlInSeconds"] == 0
    assert "securityDefinitions" not in swaggers[""]
    assert not any("security" in spec for item in swaggers[""]["paths"].values() for spec in item.values())
