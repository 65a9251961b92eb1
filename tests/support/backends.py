"""Caches on a shared L2, fakeredis or a real redis-server, for behaviour tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import redis.asyncio as aioredis

from resync_hierarchy import CacheHierarchy, HierarchyConfig
from resync_hierarchy.l2.cluster import hashtag_key
from resync_hierarchy.l2.redis import RedisL2

__all__ = ["Backend"]


class Backend:
    """Builds caches that share one L2 (like processes sharing one Redis), and
    a raw client on that L2 to plant or inspect bytes."""

    def __init__(
        self,
        l2_url: str,
        *,
        raw_url: str | None = None,
        url_for: Callable[[str], str] | None = None,
        **config: Any,
    ) -> None:
        """``config``: HierarchyConfig fields every cache of this backend gets
        (e.g. ``cluster_multikey`` for a ``redis+cluster://`` URL).
        ``raw_url``: where :meth:`raw` connects (an admin URL when ``l2_url``
        is a Sentinel URL or a restricted ACL user); ``url_for(namespace)``:
        the URL of each cache (one ACL user per namespace)."""
        self._raw_url = raw_url
        self._url_for = url_for
        if l2_url == "fakeredis":
            self.kind = "fakeredis"
        elif l2_url.startswith(("redis+cluster://", "rediss+cluster://")):
            self.kind = "cluster"
        else:
            self.kind = "redis"
        self.url = None if self.kind == "fakeredis" else l2_url
        self._config = config
        self._server = fakeredis.FakeServer() if self.kind == "fakeredis" else None
        self._caches: list[CacheHierarchy] = []
        self._clients: list[Any] = []

    def cache(self, namespace: str = "test", **overrides: Any) -> CacheHierarchy:
        # The API contract is checked without cross-process invalidation, so
        # that L1 answers from the first call (it waits for its subscription
        # otherwise); tests/integration/test_invalidation.py covers it.
        overrides.setdefault("invalidation", False)
        for name, value in self._config.items():
            overrides.setdefault(name, value)
        clock = overrides.pop("clock", None)
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        if self.kind == "fakeredis":
            config = HierarchyConfig(url="memory://", namespace=namespace, **overrides)
            l2 = RedisL2(fakeredis.FakeAsyncRedis(server=self._server), description="fakeredis")
            cache = CacheHierarchy(config, l2=l2, **extra)
        else:
            assert self.url is not None
            url = self.url if self._url_for is None else self._url_for(namespace)
            cache = CacheHierarchy(
                HierarchyConfig(url=url, namespace=namespace, **overrides), **extra
            )
        self._caches.append(cache)
        return cache

    def raw(self) -> Any:
        """A redis-py asyncio client on the same L2 (bytes in, bytes out)."""
        client: Any
        if self.kind == "fakeredis":
            client = fakeredis.FakeAsyncRedis(server=self._server)
        elif self.kind == "cluster":
            assert self.url is not None
            client = ClusterRawClient(self.url, self._config.get("cluster_multikey", "split"))
        else:
            assert self.url is not None
            client = aioredis.Redis.from_url(self._raw_url or self.url)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for cache in self._caches:
            await cache.shutdown()
        for client in self._clients:
            await client.aclose()


class ClusterRawClient:
    """A redis-py cluster client that stores keys the way ClusterL2 does, so
    tests plant and inspect ``b"<ns>:<key>"`` whatever the layout.

    Only single-key commands are mapped (the first argument is the key)."""

    def __init__(self, url: str, multikey: str) -> None:
        seeds = url.split("://", 1)[1].split("/", 1)[0].split(",")
        host, _, port = seeds[0].rpartition(":")
        self._client = aioredis.RedisCluster(host=host, port=int(port), dynamic_startup_nodes=False)
        self._tagged = multikey == "hashtag"

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._client.nodes_manager.aclose("startup_nodes")

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def mapped(key: bytes, *args: Any, **kwargs: Any) -> Any:
            return method(hashtag_key(key) if self._tagged else key, *args, **kwargs)

        return mapped
