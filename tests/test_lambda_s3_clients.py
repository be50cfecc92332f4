"""skopeo against Stratus on S3 (moto server): through `stratus serve` and through the
API Gateway + Lambda stand-in (tests/lambda_gateway.py, as an HTTP API and as a REST
API), an image pushed and pulled back byte-identical, every blob read redirected
(307) to a presigned S3 URL that skopeo follows. Through the gateway, a layer bigger
than one invocation carries (~4.4 MiB) fails with the platform's 413: the wall that
`stratus relay` exists to take down.

The OCI conformance suite runs here too when STRATUS_OCI_CONFORMANCE names its
binary (built from opencontainers/distribution-spec/conformance): it takes a while.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Iterator, NamedTuple, Optional

import pytest
import requests

from .clients_images import Layout, assert_same_image, build_image, images_dir, needs_tools, pull, push, session_image
from .clients_servers import clean_env, isolated_process
from .lambda_gateway import EVENT_LIMIT, LambdaGateway, lambda_gateway
from .moto_server import ACCESS_KEY, SECRET_KEY, MotoS3
from .oci_conformance import requires_conformance, run_oci_conformance
from .redis_server import redis_server, requires_redis
from .servers import ROOT, free_port

MiB = 1 << 20


class S3Registry(NamedTuple):
    url: str
    bucket: str
    gateway: Optional[LambdaGateway]  # the stand-in's record, when the registry is the Lambda app


@pytest.fixture(scope="module", params=["stratus-serve", "lambda-http-api", "lambda-rest-api"])
def s3_registry(request, moto_s3: MotoS3, tmp_path_factory) -> Iterator[S3Registry]:
    """A Stratus of each kind storing in a bucket of its own; the Lambda app scales as on
    AWS, a process per concurrently busy instance."""
    bucket = moto_s3.create_bucket()
    logs = tmp_path_factory.mktemp(request.param)
    if request.param.startswith("lambda-"):
        mode = "http" if request.param == "lambda-http-api" else "rest"
        env = {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "s3-clients"}
        with lambda_gateway(env, mode, instances="isolated", workdir=logs) as gateway:
            assert requests.get(gateway.url + "/v2/", timeout=10).status_code == 200
            yield S3Registry(gateway.url, bucket, gateway)
            gateway.assert_nothing_over_the_limit_reached_the_function()
        return
    port = free_port()
    env = clean_env({**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "s3-clients", "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": str(ROOT)})
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}", "--workers", "2"]
    with isolated_process(argv, port, env, logs / "server.log"):
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + "/v2/", timeout=10).status_code == 200
        yield S3Registry(url, bucket, None)


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Layout:
    return session_image(images_dir(tmp_path_factory), "small")


@needs_tools
def test_skopeo_round_trip_through_s3_redirects(s3_registry, moto_s3, small_image, tmp_path) -> None:
    url, bucket, gateway = s3_registry
    push(small_image.path, "v1", url, "s3/app", "v1")
    copy = Layout(tmp_path / "copy")
    pull(url, "s3/app", "v1", copy.path, "v1")
    top = assert_same_image(small_image, "v1", copy, "v1")
    # every blob of the image is read from S3 through a redirect, not from the registry
    for digest in list(small_image.closure(top))[1:]:
        response = requests.get(f"{url}/v2/s3/app/blobs/{digest}", allow_redirects=False, timeout=10)
        assert response.status_code == 307
        assert response.headers["Location"].startswith(f"{moto_s3.endpoint}/{bucket}/docker/registry/v2/blobs/")
    keys = {o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket, Prefix="docker/")["Contents"]}
    assert f"docker/registry/v2/repositories/s3/app/_manifests/revisions/sha256/{top[7:]}/link" in keys
    assert not moto_s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    if gateway is not None:
        assert gateway.invocations() and all(r.status < 500 for r in gateway.records())


@needs_tools
@requires_redis
def test_skopeo_through_a_function_configured_as_the_prod_stage(moto_s3, small_image, tmp_path) -> None:
    """The prod stage's secrets and cache as deployed: http.secret and the ElastiCache AUTH
    token in SSM, read with the role's static credentials (aws_secrets.py, no boto3), and
    Redis over TLS with that token (stats over cache/resp.py, writes over redis-py).
    Through a REST API (what `chalice deploy` creates) on instances that start cold, the
    image comes back identical, nothing over the platform's limits reached the function,
    and the pull's descriptors were read from Redis."""
    token, secret = os.urandom(16).hex(), os.urandom(24).hex()
    with redis_server(tmp_path / "redis", password=token, tls=True) as cache:
        assert cache.tls is not None
        ssm = moto_s3.client("ssm")
        names = {"secret": f"/stratus/prod-like/{os.urandom(4).hex()}/http-secret",
                 "token": f"/stratus/prod-like/{os.urandom(4).hex()}/redis-auth-token"}
        ssm.put_parameter(Name=names["secret"], Value=secret, Type="SecureString")
        ssm.put_parameter(Name=names["token"], Value=token, Type="SecureString")
        env = {**moto_s3.environment(moto_s3.create_bucket()),
               "STRATUS_HTTP_SECRET_PARAMETER": names["secret"],
               "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "REGISTRY_REDIS_ADDR": cache.addr,
               "REGISTRY_REDIS_TLS": "true", "STRATUS_REDIS_PASSWORD_PARAMETER": names["token"],
               "SSL_CERT_FILE": str(cache.tls.ca),  # trusted as the system's CAs trust ElastiCache's
               # the function's role, here moto's: static credentials, as Lambda gives them
               "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint}
        with lambda_gateway(env, "rest", instances="isolated", workdir=tmp_path) as gateway:
            push(small_image.path, "v1", gateway.url, "prod/app", "v1")
            hits = int(cache.client().info("stats")["keyspace_hits"])
            copy = Layout(tmp_path / "copy")
            pull(gateway.url, "prod/app", "v1", copy.path, "v1")
            assert_same_image(small_image, "v1", copy, "v1")
            gateway.assert_nothing_over_the_limit_reached_the_function()
            assert all(r.status < 500 for r in gateway.records())
        assert int(cache.client().info("stats")["keyspace_hits"]) > hits


@pytest.fixture(scope="module")
def six_mib_layer_image(tmp_path_factory) -> Layout:
    """One layer of 6 MiB of random bytes: gzip leaves it ~6 MiB, over what an invocation carries."""
    return build_image(images_dir(tmp_path_factory) / "layout-six-mib", "six", {"big.bin": os.urandom(6 * MiB)})


@needs_tools
def test_a_layer_over_4_4_mib_in_one_request_meets_the_platform_413(s3_registry, six_mib_layer_image) -> None:
    """skopeo (like docker, podman, crane) sends a layer in one request: through API Gateway
    + Lambda it is refused before the function runs, and the push fails. Not so on
    `stratus serve`. `stratus relay` (chalicelib/relay) is what takes this wall down."""
    url, _, gateway = s3_registry
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
            f"oci:{six_mib_layer_image.path}:six", f"docker://{url.split('://', 1)[1]}/s3/wall:six"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if gateway is None:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode != 0, "the push went through a 6 MB invocation limit"
    assert "413" in done.stderr or "Request Too Long" in done.stderr, done.stderr
    refused = [r for r in gateway.records() if r.outcome == "request-too-long"]
    assert refused, gateway.records()
    assert all(r.body_bytes > 4 * MiB and r.event_bytes > EVENT_LIMIT and not r.reached_function for r in refused)
    assert requests.get(f"{url}/v2/s3/wall/manifests/six", timeout=10).status_code == 404


@requires_conformance
def test_oci_conformance_suite_on_s3(s3_registry, tmp_path) -> None:
    done = run_oci_conformance(s3_registry.url, tmp_path)
    assert done.returncode == 0
    assert re.search(r"(?<!\d)0 Failed", done.stdout), done.stdout[-2000:]  # not "10 Failed"


@needs_tools
@pytest.mark.parametrize("mode", ["http", "rest"])
def test_htpasswd_credentials_work_through_an_http_api_not_a_rest_api(moto_s3, small_image, tmp_path, mode) -> None:
    """A REST API (what `chalice deploy` creates) hands the registry's challenge to clients
    as x-amzn-Remapped-WWW-Authenticate, so skopeo never learns to send its credentials and
    a push is refused; through an HTTP API (infra/terraform/aws) the same push works.
    `stratus relay` in front of a REST API restores the challenge (tests/test_relay.py)."""
    import bcrypt

    entry = "alice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    env = {**moto_s3.environment(moto_s3.create_bucket()), "REGISTRY_HTTP_SECRET": "s3-clients",
           "REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "Stratus",
           "REGISTRY_AUTH_HTPASSWD_ENV": "STRATUS_HTPASSWD", "STRATUS_HTPASSWD": entry}
    with lambda_gateway(env, mode, workdir=tmp_path) as gateway:
        argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                "--dest-creds", "alice:secret", f"oci:{small_image.path}:v1", f"docker://{gateway.host}/auth/app:v1"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        pushed = requests.get(f"{gateway.url}/v2/auth/app/manifests/v1", auth=("alice", "secret"), timeout=10)
        statuses = [r.status for r in gateway.records()]
    if mode == "http":
        assert done.returncode == 0, done.stderr
        assert pushed.status_code == 200
    else:
        assert done.returncode != 0 and "authentication required" in done.stderr, done.stderr
        assert pushed.status_code == 404  # the credentials work; skopeo just never sent them
        assert 201 not in statuses
