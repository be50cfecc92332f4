"""What Stratus takes from the AWS runtime it runs in.

* Lambda: a function invocation carries at most 6 MB of event and binary bodies
  arrive base64-encoded, so a chunk of ~4.4 MiB is the most a PATCH can bring.
  On Lambda the advertised and enforced chunk maximum defaults to 4 MiB
  (bootstrap's Lambda platform policy).
* X-Ray: the trace header Lambda sets for each invocation says whether it is sampled.
* http.secret: no secret lives in the repository or the function's configuration.
  ``STRATUS_HTTP_SECRET_PARAMETER`` (or ``http.secretparameter`` in the file) names
  an SSM Parameter Store parameter (``/stratus/prod/http-secret``, a SecureString)
  or a Secrets Manager secret (its ARN, or ``secretsmanager:<name>``); it is fetched
  once per process, with the function's role, when upload state is first signed or
  checked (bootstrap hands the api a callable), so a cold start that only answers
  ``GET /v2/`` or pulls imports no boto3 for it. With the role's static credentials in
  the environment (what Lambda gives a function) the read itself needs no boto3 either:
  aws_secrets.py signs and sends it (otherwise, e.g. a profile or IMDS, boto3 reads).
* redis.password: ``STRATUS_REDIS_PASSWORD_PARAMETER`` names the ElastiCache AUTH
  token the same way (an SSM SecureString, or a Secrets Manager secret); the Redis
  cache reads it when it builds its client, on its first call, never at start-up.
  ``redis.password`` (``REGISTRY_REDIS_PASSWORD``), when set, wins.
* proxy upstream passwords: ``proxy.passwordparameter`` (and per upstream) names one the
  same way; the upstream client (registry/proxy/upstream.py) reads it with
  ``fetch_secret`` on the first upstream challenge, and ``forget_secret`` after the
  upstream refused it (rotated).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("stratus")

LAMBDA_CHUNK_MAX_LENGTH = 4 << 20
SECRET_PARAMETER_ENV = "STRATUS_HTTP_SECRET_PARAMETER"
REDIS_PASSWORD_PARAMETER_ENV = "STRATUS_REDIS_PASSWORD_PARAMETER"
TRACE_HEADER_ENV = "_X_AMZN_TRACE_ID"

_secrets: dict[str, str] = {}
_secrets_lock = threading.Lock()


def on_lambda(environ: Optional[Mapping[str, str]] = None) -> bool:
    environ = os.environ if environ is None else environ
    return bool(environ.get("AWS_LAMBDA_FUNCTION_NAME"))


def lambda_trace_sampled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether the current invocation's X-Ray trace header says Sampled=1."""
    environ = os.environ if environ is None else environ
    header = environ.get(TRACE_HEADER_ENV, "")
    return any(part.strip() == "Sampled=1" for part in header.split(";"))


def secret_parameter(config: "Config", environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Where http.secret is kept: STRATUS_HTTP_SECRET_PARAMETER, else http.secretparameter."""
    environ = os.environ if environ is None else environ
    return environ.get(SECRET_PARAMETER_ENV) or config.http.secretparameter or None


def redis_password_parameter(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Where the Redis AUTH token is kept (STRATUS_REDIS_PASSWORD_PARAMETER), if anywhere."""
    environ = os.environ if environ is None else environ
    return environ.get(REDIS_PASSWORD_PARAMETER_ENV) or None


def fetch_secret(name: str) -> str:
    """The secret's value, fetched once per process and name."""
    cached = _secrets.get(name)
    if cached is not None:
        return cached
    with _secrets_lock:
        if name not in _secrets:
            _secrets[name] = _fetch(name)
            # the name, never the value; an ARN's account is left out
            log.info("secret read from %s", name.split(":", 1)[0] if name.startswith("arn:") else name)
    return _secrets[name]


def forget_secret(name: str) -> None:
    """Read the secret again when next asked (it was found rotated)."""
    with _secrets_lock:
        _secrets.pop(name, None)


def _fetch(name: str) -> str:
    from . import aws_secrets  # standard library only; itself imported only when a secret is read

    if name.startswith("arn:aws:secretsmanager:") or name.startswith("secretsmanager:"):
        service, ident = "secretsmanager", name.split(":", 1)[1] if name.startswith("secretsmanager:") else name
    else:
        service, ident = "ssm", name[4:] if name.startswith("ssm:") else name
    # with the role's static credentials (Lambda's) the request is signed here: no boto3
    where = aws_secrets.endpoint(service)
    value = aws_secrets.read(where, ident) if where is not None else _fetch_with_boto3(service, ident)
    if not value:
        raise ValueError(f"the secret {name!r} is empty")
    return value


def _fetch_with_boto3(service: str, ident: str) -> str:
    import boto3  # the Lambda runtime has it; only a configured parameter pays the import

    # Lambda sets AWS_REGION (and AWS_DEFAULT_REGION); botocore reads only the latter
    session = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None)
    if service == "secretsmanager":
        response = session.client("secretsmanager").get_secret_value(SecretId=ident)
        value = response.get("SecretString")
        if value is None:
            value = response["SecretBinary"].decode("utf-8")
        return value
    return session.client("ssm").get_parameter(Name=ident, WithDecryption=True)["Parameter"]["Value"]
