"""AWS list prices that bench/cost.py turns measured work into dollars with.

Region us-east-1 (N. Virginia), on-demand, no free tier, first pricing tier of each
service (the volumes here are far below the first breakpoint). The figures were first
written down from memory of AWS's pricing pages as of 2024-12. On CHECKED each was
looked up in the stored public documentation this repository's sessions can search
(AWS's pricing pages render their tables client-side, so their stored text holds no
numbers): each Price says what it was checked against. `verified` names an AWS page
that states the figure; `corroborated` names only third-party pages (dated) that
quote the AWS page; a price with neither could not be checked and is kept as
written. Not fetched by this code: re-check before relying on a figure, and update
CHECKED and the notes when you do.

Not priced here: Lambda bills the initialization phase too ("duration charges apply
to ... initialization code that is declared outside of the handler", the Lambda
pricing page as stored), so a cold instance adds its init time to the first request's
billed duration; bench/cost.py prices invocations measured on warm instances.
"""
from __future__ import annotations

from dataclasses import dataclass

REGION = "us-east-1"
AS_OF = "2024-12, checked 2026-12-04"  # written from the 2024-12 pages; see each price's check
CHECKED = "2026-12-04"
WRITTEN = "2026-12-04"
GB = 1 << 30  # AWS bills storage and transfer per GB of 2^30 bytes


@dataclass(frozen=True)
class Price:
    usd: float
    per: str
    source: str  # the page (and line) the number comes from
    verified: str = ""  # an AWS page stating this figure, as found on CHECKED
    corroborated: str = ""  # third-party pages quoting it (no AWS page found)

    @property
    def status(self) -> str:
        if self.verified:
            return f"verified {CHECKED}: {self.verified}"
        if self.corroborated:
            return f"not verified on an AWS page; corroborated {CHECKED} by {self.corroborated}"
        return f"unverified: no stored page states it ({CHECKED}); as written from 2024-12"


PRICES: dict[str, Price] = {
    # aws.amazon.com/lambda/pricing/ - x86, "Price per 1M requests" and "Duration, per GB-second"
    # (first 6 billion GB-seconds per month); duration is billed per 1 ms, rounded up
    "lambda_request": Price(0.20 / 1e6, "request", "aws.amazon.com/lambda/pricing/ (Requests: $0.20 per 1M)",
                            verified="docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/lambda.html "
                                     "($0.20 per 1 million requests)"),
    "lambda_gb_second": Price(0.0000166667, "GB-second",
                              "aws.amazon.com/lambda/pricing/ (x86 duration: $0.0000166667 per GB-second)",
                              verified="docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/lambda.html "
                                       "($0.00001667 per GB-second, rounded; the 10-digit figure x86 first tier "
                                       "in cloudchipr.com/blog/aws-lambda-pricing, us-east-1)"),
    # aws.amazon.com/api-gateway/pricing/ - HTTP APIs: $1.00 per million for the first 300
    # million, each request metered in 512 KB increments; REST APIs: $3.50 per million
    # for the first 333 million (no increments)
    "http_api_request": Price(1.00 / 1e6, "request (512 KB increment)",
                              "aws.amazon.com/api-gateway/pricing/ (HTTP APIs: $1.00 per million, 512 KB increments)",
                              verified="docs.aws.amazon.com/whitepapers/latest/best-practices-api-gateway-private-"
                                       "apis-integration/cost-optimization.html (Table 4, HTTP us-east-1: first 300 "
                                       "million $1.00 per million, metered in 512 KB increments)"),
    "rest_api_request": Price(3.50 / 1e6, "request",
                              "aws.amazon.com/api-gateway/pricing/ (REST APIs: $3.50 per million)",
                              verified="docs.aws.amazon.com/whitepapers/latest/best-practices-api-gateway-private-"
                                       "apis-integration/cost-optimization.html (Table 4, REST: first 333 million "
                                       "$3.50 per million)"),
    # aws.amazon.com/s3/pricing/ - S3 Standard
    "s3_storage": Price(0.023, "GB-month", "aws.amazon.com/s3/pricing/ (Standard, first 50 TB: $0.023 per GB)",
                        corroborated="a 2022 table of S3 Standard storage (gist.github.com/EverettBerry/"
                                     "a37438006529a55f42da6fdbc44a505c: first 50 TB $0.023 per GB)"),
    # the stored S3 pricing page's request table is client-side tokens: third-party pages only
    "s3_tier1": Price(0.005 / 1000, "PUT, COPY, POST or LIST request",
                      "aws.amazon.com/s3/pricing/ (PUT, COPY, POST, LIST: $0.005 per 1,000)",
                      corroborated="c3x.dev/blog/s3-request-fees-explained and awsi.click (S3 Standard, us-east-1: "
                                   "PUT, COPY, POST, LIST $0.005 per 1,000; undated)"),
    "s3_tier2": Price(0.0004 / 1000, "GET, HEAD or other request",
                      "aws.amazon.com/s3/pricing/ (GET, SELECT and all other: $0.0004 per 1,000; DELETE free)",
                      corroborated="c3x.dev/blog/s3-request-fees-explained and awsi.click (GET, HEAD, SELECT "
                                   "$0.0004 per 1,000; undated); DELETE free: not checked"),
    # aws.amazon.com/s3/pricing/ (Data transfer) and aws.amazon.com/ec2/pricing/on-demand/
    # (Data transfer): out to the internet, first 10 TB per month (after the account-wide
    # 100 GB free per month, not counted here); in is free; S3 to Lambda in one region free
    "transfer_out": Price(0.09, "GB", "aws.amazon.com/s3/pricing/ (Data Transfer OUT to internet, "
                                      "first 10 TB: $0.09 per GB; IN: $0.00)",
                          corroborated="cloudburn.io/blog/amazon-ecr-pricing (internet transfer up to 10 TB $0.09/GB, "
                                       "us-east-1, as of 2026-03) and awsforengineers.com (2025-05: $0.09 per GB)"),
    # aws.amazon.com/ecr/pricing/ - storage per GB-month; data transferred out at EC2's
    # internet rates (the line above); pushes, pulls and API calls carry no request charge
    "ecr_storage": Price(0.10, "GB-month", "aws.amazon.com/ecr/pricing/ (Storage: $0.10 per GB-month)",
                         corroborated="cloudburn.io/blog/amazon-ecr-pricing (private storage $0.10/GB/month, "
                                      "same-region transfer free, pushes and API calls free; us-east-1 as of "
                                      "2026-03) and finops.com.py/services/ecr/overview"),
}


def usd(name: str, quantity: float) -> float:
    return PRICES[name].usd * quantity


def describe() -> list[tuple[str, str]]:
    """Rows for the report's settings table: each price and where it comes from."""
    head = [("Prices", f"AWS list prices, {REGION}, as of {AS_OF} (bench/prices.py; each checked against "
                       "stored pages, not fetched by the bench)")]
    return head + [(f"  {name}", f"${p.usd:.10g} per {p.per}: {p.source}; {p.status}") for name, p in PRICES.items()]
