"""Azure Blob Storage driver (``storage.azure``); the SDK loads on first use."""
from __future__ import annotations

from typing import Any, Mapping

from .driver import AzureDriver
from .parameters import AzureParameters, parse_parameters

__all__ = ["AzureDriver", "AzureParameters", "from_parameters", "parse_parameters"]


def from_parameters(params: Mapping[str, Any]) -> AzureDriver:
    return AzureDriver(parse_parameters(params))
