"""Retries, breaker, fail-safe and write recovery, on fakeredis behind a
switchable faulty backend (the real-Redis versions are in tests/chaos)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import fakeredis
import pytest

from resync_hierarchy import CacheHierarchy, HierarchyConfig
from resync_hierarchy.l2.base import L2Error
from resync_hierarchy.l2.redis import RedisL2
from resync_hierarchy.testing import FakeClock


class FaultyL2:
    """An L2 backend that forwards to fakeredis, or fails on demand.

    ``fail`` is None (healthy), an L2Error kind to raise, or "hang".
    ``fail_times`` limits how many calls fail (None: all of them).
    """

    def __init__(self, server: fakeredis.FakeServer) -> None:
        self.inner = RedisL2(fakeredis.FakeAsyncRedis(server=server), description="faulty")
        self.fail: str | None = None
        self.fail_times: int | None = None
        self.calls: Counter[str] = Counter()

    @property
    def description(self) -> str:
        return "faulty"

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name in ("scan_prefix", "aclose"):
            return target

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if self.fail is not None and (self.fail_times is None or self.fail_times > 0):
                if self.fail_times is not None:
                    self.fail_times -= 1
                if self.fail == "hang":
                    await asyncio.sleep(3600)
                raise L2Error(self.fail, f"injected {self.fail}")
            return await target(*args, **kwargs)

        return wrapped


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def build(
    server: fakeredis.FakeServer, clock: Any = None, **overrides: Any
) -> tuple[CacheHierarchy, FaultyL2]:
    settings: dict[str, Any] = {
        "namespace": "r",
        "l2_timeout": 0.2,
        "l2_retries": 2,
        "l2_retry_backoff": 0.001,
        "breaker_failure_threshold": 3,
        "breaker_reset_timeout": 0.05,
        "invalidation": False,  # its own tests: tests/integration/test_invalidation.py
    }
    settings.update(overrides)
    backend = FaultyL2(server)
    extra = {} if clock is None else {"clock": clock}
    return CacheHierarchy(HierarchyConfig(**settings), l2=backend, **extra), backend  # type: ignore[arg-type]


def plain(server: fakeredis.FakeServer) -> CacheHierarchy:
    """Another healthy process on the same L2."""
    return CacheHierarchy(
        HierarchyConfig(namespace="r", invalidation=False),
        l2=RedisL2(fakeredis.FakeAsyncRedis(server=server)),
    )


async def wait_for(predicate: Any, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_quick_failures_are_retried_within_l2_retries(server: fakeredis.FakeServer) -> None:
    cache, backend = build(server)
    await plain(server).set("k", "v")
    backend.fail, backend.fail_times = "connection", 2
    assert await cache.get("k") == "v"  # third attempt succeeds
    assert backend.calls["get"] == 3
    stats = cache.get_stats()
    assert stats["l2_retries"] == 2
    assert stats["l2_errors"] == 0


async def test_one_failed_call_makes_at_most_retries_plus_one_attempts(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server, breaker_failure_threshold=100)
    backend.fail = "connection"
    assert await cache.get("k", "d") == "d"
    assert backend.calls["get"] == 3
    assert cache.get_stats()["l2_errors_by_kind"] == {"connection": 1}


@pytest.mark.parametrize("kind", ["oom", "noperm", "response"])
async def test_answers_from_a_working_redis_are_not_retried_and_do_not_open_the_breaker(
    server: fakeredis.FakeServer, kind: str
) -> None:
    cache, backend = build(server)
    backend.fail = kind
    for i in range(10):
        await cache.set(f"k{i}", i)  # never raises
    assert backend.calls["set"] == 10  # one attempt each
    stats = cache.get_stats()
    assert stats["circuit_state"] == "closed"
    # An OOM-refused set also tries to delete the value it failed to replace.
    expected = 20 if kind == "oom" else 10
    assert stats["l2_errors_by_kind"] == {kind: expected}
    assert backend.calls["delete_many"] == (10 if kind == "oom" else 0)
    assert stats["recovery_pending"] == 0  # Redis answered: replaying would fail alike
    assert await cache.get("k3") == 3  # L1 still took the write


async def test_timeouts_are_not_retried(server: fakeredis.FakeServer) -> None:
    cache, backend = build(server, breaker_failure_threshold=100, l2_timeout=0.05)
    backend.fail = "hang"
    started = time.monotonic()
    assert await cache.get("k", "d") == "d"
    assert time.monotonic() - started < 0.05 + 0.1
    assert backend.calls["get"] == 1
    assert cache.get_stats()["l2_errors_by_kind"] == {"timeout": 1}


async def test_breaker_opens_fails_fast_probes_once_and_closes(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server, breaker_reset_timeout=0.1)
    backend.fail = "connection"
    for _ in range(3):
        await cache.get("k")
    assert cache.get_stats()["circuit_state"] == "open"
    calls_when_opened = sum(backend.calls.values())
    for _ in range(50):
        assert await cache.get("k", "d") == "d"
    assert sum(backend.calls.values()) == calls_when_opened  # no I/O while open
    assert cache.get_stats()["l2_short_circuited"] == 50
    await asyncio.sleep(0.15)  # one failed probe...
    assert backend.calls["ping"] == 1
    assert cache.get_stats()["circuit_state"] == "open"
    backend.fail = None
    await wait_for(lambda: cache.get_stats()["circuit_state"] == "closed", 1.0)
    assert backend.calls["ping"] == 2  # ...exactly one more probe closed it
    assert (await cache.health())["status"] == "ok"
    await cache.shutdown()


async def test_health_reports_the_open_circuit_without_io(server: fakeredis.FakeServer) -> None:
    cache, backend = build(server, breaker_reset_timeout=60)
    backend.fail = "connection"
    for _ in range(3):
        await cache.get("k")
    pings = backend.calls["ping"]
    report = await cache.health()
    assert report["status"] == "degraded"
    assert report["l2"]["circuit_state"] == "open"
    assert report["l2"]["error"] == "circuit_open"
    assert backend.calls["ping"] == pings
    await cache.shutdown()


async def test_fail_safe_serves_stale_only_while_l2_is_unavailable(
    server: fakeredis.FakeServer,
) -> None:
    clock = FakeClock()
    cache, backend = build(server, clock=clock, fail_safe_max_stale=60)
    await cache.set("k", "v1", ttl=10)
    clock.advance(11)  # expired everywhere (fake clock: L2 envelope too)
    backend.fail = "connection"
    assert await cache.get("k", "d") == "v1"  # stale, L2 unavailable
    assert await cache.get_many(["k", "other"]) == {"k": "v1"}
    assert cache.get_stats()["stale_served"] == 2
    clock.advance(59.9)  # 60.9 s past expiry: beyond fail_safe_max_stale
    assert await cache.get("k", "d") == "d"
    await cache.shutdown()


async def test_fail_safe_not_used_while_l2_answers(server: fakeredis.FakeServer) -> None:
    clock = FakeClock()
    cache, _ = build(server, clock=clock, fail_safe_max_stale=60)
    await cache.set("k", "v1", ttl=10)
    clock.advance(11)
    assert await cache.get("k", "d") == "d"  # L2 answered: expired is expired
    assert cache.get_stats()["stale_served"] == 0


async def test_get_or_set_returns_stale_when_the_factory_fails(
    server: fakeredis.FakeServer,
) -> None:
    clock = FakeClock()
    cache, _ = build(server, clock=clock, fail_safe_max_stale=60)
    await cache.set("k", "v1", ttl=10)
    clock.advance(11)

    async def broken() -> str:
        raise RuntimeError("source of truth down")

    assert await cache.get_or_set("k", broken) == "v1"
    assert cache.get_stats()["stale_served"] == 1
    with pytest.raises(RuntimeError, match="source of truth down"):
        await cache.get_or_set("never-cached", broken)


async def test_writes_during_an_outage_are_replayed_after_it(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server)
    other = plain(server)
    await other.set_many({"keep": 0, "gone": 1, "cleared-later": 2})
    backend.fail = "connection"
    await cache.set("new", "n")
    await cache.set("changed", 1)
    await cache.set("changed", 2)  # last write wins
    await cache.delete("gone")
    await cache.set_many({"m1": 1, "m2": 2})
    await cache.delete_many(["m2"])
    stats = cache.get_stats()
    assert stats["recovery_pending"] == 5
    assert stats["circuit_state"] == "open"
    assert await cache.get("changed") == 2  # L1 serves the newest meanwhile
    backend.fail = None
    await wait_for(lambda: cache.get_stats()["recovery_pending"] == 0)
    reader = plain(server)
    assert await reader.get_many(["new", "changed", "gone", "m1", "m2", "keep"]) == {
        "new": "n",
        "changed": 2,
        "m1": 1,
        "keep": 0,
    }
    assert cache.get_stats()["recovery_replayed"] == 5
    await cache.shutdown()


async def test_replay_never_overwrites_a_newer_write_from_another_process(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server)
    backend.fail = "connection"
    await cache.set("k", "old, written during the outage")
    await asyncio.sleep(0.001)
    await plain(server).set("k", "newer, from another process")
    backend.fail = None
    await wait_for(lambda: cache.get_stats()["recovery_pending"] == 0)
    assert cache.get_stats()["recovery_superseded"] == 1
    assert await plain(server).get("k") == "newer, from another process"
    assert await cache.get("k") == "newer, from another process"  # L1 copy dropped
    await cache.shutdown()


async def test_pending_write_wins_over_an_older_l2_value_on_read(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server, l1_max_entries=0, breaker_failure_threshold=100)
    await plain(server).set("k", "old")
    backend.fail, backend.fail_times = "connection", 3  # the set and its retries fail
    await cache.set("k", "new")
    assert cache.get_stats()["recovery_pending"] == 1
    assert await cache.get("k") == "new"  # L2 still says "old": the queue knows better
    assert await cache.get_many(["k"]) == {"k": "new"}
    await cache.shutdown()


async def test_expired_pending_write_is_replayed_as_a_delete(
    server: fakeredis.FakeServer,
) -> None:
    await plain(server).set("k", "older, with a long ttl", ttl=3600)
    clock = FakeClock(time.time() + 0.001)  # our write comes after it
    cache, backend = build(server, clock=clock)
    backend.fail = "connection"
    await cache.set("k", "short-lived", ttl=5)
    clock.advance(10)
    backend.fail = None
    await wait_for(lambda: cache.get_stats()["recovery_pending"] == 0)
    assert await plain(server).get("k") is None
    await cache.shutdown()


async def test_clear_during_an_outage_is_replayed_without_touching_newer_keys(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server)
    other = plain(server)
    await other.set_many({"a": 1, "b": 2})
    backend.fail = "connection"
    await cache.set("pending", "dropped by the clear")
    await cache.clear()
    await cache.set("after-clear", "kept")
    await asyncio.sleep(0.001)
    await other.set("newer", "written after the clear by another process")
    backend.fail = None
    await wait_for(lambda: not cache._recovery)
    reader = plain(server)
    assert await reader.get_many(["a", "b", "pending", "after-clear", "newer"]) == {
        "after-clear": "kept",
        "newer": "written after the clear by another process",
    }
    await cache.shutdown()


async def test_start_with_l2_down_then_heal(server: fakeredis.FakeServer) -> None:
    cache, backend = build(server)
    backend.fail = "connection"
    async with cache:
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        for _ in range(3):
            await cache.get("x")
        assert cache.get_stats()["circuit_state"] == "open"
        backend.fail = None
        await wait_for(lambda: cache.get_stats()["circuit_state"] == "closed")
        await wait_for(lambda: cache.get_stats()["recovery_pending"] == 0)
        assert await plain(server).get("k") == "v"


async def test_overflow_of_the_recovery_queue_is_counted(server: fakeredis.FakeServer) -> None:
    cache, backend = build(server, recovery_queue_max=3, breaker_reset_timeout=60)
    backend.fail = "connection"
    for i in range(5):
        await cache.set(f"k{i}", i)
    stats = cache.get_stats()
    assert (stats["recovery_pending"], stats["recovery_overflowed"]) == (3, 2)
    await cache.shutdown()


async def test_an_oom_refused_set_deletes_the_value_it_could_not_replace(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server)
    await cache.set("k", "old")
    real_set = backend.inner.set

    async def refuse(key: bytes, value: bytes, ttl_ms: int | None) -> None:
        raise L2Error("oom", "command not allowed when used memory > 'maxmemory'")

    backend.inner.set = refuse  # type: ignore[method-assign]
    await cache.set("k", "new")  # no exception
    backend.inner.set = real_set  # type: ignore[method-assign]
    assert await plain(server).get("k") is None  # not the outdated "old"
    assert await cache.get("k") == "new"  # this process's L1 has the write
    stats = cache.get_stats()
    assert stats["l2_errors_by_kind"] == {"oom": 1}
    assert stats["circuit_state"] == "closed"
    assert stats["recovery_pending"] == 0


async def test_a_replay_landing_after_a_local_delete_does_not_bring_the_value_back(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server)
    backend.fail = "connection"
    await cache.set("k", "written during the outage")
    assert cache.get_stats()["recovery_pending"] == 1
    real_write = backend.inner.write_if_newer
    in_flight = asyncio.Event()
    release = asyncio.Event()
    held = 0

    async def held_replay(items: Any) -> Any:
        nonlocal held
        held += 1
        if held == 1:  # the replay's batch: reads nothing yet, lands later
            in_flight.set()
            await release.wait()
        return await real_write(items)

    backend.inner.write_if_newer = held_replay  # type: ignore[method-assign]
    backend.fail = None
    await cache.get("other")  # a successful call wakes the replay
    await asyncio.wait_for(in_flight.wait(), 2)
    assert await cache.delete("k") is True  # reaches Redis while the replay is held
    release.set()
    await wait_for(lambda: cache.get_stats()["recovery_pending"] == 0)
    await asyncio.sleep(0.05)
    assert await plain(server).get("k") is None  # the delete stands
    await cache.shutdown()


async def test_a_retry_backing_off_is_not_sent_once_the_circuit_opened(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(
        server, l2_retry_backoff=0.2, l2_retry_backoff_max=0.2, breaker_failure_threshold=1
    )
    backend.fail = "connection"
    assert cache._l2 is not None
    first = asyncio.create_task(cache.get("k", "d"))
    await asyncio.sleep(0.01)  # its first attempt failed; its retry is backing off
    assert backend.calls["get"] == 1
    cache._l2.breaker.record_failure("another call failed")  # the circuit opens
    assert await first == "d"
    assert backend.calls["get"] == 1  # the retry was never sent
    await cache.shutdown()


async def test_calls_queued_for_a_connection_are_not_sent_once_the_circuit_opened(
    server: fakeredis.FakeServer,
) -> None:
    cache, backend = build(server, l2_max_connections=1, breaker_failure_threshold=1)
    assert cache._l2 is not None
    limiter = cache._l2.limiter
    await limiter.acquire()  # the only connection is busy
    queued = [asyncio.create_task(cache.get(f"k{n}", "d")) for n in range(5)]
    await asyncio.sleep(0.01)
    assert limiter.waiting == 5
    cache._l2.breaker.record_failure("another call failed")  # the circuit opens
    limiter.release()
    assert await asyncio.gather(*queued) == ["d"] * 5
    assert backend.calls["get"] == 0  # none of them reached Redis
    assert cache.get_stats()["l2_short_circuited"] == 5
    await cache.shutdown()
