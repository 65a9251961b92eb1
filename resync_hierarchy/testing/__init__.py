"""Helpers for testing code that uses resync_hierarchy (shipped with the package)."""

from __future__ import annotations

from resync_hierarchy.testing.clock import FakeClock
from resync_hierarchy.testing.proxy import FaultProxy

__all__ = ["FakeClock", "FaultProxy"]
