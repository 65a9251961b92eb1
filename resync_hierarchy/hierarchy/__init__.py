"""The two-tier cache: L1 in process, L2 shared."""

from __future__ import annotations

from resync_hierarchy.hierarchy.core import CacheHierarchy, Entry

__all__ = ["CacheHierarchy", "Entry"]
