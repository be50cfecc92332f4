"""The pull-through cache (docs/proxy.md): mirrored repositories filled from upstream registries.

Only the errors are imported here; registry.mirror (urllib3 and the upstream client) is
imported by the registry when a proxy is configured, so a cold start without one pays nothing.
"""
from .errors import PushToMirrorError, UpstreamContentError, UpstreamUnavailableError

__all__ = ["PushToMirrorError", "UpstreamContentError", "UpstreamUnavailableError"]
