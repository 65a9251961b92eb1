"""Operational log events, and secrets never in them (nor in health, stats or metrics).

A real redis-server with an ACL user that has a password: the cache's URL
carries it. An outage and a recovery produce the events operators alert on;
everything the cache prints or exports is then searched for the password.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs
from support.redis_server import RedisServer, send_command

from resync_hierarchy import CacheHierarchy, MigrationManager
from resync_hierarchy.migration.backfill import backfill
from resync_hierarchy.migration.flags import MigrationFlags
from resync_hierarchy.migration.fleet import FlagRecord
from resync_hierarchy.observe.logging import configure_cli_logging

PASSWORD = "Pw-5ecret-never-logged"


def user_url(server: RedisServer) -> str:
    send_command(server.port, "ACL", "SETUSER", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all")
    return f"redis://app:{PASSWORD}@127.0.0.1:{server.port}/0"


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_outage_events_and_no_password_anywhere(
    fresh_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = user_url(fresh_redis)
    registry = CollectorRegistry()
    cache = CacheHierarchy.from_url(
        url,
        namespace="logs",
        registry=registry,
        l2_timeout=0.2,
        l2_retries=0,
        breaker_failure_threshold=2,
        breaker_reset_timeout=0.2,
    )
    try:
        configure_cli_logging(json=True, level=20)  # JSON lines on stderr, as the CLI does
        async with cache:
            await cache.set("k", 1)
            with capture_logs() as captured:
                fresh_redis.kill()
                await cache.set("during", 2)
                await cache.get("absent")
                await cache.get("absent-2")
                down = await cache.health()
                fresh_redis.start()
                user_url(fresh_redis)  # a restarted server has forgotten the user
                await wait_for(lambda: cache.get_stats()["circuit_state"] == "closed")
                await wait_for(lambda: cache.get_stats()["recovery_pending"] == 0)
                await wait_for(lambda: cache.get_stats()["l1_trusted"])
            up = await cache.health()
            stats = cache.get_stats()
            text = generate_latest(registry).decode()
            shown = repr(cache)
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    events = [entry["event"] for entry in captured]
    for expected in ("l2_error", "circuit_opened", "circuit_closed", "replay_done"):
        assert expected in events, (expected, events)
    assert {"invalidation_connection_lost", "invalidation_gap"} & set(events), events
    assert down["status"] == "degraded" and up["status"] == "ok"
    for output in (
        json.dumps(captured, default=str),
        json.dumps(down),
        json.dumps(up),
        json.dumps(stats, default=str),
        text,
        shown,
        err,
    ):
        assert PASSWORD not in output
    assert "app:***@" in json.dumps(up) or "***" in json.dumps(up)


async def test_a_bad_password_is_reported_without_the_password(
    fresh_redis: RedisServer,
) -> None:
    user_url(fresh_redis)
    wrong = f"redis://app:{PASSWORD}-wrong@127.0.0.1:{fresh_redis.port}/0"
    cache = CacheHierarchy.from_url(wrong, namespace="bad", l2_timeout=0.3)
    with capture_logs() as captured:
        async with cache:
            await cache.set("k", 1)
            report = await cache.health()
    assert report["status"] == "degraded"
    assert PASSWORD not in json.dumps(report)
    assert PASSWORD not in json.dumps(captured, default=str)
    assert any(entry["event"] == "l2_error" for entry in captured)


async def test_backfill_reports_progress_and_flag_changes_are_logged(redis_url: str) -> None:
    legacy = CacheHierarchy.from_url(redis_url, namespace="old", registry=CollectorRegistry())
    new = CacheHierarchy.from_url(redis_url, namespace="fresh", registry=CollectorRegistry())
    async with legacy, new:
        await legacy.set_many({f"k{n}": n for n in range(50)})
        with capture_logs() as captured:
            report = await backfill(legacy, new, batch=10, progress_every=0.0)
        assert report.completed and report.copied == 50
        progress = [entry for entry in captured if entry["event"] == "backfill_progress"]
        assert progress, [entry["event"] for entry in captured]
        assert progress[-1]["scanned"] <= 50
        assert all("copied" in entry for entry in progress)
        assert any(entry["event"] == "backfill_finished" for entry in captured)

        mm = MigrationManager(legacy=legacy, new=new, registry=CollectorRegistry())
        with capture_logs() as captured:
            await mm.start()
            await FlagRecord(new).write(MigrationFlags(use_new_cache=True, rollout_percent=40))
            await wait_for(lambda: mm.status()["rollout_percent"] == 40)
            await mm.shutdown()
        changed = [entry for entry in captured if entry["event"] == "migration_flags_changed"]
        assert changed
