"""health_response without a real Redis: memory://, a port nothing listens
on, the stop() life cycle, a MigrationManager, a hung health check."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from support.redis_server import free_port

from resync_hierarchy import (
    CacheHierarchy,
    ConfigurationError,
    MigrationFlags,
    MigrationManager,
    health_response,
)


async def test_memory_cache_life_cycle_through_legacy_stop() -> None:
    cache = CacheHierarchy.from_url("memory://", namespace="svc")
    await cache.start()
    status, body = await health_response(cache)
    assert (status, body["status"], body["probe"], body["pass"]) == (200, "ok", "readiness", True)
    assert body["l2"]["status"] == "disabled"
    status, body = await health_response(cache, probe="liveness")
    assert (status, body["pass"]) == (200, True)
    json.dumps(body)

    await cache.stop()  # the legacy name of shutdown()
    status, body = await health_response(cache)
    assert (status, body["status"], body["pass"]) == (503, "down", False)
    status, body = await health_response(cache, probe="liveness")
    assert (status, body["pass"]) == (503, False)
    assert body["l2"]["status"] == "closed"


async def test_redis_unreachable_is_degraded_ready_and_alive() -> None:
    cache = CacheHierarchy.from_url(
        f"redis://127.0.0.1:{free_port()}/0", namespace="svc", l2_timeout=0.2
    )
    async with cache:
        status, body = await health_response(cache)
        assert (status, body["status"], body["l2"]["status"]) == (200, "degraded", "down")
        status, body = await health_response(cache, probe="liveness")
        assert (status, body["status"], body["pass"]) == (200, "degraded", True)
        json.dumps(body)


async def test_l1_off_and_redis_unreachable_is_not_ready_but_alive() -> None:
    cache = CacheHierarchy.from_url(
        f"redis://127.0.0.1:{free_port()}/0", l2_timeout=0.2, l1_max_entries=0
    )
    async with cache:
        status, body = await health_response(cache)
        assert (status, body["status"]) == (503, "down")
        status, _ = await health_response(cache, probe="liveness")
        assert status == 200  # restarting the pod would not bring Redis back


async def test_migration_manager_life_cycle() -> None:
    legacy = CacheHierarchy.from_url("memory://", namespace="old")
    new = CacheHierarchy.from_url("memory://", namespace="new")
    manager = MigrationManager(legacy, new, flags=MigrationFlags(use_new_cache=True))
    await manager.start()
    status, body = await health_response(manager)
    assert (status, body["status"]) == (200, "ok")
    assert set(body) >= {"legacy", "new", "migration"}
    json.dumps(body)
    await manager.stop()
    assert (await health_response(manager))[0] == 503
    assert (await health_response(manager, probe="liveness"))[0] == 503


class _HungCache(CacheHierarchy):
    async def health(self) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"status": "ok"}


class _BrokenCache(CacheHierarchy):
    async def health(self) -> dict[str, Any]:
        raise RuntimeError("bug")


class _OddReportCache(CacheHierarchy):
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "l1": {}, "l2": {"status": "ok"}, "odd": (1, object()), 2: "x"}


async def test_body_is_always_json_serialisable() -> None:
    status, body = await health_response(_OddReportCache.from_url("memory://"))
    assert status == 200
    assert body["odd"][0] == 1 and body["odd"][1].startswith("<object object")
    assert body["2"] == "x"
    json.dumps(body)


async def test_a_hung_or_broken_check_fails_both_probes() -> None:
    hung = _HungCache.from_url("memory://")
    started = time.monotonic()
    status, body = await health_response(hung, max_seconds=0.05)
    assert time.monotonic() - started < 5.0  # not the 10 s the check would take
    assert (status, body["status"]) == (503, "down")
    assert "longer than 0.05 s" in body["error"]
    assert (await health_response(hung, probe="liveness", max_seconds=0.05))[0] == 503
    status, body = await health_response(_BrokenCache.from_url("memory://"), probe="liveness")
    assert (status, body["error"]) == (503, "RuntimeError: bug")


async def test_unknown_probe_is_a_caller_mistake() -> None:
    with pytest.raises(ConfigurationError, match="readiness"):
        await health_response(CacheHierarchy.from_url("memory://"), probe="startup")  # type: ignore[arg-type]
