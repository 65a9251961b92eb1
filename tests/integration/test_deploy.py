"""The shipped Redis configuration starts a working L2."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.redis_server import RedisServer, require_redis

from resync_hierarchy import CacheHierarchy

CONF = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "redis-cache.conf"


@pytest.mark.redis
async def test_redis_cache_conf_serves_as_l2() -> None:
    require_redis()
    # The harness's own port, bind address and directory override the file's.
    server = RedisServer(config_file=CONF).start()
    try:
        assert server.cli("CONFIG", "GET", "maxmemory-policy").split() == [
            "maxmemory-policy",
            "allkeys-lru",
        ]
        assert server.cli("CONFIG", "GET", "maxmemory").split() == ["maxmemory", str(2**30)]
        assert server.cli("CONFIG", "GET", "lazyfree-lazy-user-del").split()[1] == "yes"
        async with CacheHierarchy.from_url(server.url, namespace="conf") as cache:
            await cache.set("k", {"v": 1})
            assert (await cache.health())["status"] == "ok"
        async with CacheHierarchy.from_url(server.url, namespace="conf") as reader:
            assert await reader.get("k") == {"v": 1}
    finally:
        server.stop()
