"""One private 3-master Redis Cluster shared by every test of the session.

The contract suite (tests/contract) and the topology tests (tests/topology)
both need it; fixtures of two conftests would start two clusters, so they
both take it from here: started at first use, stopped by pid when the last
fixture that acquired it is finalized (and by the harness's atexit backstop).
"""

from __future__ import annotations

import threading

from resync_hierarchy.testing.cluster import RedisClusterHarness
from support.redis_server import require_redis

__all__ = ["acquire_shared_cluster", "release_shared_cluster"]

_lock = threading.Lock()
_shared: dict[str, RedisClusterHarness] = {}
_users: dict[str, int] = {"cluster": 0}


def acquire_shared_cluster() -> RedisClusterHarness:
    """The session's cluster (3 masters, no replicas), started if needed."""
    require_redis()
    with _lock:
        if "cluster" not in _shared:
            _shared["cluster"] = RedisClusterHarness(masters=3).start()
        _users["cluster"] += 1
        return _shared["cluster"]


def release_shared_cluster() -> None:
    with _lock:
        _users["cluster"] -= 1
        if _users["cluster"] <= 0 and "cluster" in _shared:
            _shared.pop("cluster").stop()
            _users["cluster"] = 0
