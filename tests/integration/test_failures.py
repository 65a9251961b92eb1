"""The failure contract against a real redis-server: down, hung and crowded.

Redis trouble never raises to callers of get/set/delete and never holds them
longer than ``l2_timeout`` (measured here with a 100 ms allowance for a busy
machine, as the resilience criteria state).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from support.redis_server import RedisServer, free_port

from resync_hierarchy import CacheHierarchy

TIMEOUT = 0.2
ALLOWANCE = 0.1


async def timed(call: Awaitable[Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def test_redis_not_listening_start_get_set_delete_health() -> None:
    port = free_port()  # nothing listens here
    cache = CacheHierarchy.from_url(
        f"redis://127.0.0.1:{port}/0", namespace="t", l2_timeout=TIMEOUT
    )
    async with cache:  # start() must not fail
        await cache.set("k", "v")  # lands in L1
        assert await cache.get("k") == "v"
        value, took = await timed(cache.get("absent", "dflt"))
        assert value == "dflt"
        assert took < TIMEOUT + ALLOWANCE
        assert await cache.get_many(["k", "absent"]) == {"k": "v"}
        assert await cache.exists("k")
        assert await cache.delete("k") is True
        assert await cache.get("k") is None
        report, took = await timed(cache.health())
        assert report["status"] == "degraded"
        assert report["l2"]["status"] == "down"
        assert took < TIMEOUT + ALLOWANCE
        stats = cache.get_stats()
        assert stats["l2_errors"] >= 5
        # "circuit_open": a retry that was backing off when the circuit opened
        kinds = set(stats["l2_errors_by_kind"])
        assert "connection" in kinds and kinds <= {"connection", "circuit_open"}


async def test_l1_off_and_redis_down_reports_down() -> None:
    cache = CacheHierarchy.from_url(
        f"redis://127.0.0.1:{free_port()}/0", l2_timeout=TIMEOUT, l1_max_entries=0
    )
    async with cache:
        await cache.set("k", 1)
        assert await cache.get("k", "miss") == "miss"
        assert (await cache.health())["status"] == "down"


async def test_hung_server_never_holds_callers_past_l2_timeout(fresh_redis: RedisServer) -> None:
    cache = CacheHierarchy.from_url(
        fresh_redis.url, namespace="t", l2_timeout=TIMEOUT, breaker_reset_timeout=0.3
    )
    async with cache:
        await cache.set("warm", "in-l1")
        await cache.set("cold", "only-l2")
        await cache.delete_many([])  # a no-op that must not touch L2
        other = CacheHierarchy.from_url(fresh_redis.url, namespace="t", l2_timeout=TIMEOUT)
        fresh_redis.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            calls = [
                cache.get("warm"),
                other.get("cold", "default"),
                other.get_many(["cold", "warm"]),
                cache.set("new", 1),
                cache.delete("cold"),
                cache.set_many({"a": 1, "b": 2}),
                cache.delete_many(["a", "zzz"]),
                other.exists("cold"),
                cache.health(),
            ]
            started = time.monotonic()
            results = await asyncio.gather(*(timed(c) for c in calls))
            elapsed = time.monotonic() - started
        finally:
            fresh_redis.resume()
            await other.shutdown()
        values = [r for r, _ in results]
        assert values[0] == "in-l1"
        assert values[1] == "default"
        assert values[2] == {}
        assert values[3] is None
        assert values[4] is True  # it was in this L1 (L2 did not answer)
        assert values[6] == 1  # "a" was in L1
        assert values[7] is False
        assert values[8]["status"] == "degraded"
        for _, took in results:
            assert took < TIMEOUT + ALLOWANCE
        assert elapsed < TIMEOUT + ALLOWANCE
        stats = cache.get_stats()
        assert stats["l2_errors_by_kind"].get("timeout", 0) >= 4
        assert stats["circuit_state"] == "open"  # five timeouts in a row
        assert stats["recovery_pending"] == 5  # new, cold, a, b, zzz: last operation per key
        # Once the server answers again, the probe closes the circuit and the
        # writes made during the outage are replayed.
        deadline = time.monotonic() + 0.3 + 1.0
        while cache.get_stats()["recovery_pending"] and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert cache.get_stats()["circuit_state"] == "closed"
        assert cache.get_stats()["recovery_pending"] == 0
        async with CacheHierarchy.from_url(fresh_redis.url, namespace="t") as reader:
            assert await reader.get_many(["new", "a", "b", "cold", "warm"]) == {
                "new": 1,
                "b": 2,
                "warm": "in-l1",
            }
            await cache.set("after", "ok")
            assert await reader.get("after") == "ok"


async def test_killed_and_restarted_server_is_used_again(fresh_redis: RedisServer) -> None:
    cache = CacheHierarchy.from_url(fresh_redis.url, namespace="t", l2_timeout=TIMEOUT)
    async with cache:
        await cache.set("k", 1)
        fresh_redis.kill()
        value, took = await timed(cache.get("other", "dflt"))
        assert (value, took < TIMEOUT + ALLOWANCE) == ("dflt", True)
        fresh_redis.restart()
        await cache.set("k2", 2)
        reader = CacheHierarchy.from_url(fresh_redis.url, namespace="t")
        try:
            assert await reader.get("k2") == 2
        finally:
            await reader.shutdown()


async def test_2000_concurrent_callers_on_8_connections_all_complete(redis_url: str) -> None:
    cache = CacheHierarchy.from_url(
        redis_url, namespace="crowd", l1_max_entries=0, l2_max_connections=8, l2_timeout=5
    )
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(100)})
        completed = [0] * 2000

        async def caller(n: int) -> None:
            for i in range(5):
                key = f"k{(n + i) % 100}"
                assert await cache.get(key) == (n + i) % 100
                completed[n] += 1

        await asyncio.gather(*(caller(n) for n in range(2000)))
        assert completed == [5] * 2000
        stats = cache.get_stats()
        assert stats["l2_errors"] == 0
        assert stats["l2_hits"] == 10_000


async def test_replies_match_their_keys_when_commands_are_cancelled(redis_url: str) -> None:
    """Regression guard for the redis-py cancellation bug (CVE-2023-28858/28859):
    a command cancelled mid-flight must not leave its reply for the next user
    of the connection."""
    cache = CacheHierarchy.from_url(
        redis_url, namespace="cancel", l1_max_entries=0, l2_max_connections=4
    )
    raw = aioredis.Redis.from_url(redis_url)
    rng = random.Random(7)
    async with cache:
        await cache.set_many({f"key-{i}": f"value-{i}" for i in range(200)})
        await raw.config_set("loglevel", "warning")

        async def reader(n: int) -> None:
            for _ in range(20):
                i = rng.randrange(200)
                task = asyncio.ensure_future(cache.get(f"key-{i}"))
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.random() * 0.0005)
                    task.cancel()
                try:
                    value = await task
                except asyncio.CancelledError:
                    continue
                assert value == f"value-{i}"

        await asyncio.gather(*(reader(n) for n in range(50)))
        for i in range(200):  # the pool is clean afterwards
            assert await cache.get(f"key-{i}") == f"value-{i}"
    await raw.aclose()
