"""health_response against a private real redis-server: healthy, hung
(SIGSTOP), killed, and the start / health / stop life cycle."""

from __future__ import annotations

import json
import time

from support.redis_server import RedisServer

from resync_hierarchy import CacheHierarchy, MigrationFlags, MigrationManager, health_response

TIMEOUT = 0.2


async def test_healthy_then_stopped(redis_url: str) -> None:
    cache = CacheHierarchy.from_url(redis_url, namespace="svc")
    await cache.start()
    status, body = await health_response(cache)
    assert (status, body["status"], body["l2"]["status"]) == (200, "ok", "ok")
    assert body["l2"]["ping_ms"] >= 0
    assert (await health_response(cache, probe="liveness"))[0] == 200
    json.dumps(body)
    await cache.stop()
    for probe in ("readiness", "liveness"):
        status, body = await health_response(cache, probe=probe)  # type: ignore[arg-type]
        assert (status, body["status"], body["pass"]) == (503, "down", False)


async def test_hung_redis_is_degraded_ready_and_alive_without_hanging(
    fresh_redis: RedisServer,
) -> None:
    cache = CacheHierarchy.from_url(fresh_redis.url, namespace="svc", l2_timeout=TIMEOUT)
    async with cache:
        fresh_redis.pause()
        try:
            for probe in ("readiness", "liveness"):
                started = time.monotonic()
                status, body = await health_response(cache, probe=probe)  # type: ignore[arg-type]
                assert time.monotonic() - started < 2.0  # bounded: no hang on a frozen server
                assert (status, body["status"], body["pass"]) == (200, "degraded", True)
                assert body["l2"]["status"] == "down"
        finally:
            fresh_redis.resume()
        assert (await health_response(cache))[1]["status"] == "ok"


async def test_killed_redis_with_a_migration_manager(fresh_redis: RedisServer) -> None:
    legacy = CacheHierarchy.from_url(fresh_redis.url, namespace="old", l2_timeout=TIMEOUT)
    new = CacheHierarchy.from_url(fresh_redis.url, namespace="new", l2_timeout=TIMEOUT)
    manager = MigrationManager(
        legacy, new, flags=MigrationFlags(use_new_cache=True), follow_fleet=False
    )
    async with manager:
        assert (await health_response(manager))[0] == 200
        fresh_redis.kill()
        status, body = await health_response(manager)
        assert (status, body["status"], body["new"]["l2"]["status"]) == (200, "degraded", "down")
        assert (await health_response(manager, probe="liveness"))[0] == 200
    assert (await health_response(manager, probe="liveness"))[0] == 503
