"""Stratus: an OCI distribution registry for cloud functions and self-hosted servers."""

__version__ = "0.1.0"
