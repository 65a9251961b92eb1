"""Least privilege: the cache as an ACL user restricted to its namespace.

The whole behaviour suite runs as such a user (tests/contract, backend
``acl``). Here: what the user is refused is reported as ``noperm`` (stats,
logs with what to grant), never retried (counted by the server itself in
``INFO commandstats``) and never opens the circuit; INFO refused degrades
``l2_summary`` instead of failing it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.topology import acl_user_for

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.testing.redis_server import RedisServer

pytestmark = pytest.mark.redis


def _rejected_calls(server: RedisServer, command: str) -> int:
    info = server.command("INFO", "commandstats")
    assert isinstance(info, bytes)
    m = re.search(rb"cmdstat_" + command.encode() + rb":.*rejected_calls=(\d+)", info)
    return int(m.group(1)) if m else 0


async def test_noperm_is_reported_clearly_and_never_retried(acl_setup: Any) -> None:
    server: RedisServer = acl_setup.server
    server.reset()
    user, password = acl_user_for(server, "app")
    url = f"redis://{user}:{password}@127.0.0.1:{server.port}/0"
    # The user of namespace "app" used for namespace "other": every key is refused.
    cache = CacheHierarchy.from_url(
        url, namespace="other", invalidation=False, l2_retries=3, breaker_failure_threshold=2
    )
    with capture_logs() as logs:
        async with cache:
            for i in range(5):
                await cache.set(f"k{i}", i)  # never raises
                assert await cache.get(f"k{i}") == i  # from L1
            health = await cache.health()
    stats = cache.get_stats()
    assert stats["l2_errors_by_kind"]["noperm"] == 5
    assert stats["l2_retries"] == 0
    assert stats["circuit_state"] == "closed"  # Redis is up: waiting will not help
    assert _rejected_calls(server, "set") == 5  # one attempt per set, none repeated
    assert health["status"] == "ok" and health["l2"]["errors"] == 5
    logged = [e for e in logs if e["event"] == "l2_error"]
    assert logged and logged[0]["kind"] == "noperm"
    assert "NOPERM" in logged[0]["error"] and "~<namespace>:*" in logged[0]["error"]
    assert password not in repr(logs)
    assert server.command("DBSIZE") == 0
    # The same user in its own namespace is allowed everything the cache does.
    async with CacheHierarchy.from_url(url, namespace="app") as own:
        await own.set("k", "v")
        await own.delete_many(["k"])
        await own.set("k2", "v2")
        await own.clear()
        assert own.get_stats()["l2_errors"] == 0
        assert own.get_stats()["l1_trusted"]  # subscribed to its channel
        summary = await own.l2_summary()
    assert summary["status"] == "ok"  # INFO is not granted: reported, not raised
    assert "no permissions to run the 'info' command" in summary["server"]["unavailable"]


async def test_a_channel_not_granted_keeps_l1_untrusted(acl_setup: Any) -> None:
    """Without the invalidation channel, the cache never trusts its L1 (it
    cannot hear other processes' writes) but keeps working through L2."""
    server: RedisServer = acl_setup.server
    user, password = acl_user_for(server, "app")
    server.command("ACL", "SETUSER", user, "resetchannels")
    url = f"redis://{user}:{password}@127.0.0.1:{server.port}/0"
    try:
        async with CacheHierarchy.from_url(url, namespace="app", l2_timeout=0.3) as cache:
            await cache.set("k", "v")
            assert await cache.get("k") == "v"
            stats = cache.get_stats()
            assert stats["l1_trusted"] is False
            assert stats["l2_hits"] == 1
    finally:
        acl_user_for(server, "app")  # restore the channel


async def test_a_wrong_password_is_kind_auth_and_not_retried(acl_setup: Any) -> None:
    server: RedisServer = acl_setup.server
    user, _ = acl_user_for(server, "app")
    url = f"redis://{user}:wrong-pw@127.0.0.1:{server.port}/0"
    cache = CacheHierarchy.from_url(url, namespace="app", invalidation=False, l2_retries=3)
    with capture_logs() as logs:
        async with cache:
            await cache.set("k", 1)  # never raises
            assert await cache.get("k") == 1
    stats = cache.get_stats()
    assert stats["l2_errors_by_kind"].get("auth", 0) >= 1
    assert stats["l2_retries"] == 0
    logged = [e for e in logs if e["event"] == "l2_error"]
    assert "check the user and password" in logged[0]["error"]
    assert "wrong-pw" not in repr(logs)
