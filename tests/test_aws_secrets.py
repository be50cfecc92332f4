"""Secrets read without botocore (aws_secrets.py): SigV4 for SSM and Secrets Manager equal
to botocore's, the same values as the boto3 read against moto's server, no SDK imported
by a cold process, and boto3 wherever the environment asks for more than static keys."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from chalicelib import aws_runtime, aws_secrets, sigv4
from tests.moto_server import ACCESS_KEY, SECRET_KEY, MotoS3
from tests.servers import ROOT, serving

NOW = datetime(2026, 12, 5, 0, 7, 9, tzinfo=timezone.utc)
CREDENTIALS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzE//token+/=")
JSON = "application/x-amz-json-1.1"
# every variable the decision reads, cleared so that the machine's own cannot decide a test
_DECIDING = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM",
             "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_CA_BUNDLE",
             "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_USE_FIPS_ENDPOINT",
             "AWS_USE_DUALSTACK_ENDPOINT", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")


@pytest.fixture
def role(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path) -> MotoS3:
    """This process as a function whose role's keys are in the environment, AWS at moto's server."""
    for name in _DECIDING:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/config of the machine's
    for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                        ("AWS_SESSION_TOKEN", "session-token"), ("AWS_REGION", "us-east-1"),
                        ("AWS_ENDPOINT_URL", moto_s3.endpoint)):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(aws_runtime, "_secrets", {})
    return moto_s3


@pytest.fixture
def no_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(service: str, ident: str) -> str:
        raise AssertionError(f"boto3 read {service} {ident}")

    monkeypatch.setattr(aws_runtime, "_fetch_with_boto3", refuse)


def _unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


# -- signing: equal to botocore's SigV4Auth ------------------------------------------------


@pytest.mark.parametrize("token", [CREDENTIALS.token, None], ids=["session-token", "no-token"])
@pytest.mark.parametrize("service, target, params, url", [
    ("ssm", "AmazonSSM.GetParameter", {"Name": "/stratus/prod/http-secret", "WithDecryption": True},
     "https://ssm.eu-west-1.amazonaws.com"),
    ("secretsmanager", "secretsmanager.GetSecretValue", {"SecretId": "arn:aws:secretsmanager:eu-west-1:1:secret:x"},
     "http://127.0.0.1:4566"),
])
def test_signature_equals_botocores(monkeypatch, token, service, target, params, url) -> None:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: NOW.replace(tzinfo=None))
    credentials = CREDENTIALS._replace(token=token)
    body = json.dumps(params).encode()
    headers = {"Content-Type": JSON, "X-Amz-Target": target}
    ours = sigv4.sign_headers("POST", url.split("://")[1], "/", "", dict(headers), credentials, "eu-west-1", NOW,
                              service=service, body=body)

    request = AWSRequest(method="POST", url=url + "/", data=body, headers=dict(headers))
    botocore.auth.SigV4Auth(Credentials(*credentials), service, "eu-west-1").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert f"/eu-west-1/{service}/aws4_request" in ours["Authorization"]
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")
    # the payload is signed by its hash in the canonical request; no header carries it
    assert "x-amz-content-sha256" not in ours and "X-Amz-Content-SHA256" not in request.headers


# -- against moto's server: the values boto3 reads -------------------------------------------


def _store(moto: MotoS3, kind: str) -> tuple[str, str]:
    """(the name as configured, the value) of a fresh parameter or secret of this kind."""
    value = _unique("sécret value")
    if kind == "ssm":
        name = _unique("/stratus/test/http-secret")
        moto.client("ssm").put_parameter(Name=name, Value=value, Type="SecureString")
        return name, value
    if kind == "ssm-prefixed":
        name = _unique("/stratus/test/prefixed")
        moto.client("ssm").put_parameter(Name=name, Value=value, Type="SecureString")
        return f"ssm:{name}", value
    secrets = moto.client("secretsmanager")
    if kind == "secret-binary":
        created = secrets.create_secret(Name=_unique("stratus-binary"), SecretBinary=value.encode())
    else:
        created = secrets.create_secret(Name=_unique("stratus-string"), SecretString=value)
    return (created["ARN"] if kind == "secret-arn" else f"secretsmanager:{created['Name']}"), value


@pytest.mark.parametrize("kind", ["ssm", "ssm-prefixed", "secret-string", "secret-binary", "secret-arn"])
def test_light_read_gives_what_boto3_reads(role, monkeypatch, kind) -> None:
    name, value = _store(role, kind)
    boto3_read, asked = aws_runtime._fetch_with_boto3, []
    monkeypatch.setattr(aws_runtime, "_fetch_with_boto3", lambda *a: asked.append(a) or boto3_read(*a))
    assert aws_runtime.fetch_secret(name) == value
    assert asked == []
    aws_runtime.forget_secret(name)
    monkeypatch.setattr(aws_secrets, "endpoint", lambda service, environ=None: None)  # boto3's turn
    assert aws_runtime.fetch_secret(name) == value
    assert len(asked) == 1


@pytest.mark.parametrize("kind, code", [("ssm", "ParameterNotFound"), ("secret-string", "ResourceNotFoundException")])
def test_a_missing_secret_names_the_services_error(role, no_boto3, kind, code) -> None:
    name = _unique("/stratus/test/absent") if kind == "ssm" else _unique("secretsmanager:stratus-absent")
    with pytest.raises(aws_secrets.SecretReadError, match=code) as refused:
        aws_runtime.fetch_secret(name)
    assert refused.value.code == code and 400 <= refused.value.status < 500
    assert aws_runtime._secrets == {}


def test_the_service_endpoint_variable_wins_over_the_global_one(role, no_boto3, monkeypatch) -> None:
    name, value = _store(role, "ssm")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nobody answers
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", role.endpoint)
    assert aws_runtime.fetch_secret(name) == value


_PROBE = """\
import json, sys
sys.path.insert(0, {root!r})
from chalicelib import aws_runtime
value = aws_runtime.fetch_secret({name!r})
print(json.dumps({{"value": value, "sdk": sorted(m for m in ("boto3", "botocore") if m in sys.modules)}}))
"""


def test_a_cold_process_reads_a_secret_without_any_sdk(role, tmp_path) -> None:
    name, value = _store(role, "ssm")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": role.endpoint}
    out = subprocess.run([sys.executable, "-I", "-c", _PROBE.format(root=str(ROOT), name=name)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == {"value": value, "sdk": []}


# -- which path reads ------------------------------------------------------------------------

KEYS = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_REGION": "eu-west-1"}


@pytest.mark.parametrize("environ, service, url", [
    (KEYS, "ssm", "https://ssm.eu-west-1.amazonaws.com"),
    (KEYS, "secretsmanager", "https://secretsmanager.eu-west-1.amazonaws.com"),
    ({**KEYS, "AWS_REGION": "", "AWS_DEFAULT_REGION": "ap-south-1"}, "ssm", "https://ssm.ap-south-1.amazonaws.com"),
    ({**KEYS, "AWS_ENDPOINT_URL": "http://g:1"}, "ssm", "http://g:1"),
    ({**KEYS, "AWS_ENDPOINT_URL": "http://g:1", "AWS_ENDPOINT_URL_SSM": "http://s:2"}, "ssm", "http://s:2"),
    ({**KEYS, "AWS_ENDPOINT_URL_SSM": "http://s:2"}, "secretsmanager", "https://secretsmanager.eu-west-1.amazonaws.com"),
    ({**KEYS, "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://m:3/"}, "secretsmanager", "http://m:3/"),
    ({**KEYS, "AWS_ENDPOINT_URL": "http://g:1", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "True"}, "ssm",
     "https://ssm.eu-west-1.amazonaws.com"),
    ({**KEYS, "AWS_REGION": "cn-north-1", "AWS_ENDPOINT_URL": "http://g:1"}, "ssm", "http://g:1"),
    # boto3's: its provider chain, its config, its partitions, or a URL with a path of its own
    ({"AWS_ACCESS_KEY_ID": "AK", "AWS_REGION": "eu-west-1"}, "ssm", None),
    ({**KEYS, "AWS_REGION": ""}, "ssm", None),
    ({**KEYS, "AWS_PROFILE": "prod"}, "ssm", None),
    ({**KEYS, "AWS_CONFIG_FILE": "/etc/aws"}, "ssm", None),
    ({**KEYS, "HTTPS_PROXY": "http://proxy:3128"}, "secretsmanager", None),
    ({**KEYS, "AWS_USE_FIPS_ENDPOINT": "true"}, "ssm", None),
    ({**KEYS, "AWS_REGION": "cn-north-1"}, "ssm", None),
    ({**KEYS, "AWS_ENDPOINT_URL": "http://g:1/base"}, "ssm", None),
])
def test_the_light_read_is_chosen_only_where_boto3_would_do_alike(monkeypatch, tmp_path, environ, service,
                                                                   url) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    where = aws_secrets.endpoint(service, environ)
    assert (where and where.url) == url
    if where:
        assert where.region == (environ.get("AWS_REGION") or environ["AWS_DEFAULT_REGION"])
        assert where.credentials == ("AK", "SK", None)


def test_an_aws_config_file_leaves_the_read_to_boto3(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert aws_secrets.endpoint("ssm", KEYS)
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\nendpoint_url = http://elsewhere\n")
    assert aws_secrets.endpoint("ssm", KEYS) is None


@pytest.mark.parametrize("change", [{"AWS_PROFILE": "prod"}, {"AWS_ACCESS_KEY_ID": None}],
                         ids=["profile", "no-static-keys"])
def test_fetch_secret_reads_through_boto3_otherwise(role, monkeypatch, change) -> None:
    for name, value in change.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(aws_secrets, "read", lambda *a: pytest.fail("read without boto3"))
    asked = []
    monkeypatch.setattr(aws_runtime, "_fetch_with_boto3", lambda service, ident: asked.append((service, ident)) or "v")
    assert aws_runtime.fetch_secret("ssm:/stratus/prod/http-secret") == "v"
    assert aws_runtime.fetch_secret("secretsmanager:stratus-prod") == "v"
    assert asked == [("ssm", "/stratus/prod/http-secret"), ("secretsmanager", "stratus-prod")]


# -- retries and refusals, from a scripted stand-in ----------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of `script`, recording the requests."""

    script: list[tuple[int, Any]] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Scripted.seen.append({"target": self.headers["X-Amz-Target"], "type": self.headers["Content-Type"],
                               "auth": self.headers["Authorization"], "body": json.loads(body)})
        status, answer = _Scripted.script.pop(0)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stand_in(role, monkeypatch) -> Iterator[str]:
    _Scripted.script, _Scripted.seen = [], []
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)) as port:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"


def test_server_errors_and_throttling_are_retried(stand_in, no_boto3) -> None:
    _Scripted.script = [(500, {"__type": "InternalServerError", "message": "oops"}),
                        (400, {"__type": "ThrottlingException", "message": "Rate exceeded"}),
                        (200, {"Parameter": {"Name": "/p", "Value": "third time"}})]
    assert aws_runtime.fetch_secret("/p") == "third time"
    assert [s["body"] for s in _Scripted.seen] == [{"Name": "/p", "WithDecryption": True}] * 3
    assert {(s["target"], s["type"]) for s in _Scripted.seen} == {("AmazonSSM.GetParameter", JSON)}
    assert "/us-east-1/ssm/aws4_request" in _Scripted.seen[0]["auth"]


def test_retries_end(stand_in, no_boto3) -> None:
    _Scripted.script = [(503, {"__type": "ServiceUnavailable", "message": "down"})] * aws_secrets.MAX_ATTEMPTS
    with pytest.raises(aws_secrets.SecretReadError, match="ServiceUnavailable"):
        aws_runtime.fetch_secret("/p")
    assert len(_Scripted.seen) == aws_secrets.MAX_ATTEMPTS


def test_a_refusal_is_not_retried_and_names_the_error_not_the_value(stand_in, no_boto3) -> None:
    _Scripted.script = [(400, {"__type": "com.amazonaws.secretsmanager#AccessDeniedException",
                               "Message": "not authorized to perform secretsmanager:GetSecretValue"})]
    with pytest.raises(aws_secrets.SecretReadError) as refused:
        aws_runtime.fetch_secret("secretsmanager:stratus-prod")
    assert str(refused.value) == ("An error occurred (AccessDeniedException) when calling the GetSecretValue "
                                  "operation: not authorized to perform secretsmanager:GetSecretValue")
    assert [s["body"] for s in _Scripted.seen] == [{"SecretId": "stratus-prod"}]
    assert _Scripted.seen[0]["target"] == "secretsmanager.GetSecretValue"


def test_an_unreachable_endpoint_fails_after_the_attempts(role, no_boto3, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(aws_secrets.SecretReadError, match="could not reach http://127.0.0.1:9"):
        aws_runtime.fetch_secret("/p")


def test_an_empty_secret_is_refused(stand_in, no_boto3) -> None:
    # (neither SSM nor moto stores one; a secret's version could be empty)
    _Scripted.script = [(200, {"Name": "stratus-empty", "SecretString": ""})]
    with pytest.raises(ValueError, match="'secretsmanager:stratus-empty' is empty"):
        aws_runtime.fetch_secret("secretsmanager:stratus-empty")
    assert aws_runtime._secrets == {}
