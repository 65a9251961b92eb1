"""Shared fixtures: private real ``redis-server`` processes (never 127.0.0.1:6379).

Fixtures
--------
``redis_server``  session-scoped :class:`RedisServer`, started once, stopped at the end.
``redis_url``     URL of that server, reset (FLUSHALL, SCRIPT FLUSH, ...) before each test.
``fresh_redis``   a brand-new :class:`RedisServer` per test, free to kill/pause/restart.
``l2_url``        parametrized ``"fakeredis"`` / real ``redis_url``.

Tests using any of these (``l2_url`` only for its real-Redis case) are marked ``redis``
automatically, so ``-m "not redis"`` runs without a server. Without ``redis-server`` on
PATH they SKIP, or FAIL when ``CI`` is true or ``RESYNC_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:  # make `support` importable under any --import-mode
    sys.path.insert(0, _TESTS_DIR)

from support import topology  # noqa: E402
from support.cluster import acquire_shared_cluster, release_shared_cluster  # noqa: E402
from support.redis_server import (  # noqa: E402
    RedisServer,
    redis_server_binary,
    redis_server_version,
    require_redis,
    require_redis_reason,
)

from resync_hierarchy.testing.cluster import RedisClusterHarness  # noqa: E402

REDIS_FIXTURES = frozenset({"redis_server", "redis_url", "fresh_redis"})
L2_BACKENDS = ("fakeredis", "redis")


def pytest_report_header(config: pytest.Config) -> list[str]:
    reason = require_redis_reason()
    if reason is not None:
        return [f"redis-server: unavailable, real-Redis tests will not run ({reason})"]
    version = redis_server_version() or "unknown version"
    return [f"redis-server: {redis_server_binary()} ({version}), private instances on 127.0.0.1"]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames = set(getattr(item, "fixturenames", ()))
        needs_redis = bool(fixturenames & REDIS_FIXTURES)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("l2_url") == "redis":
            needs_redis = True
        if needs_redis and item.get_closest_marker("redis") is None:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REDIS_URL or RESYNC_CACHE_* from the caller's shell reaches a test
    (the CLI and from_env read them); a test sets what it needs."""
    for name in list(os.environ):
        if name == "REDIS_URL" or name.startswith("RESYNC_CACHE_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Every test starts with structlog unconfigured. ``capture_logs()`` leaves
    structlog configured on exit (with its default stdout logger), and ``main()``
    configures it for the process: either would send later tests' package
    logs to a place they do not expect (stdout, or a closed capture)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session (skip/fail policy applied)."""
    require_redis()
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, emptied (and un-paused / revived) for this test."""
    redis_server.reset()
    return redis_server.url


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A dedicated redis-server for this test only; stopped afterwards whatever happens."""
    require_redis()
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=L2_BACKENDS, ids=list(L2_BACKENDS))
def l2_url(request: pytest.FixtureRequest) -> str:
    """``"fakeredis"`` (in-process backend) or the URL of the flushed real server."""
    if request.param == "fakeredis":
        return "fakeredis"
    url: str = request.getfixturevalue("redis_url")
    return url


# Session-wide topologies, shared by tests/contract and tests/topology: each
# starts once, on first use.


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterHarness]:
    """The session's 3-master Redis Cluster, no replicas."""
    cluster = acquire_shared_cluster()
    try:
        yield cluster
    finally:
        release_shared_cluster()


@pytest.fixture(scope="session")
def tls_setup() -> Iterator[Any]:
    """The session's TLS redis-server (client certificates optional) and its throw-away CA."""
    yield topology.acquire("tls")
    topology.release("tls")


@pytest.fixture(scope="session")
def acl_setup() -> Iterator[Any]:
    """The session's redis-server for ACL users, one per namespace."""
    yield topology.acquire("acl")
    topology.release("acl")


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[Any]:
    """The session's master + replica + three sentinels (no failover on it)."""
    yield topology.acquire("sentinel")
    topology.release("sentinel")
