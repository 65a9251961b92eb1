"""Sentinel: master discovery, reads from the master, and a master lost mid-load.

The failover tests run a load of writers and readers on a deployment of
their own (master, replica, three sentinels with down-after 1 s), then either
ask for ``SENTINEL FAILOVER`` or SIGKILL the master. They check the issue's
requirements: no exception reaches a caller; every call returns within
``l2_timeout`` + 100 ms; the service is back (a set, then a get by another
cache with no L1, both through L2) within the measured failover time plus
``breaker_reset_timeout`` (plus a margin for the probe loop); every write
acknowledged after that is in Redis at the end; L1 was emptied and trusted
again after the switch.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.l2.redis import SentinelL2
from resync_hierarchy.testing.redis_server import RedisServer
from resync_hierarchy.testing.sentinel import SentinelDeployment

pytestmark = pytest.mark.redis

L2_TIMEOUT = 0.25
RESET = 1.0
CALL_BOUND = L2_TIMEOUT + 0.1
MARGIN = 2 * L2_TIMEOUT + 0.5  # the probe loop's period and its own calls


def _calls(server: RedisServer, command: str) -> int:
    info = server.command("INFO", "commandstats")
    assert isinstance(info, bytes)
    m = re.search(rb"cmdstat_" + command.encode() + rb":calls=(\d+)", info)
    return int(m.group(1)) if m else 0


async def _until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def test_master_is_discovered_and_serves_reads(sentinel_setup: Any) -> None:
    deployment: SentinelDeployment = sentinel_setup.deployment
    deployment.flush()
    master = deployment.master
    replica = next(s for s in deployment.servers if s is not master)
    replica.command("CONFIG", "RESETSTAT")
    url = deployment.url(query="sentinel_password=unused-s3cret")
    async with (
        CacheHierarchy.from_url(url, namespace="s") as writer,
        CacheHierarchy.from_url(url, namespace="s", l1_max_entries=0) as reader,
    ):
        backend = writer._l2.backend  # type: ignore[union-attr]
        assert isinstance(backend, SentinelL2)
        assert "unused-s3cret" not in backend.description
        await writer.set("k", "v")
        assert await reader.get("k") == "v"
        assert await _until(lambda: backend.master_address == deployment.master_address(), 3)
        summary = await writer.l2_summary()
    assert summary["server"]["sentinel_master"] == f"127.0.0.1:{master.port}"
    assert master.command("EXISTS", b"s:k") == 1
    assert _calls(master, "get") >= 1
    assert _calls(replica, "get") == 0  # reads go to the master, never to a lagging replica


async def test_unknown_service_name_is_an_l2_failure_not_an_exception(
    sentinel_setup: Any,
) -> None:
    deployment: SentinelDeployment = sentinel_setup.deployment
    url = deployment.url().replace("/mymaster/", "/nosuchmaster/")
    async with CacheHierarchy.from_url(url, namespace="s", l2_timeout=0.3) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert cache.get_stats()["l2_errors_by_kind"].get("connection", 0) >= 1
        health = await cache.health()
    assert health["status"] == "degraded"
    assert "nosuchmaster" in health["l2"]["last_error"]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["sentinel_failover", "kill_master"])
async def test_master_lost_mid_load(sentinel_deployment: SentinelDeployment, how: str) -> None:
    deployment = sentinel_deployment
    url = deployment.url()
    config: dict[str, Any] = {
        "namespace": "fo",
        "l2_timeout": L2_TIMEOUT,
        "breaker_reset_timeout": RESET,
    }
    cache = CacheHierarchy.from_url(url, **config)
    other = CacheHierarchy.from_url(url, **config)  # another process, its L1 trusted
    reader = CacheHierarchy.from_url(url, **config, l1_max_entries=0, invalidation=False)
    errors: list[BaseException] = []
    durations: list[float] = []
    acked: dict[str, tuple[int, float]] = {}
    stop = asyncio.Event()

    async def timed(coro: Any) -> bool:
        started = time.perf_counter()
        try:
            await coro
        except Exception as exc:  # the requirement: none reaches a caller
            errors.append(exc)
            return False
        finally:
            durations.append(time.perf_counter() - started)
        return True

    async def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{worker}:{i}"
            if await timed(cache.set(key, i)):
                acked[key] = (i, time.monotonic())
            await timed(cache.get(key))
            await timed(other.get(f"w{worker}:{max(0, i - 1)}"))
            i += 1
            await asyncio.sleep(0.005)

    async with cache, other, reader:
        await cache.set("warm", 0)
        assert await other.get("warm") == 0  # other's L1 now holds it
        backend = cache._l2.backend  # type: ignore[union-attr]
        assert isinstance(backend, SentinelL2)
        assert await _until(lambda: backend.master_address is not None, 3)
        workers = [asyncio.create_task(load(w)) for w in range(4)]
        await asyncio.sleep(0.5)

        injected_at = time.monotonic()
        inject = deployment.failover if how == "sentinel_failover" else deployment.kill_master
        old = await asyncio.to_thread(inject)
        await asyncio.to_thread(deployment.wait_for_new_master, old, 15.0)
        failover_time = time.monotonic() - injected_at

        service_back: float | None = None
        probe = 0
        while service_back is None and time.monotonic() - injected_at < 20:
            probe += 1
            switched = backend.switches >= 1
            await cache.set(f"probe{probe}", probe)
            if switched and await reader.get(f"probe{probe}") == probe:
                service_back = time.monotonic() - injected_at
            else:
                await asyncio.sleep(0.05)
        assert service_back is not None, "the service never came back"
        back_at = injected_at + service_back
        await asyncio.sleep(1.0)  # more load on the new master
        stop.set()
        await asyncio.gather(*workers)
        assert await _until(lambda: cache.get_stats()["recovery_pending"] == 0, 5)

        after = [key for key, (_, at) in acked.items() if at >= back_at]
        found = await reader.get_many(after)
        lost_after = [key for key in after if found.get(key) != acked[key][0]]
        before = [key for key, (_, at) in acked.items() if at < back_at]
        found_before = await reader.get_many(before)
        lost_before = sum(1 for key in before if found_before.get(key) != acked[key][0])
        stats, other_stats = cache.get_stats(), other.get_stats()
        live_subscriptions = len(backend._subscriptions)

    print(
        f"\n{how}: failover {failover_time:.2f}s, service back {service_back:.2f}s, "
        f"switch seen {backend.last_switch_at and backend.last_switch_at - injected_at:.2f}s, "
        f"calls {len(durations)}, max {max(durations) * 1000:.0f} ms, "
        f"acked after recovery {len(after)} (lost {len(lost_after)}), "
        f"acked before {len(before)} (lost {lost_before}), errors {stats['l2_errors_by_kind']}"
    )
    assert errors == []
    assert max(durations) <= CALL_BOUND, sorted(durations)[-5:]
    assert service_back <= failover_time + RESET + MARGIN
    assert after and lost_after == []
    # The switch was seen, and each L1 was emptied and trusted again (resubscribed).
    assert backend.switches >= 1
    assert stats["invalidation"]["resubscribes"] >= 1
    assert other_stats["invalidation"]["resubscribes"] >= 1
    assert stats["l1_trusted"] and other_stats["l1_trusted"]
    assert live_subscriptions == 1  # the ended ones are forgotten
    assert backend._subscriptions == set()  # and the last one at shutdown
