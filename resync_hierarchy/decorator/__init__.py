"""``@cached``: cache an async function's results in a CacheHierarchy or a
MigrationManager (cached_function.py), with keys built from its arguments by value
(keys.py)."""

from __future__ import annotations

from resync_hierarchy.decorator.cached_function import CachedFunction, cached

__all__ = ["CachedFunction", "cached"]
