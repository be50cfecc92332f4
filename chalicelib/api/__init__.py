"""Framework-neutral HTTP for the registry: every adapter calls RegistryAPI.handle."""
from .app import Access, AccessController, APISettings, RegistryAPI
from .http import FileBody, Headers, Request, Response

__all__ = ["Access", "AccessController", "APISettings", "FileBody", "Headers", "RegistryAPI", "Request", "Response"]
