"""L1: the in-process tier (lock-striped, bounded, TTL-aware). See :mod:`.store`."""

from __future__ import annotations

from resync_hierarchy.l1.policy import (
    POLICIES,
    EvictionPolicy,
    LRUPolicy,
    PolicyFactory,
    TinyLFUPolicy,
)
from resync_hierarchy.l1.sketch import FrequencySketch
from resync_hierarchy.l1.store import L1Store

__all__ = [
    "POLICIES",
    "EvictionPolicy",
    "FrequencySketch",
    "L1Store",
    "LRUPolicy",
    "PolicyFactory",
    "TinyLFUPolicy",
]
