"""Resilience around L2: a fair admission queue, a deadline per operation,
and the translation of every L2 failure into :class:`L2Unavailable`."""

from __future__ import annotations

from resync_hierarchy.resilience.guard import GuardedL2, L2Unavailable
from resync_hierarchy.resilience.limiter import FifoLimiter

__all__ = ["FifoLimiter", "GuardedL2", "L2Unavailable"]
