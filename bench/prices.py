"""AWS list prices that bench/cost.py turns measured work into dollars with.

Region us-east-1 (N. Virginia), on-demand, no free tier, first pricing tier of each
service (the volumes here are far below the first breakpoint). The figures are AWS's
public pricing pages as they stood at AS_OF (written down from them, not fetched by
this code, and not re-checked when this table was written on WRITTEN); check them
against the pages before relying on a figure, and change AS_OF when you do.
"""
from __future__ import annotations

from dataclasses import dataclass

REGION = "us-east-1"
AS_OF = "2024-12"  # the pricing pages' state these numbers come from
WRITTEN = "2026-12-04"
GB = 1 << 30  # AWS bills storage and transfer per GB of 2^30 bytes


@dataclass(frozen=True)
class Price:
    usd: float
    per: str
    source: str  # the page (and line) the number comes from


PRICES: dict[str, Price] = {
    # aws.amazon.com/lambda/pricing/ - x86, "Price per 1M requests" and "Duration, per GB-second"
    # (first 6 billion GB-seconds per month); duration is billed per 1 ms, rounded up
    "lambda_request": Price(0.20 / 1e6, "request", "aws.amazon.com/lambda/pricing/ (Requests: $0.20 per 1M)"),
    "lambda_gb_second": Price(0.0000166667, "GB-second",
                              "aws.amazon.com/lambda/pricing/ (x86 duration: $0.0000166667 per GB-second)"),
    # aws.amazon.com/api-gateway/pricing/ - HTTP APIs: $1.00 per million for the first 300
    # million, each request metered in 512 KB increments; REST APIs: $3.50 per million
    # for the first 333 million (no increments)
    "http_api_request": Price(1.00 / 1e6, "request (512 KB increment)",
                              "aws.amazon.com/api-gateway/pricing/ (HTTP APIs: $1.00 per million, 512 KB increments)"),
    "rest_api_request": Price(3.50 / 1e6, "request",
                              "aws.amazon.com/api-gateway/pricing/ (REST APIs: $3.50 per million)"),
    # aws.amazon.com/s3/pricing/ - S3 Standard
    "s3_storage": Price(0.023, "GB-month", "aws.amazon.com/s3/pricing/ (Standard, first 50 TB: $0.023 per GB)"),
    "s3_tier1": Price(0.005 / 1000, "PUT, COPY, POST or LIST request",
                      "aws.amazon.com/s3/pricing/ (PUT, COPY, POST, LIST: $0.005 per 1,000)"),
    "s3_tier2": Price(0.0004 / 1000, "GET, HEAD or other request",
                      "aws.amazon.com/s3/pricing/ (GET, SELECT and all other: $0.0004 per 1,000; DELETE free)"),
    # aws.amazon.com/s3/pricing/ (Data transfer) and aws.amazon.com/ec2/pricing/on-demand/
    # (Data transfer): out to the internet, first 10 TB per month (after the account-wide
    # 100 GB free per month, not counted here); in is free; S3 to Lambda in one region free
    "transfer_out": Price(0.09, "GB", "aws.amazon.com/s3/pricing/ (Data Transfer OUT to internet, "
                                      "first 10 TB: $0.09 per GB; IN: $0.00)"),
    # aws.amazon.com/ecr/pricing/ - storage per GB-month; data transferred out at EC2's
    # internet rates (the line above); pushes, pulls and API calls carry no request charge
    "ecr_storage": Price(0.10, "GB-month", "aws.amazon.com/ecr/pricing/ (Storage: $0.10 per GB-month)"),
}


def usd(name: str, quantity: float) -> float:
    return PRICES[name].usd * quantity


def describe() -> list[tuple[str, str]]:
    """Rows for the report's settings table: each price and where it comes from."""
    head = [("Prices", f"AWS list prices, {REGION}, as of {AS_OF} (bench/prices.py; written {WRITTEN}, "
                       "not re-fetched)")]
    return head + [(f"  {name}", f"${p.usd:.10g} per {p.per}: {p.source}") for name, p in PRICES.items()]
