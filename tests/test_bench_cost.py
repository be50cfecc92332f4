"""bench/cost.py's accounting (issue 13, item 5): the counting proxy in front of moto
classes S3 requests as AWS bills them, and the stand-in's records become Lambda and
API Gateway work."""
from __future__ import annotations

import math

import requests

from bench.cost import API_INCREMENT, CountingProxy, S3Counts, gateway_work, s3_class
from bench.prices import GB, PRICES, usd

from .lambda_gateway import lambda_gateway, runtime_environment
from .moto_server import MotoS3


def test_s3_requests_are_classed_as_aws_prices_them() -> None:
    assert s3_class("PUT", "/bucket/key", "") == "tier1"
    assert s3_class("PUT", "/bucket/key", "partNumber=1&uploadId=x") == "tier1"
    assert s3_class("POST", "/bucket/key", "uploads") == "tier1"
    assert s3_class("GET", "/bucket", "list-type=2&prefix=a") == "tier1"
    assert s3_class("GET", "/bucket/key", "uploadId=x") == "tier1"  # ListParts
    assert s3_class("GET", "/bucket/key", "") == "tier2"
    assert s3_class("HEAD", "/bucket/key", "") == "tier2"
    assert s3_class("DELETE", "/bucket/key", "") == "free"


def test_the_proxy_counts_what_boto3_and_a_presigned_get_do_through_it(moto_s3: MotoS3) -> None:
    import boto3

    bucket = moto_s3.create_bucket()
    with CountingProxy(moto_s3.endpoint) as proxy:
        s3 = boto3.session.Session().client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                                            aws_access_key_id="k", aws_secret_access_key="s")
        s3.put_object(Bucket=bucket, Key="a/data", Body=b"x" * 1000)
        assert s3.get_object(Bucket=bucket, Key="a/data")["Body"].read() == b"x" * 1000
        s3.head_object(Bucket=bucket, Key="a/data")
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/data"]
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "a/data"})
        assert requests.get(url, timeout=30).content == b"x" * 1000
        s3.delete_object(Bucket=bucket, Key="a/data")
        counts = proxy.snapshot()
    # put + list; get + head + presigned get; delete; only the presigned GET left AWS
    assert counts == S3Counts(tier1=2, tier2=3, free=1, out_bytes=1000)


def test_records_become_invocations_billed_milliseconds_and_metered_requests(moto_s3: MotoS3, tmp_path) -> None:
    bucket = moto_s3.create_bucket()
    env = {**runtime_environment(memory_mb=2048), **moto_s3.environment(bucket), "REGISTRY_HTTP_SECRET": "s"}
    with lambda_gateway(env, "http", workdir=tmp_path) as gw:
        client = gw.client()
        assert client("GET", "/v2/").status == 200
        client.push_blob("cost/app", b"y" * (API_INCREMENT + 1), chunk=API_INCREMENT + 1)
        records = gw.records()
    work = gateway_work(records, S3Counts(tier2=10), memory_mb=2048)
    assert work.invocations == len(records) == 4  # GET /v2/, POST, PATCH, PUT
    assert work.api_units == 5  # the PATCH's body is over one 512 KB increment
    assert work.billed_ms == sum(math.ceil(r.duration_ms) for r in records) > 0
    expected = (usd("lambda_request", 4) + usd("lambda_gb_second", work.billed_ms / 1000 * 2)
                + 5 * PRICES["http_api_request"].usd + 10 * PRICES["s3_tier2"].usd)
    assert math.isclose(work.requests_usd(), expected)
    assert math.isclose(S3Counts(out_bytes=GB).out_bytes * 0.09 / GB, usd("transfer_out", 1))
