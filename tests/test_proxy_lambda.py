"""The pull-through cache on S3 (moto) through the API Gateway + Lambda stand-in
(tests/lambda_gateway.py, with Lambda's 6 MB / 30 s limits): no blob byte passes
through the function. A cold blob is copied into the bucket within the request and
redirected (307) to S3; one larger than proxy.inlinelimit is copied by another
invocation while the client reads it from the upstream (open upstream) or waits
through self-redirects (authenticated upstream); skopeo pulls cold and again with the
upstream stopped."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import requests

from .clients_images import Layout, assert_same_image, images_dir, needs_tools, pull, session_image
from .clients_servers import needs_reference
from .lambda_gateway import lambda_gateway
from .moto_server import MotoS3
from .test_proxy import push_to, put_blob
from .upstream_registry import PASSWORD, USER, htpasswd_auth, reference_upstream

pytestmark = [needs_reference]
MiB = 1 << 20


def gateway_env(moto_s3: MotoS3, bucket: str, upstream_url: str, **extra: str) -> dict[str, str]:
    return {**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "proxy-lambda",
            "REGISTRY_PROXY_REMOTEURL": upstream_url, **extra}


def stored_keys(moto_s3: MotoS3, bucket: str, prefix: str) -> set[str]:
    listed = moto_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"] for o in listed.get("Contents", [])}


def blob_key(digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


@needs_tools
def test_skopeo_pulls_through_lambda_cold_then_with_the_upstream_stopped(
        moto_s3: MotoS3, tmp_path: Path, tmp_path_factory) -> None:
    small = session_image(images_dir(tmp_path_factory), "small")
    bucket = moto_s3.create_bucket()
    with reference_upstream(tmp_path / "upstream") as upstream:
        push_to(upstream, small, "v1", "team/app", "v1")
        with lambda_gateway(gateway_env(moto_s3, bucket, upstream.url), workdir=tmp_path) as gateway:
            cold = Layout(tmp_path / "cold")
            pull(gateway.url, "team/app", "v1", cold.path, "v1")
            top = assert_same_image(small, "v1", cold, "v1")
            gateway.assert_nothing_over_the_limit_reached_the_function()
        stopped = upstream
    with lambda_gateway(gateway_env(moto_s3, bucket, stopped.url), workdir=tmp_path) as gateway:
        warm = Layout(tmp_path / "warm")
        pull(gateway.url, "team/app", "v1", warm.path, "v1")
        assert_same_image(small, "v1", warm, "v1")
        # once cached, every blob read is a redirect to S3, never bytes through the function
        for digest in list(small.closure(top))[1:]:
            response = requests.get(f"{gateway.url}/v2/team/app/blobs/{digest}", allow_redirects=False, timeout=30)
            assert response.status_code == 307, response.text
            assert response.headers["Location"].startswith(f"{moto_s3.endpoint}/{bucket}/{blob_key(digest)}")
        assert all(r.status < 500 for r in gateway.records())


def test_sixteen_concurrent_cold_pulls_through_lambda_fetch_once_and_redirect(
        moto_s3: MotoS3, tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    bucket = moto_s3.create_bucket()
    with reference_upstream(tmp_path / "upstream") as upstream:
        digest = put_blob(upstream.url, "team/big", data)
        with lambda_gateway(gateway_env(moto_s3, bucket, upstream.url), workdir=tmp_path) as gateway:
            results: list[Optional[bytes]] = [None] * 16
            barrier = threading.Barrier(16)

            def pull_blob(i: int) -> None:
                barrier.wait()
                response = requests.get(f"{gateway.url}/v2/team/big/blobs/{digest}", timeout=120)
                results[i] = response.content if response.status_code == 200 else None

            threads = [threading.Thread(target=pull_blob, args=(i,)) for i in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(180)
            assert all(r == data for r in results)
            assert upstream.blob_gets(digest) == 1
            # the bytes came from S3: every answer of the function was a redirect
            blob_answers = [r for r in gateway.invocations() if "/blobs/" in r.path]
            assert len(blob_answers) == 16 and {r.status for r in blob_answers} == {307}
            assert blob_key(digest) in stored_keys(moto_s3, bucket, "docker/registry/v2/blobs/")


@pytest.mark.parametrize("protected", [False, True], ids=["open-upstream", "htpasswd-upstream"])
def test_a_blob_over_the_inline_limit_never_fails_the_client(
        moto_s3: MotoS3, tmp_path: Path, protected: bool) -> None:
    """12 MiB with proxy.inlinelimit 4 MiB: more than an invocation may answer with. An
    open upstream's own URL is handed to the client; behind htpasswd the client waits
    through self-redirects. Either way another invocation copies it into the bucket. In
    the htpasswd case Stratus itself asks clients for credentials too: the fill request
    it sends itself passes on its signed token alone."""
    data = os.urandom(12 * MiB)
    bucket = moto_s3.create_bucket()
    auth = htpasswd_auth(tmp_path) if protected else None
    credentials = (USER, PASSWORD) if protected else None
    with reference_upstream(tmp_path / "upstream", auth, credentials=credentials) as upstream:
        digest = put_blob(upstream.url, "team/large", data, auth=credentials)
        extra = {"REGISTRY_PROXY_INLINELIMIT": str(4 * MiB)}
        client_auth = None
        if protected:
            extra.update(REGISTRY_PROXY_USERNAME=USER, REGISTRY_PROXY_PASSWORD=PASSWORD, REGISTRY_AUTH="htpasswd",
                         REGISTRY_AUTH_HTPASSWD_REALM="stratus",
                         REGISTRY_AUTH_HTPASSWD_PATH=str(tmp_path / "upstream.htpasswd"))
            client_auth = (USER, PASSWORD)
        with lambda_gateway(gateway_env(moto_s3, bucket, upstream.url, **extra), workdir=tmp_path) as gateway:
            url = f"{gateway.url}/v2/team/large/blobs/{digest}"
            if protected:
                assert requests.get(url, allow_redirects=False, timeout=60).status_code == 401
                # a fill header that is not ours is refused, and starts nothing
                forged = requests.get(url, headers={"X-Stratus-Proxy-Fill": "forged"}, allow_redirects=False,
                                      timeout=60)
                assert forged.status_code in (401, 403)
                assert upstream.blob_gets(digest) == 0
            first = requests.get(url, allow_redirects=False, timeout=60, auth=client_auth)
            assert first.status_code == 307, first.text
            location = first.headers["Location"]
            if protected:
                assert location.startswith(url + "?_proxywait=1")
            else:
                assert location.startswith(upstream.url + "/v2/team/large/blobs/")
            # what a client does: follow the redirects to the bytes
            response = requests.get(url, timeout=300, auth=client_auth)
            assert response.status_code == 200 and response.content == data
            # the copy lands in the bucket, after which reads go there
            deadline = time.monotonic() + 60
            while blob_key(digest) not in stored_keys(moto_s3, bucket, "docker/registry/v2/blobs/"):
                assert time.monotonic() < deadline, "the fill never stored the blob"
                time.sleep(0.5)
            cached = requests.get(url, allow_redirects=False, timeout=60, auth=client_auth)
            assert cached.status_code == 307
            assert cached.headers["Location"].startswith(f"{moto_s3.endpoint}/{bucket}/{blob_key(digest)}")
            assert moto_s3.client().get_object(Bucket=bucket, Key=blob_key(digest))["Body"].read() == data
            gateway.assert_nothing_over_the_limit_reached_the_function()
            assert all(r.status < 500 for r in gateway.records()), [(r.path, r.status) for r in gateway.records()]
            # the fill's copy; an open upstream's client read its copy too (unless the fill was
            # done before it followed the redirect); behind htpasswd a GET probed for a redirect
            # (and probes again if the client's retry comes before the fill is done)
            assert 1 <= upstream.blob_gets(digest) <= (3 if protected else 2)


# -- the upstream password from SSM / Secrets Manager ------------------------------------------------


@pytest.mark.parametrize("store", ["ssm", "secretsmanager"])
def test_upstream_password_from_a_parameter_pulls_from_an_htpasswd_upstream(
        moto_s3: MotoS3, tmp_path: Path, store: str) -> None:
    """The function's environment names the password (REGISTRY_PROXY_PASSWORDPARAMETER, as
    infra/terraform/aws sets it) and holds no password; it is read with the function's
    role (here moto's) on the first upstream challenge. One it cannot read leaves what is
    cached served and what is not a 503."""
    from .moto_server import ACCESS_KEY, SECRET_KEY

    data = os.urandom(MiB)
    bucket = moto_s3.create_bucket()
    if store == "ssm":
        name = f"/stratus/test/proxy-password-{time.time_ns()}"
        moto_s3.client("ssm").put_parameter(Name=name, Value=PASSWORD, Type="SecureString")
    else:
        name = "secretsmanager:" + moto_s3.client("secretsmanager").create_secret(
            Name=f"stratus-proxy-password-{time.time_ns()}", SecretString=PASSWORD)["Name"]
    role = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL_SSM": moto_s3.endpoint, "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_s3.endpoint}
    auth = htpasswd_auth(tmp_path)
    with reference_upstream(tmp_path / "upstream", auth, credentials=(USER, PASSWORD)) as upstream:
        digest = put_blob(upstream.url, "team/private", data, auth=(USER, PASSWORD))
        env = gateway_env(moto_s3, bucket, upstream.url, REGISTRY_PROXY_USERNAME=USER,
                          REGISTRY_PROXY_PASSWORDPARAMETER=name, **role)
        with lambda_gateway(env, workdir=tmp_path) as gateway:
            assert requests.get(f"{gateway.url}/v2/", timeout=30).status_code == 200
            response = requests.get(f"{gateway.url}/v2/team/private/blobs/{digest}", timeout=60)
            assert response.status_code == 200 and response.content == data
            assert upstream.blob_gets(digest) == 1
            assert blob_key(digest) in stored_keys(moto_s3, bucket, "docker/registry/v2/blobs/")
    # a parameter the function cannot read: what is not cached cannot be fetched (503),
    # what is cached is still served
    with reference_upstream(tmp_path / "upstream2", auth, credentials=(USER, PASSWORD)) as upstream:
        missing = put_blob(upstream.url, "team/private", os.urandom(MiB), auth=(USER, PASSWORD))
        env = gateway_env(moto_s3, bucket, upstream.url, REGISTRY_PROXY_USERNAME=USER,
                          REGISTRY_PROXY_PASSWORDPARAMETER=name + "-absent", **role)
        with lambda_gateway(env, workdir=tmp_path) as gateway:
            refused = requests.get(f"{gateway.url}/v2/team/private/blobs/{missing}", timeout=60)
            assert refused.status_code == 503, refused.text
            assert "could not be read" in refused.text
            cached = requests.get(f"{gateway.url}/v2/team/private/blobs/{digest}", allow_redirects=False, timeout=60)
            assert cached.status_code == 307
            assert upstream.blob_gets(missing) == 0
