"""L1: the in-process tier (lock-striped, bounded, TTL-aware). See :mod:`.store`."""

from __future__ import annotations

from resync_hierarchy.l1.policy import EvictionPolicy, LRUPolicy, PolicyFactory
from resync_hierarchy.l1.store import L1Store

__all__ = ["EvictionPolicy", "L1Store", "LRUPolicy", "PolicyFactory"]
