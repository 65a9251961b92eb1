"""@cached against a private real redis-server: single flight, what lands in
Redis and with which TTL, a second process-like hierarchy reading it, a
MigrationManager, and Redis dying under the decorator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.redis_server import RedisServer

from resync_hierarchy import (
    CacheHierarchy,
    HierarchyConfig,
    MigrationFlags,
    MigrationManager,
    cached,
)
from resync_hierarchy.hierarchy.core import namespace_prefix
from resync_hierarchy.testing import FakeClock


async def _pttl(url: str, namespace: str, key: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.pttl(namespace_prefix(namespace) + key.encode()))
    finally:
        await client.aclose()


async def test_single_flight_200_callers_and_a_second_hierarchy_reads_it(redis_url: str) -> None:
    runs = 0
    gate = asyncio.Event()
    async with (
        CacheHierarchy.from_url(redis_url, namespace="llm") as cache,
        CacheHierarchy.from_url(redis_url, namespace="llm") as other,
    ):

        @cached(cache, ttl=300, name="llm.answer")
        async def answer(prompt: str, model: str = "m1") -> dict[str, Any]:
            nonlocal runs
            runs += 1
            await gate.wait()
            return {"text": prompt.upper(), "model": model}

        @cached(other, ttl=300, name="llm.answer")  # the same function in another process
        async def answer_elsewhere(prompt: str, model: str = "m1") -> dict[str, Any]:
            raise AssertionError("must be answered from Redis")

        callers = [asyncio.create_task(answer("hello")) for _ in range(200)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(*callers)
        assert runs == 1
        assert all(r == {"text": "HELLO", "model": "m1"} for r in results)
        key = answer.key_for("hello")
        assert 299_000 < await _pttl(redis_url, "llm", key) <= 300_000
        assert answer_elsewhere.key_for("hello") == key
        assert await answer_elsewhere("hello") == {"text": "HELLO", "model": "m1"}


async def test_negative_ttl_and_none_not_stored_in_redis(redis_url: str) -> None:
    async with CacheHierarchy.from_url(redis_url, namespace="neg") as cache:

        @cached(cache, ttl=300, negative_ttl=7)
        async def find(user: str) -> str | None:
            return None

        @cached(cache, ttl=300)
        async def find_plain(user: str) -> str | None:
            return None

        assert await find("ghost") is None
        assert 6_000 < await _pttl(redis_url, "neg", find.key_for("ghost")) <= 7_000
        assert await find_plain("ghost") is None
        assert await _pttl(redis_url, "neg", find_plain.key_for("ghost")) == -2  # no key


@pytest.mark.parametrize("use_new", [False, True], ids=["read-legacy", "read-new"])
async def test_migration_manager_single_flight_and_dual_write(
    redis_url: str, use_new: bool
) -> None:
    legacy = CacheHierarchy.from_url(redis_url, namespace="old")
    new = CacheHierarchy.from_url(redis_url, namespace="new")
    manager = MigrationManager(
        legacy, new, flags=MigrationFlags(use_new_cache=use_new), follow_fleet=False
    )
    runs = 0
    async with manager:

        @cached(manager, ttl=120)
        async def embed(text: str) -> list[float]:
            nonlocal runs
            runs += 1
            await asyncio.sleep(0.02)
            return [float(len(text)), 0.5]

        results = await asyncio.gather(*(embed("abc") for _ in range(200)))
        assert runs == 1
        assert all(r == [3.0, 0.5] for r in results)
        key = embed.key_for("abc")
        assert await legacy.get(key) == [3.0, 0.5]  # written to both configurations
        assert await new.get(key) == [3.0, 0.5]
        assert 0 < await _pttl(redis_url, "new", key) <= 120_000
        assert await embed.invalidate("abc") is True
        assert await legacy.get(key) is None and await new.get(key) is None


async def test_redis_killed_under_the_decorator(fresh_redis: RedisServer) -> None:
    runs: dict[str, int] = {}
    cache = CacheHierarchy.from_url(
        fresh_redis.url, namespace="kill", l2_timeout=0.2, breaker_reset_timeout=0.3
    )
    async with cache:

        @cached(cache, ttl=60)
        async def answer(prompt: str) -> str:
            runs[prompt] = runs.get(prompt, 0) + 1
            return prompt * 2

        assert await answer("a") == "aa"
        fresh_redis.kill()
        assert await answer("a") == "aa"  # L1 still answers
        results = await asyncio.gather(*(answer("b") for _ in range(50)))
        assert results == ["bb"] * 50  # the function runs, nothing raises
        assert runs == {"a": 1, "b": 1}
        assert await answer("b") == "bb"  # kept in L1 during the outage
        assert runs["b"] == 1
        fresh_redis.restart()
        deadline = asyncio.get_running_loop().time() + 3.0
        while (
            cache.get_stats()["recovery_pending"] and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        async with CacheHierarchy.from_url(fresh_redis.url, namespace="kill") as reader:
            assert await reader.get(answer.key_for("b")) == "bb"  # replayed after the outage


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_llm_optimizer_example_runs(backend: str, request: pytest.FixtureRequest) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "llm_optimizer_example.py"
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    done = subprocess.run(
        [sys.executable, str(script), "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout
    assert "the model ran once" in done.stdout


async def test_a_failing_run_serves_the_expired_result_within_fail_safe(redis_url: str) -> None:
    clock = FakeClock()
    config = HierarchyConfig.from_url(redis_url, namespace="stale", fail_safe_max_stale=300)
    cache = CacheHierarchy(config, clock=clock)
    runs = 0
    async with cache:

        @cached(cache, ttl=10)
        async def quote(symbol: str) -> float:
            nonlocal runs
            runs += 1
            if runs > 1:
                raise RuntimeError("upstream down")
            return 101.5

        assert await quote("X") == 101.5
        clock.advance(20)  # expired in both tiers, still within fail_safe_max_stale
        assert await quote("X") == 101.5  # the run failed: the expired result instead
        assert runs == 2
        clock.advance(400)  # beyond the fail-safe window: the exception
        with pytest.raises(RuntimeError, match="upstream down"):
            await quote("X")
