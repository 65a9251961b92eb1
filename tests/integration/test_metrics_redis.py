"""Metrics against a real redis-server: L2 tiers, errors, circuit, recovery, invalidation."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest
from support.redis_server import RedisServer

from resync_hierarchy import CacheHierarchy


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    assert sample is not None, f"{name}{labels} is not exported"
    return sample


def requests(registry: CollectorRegistry, ns: str, op: str, tier: str, result: str) -> float:
    return value(
        registry,
        "resync_cache_requests_total",
        namespace=ns,
        operation=op,
        tier=tier,
        result=result,
    )


async def wait_for(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_l2_tiers_and_latency(redis_url: str) -> None:
    registry = CollectorRegistry()
    writer = CacheHierarchy.from_url(  # announces nothing: no eviction races the reads
        redis_url, namespace="r", registry=CollectorRegistry(), invalidation=False
    )
    reader = CacheHierarchy.from_url(redis_url, namespace="r", registry=registry)
    async with writer, reader:
        await writer.set_many({"a": 1, "b": 2})
        assert await reader.get("a") == 1  # L2 hit, promoted
        assert await reader.get("a") == 1  # L1 hit
        assert await reader.get("absent") is None  # L2 miss
        assert await reader.get_many(["b", "absent2"]) == {"b": 2}
        await reader.set("c", 3)
        await reader.delete("c")
        assert requests(registry, "r", "get", "l2", "hit") == 2
        assert requests(registry, "r", "get", "l1", "hit") == 1
        assert requests(registry, "r", "get", "l2", "miss") == 2
        assert requests(registry, "r", "set", "l2", "ok") == 1
        assert requests(registry, "r", "delete", "l2", "ok") == 1
        assert requests(registry, "r", "get", "l1", "miss") == 0
        for op in ("get", "get_many", "set", "delete"):
            count = value(
                registry,
                "resync_cache_operation_duration_seconds_count",
                namespace="r",
                operation=op,
                tier="l2",
            )
            assert count >= 1, op
        assert value(registry, "resync_cache_l2_up", namespace="r") == 1
        assert value(registry, "resync_cache_circuit_state", namespace="r", state="closed") == 1
        assert value(registry, "resync_cache_circuit_state", namespace="r", state="open") == 0
        # The reader's set and delete of "c" are announced (coalesced: one key or two).
        await wait_for(
            lambda: (
                (
                    registry.get_sample_value(
                        "resync_cache_invalidations_sent_total", {"namespace": "r"}
                    )
                    or 0
                )
                >= 1
            )
        )


async def test_invalidations_received_are_counted(redis_url: str) -> None:
    registry = CollectorRegistry()
    writer = CacheHierarchy.from_url(redis_url, namespace="inv", registry=CollectorRegistry())
    reader = CacheHierarchy.from_url(redis_url, namespace="inv", registry=registry)
    async with writer, reader:
        await writer.set("k", 1)
        assert await reader.get("k") == 1
        await writer.set("k", 2)
        await wait_for(
            lambda: (
                (
                    registry.get_sample_value(
                        "resync_cache_invalidations_received_total", {"namespace": "inv"}
                    )
                    or 0
                )
                >= 1
            )
        )
        assert await reader.get("k") == 2


async def test_an_outage_shows_in_errors_circuit_up_and_recovery(fresh_redis: RedisServer) -> None:
    registry = CollectorRegistry()
    cache = CacheHierarchy.from_url(
        fresh_redis.url,
        namespace="o",
        registry=registry,
        l2_timeout=0.2,
        l2_retries=0,
        breaker_failure_threshold=2,
        breaker_reset_timeout=0.3,
        invalidation=False,
    )
    async with cache:
        await cache.set("kept", "v")
        fresh_redis.kill()
        await cache.set("during", 1)  # L1 only, queued for replay
        await cache.delete("kept")
        assert await cache.get("never-written") is None
        assert requests(registry, "o", "set", "l2", "error") == 1
        assert requests(registry, "o", "delete", "l2", "error") == 1
        assert value(registry, "resync_cache_recovery_queue_depth", namespace="o") == 2
        assert value(registry, "resync_cache_l2_up", namespace="o") == 0
        assert value(registry, "resync_cache_circuit_state", namespace="o", state="open") == 1
        assert value(registry, "resync_cache_circuit_opens_total", namespace="o") == 1
        assert (
            value(registry, "resync_cache_l2_errors_total", namespace="o", kind="connection") >= 2
        )
        assert requests(registry, "o", "get", "l2", "error") == 1
        fresh_redis.start()
        await wait_for(
            lambda: registry.get_sample_value("resync_cache_l2_up", {"namespace": "o"}) == 1
        )
        await wait_for(
            lambda: (
                registry.get_sample_value("resync_cache_recovery_queue_depth", {"namespace": "o"})
                == 0
            )
        )
        assert value(registry, "resync_cache_recovery_replayed_total", namespace="o") == 2
        text = generate_latest(registry).decode()
        assert "never-written" not in text and "during" not in text


async def test_health_shows_an_error_redis_answered_while_ping_works(
    fresh_redis: RedisServer,
) -> None:
    from support.redis_server import send_command

    send_command(fresh_redis.port, "CONFIG", "SET", "maxmemory", "1mb")
    send_command(fresh_redis.port, "CONFIG", "SET", "maxmemory-policy", "noeviction")
    cache = CacheHierarchy.from_url(
        fresh_redis.url, namespace="oom", registry=CollectorRegistry(), invalidation=False
    )
    async with cache:
        assert "last_error" not in (await cache.health())["l2"]
        await cache.set("big", "x" * 900_000, ttl=60)  # fills the 1 MB
        await cache.set("more", "y" * 900_000, ttl=60)  # refused: OOM
        report = await cache.health()
    assert report["status"] == "ok"  # Redis answers; writes are refused
    assert report["l2"]["errors_by_kind"].get("oom", 0) >= 1
    assert report["l2"]["last_error"].startswith("oom")
    assert report["l2"]["last_error_seconds_ago"] >= 0
