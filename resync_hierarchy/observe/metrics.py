"""Prometheus metrics. The only module that imports prometheus_client.

Nothing is registered at import time: collectors are created on first use,
once per registry (the default one unless a ``registry`` is given), and
shared by every object that reports into that registry, so several managers
in one process add up instead of colliding. Multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) works with these plain counters and gauges.
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

__all__ = ["MIGRATION_MODES", "MigrationMetrics", "migration_metrics"]

MIGRATION_MODES = ("legacy_only", "dual_write", "read_new", "new_only")


class MigrationMetrics:
    """The migration series whose names dashboards already use."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.legacy_hits = Counter(
            "migration_legacy_hits_total",
            "Reads answered by the legacy configuration (fallbacks included)",
            registry=registry,
        )
        self.new_hits = Counter(
            "migration_new_hits_total",
            "Reads answered by the new configuration",
            registry=registry,
        )
        self.fallbacks = Counter(
            "migration_fallbacks_total",
            "Reads of the new configuration that missed and fell back to legacy",
            registry=registry,
        )
        self.errors = Counter(
            "migration_errors_total",
            "Migration operations that failed (copies, shadow reads, flag records)",
            registry=registry,
        )
        self.mismatches = Counter(
            "migration_mismatches_total",
            "Shadow or verify reads whose new value differed from legacy",
            registry=registry,
        )
        self.mode = Gauge(
            "migration_mode",
            "1 for the migration's current mode, 0 for the others",
            ["mode"],
            registry=registry,
        )
        self.rollout_percent = Gauge(
            "migration_rollout_percent",
            "Share of keys reading the new configuration while it is in use",
            registry=registry,
        )
        self.flag_changes = Counter(
            "migration_flag_changes_total",
            "Flag changes applied from the fleet-wide record",
            registry=registry,
        )

    def set_mode(self, mode: str, percent: float) -> None:
        for name in MIGRATION_MODES:
            self.mode.labels(mode=name).set(1 if name == mode else 0)
        self.rollout_percent.set(percent)


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, MigrationMetrics] = (
    weakref.WeakKeyDictionary()
)


def migration_metrics(registry: CollectorRegistry | None = None) -> MigrationMetrics:
    """The migration collectors of ``registry`` (created on first use)."""
    target = REGISTRY if registry is None else registry
    with _lock:
        metrics = _by_registry.get(target)
        if metrics is None:
            metrics = MigrationMetrics(target)
            _by_registry[target] = metrics
        return metrics
