"""Prometheus metrics of CacheHierarchy: names, values, labels and series count."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from resync_hierarchy import CacheHierarchy, ConfigurationError, HierarchyConfig
from resync_hierarchy.observe.latency import LATENCY_BUCKETS, LatencyRecorder


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    assert sample is not None, f"{name}{labels} is not exported"
    return sample


def series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in registry.collect()
        for s in family.samples
    }


def requests(registry: CollectorRegistry, ns: str, op: str, tier: str, result: str) -> float:
    return value(
        registry,
        "resync_cache_requests_total",
        namespace=ns,
        operation=op,
        tier=tier,
        result=result,
    )


async def test_requests_by_operation_tier_and_result_on_memory() -> None:
    registry = CollectorRegistry()
    async with CacheHierarchy.from_url("memory://", namespace="m", registry=registry) as cache:
        await cache.set("a", 1)
        await cache.set_many({"b": 2, "c": 3})
        for _ in range(10):
            assert await cache.get("a") == 1
        assert await cache.get("nope") is None
        assert await cache.get_many(["b", "nope2"]) == {"b": 2}
        assert await cache.delete("a") is True
        assert await cache.delete_many(["b", "zzz"]) == 1
        assert requests(registry, "m", "get", "l1", "hit") == 11
        assert requests(registry, "m", "get", "l1", "miss") == 2
        assert requests(registry, "m", "set", "l1", "ok") == 3
        assert requests(registry, "m", "delete", "l1", "ok") == 3
        assert requests(registry, "m", "get", "l2", "hit") == 0
        assert value(registry, "resync_cache_l1_entries", namespace="m") == 1
        assert value(registry, "resync_cache_l1_bytes", namespace="m") > 0
        assert value(registry, "resync_cache_l1_max_entries", namespace="m") > 0
        # No L2: no L2 series at all.
        assert registry.get_sample_value("resync_cache_l2_up", {"namespace": "m"}) is None


async def test_latency_histograms_time_l1_hits_one_in_64() -> None:
    registry = CollectorRegistry()
    async with CacheHierarchy.from_url("memory://", namespace="h", registry=registry) as cache:
        await cache.set("k", "v")
        for _ in range(640):
            await cache.get("k")
        labels = {"namespace": "h", "operation": "get", "tier": "l1"}
        count = value(registry, "resync_cache_operation_duration_seconds_count", **labels)
        assert count == 10
        top = value(registry, "resync_cache_operation_duration_seconds_bucket", le="+Inf", **labels)
        assert top == count
        assert value(registry, "resync_cache_operation_duration_seconds_sum", **labels) > 0
        set_count = value(
            registry,
            "resync_cache_operation_duration_seconds_count",
            namespace="h",
            operation="set",
            tier="l1",
        )
        assert set_count == 1


def test_latency_recorder_buckets_are_cumulative_upper_bounds() -> None:
    recorder = LatencyRecorder([("get", "l2")])
    for seconds in (0.0, 1e-6, 3e-6, 0.01, 0.5):
        recorder.observe(("get", "l2"), seconds)
    ((label, counts, total),) = recorder.snapshot()
    assert label == ("get", "l2")
    assert len(counts) == len(LATENCY_BUCKETS) + 1
    assert counts[0] == 2  # 0 and exactly 1 us: le="1e-06" is inclusive
    assert counts[LATENCY_BUCKETS.index(5e-6)] == 1
    assert counts[LATENCY_BUCKETS.index(0.01)] == 1
    assert counts[-1] == 1  # over 100 ms: only in +Inf
    assert total == pytest.approx(0.510004)


async def test_metrics_false_exports_nothing() -> None:
    registry = CollectorRegistry()
    cache = CacheHierarchy.from_url("memory://", namespace="off", metrics=False, registry=registry)
    async with cache:
        await cache.set("a", 1)
        await cache.get("a")
        assert cache.get_stats()["l1_hits"] == 1  # get_stats still counts
    text = generate_latest(registry).decode()
    assert 'namespace="off"' not in text


def test_metrics_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="metrics must be True or False"):
        HierarchyConfig(url="memory://", metrics="yes")  # type: ignore[arg-type]


async def test_no_key_becomes_a_label_and_series_do_not_grow_with_keys() -> None:
    registry = CollectorRegistry()
    async with CacheHierarchy.from_url(
        "memory://", namespace="s", registry=registry, l1_max_entries=500
    ) as cache:
        await cache.set("warm", 1)
        await cache.get("warm")
        await cache.get("cold")
        before = series(registry)
        for n in range(10_000):
            key = f"secret-key-{n}"
            await cache.set(key, n)
            await cache.get(key)
            await cache.get(f"missing-{n}")
        await cache.get_many([f"secret-key-{n}" for n in range(50)])
        await cache.delete_many([f"secret-key-{n}" for n in range(50)])
        after = series(registry)
        assert after == before
        text = generate_latest(registry).decode()
        assert "secret-key" not in text
        assert "missing-" not in text
        assert value(registry, "resync_cache_l1_evictions_total", namespace="s", reason="capacity")


async def test_caches_of_one_namespace_add_up_and_closed_ones_leave() -> None:
    registry = CollectorRegistry()
    first = CacheHierarchy.from_url("memory://", namespace="same", registry=registry)
    second = CacheHierarchy.from_url("memory://", namespace="same", registry=registry)
    async with first, second:
        await first.set("a", 1)
        await second.set("a", 1)
        await first.get("a")
        await second.get("a")
        await second.get("a")
        assert requests(registry, "same", "get", "l1", "hit") == 3
        assert value(registry, "resync_cache_l1_entries", namespace="same") == 2
    assert registry.get_sample_value("resync_cache_l1_entries", {"namespace": "same"}) is None
    del first, second
    gc.collect()
    assert 'namespace="same"' not in generate_latest(registry).decode()


async def test_get_or_set_counts_loads() -> None:
    registry = CollectorRegistry()
    async with CacheHierarchy.from_url("memory://", namespace="g", registry=registry) as cache:

        async def make() -> str:
            return "made"

        assert await cache.get_or_set("k", make) == "made"
        assert await cache.get_or_set("k", make) == "made"
        assert value(registry, "resync_cache_loads_total", namespace="g") == 1
        assert requests(registry, "g", "get", "l1", "hit") == 1
