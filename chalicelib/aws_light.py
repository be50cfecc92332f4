"""What the botocore-free requests share to behave as the boto3 client would.

storage/s3/light.py's S3 reads and aws_secrets.py's secret reads are made only where
they go where, and as, the client's would: with static credentials from the
environment (what Lambda gives a function) and nothing set that would make the client
sign, address or connect otherwise. They connect and verify as the client does and
retry as its "standard" mode does. Standard library only, and outside the storage
package, so that the secret reads import no storage driver.
"""
from __future__ import annotations

import os
import random
import re
from typing import TYPE_CHECKING, Mapping, Optional

from .sigv4 import Credentials

if TYPE_CHECKING:
    import ssl

CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0  # botocore's; the read timeout holds for each socket read
# botocore's "standard" retry mode: what is retried, and how long it waits
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled",
    "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException",
})
MAX_BACKOFF = 20.0

# AWS regions of the `aws` partition (<service>.<region>.amazonaws.com); the others
# (China, GovCloud, ISO) have endpoints of their own: the client knows them
AWS_REGION = re.compile(r"^(us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d+$")
# what would make the client address or reach a service otherwise than computed here
CLIENT_ONLY_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_USE_FIPS_ENDPOINT",
                   "AWS_USE_DUALSTACK_ENDPOINT", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")


def static_credentials(environ: Mapping[str, str] = os.environ) -> Optional[Credentials]:
    """AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY(/AWS_SESSION_TOKEN), which botocore's
    provider chain finds first; None: the chain must look further (profiles, IMDS, SSO...)."""
    access_key, secret_key = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return Credentials(access_key, secret_key,
                           environ.get("AWS_SESSION_TOKEN") or environ.get("AWS_SECURITY_TOKEN") or None)
    return None


def client_configured(environ: Mapping[str, str] = os.environ, names: tuple[str, ...] = CLIENT_ONLY_ENV) -> bool:
    """Whether one of names is set, or an AWS config file exists (~/.aws/config may set
    endpoints, addressing, FIPS or a CA bundle for the client)."""
    if any(environ.get(name) for name in names):
        return True
    return os.path.exists(os.path.join(os.path.expanduser("~"), ".aws", "config"))


def backoff(attempt: int, throttled: bool, retry_after: Optional[str] = None) -> float:
    """Seconds before attempt + 1: truncated binary exponential backoff with full jitter,
    1 s base for throttling, 50 ms otherwise; S3's x-amz-retry-after (ms) raises it, by
    at most 5 s."""
    delay = random.random() * min((1.0 if throttled else 0.05) * 2 ** (attempt - 1), MAX_BACKOFF)
    if retry_after is not None and retry_after.isdigit():
        delay = max(delay, min(int(retry_after) / 1000, delay + 5))
    return delay


def tls_context() -> "ssl.SSLContext":
    """Verifying as botocore does: its CA bundle (ca_bundle) or the system's, host names checked."""
    import ssl

    return ssl.create_default_context(cafile=ca_bundle())


def ca_bundle() -> Optional[str]:
    """The CA certificates botocore would use: AWS_CA_BUNDLE, else certifi's, else the system's."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if bundle:
        return bundle
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()
