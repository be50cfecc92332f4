"""S3 storage driver (boto3), over the registry:2 key layout.

Importing this package is cheap: boto3 is imported when the first request needs
the client (see client.py). Reads and presigned URLs need no boto3 where the
credentials are static and the endpoint plain (light.py, signed by sigv4.py), so a
cold function instance serving a pull never imports the SDK.
"""
from __future__ import annotations

from typing import Any, Mapping

from .client import requests
from .driver import S3Driver
from .params import S3Parameters, parse_parameters

__all__ = ["S3Driver", "S3Parameters", "from_parameters", "parse_parameters", "requests"]


def from_parameters(params: Mapping[str, Any]) -> S3Driver:
    return S3Driver(parse_parameters(params))
