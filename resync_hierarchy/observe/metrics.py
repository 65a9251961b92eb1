"""Prometheus metrics. The only module that imports prometheus_client.

Hot paths count in plain integers on their own objects; a collector reads
them when Prometheus scrapes. A ``Counter.inc()`` takes a lock and costs
about as much as a whole L1 hit, so nothing on a read path touches
prometheus_client.

Nothing is registered at import time: one collector per registry (the
default one unless a ``registry`` is given) is created on first use, and
every source reporting into that registry is summed by it, so several
managers in one process add up instead of colliding.

Limitation: prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)
does not run custom collectors; in that mode expose each worker's metrics
on its own port (``resync-hierarchy serve-metrics``, when available) or
aggregate them in Prometheus.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MIGRATION_MODES", "MigrationSource", "register_migration_source"]

MIGRATION_MODES = ("legacy_only", "dual_write", "read_new", "new_only")

_COUNTERS = (
    ("legacy_hits", "migration_legacy_hits", "Reads answered by the legacy configuration"),
    ("new_hits", "migration_new_hits", "Reads answered by the new configuration"),
    ("fallbacks", "migration_fallbacks", "Reads that missed in new and fell back to legacy"),
    ("errors", "migration_errors", "Failed copies and shadow reads, and refused flag records"),
    ("mismatches", "migration_mismatches", "Shadow reads whose new value differed from legacy"),
    ("flag_changes", "migration_flag_changes", "Flag changes applied from the fleet record"),
)


class MigrationSource(Protocol):
    """What a migration manager exposes to the collector."""

    def metric_values(self) -> dict[str, int] | None:
        """Counter values (keys as in the first column of _COUNTERS), or
        None while metrics are off for this source."""
        ...

    def metric_mode(self) -> tuple[str, float] | None:
        """(mode, rollout percent), or None while metrics are off."""
        ...


class _MigrationCollector(Collector):
    def __init__(self) -> None:
        self._sources: weakref.WeakSet[MigrationSource] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add(self, source: MigrationSource) -> None:
        with self._lock:
            self._sources.add(source)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = list(self._sources)
        totals = dict.fromkeys((field for field, _, _ in _COUNTERS), 0)
        mode: tuple[str, float] | None = None
        for source in sources:
            values = source.metric_values()
            if values is None:
                continue
            for field in totals:
                totals[field] += values.get(field, 0)
            mode = source.metric_mode() or mode
        for field, name, documentation in _COUNTERS:
            yield CounterMetricFamily(name, documentation, value=totals[field])
        if mode is None:
            return
        current, percent = mode
        modes = GaugeMetricFamily(
            "migration_mode",
            "1 for the migration's current mode, 0 for the others",
            labels=["mode"],
        )
        for name in MIGRATION_MODES:
            modes.add_metric([name], 1 if name == current else 0)
        yield modes
        yield GaugeMetricFamily(
            "migration_rollout_percent",
            "Share of keys reading the new configuration while it is in use",
            value=percent,
        )


_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _MigrationCollector] = (
    weakref.WeakKeyDictionary()
)


def register_migration_source(
    source: MigrationSource, registry: CollectorRegistry | None = None
) -> None:
    """Export ``source``'s counters through ``registry`` (the default one if None)."""
    target = REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = _MigrationCollector()
            target.register(collector)
            _collectors[target] = collector
    collector.add(source)
