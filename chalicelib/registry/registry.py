"""The registry: repositories over one storage driver and one descriptor cache."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..cache.base import BlobDescriptorCacheProvider, BlobDescriptorService
from ..cache.statter import CachedBlobStatter
from ..config import ProxyConfig
from ..context import Context
from ..storage import StorageDriver, paths
from . import catalog
from .blobs import BlobStatter, BlobStore, LinkedBlobStore
from .manifest_cache import ManifestBodyCache
from .manifests import ManifestStore
from .names import validate_name
from .referrers import ReferrersIndex
from .tags import TagStore
from .uploads import BlobUploads

if TYPE_CHECKING:
    from .proxy.mirror import Proxies


@dataclass(frozen=True)
class RegistryOptions:
    delete_enabled: bool = True
    redirect: bool = True
    redirect_expiry: int = 1200
    read_only: bool = False
    # re-stats of a just-written blob on eventually consistent stores
    stat_retries: int = 0
    immutable_tags: tuple = ()  # storage.tag.immutable: ImmutableTagRule, checked by TagStore
    proxy: Optional[ProxyConfig] = None  # the pull-through cache's upstreams (registry.proxy)


class Repository:
    def __init__(self, registry: "Registry", name: str):
        self.name = name
        self.registry = registry
        driver = registry.driver
        scoped = registry.cache.repository_scoped(name) if registry.cache is not None else None
        self.blobs = LinkedBlobStore(registry.blobs, name, paths.layer_link, scoped)
        # like registry:2, only layer links are cached: revisions are read from storage
        self.revisions = LinkedBlobStore(registry.blobs, name, paths.manifest_revision_link)
        self.tags = TagStore(driver, name, registry.options.immutable_tags)
        self.referrers = ReferrersIndex(driver, name)
        self.manifests = ManifestStore(
            registry.blobs, self.revisions, self.blobs, self.tags, self.referrers, registry.manifest_bodies
        )
        self.uploads = BlobUploads(driver, name, registry.blobs, self.blobs)
        # set when an upstream mirrors this repository: pulls fill it, pushes are refused
        self.proxy = registry.proxies.repository(self) if registry.proxies is not None else None


class Registry:
    def __init__(
        self,
        driver: StorageDriver,
        cache: Optional[BlobDescriptorCacheProvider] = None,
        options: RegistryOptions = RegistryOptions(),
    ):
        self.driver = driver
        self.cache = cache
        self.options = options
        statter: BlobDescriptorService = BlobStatter(driver, retries=options.stat_retries)
        statter_now: BlobDescriptorService = BlobStatter(driver)
        if cache is not None:
            statter, statter_now = CachedBlobStatter(cache, statter), CachedBlobStatter(cache, statter_now)
        self.blobs = BlobStore(driver, statter, statter_now)
        # immutable by digest, so safe in every process; membership is still read per request
        self.manifest_bodies = ManifestBodyCache()
        self.proxies: Optional[Proxies] = None
        if options.proxy is not None and options.proxy.upstreams:
            from .proxy import mirror  # urllib3 is imported only where a proxy is configured

            self.proxies = mirror.Proxies(options.proxy.upstreams)

    def repository(self, name: str) -> Repository:
        return Repository(self, validate_name(name))

    def catalog(self, ctx: Context) -> list[str]:
        return catalog.repositories(ctx, self.driver)
