"""Fixtures of the deployment-topology tests (TLS, ACL, Sentinel, Cluster).

The session-wide set-ups come from tests/support (shared with the contract
suite, so each starts once per session); failover tests start their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.redis_server import require_redis

from resync_hierarchy.testing.cluster import RedisClusterHarness
from resync_hierarchy.testing.sentinel import SentinelDeployment


@pytest.fixture
def sentinel_deployment() -> Iterator[SentinelDeployment]:
    """A deployment of this test only: free to fail over or kill."""
    require_redis()
    deployment = SentinelDeployment().start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def cluster(redis_cluster: RedisClusterHarness) -> RedisClusterHarness:
    """The shared cluster, emptied (keys and scripts on every master) for this test."""
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def replicated_cluster() -> Iterator[RedisClusterHarness]:
    """3 masters with one replica each, for this test only (free to kill a
    master); with a 1 s node timeout a replica takes over in about 2 s."""
    require_redis()
    cluster = RedisClusterHarness(masters=3, replicas=1, node_timeout_ms=1000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
