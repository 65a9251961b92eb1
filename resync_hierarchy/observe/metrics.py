"""Prometheus metrics. The only module that imports prometheus_client.

Hot paths count in plain integers on their own objects; a collector reads
them when Prometheus scrapes. A ``Counter.inc()`` takes a lock and costs
about as much as a whole L1 hit, so nothing on a read path touches
prometheus_client.

Nothing is registered at import time: one collector per registry (the
default one unless a ``registry`` is given) is created on first use, and
every source reporting into that registry is read by it. Hierarchies of the
same namespace in one registry are added up (their gauges too: the
``circuit_state`` gauge then counts caches in each state), so several
caches in one process never produce duplicate series.

Labels are fixed sets (operation, tier, result, error kind, state) plus the
namespace, which is configuration: no cache key ever becomes a label value,
and the number of series does not grow with traffic.

Multiprocess mode of prometheus_client (``PROMETHEUS_MULTIPROC_DIR``) does
not run custom collectors: see README → Metrics for how to expose several
worker processes.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from resync_hierarchy.observe.latency import LATENCY_BUCKETS

__all__ = [
    "CIRCUIT_STATES",
    "MIGRATION_MODES",
    "TIMED_OPERATIONS",
    "CollectorRegistry",
    "HierarchySample",
    "HierarchySource",
    "MigrationSource",
    "exposition",
    "register_hierarchy_source",
    "register_migration_source",
    "serve_http",
]

MIGRATION_MODES = ("legacy_only", "dual_write", "read_new", "new_only")
CIRCUIT_STATES = ("closed", "open", "half_open")
#: (operation, tier) pairs of the latency histogram.
TIMED_OPERATIONS: tuple[tuple[str, str], ...] = tuple(
    (operation, tier)
    for operation in ("get", "get_many", "set", "set_many", "delete", "delete_many")
    for tier in ("l1", "l2")
)
#: (operation, tier, result) of ``resync_cache_requests_total``, always exported.
REQUEST_KINDS: tuple[tuple[str, str, str], ...] = (
    ("get", "l1", "hit"),
    ("get", "l1", "miss"),
    ("get", "l1", "stale"),
    ("get", "l2", "hit"),
    ("get", "l2", "miss"),
    ("get", "l2", "error"),
    ("set", "l1", "ok"),
    ("set", "l2", "ok"),
    ("set", "l2", "error"),
    ("delete", "l1", "ok"),
    ("delete", "l2", "ok"),
    ("delete", "l2", "error"),
)
#: Kinds of ``resync_cache_l2_errors_total``, always exported (at 0 until they
#: happen) so the series never change under load; a kind not listed here is
#: exported as it appears.
L2_ERROR_KINDS = (
    "auth",
    "busy",
    "circuit_open",
    "connection",
    "failover",
    "noperm",
    "oom",
    "other",
    "readonly",
    "response",
    "timeout",
    "tls",
)
_LE = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]


@dataclass
class HierarchySample:
    """What one CacheHierarchy reports at a scrape."""

    namespace: str
    requests: dict[tuple[str, str, str], int]
    latency: list[tuple[tuple[str, ...], list[int], float]]
    l1: dict[str, int] | None
    l1_trusted: bool
    loads: int
    corrupt_values: int
    l2_errors: dict[str, int] | None = None  # None: no L2 configured
    l2_retries: int = 0
    l2_up: bool = False
    l2_in_flight: int = 0
    l2_waiting: int = 0
    circuit_state: str = "closed"
    circuit_opens: int = 0
    recovery_depth: int = 0
    recovery_overflowed: int = 0
    recovery_replayed: int = 0
    l2_ping_seconds: float | None = None  # PING round trip of the latest health()
    invalidation: dict[str, int] | None = field(default=None)


class HierarchySource(Protocol):
    def metric_sample(self) -> HierarchySample | None:
        """The hierarchy's numbers, or None when it records no metrics now."""
        ...


class MigrationSource(Protocol):
    """What a migration manager exposes to the collector."""

    def metric_values(self) -> dict[str, int] | None:
        """Counter values (keys: legacy_hits, new_hits, fallbacks, errors,
        mismatches, flag_changes), or None while metrics are off."""
        ...

    def metric_mode(self) -> tuple[str, float] | None:
        """(mode, rollout percent), or None while metrics are off."""
        ...


_MIGRATION_COUNTERS = (
    ("fallbacks", "resync_cache_migration_fallbacks", "Reads that fell back to legacy"),
    (
        "errors",
        "resync_cache_migration_errors",
        "Failed copies and shadow reads, and refused flag records",
    ),
    (
        "mismatches",
        "resync_cache_migration_mismatches",
        "Shadow reads whose new value differed from legacy",
    ),
    (
        "flag_changes",
        "resync_cache_migration_flag_changes",
        "Flag changes applied from the fleet record",
    ),
)


class _Collector(Collector):
    def __init__(self) -> None:
        self._hierarchies: weakref.WeakSet[HierarchySource] = weakref.WeakSet()
        self._migrations: weakref.WeakSet[MigrationSource] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add_hierarchy(self, source: HierarchySource) -> None:
        with self._lock:
            self._hierarchies.add(source)

    def add_migration(self, source: MigrationSource) -> None:
        with self._lock:
            self._migrations.add(source)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            hierarchies = list(self._hierarchies)
            migrations = list(self._migrations)
        samples = [s for s in (h.metric_sample() for h in hierarchies) if s is not None]
        yield from _hierarchy_metrics(samples)
        yield from _migration_metrics(migrations)


def _hierarchy_metrics(samples: list[HierarchySample]) -> Iterator[Metric]:
    by_namespace: dict[str, list[HierarchySample]] = {}
    for sample in samples:
        by_namespace.setdefault(sample.namespace, []).append(sample)
    ns = ["namespace"]

    requests = CounterMetricFamily(
        "resync_cache_requests",
        "Cache requests by operation, the tier that answered and the result "
        "(multi-key calls count once per key)",
        labels=["namespace", "operation", "tier", "result"],
    )
    latency = HistogramMetricFamily(
        "resync_cache_operation_duration_seconds",
        "Duration of cache operations; tier l1: answered without L2 "
        "(L1 hits of get are timed one in 64), l2: reached L2",
        labels=["namespace", "operation", "tier"],
    )
    l1_gauges = {
        name: GaugeMetricFamily(f"resync_cache_l1_{name}", doc, labels=ns)
        for name, doc in (
            ("entries", "Entries held in L1"),
            ("bytes", "Estimated bytes held in L1"),
            ("max_entries", "L1 bound by entries"),
            ("max_bytes", "L1 bound by bytes"),
        )
    }
    evictions = CounterMetricFamily(
        "resync_cache_l1_evictions",
        "Entries removed from L1: capacity (to make room), expired, rejected "
        "(not stored: too large or not admitted)",
        labels=["namespace", "reason"],
    )
    trusted = GaugeMetricFamily(
        "resync_cache_l1_trusted",
        "1 while L1 answers reads; 0 while it may have missed invalidations",
        labels=ns,
    )
    loads = CounterMetricFamily(
        "resync_cache_loads", "get_or_set factory runs (misses loaded once per key)", labels=ns
    )
    corrupt = CounterMetricFamily(
        "resync_cache_corrupt_values",
        "L2 values that could not be decoded or verified (read as misses)",
        labels=ns,
    )
    l2_errors = CounterMetricFamily(
        "resync_cache_l2_errors", "Failed L2 operations by kind", labels=["namespace", "kind"]
    )
    l2_retries = CounterMetricFamily(
        "resync_cache_l2_retries", "Retries of quickly failing L2 calls", labels=ns
    )
    l2_up = GaugeMetricFamily(
        "resync_cache_l2_up",
        "1 when the circuit is closed and the latest L2 call succeeded",
        labels=ns,
    )
    ping = GaugeMetricFamily(
        "resync_cache_l2_ping_seconds",
        "PING round trip to L2 measured by the latest health() call",
        labels=ns,
    )
    in_flight = GaugeMetricFamily("resync_cache_l2_in_flight", "L2 commands in flight", labels=ns)
    waiting = GaugeMetricFamily(
        "resync_cache_l2_waiting", "Callers queued for an L2 connection", labels=ns
    )
    circuit = GaugeMetricFamily(
        "resync_cache_circuit_state",
        "Caches of the namespace whose circuit is in this state (1 or 0 for one cache)",
        labels=["namespace", "state"],
    )
    opens = CounterMetricFamily("resync_cache_circuit_opens", "Times the circuit opened", labels=ns)
    depth = GaugeMetricFamily(
        "resync_cache_recovery_queue_depth",
        "Writes made while L2 was unavailable, waiting to be replayed",
        labels=ns,
    )
    overflowed = CounterMetricFamily(
        "resync_cache_recovery_overflowed",
        "Writes dropped from the full recovery queue (their keys were evicted from L1)",
        labels=ns,
    )
    replayed = CounterMetricFamily(
        "resync_cache_recovery_replayed", "Writes replayed into L2 after an outage", labels=ns
    )
    sent = CounterMetricFamily(
        "resync_cache_invalidations_sent",
        "Keys announced to other processes for eviction",
        labels=ns,
    )
    received = CounterMetricFamily(
        "resync_cache_invalidations_received",
        "Keys announced by other processes and evicted here",
        labels=ns,
    )
    gaps = CounterMetricFamily(
        "resync_cache_invalidation_gaps",
        "Times the invalidation subscription was lost (L1 distrusted until back)",
        labels=ns,
    )

    for namespace, group in sorted(by_namespace.items()):
        totals: Counter[tuple[str, str, str]] = Counter()
        for sample in group:
            totals.update(sample.requests)
        for request_kind in REQUEST_KINDS:
            requests.add_metric([namespace, *request_kind], totals[request_kind])

        buckets: dict[tuple[str, ...], list[int]] = {}
        sums: dict[tuple[str, ...], float] = {}
        for sample in group:
            for label, counts, total in sample.latency:
                merged = buckets.setdefault(label, [0] * len(counts))
                for index, count in enumerate(counts):
                    merged[index] += count
                sums[label] = sums.get(label, 0.0) + total
        for label, counts in buckets.items():
            cumulative, running = [], 0
            for le, count in zip(_LE, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            latency.add_metric([namespace, *label], cumulative, sums[label])

        l1_samples = [s.l1 for s in group if s.l1 is not None]
        if l1_samples:
            for name, family in l1_gauges.items():
                family.add_metric([namespace], sum(s[name] for s in l1_samples))
            for reason, stat in (
                ("capacity", "evictions"),
                ("expired", "expirations"),
                ("rejected", "rejected"),
            ):
                evictions.add_metric([namespace, reason], sum(s[stat] for s in l1_samples))
            trusted.add_metric([namespace], min(int(s.l1_trusted) for s in group))
        loads.add_metric([namespace], sum(s.loads for s in group))
        corrupt.add_metric([namespace], sum(s.corrupt_values for s in group))

        with_l2 = [s for s in group if s.l2_errors is not None]
        if not with_l2:
            continue
        kinds: Counter[str] = Counter(dict.fromkeys(L2_ERROR_KINDS, 0))
        for sample in with_l2:
            kinds.update(sample.l2_errors or {})
        for kind in sorted(kinds):
            l2_errors.add_metric([namespace, kind], kinds[kind])
        l2_retries.add_metric([namespace], sum(s.l2_retries for s in with_l2))
        l2_up.add_metric([namespace], min(int(s.l2_up) for s in with_l2))
        pings = [s.l2_ping_seconds for s in with_l2 if s.l2_ping_seconds is not None]
        if pings:
            ping.add_metric([namespace], max(pings))
        in_flight.add_metric([namespace], sum(s.l2_in_flight for s in with_l2))
        waiting.add_metric([namespace], sum(s.l2_waiting for s in with_l2))
        states = Counter(s.circuit_state for s in with_l2)
        for state in CIRCUIT_STATES:
            circuit.add_metric([namespace, state], states[state])
        opens.add_metric([namespace], sum(s.circuit_opens for s in with_l2))
        depth.add_metric([namespace], sum(s.recovery_depth for s in with_l2))
        overflowed.add_metric([namespace], sum(s.recovery_overflowed for s in with_l2))
        replayed.add_metric([namespace], sum(s.recovery_replayed for s in with_l2))
        invalidating = [s.invalidation for s in with_l2 if s.invalidation is not None]
        if invalidating:
            sent.add_metric([namespace], sum(i["sent"] for i in invalidating))
            received.add_metric([namespace], sum(i["received"] for i in invalidating))
            gaps.add_metric([namespace], sum(i["gaps"] for i in invalidating))

    yield requests
    yield latency
    yield from l1_gauges.values()
    yield from (evictions, trusted, loads, corrupt, l2_errors, l2_retries, l2_up, ping)
    yield from (in_flight, waiting, circuit, opens, depth, overflowed, replayed)
    yield from (sent, received, gaps)


def _migration_metrics(sources: Iterable[MigrationSource]) -> Iterator[Metric]:
    totals: Counter[str] = Counter()
    mode: tuple[str, float] | None = None
    for source in sources:
        values = source.metric_values()
        if values is None:
            continue
        totals.update(values)
        mode = source.metric_mode() or mode
    reads = CounterMetricFamily(
        "resync_cache_migration_reads",
        "Reads answered by each configuration of a migration",
        labels=["source"],
    )
    reads.add_metric(["legacy"], totals["legacy_hits"])
    reads.add_metric(["new"], totals["new_hits"])
    yield reads
    for field_name, name, documentation in _MIGRATION_COUNTERS:
        yield CounterMetricFamily(name, documentation, value=totals[field_name])
    if mode is None:
        return
    current, percent = mode
    modes = GaugeMetricFamily(
        "resync_cache_migration_mode",
        "1 for the migration's current mode, 0 for the others",
        labels=["mode"],
    )
    for name in MIGRATION_MODES:
        modes.add_metric([name], 1 if name == current else 0)
    yield modes
    yield GaugeMetricFamily(
        "resync_cache_migration_rollout_percent",
        "Share of keys reading the new configuration while it is in use",
        value=percent,
    )


_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _Collector] = weakref.WeakKeyDictionary()


def _collector_for(registry: CollectorRegistry | None) -> _Collector:
    target = REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = _Collector()
            target.register(collector)
            _collectors[target] = collector
    return collector


def register_hierarchy_source(
    source: HierarchySource, registry: CollectorRegistry | None = None
) -> None:
    """Export ``source``'s numbers through ``registry`` (the default one if None)
    for as long as it lives."""
    _collector_for(registry).add_hierarchy(source)


def register_migration_source(
    source: MigrationSource, registry: CollectorRegistry | None = None
) -> None:
    """Export ``source``'s counters through ``registry`` (the default one if None)."""
    _collector_for(registry).add_migration(source)


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The text exposition format of ``registry`` (the default one if None)."""
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY if registry is None else registry)


def serve_http(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> None:
    """Serve ``/metrics`` of ``registry`` (the default one if None) on
    ``addr:port`` from a daemon thread, for a process that has no metrics
    endpoint of its own. Raises OSError if the port cannot be bound."""
    start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)
