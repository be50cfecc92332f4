"""skopeo against Stratus on S3 (moto server): through `stratus serve` and through
`chalice local`, an image pushed and pulled back byte-identical, every blob read
redirected (307) to a presigned S3 URL that skopeo follows.

The OCI conformance suite runs here too when STRATUS_OCI_CONFORMANCE names its
binary (built from opencontainers/distribution-spec/conformance): it takes a while.
"""
from __future__ import annotations

import re
import sys
from typing import Iterator

import pytest
import requests

from .clients_images import Layout, assert_same_image, images_dir, needs_tools, pull, push, session_image
from .clients_servers import CHALICE, clean_env, isolated_process, needs_chalice
from .moto_server import MotoS3
from .oci_conformance import requires_conformance, run_oci_conformance
from .servers import ROOT, free_port


@pytest.fixture(scope="module", params=["stratus-serve", pytest.param("chalice-local", marks=needs_chalice)])
def s3_registry(request, moto_s3: MotoS3, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(registry URL, bucket) of a Stratus of each kind storing in a bucket of its own."""
    bucket = moto_s3.create_bucket()
    port = free_port()
    logs = tmp_path_factory.mktemp(request.param)
    env = clean_env({**moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "s3-clients", "PYTHONUNBUFFERED": "1",
                     "PYTHONPATH": str(ROOT)})
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    if request.param == "stratus-serve":
        argv = [sys.executable, "-m", "chalicelib", "serve", "--addr", f"127.0.0.1:{port}", "--workers", "2"]
    else:
        argv = [str(CHALICE), "local", "--stage", "local", "--host", "127.0.0.1", "--port", str(port),
                "--no-autoreload"]
    with isolated_process(argv, port, env, logs / "server.log"):
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + "/v2/", timeout=10).status_code == 200
        yield url, bucket


@pytest.fixture(scope="module")
def small_image(tmp_path_factory) -> Layout:
    return session_image(images_dir(tmp_path_factory), "small")


@needs_tools
def test_skopeo_round_trip_through_s3_redirects(s3_registry, moto_s3, small_image, tmp_path) -> None:
    url, bucket = s3_registry
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


@requires_conformance
def test_oci_conformance_suite_on_s3(s3_registry, tmp_path) -> None:
    url, _ = s3_registry
    done = run_oci_conformance(url, tmp_path)
    assert done.returncode == 0
    assert re.search(r"(?<!\d)0 Failed", done.stdout), done.stdout[-2000:]  # not "10 Failed"
