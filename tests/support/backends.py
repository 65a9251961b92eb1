"""Caches on a shared L2, fakeredis or a real redis-server, for behaviour tests."""

from __future__ import annotations

from typing import Any

import fakeredis
import redis.asyncio as aioredis

from resync_hierarchy import CacheHierarchy, HierarchyConfig
from resync_hierarchy.l2.redis import RedisL2

__all__ = ["Backend"]


class Backend:
    """Builds caches that share one L2 (like processes sharing one Redis), and
    a raw client on that L2 to plant or inspect bytes."""

    def __init__(self, l2_url: str) -> None:
        self.kind = "fakeredis" if l2_url == "fakeredis" else "redis"
        self.url = None if self.kind == "fakeredis" else l2_url
        self._server = fakeredis.FakeServer() if self.kind == "fakeredis" else None
        self._caches: list[CacheHierarchy] = []
        self._clients: list[Any] = []

    def cache(self, namespace: str = "test", **overrides: Any) -> CacheHierarchy:
        # The API contract is checked without cross-process invalidation, so
        # that L1 answers from the first call (it waits for its subscription
        # otherwise); tests/integration/test_invalidation.py covers it.
        overrides.setdefault("invalidation", False)
        clock = overrides.pop("clock", None)
        extra: dict[str, Any] = {} if clock is None else {"clock": clock}
        if self.kind == "fakeredis":
            config = HierarchyConfig(url="memory://", namespace=namespace, **overrides)
            l2 = RedisL2(fakeredis.FakeAsyncRedis(server=self._server), description="fakeredis")
            cache = CacheHierarchy(config, l2=l2, **extra)
        else:
            assert self.url is not None
            cache = CacheHierarchy(
                HierarchyConfig(url=self.url, namespace=namespace, **overrides), **extra
            )
        self._caches.append(cache)
        return cache

    def raw(self) -> Any:
        """A redis-py asyncio client on the same L2 (bytes in, bytes out)."""
        client: Any
        if self.kind == "fakeredis":
            client = fakeredis.FakeAsyncRedis(server=self._server)
        else:
            assert self.url is not None
            client = aioredis.Redis.from_url(self.url)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for cache in self._caches:
            await cache.shutdown()
        for client in self._clients:
            await client.aclose()
