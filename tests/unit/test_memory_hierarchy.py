"""``memory://``: every operation of the contract with L1 only, no Redis."""

from __future__ import annotations

import asyncio

import pytest

from resync_hierarchy import CacheHierarchy, HierarchyConfig, InvalidKeyError
from resync_hierarchy.testing import FakeClock


@pytest.fixture
async def cache() -> CacheHierarchy:
    return CacheHierarchy.from_url("memory://", namespace="mem")


async def test_every_operation(cache: CacheHierarchy) -> None:
    async with cache:
        await cache.set("a", 1)
        await cache.set_many({"b": [2], "c": None})
        assert await cache.get("a") == 1
        assert await cache.get("zz", "d") == "d"
        assert await cache.exists("c")
        assert not await cache.exists("zz")
        assert await cache.get_many(["a", "b", "c", "zz"]) == {"a": 1, "b": [2], "c": None}
        assert await cache.get_or_set("e", lambda: "made") == "made"
        assert await cache.delete("a") is True
        assert await cache.delete("a") is False
        assert await cache.delete_many(["b", "c", "zz"]) == 2
        assert cache.size() == 1
        assert sorted([k async for page in cache.iter_keys() for k in page]) == ["e"]
        assert await cache.l2_summary() == {"status": "disabled"}
        await cache.clear()
        assert cache.size() == 0
        stats = cache.get_stats()
        assert (stats["sets"], stats["l2_errors"], stats["circuit_state"]) == (4, 0, "closed")
        health = await cache.health()
        assert health["status"] == "ok"
        assert health["l2"]["status"] == "disabled"
        assert health["l1"]["fill_ratio"] == 0
        assert health["l1"]["status"] == "ok"


async def test_ttl_expires_without_sleeping() -> None:
    clock = FakeClock()
    cache = CacheHierarchy(HierarchyConfig(namespace="mem", default_ttl=10), clock=clock)
    await cache.set("k", "v")
    clock.advance(9.9)
    assert await cache.get("k") == "v"
    clock.advance(0.2)
    assert await cache.get("k") is None
    assert cache.get_stats()["misses"] == 1


async def test_background_sweeper_reclaims_expired_entries() -> None:
    clock = FakeClock()
    cache = CacheHierarchy(HierarchyConfig(namespace="mem", l1_sweep_interval=0.01), clock=clock)
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(50)}, ttl=1)
        assert cache.size() == 50
        clock.advance(3)
        for _ in range(100):
            if cache.size() == 0:
                break
            await asyncio.sleep(0.01)
        assert cache.size() == 0
        assert cache.get_stats()["l1_expirations"] == 50


async def test_l1_off_and_no_l2_stores_nothing() -> None:
    cache = CacheHierarchy.from_url("memory://", l1_max_entries=0)
    await cache.set("k", 1)
    assert await cache.get("k", "miss") == "miss"
    assert await cache.get_many(["k"]) == {}
    assert await cache.delete("k") is False
    assert sorted([k async for page in cache.iter_keys() for k in page]) == []
    assert (await cache.health())["status"] == "ok"


async def test_str_subclass_keys_work_and_bad_keys_raise() -> None:
    class Key(str):
        pass

    cache = CacheHierarchy.from_url("memory://")
    await cache.set(Key("k"), 1)
    assert await cache.get(Key("k")) == 1
    assert await cache.get("k") == 1
    with pytest.raises(InvalidKeyError):
        await cache.get(b"k")  # type: ignore[arg-type]


async def test_local_write_during_a_read_is_not_undone_by_the_promotion() -> None:
    """A read that fetched the old value from L2 must not promote it over a
    newer local write (the write-generation check)."""
    import fakeredis

    from resync_hierarchy.l2.redis import RedisL2

    server = fakeredis.FakeServer()
    l2 = RedisL2(fakeredis.FakeAsyncRedis(server=server))
    cache = CacheHierarchy(HierarchyConfig(namespace="race"), l2=l2)
    writer = CacheHierarchy(
        HierarchyConfig(namespace="race"), l2=RedisL2(fakeredis.FakeAsyncRedis(server=server))
    )
    await writer.set("k", "old")
    original_get = l2.get
    gate = asyncio.Event()

    async def slow_get(key: bytes) -> bytes | None:
        value = await original_get(key)  # reads "old"...
        await gate.wait()  # ...and is held back while the local write happens
        return value

    l2.get = slow_get  # type: ignore[method-assign]
    read = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0.01)
    await cache.set("k", "new")
    gate.set()
    assert await read == "old"  # the read returns what it read...
    assert await cache.get("k") == "new"  # ...but L1 keeps the newer write
    assert cache.get_stats()["promotions_skipped"] == 1
    await cache.shutdown()
    await writer.shutdown()


async def test_overlapping_writes_of_one_key_never_leave_the_overwritten_value_in_l1() -> None:
    """Two writes of a key overlap and the first one's reply is processed
    last: Redis holds the second value, so L1 must not keep the first."""
    import fakeredis

    from resync_hierarchy.l2.redis import RedisL2

    server = fakeredis.FakeServer()
    l2 = RedisL2(fakeredis.FakeAsyncRedis(server=server))
    cache = CacheHierarchy(HierarchyConfig(namespace="race", invalidation=False), l2=l2)
    original_set = l2.set
    hold_first = asyncio.Event()
    calls = 0

    async def gated_set(key: bytes, value: bytes, ttl_ms: int | None) -> None:
        nonlocal calls
        calls += 1
        mine = calls
        await original_set(key, value, ttl_ms)  # lands in Redis now...
        if mine == 1:
            await hold_first.wait()  # ...but its reply is processed last

    l2.set = gated_set  # type: ignore[method-assign]
    first = asyncio.create_task(cache.set("k", "first"))
    await asyncio.sleep(0.01)
    await cache.set("k", "second")  # Redis now holds "second"
    hold_first.set()
    await first
    reader = CacheHierarchy(
        HierarchyConfig(namespace="race", invalidation=False),
        l2=RedisL2(fakeredis.FakeAsyncRedis(server=server)),
    )
    assert await reader.get("k") == "second"
    assert await cache.get("k") == "second"  # not the overwritten "first"
    assert cache.get_stats()["write_races"] == 1
    await cache.shutdown()
    await reader.shutdown()


async def test_get_local_answers_from_l1_only_without_awaiting() -> None:
    cache = CacheHierarchy(HierarchyConfig(namespace="local"))
    await cache.set("k", {"v": 1})
    assert cache.get_local("k") == {"v": 1}
    assert cache.get_local("absent") is None
    assert cache.get_local("absent", "dflt") == "dflt"
    assert cache.get_local(42, "dflt") == "dflt"  # type: ignore[arg-type]  # not a str: no lookup
    stats = cache.get_stats()
    assert (stats["l1_hits"], stats["misses"]) == (1, 0)  # misses are get()'s to count
    off = CacheHierarchy(HierarchyConfig(namespace="local-off", l1_max_entries=0))
    await off.set("k", 1)
    assert off.get_local("k", "dflt") == "dflt"
