"""Unit tests of the in-process tier, resync_hierarchy.l1 (no sleeps: fake clock)."""

from __future__ import annotations

import math
import random
import sys
import threading
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from resync_hierarchy._types import MISSING
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.l1 import L1Store, LRUPolicy, PolicyFactory

OVERHEAD = L1Store.ENTRY_OVERHEAD
T0 = 1_000_000.0


class FakeClock:
    """Adjustable wall clock."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def charge(key: str, size: int, expiring: bool = False) -> int:
    return size + len(key) + OVERHEAD + (L1Store.EXPIRY_OVERHEAD if expiring else 0)


def make(
    *,
    max_entries: int = 100,
    max_bytes: int = 1 << 20,
    shards: int = 1,
    max_ttl: float | None = None,
    clock: FakeClock | None = None,
    policy: PolicyFactory = LRUPolicy,
) -> tuple[L1Store, FakeClock]:
    """A store with LRU by default: these tests check eviction order against
    an exact LRU model (TinyLFU has its own tests in test_policy.py)."""
    clock = clock or FakeClock()
    store = L1Store(
        max_entries=max_entries,
        max_bytes=max_bytes,
        shards=shards,
        max_ttl=max_ttl,
        clock=clock,
        policy=policy,
    )
    return store, clock


def raw_keys(store: L1Store) -> list[str]:
    """Every key held, expired or not, in per-stripe insertion order (white box)."""
    return [key for stripe in store._stripes for key in stripe.data]


def lru_keys(store: L1Store) -> list[str]:
    """Every key held, in per-stripe eviction order of the policy (white box)."""
    return [key for stripe in store._stripes for key in stripe.policy.ordered_keys()]


# -- basics -----------------------------------------------------------------


def test_get_after_set_returns_value_and_miss_is_missing() -> None:
    store, _ = make()
    assert store.get("a") is MISSING
    assert store.set("a", {"x": 1}, expires_at=None, size=10) is True
    assert store.get("a") == {"x": 1}
    assert store.get_with_expiry("a") == ({"x": 1}, None)
    assert store.get_with_expiry("b") is None
    assert store.enabled is True


def test_none_is_a_cacheable_value() -> None:
    store, _ = make()
    assert store.set("n", None, expires_at=None, size=1)
    assert store.get("n") is None
    assert store.contains("n")
    assert store.get_with_expiry("n") == (None, None)


def test_overwrite_replaces_value_and_recharges_bytes() -> None:
    store, _ = make()
    store.set("k", "old", expires_at=None, size=100)
    assert store.bytes == charge("k", 100)
    store.set("k", "new", expires_at=None, size=7)
    assert store.get("k") == "new"
    assert len(store) == 1
    assert store.bytes == charge("k", 7)
    store._check_invariants()


def test_delete_contains_clear_keys() -> None:
    store, clock = make(shards=4)
    for i in range(5):
        store.set(f"k{i}", i, expires_at=None, size=1)
    store.set("dying", 0, expires_at=clock.now + 1, size=1)
    assert store.contains("k3")
    assert not store.contains("zz")
    assert store.delete("k3") is True
    assert store.delete("k3") is False
    assert not store.contains("k3")
    assert store.get("k3") is MISSING
    assert sorted(store.keys()) == ["dying", "k0", "k1", "k2", "k4"]
    clock.advance(1)
    assert sorted(store.keys()) == ["k0", "k1", "k2", "k4"]  # expired not listed
    assert len(store) == 5  # ... but still held until read or swept
    assert store.clear() == 5
    assert len(store) == 0
    assert store.bytes == 0
    assert store.keys() == []
    assert store.get("k0") is MISSING
    store._check_invariants()


def test_delete_removes_an_expired_entry_and_reports_it() -> None:
    store, clock = make()
    store.set("k", 1, expires_at=clock.now + 1, size=1)
    clock.advance(5)
    assert store.delete("k") is True
    assert len(store) == 0
    assert store.bytes == 0
    store._check_invariants()


def test_stats_fields() -> None:
    store, _ = make(max_entries=2, max_bytes=10_000, shards=1)
    for key in "abc":
        store.set(key, 1, expires_at=None, size=1)
    store.set("huge", 1, expires_at=None, size=10_000)
    stats = store.stats()
    assert stats["entries"] == 2
    assert stats["bytes"] == 2 * charge("a", 1)
    assert stats["max_entries"] == 2
    assert stats["max_bytes"] == 10_000
    assert stats["evictions"] == 1
    assert stats["expirations"] == 0
    assert stats["rejected"] == 1
    assert stats["stripes"] == 1
    assert stats["max_entry_bytes"] == 10_000


def test_default_clock_is_wall_clock() -> None:
    store = L1Store(max_entries=10, max_bytes=1 << 20)
    store.set("past", 1, expires_at=1.0, size=1)  # 1970: already expired
    store.set("future", 2, expires_at=4e9, size=1)
    assert store.get("past") is MISSING
    assert store.get("future") == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_entries": -1},
        {"max_bytes": -1},
        {"shards": 0},
        {"shards": 3},
        {"max_ttl": 0},
        {"max_ttl": -1.0},
        {"max_ttl": math.nan},
    ],
)
def test_invalid_construction(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"max_entries": 10, "max_bytes": 1000} | kwargs
    with pytest.raises(ConfigurationError):
        L1Store(**args)


def test_invalid_set_arguments_raise_and_change_nothing() -> None:
    store, _ = make()
    store.set("k", "old", expires_at=None, size=1)
    with pytest.raises(ValueError, match="size"):
        store.set("k", "new", expires_at=None, size=-1)
    with pytest.raises(ValueError, match="NaN"):
        store.set("k", "new", expires_at=math.nan, size=1)
    assert store.get("k") == "old"
    store._check_invariants()


# -- expiry -------------------------------------------------------------------


def test_not_served_at_or_after_expires_at() -> None:
    store, clock = make()
    store.set("k", "v", expires_at=clock.now + 10, size=1)
    clock.advance(9.999)
    assert store.get("k") == "v"
    assert store.contains("k")
    clock.advance(0.001)  # exactly at expires_at
    assert store.get("k") is MISSING
    assert store.get_with_expiry("k") is None
    assert not store.contains("k")


def test_lazy_removal_on_get() -> None:
    store, clock = make()
    store.set("k", "v", expires_at=clock.now + 1, size=5)
    store.set("live", "v", expires_at=None, size=5)
    clock.advance(2)
    assert len(store) == 2
    assert store.get("k") is MISSING
    assert len(store) == 1
    assert store.bytes == charge("live", 5)
    assert store.stats()["expirations"] == 1
    store._check_invariants()


@pytest.mark.parametrize("probe", ["get_with_expiry", "contains"])
def test_lazy_removal_on_other_reads(probe: str) -> None:
    store, clock = make()
    store.set("k", "v", expires_at=clock.now + 1, size=5)
    clock.advance(1)
    assert not getattr(store, probe)("k")
    assert len(store) == 0
    assert store.stats()["expirations"] == 1
    store._check_invariants()


def test_max_ttl_caps_life_in_l1() -> None:
    store, clock = make(max_ttl=5)
    exp = clock.now + 100
    store.set("long", "v", expires_at=exp, size=1)
    store.set("forever", "v", expires_at=None, size=1)
    store.set("short", "v", expires_at=clock.now + 2, size=1)
    clock.advance(4)
    assert store.get_with_expiry("long") == ("v", exp)  # the caller's expires_at
    assert store.get("forever") == "v"
    assert store.get("short") is MISSING
    clock.advance(1)
    assert store.get("long") is MISSING
    assert store.get("forever") is MISSING


def test_infinite_expiry_means_none() -> None:
    store, clock = make()
    store.set("k", "v", expires_at=math.inf, size=1)
    clock.advance(1e9)
    assert store.get_with_expiry("k") == ("v", None)
    capped, clock2 = make(max_ttl=5)
    capped.set("k", "v", expires_at=math.inf, size=1)
    assert capped.get_with_expiry("k") == ("v", None)
    clock2.advance(5)
    assert capped.get("k") is MISSING
    store._check_invariants()
    capped._check_invariants()


def test_set_with_past_expiry_stores_nothing_and_drops_old_value() -> None:
    store, clock = make()
    store.set("k", "old", expires_at=None, size=1)
    assert store.set("k", "new", expires_at=clock.now, size=1) is False
    assert store.get("k") is MISSING
    assert len(store) == 0
    assert store.stats()["rejected"] == 0
    store._check_invariants()


def test_sweep_is_bounded_and_repeated_sweeps_reclaim_everything() -> None:
    store, clock = make(max_entries=10_000, shards=8)
    for i in range(95):
        store.set(f"dead{i}", i, expires_at=clock.now + 1 + (i % 7), size=1)
    for i in range(50):
        store.set(f"live{i}", i, expires_at=clock.now + 1000, size=1)
        store.set(f"forever{i}", i, expires_at=None, size=1)
    assert store.sweep(10) == 0  # nothing due yet
    clock.advance(10)
    assert store.sweep(10) == 10
    assert len(store) == 195 - 10
    total = 10
    for _ in range(20):
        got = store.sweep(10)
        assert 0 <= got <= 10
        total += got
    assert total == 95
    assert store.sweep(10) == 0
    assert len(store) == 100
    assert store.stats()["expirations"] == 95
    assert sorted(store.keys()) == sorted(raw_keys(store))  # nothing expired left
    store._check_invariants()


def test_sweep_budget_zero_and_large_budget() -> None:
    store, clock = make(max_entries=1000, shards=4)
    for i in range(600):
        store.set(f"k{i}", i, expires_at=clock.now + 1, size=1)
    clock.advance(1)
    assert store.sweep(0) == 0
    assert store.sweep(-5) == 0
    assert store.sweep(10_000) == 600  # more than one 256-entry chunk per stripe
    assert len(store) == 0
    assert store.bytes == 0
    store._check_invariants()


def test_sweep_handles_deleted_and_overwritten_entries() -> None:
    store, clock = make(max_entries=1000)
    for i in range(100):
        store.set(f"k{i}", i, expires_at=clock.now + 1, size=1)
    for i in range(0, 100, 2):
        store.delete(f"k{i}")
    for i in range(1, 100, 4):  # moved to a later second
        store.set(f"k{i}", i, expires_at=clock.now + 50, size=1)
    store._check_invariants()
    clock.advance(2)
    assert store.sweep(1000) == 25
    assert sorted(store.keys()) == sorted(f"k{i}" for i in range(1, 100, 4))
    clock.advance(100)
    assert store.sweep(1000) == 25
    assert len(store) == 0
    store._check_invariants()


def test_sweep_reclaims_from_the_whole_second_after_the_deadline() -> None:
    store, clock = make()
    store.set("k", 1, expires_at=T0 + 0.75, size=1)
    clock.now = T0 + 0.8
    assert store.sweep() == 0  # dead for reads, but its second (T0 + 1) has not come
    assert len(store) == 1
    clock.now = T0 + 1.0
    assert store.sweep() == 1
    assert len(store) == 0


def test_sweep_skips_stale_wheel_seconds_within_its_budget() -> None:
    store, clock = make(max_entries=1000)
    for i in range(20):  # 20 buckets, all emptied again: stale heap seconds
        store.set(f"gone{i}", i, expires_at=clock.now + 1 + i, size=1)
        store.delete(f"gone{i}")
    store.set("due", 1, expires_at=clock.now + 30, size=1)
    clock.advance(40)
    calls = 0
    while "due" in raw_keys(store):  # (contains() would reclaim it: peek instead)
        assert store.sweep(3) <= 3
        calls += 1
        assert calls < 20
    assert calls > 1  # each call skips at most 3 stale seconds, then stops
    assert raw_keys(store) == []
    assert store._stripes[0].heap == []
    store._check_invariants()


def test_sweep_does_not_remove_live_entries() -> None:
    store, clock = make(max_entries=100, shards=4)
    for i in range(30):
        store.set(f"k{i}", i, expires_at=clock.now + 10 + i, size=1)
    clock.advance(9.99)
    assert store.sweep(1000) == 0
    clock.advance(15.01)  # now T0 + 25: k0..k15 expired
    assert store.sweep(1000) == 16
    assert sorted(store.keys()) == sorted(f"k{i}" for i in range(16, 30))
    assert all(store.get(f"k{i}") == i for i in range(16, 30))


def test_overwriting_one_key_keeps_the_wheel_heap_small() -> None:
    store, clock = make()
    for i in range(5000):
        store.set("k", i, expires_at=clock.now + 1 + (i % 3) * 0.5, size=1)
    heap = store._stripes[0].heap
    assert len(heap) <= 2 * len(store._stripes[0].wheel) + 65
    store._check_invariants()
    clock.advance(3)
    assert store.sweep() == 1
    assert store._stripes[0].heap == []


# -- bounds and eviction ------------------------------------------------------


def test_lru_order_with_one_stripe_reads_and_writes_count() -> None:
    store, _ = make(max_entries=3)
    for key in "abc":
        store.set(key, key, expires_at=None, size=1)
    assert store.get("a") == "a"  # read: a is now most recent; b is least
    store.set("d", "d", expires_at=None, size=1)
    assert lru_keys(store) == ["c", "a", "d"]
    store.set("c", "c2", expires_at=None, size=1)  # write: c most recent
    store.set("e", "e", expires_at=None, size=1)
    assert lru_keys(store) == ["d", "c", "e"]
    assert store.contains("d")  # contains is not a touch
    assert store.get_with_expiry("c") == ("c2", None)  # is a touch
    store.set("f", "f", expires_at=None, size=1)
    assert lru_keys(store) == ["e", "c", "f"]
    assert store.stats()["evictions"] == 3


def test_byte_bound_evicts_lru_until_it_fits() -> None:
    budget = 3 * charge("a", 100)
    store, _ = make(max_entries=100, max_bytes=budget)
    for key in "abc":
        store.set(key, key, expires_at=None, size=100)
    assert store.bytes == budget
    store.get("a")
    store.set("d", "d", expires_at=None, size=250)  # needs two slots' worth
    assert lru_keys(store) == ["a", "d"]
    assert store.bytes <= budget
    store._check_invariants()


def test_entries_and_bytes_never_exceed_bounds_multi_stripe() -> None:
    rng = random.Random(7)
    store, clock = make(max_entries=37, max_bytes=37 * 450 + 5, shards=8)
    for i in range(3000):
        key = f"key-{rng.randrange(200)}"
        exp = None if rng.random() < 0.5 else clock.now + rng.uniform(0.1, 5)
        store.set(key, i, expires_at=exp, size=rng.randrange(0, 300))
        assert len(store) <= 37
        assert store.bytes <= 37 * 450 + 5
        if i % 100 == 0:
            clock.advance(0.5)
            store.sweep(7)
    store._check_invariants()
    assert store.stats()["evictions"] > 0


def test_capacity_split_adds_up_exactly() -> None:
    store, _ = make(max_entries=10, max_bytes=4003, shards=4)
    assert sum(s.max_entries for s in store._stripes) == 10
    assert sum(s.max_bytes for s in store._stripes) == 4003
    assert store.stats()["max_entry_bytes"] == 1000
    for i in range(500):
        store.set(f"k{i}", i, expires_at=None, size=0)
    assert len(store) <= 10
    assert store.bytes <= 4003


@pytest.mark.parametrize(("max_entries", "stripes"), [(1, 1), (3, 2), (4, 4), (15, 8), (16, 16)])
def test_fewer_stripes_when_max_entries_below_shards(max_entries: int, stripes: int) -> None:
    store, _ = make(max_entries=max_entries, shards=16)
    assert store.stats()["stripes"] == stripes
    assert all(s.max_entries >= 1 for s in store._stripes)
    for i in range(200):
        assert store.set(f"k{i}", i, expires_at=None, size=0)
        assert store.get(f"k{i}") == i
        assert len(store) <= max_entries
    assert len(store) == max_entries


def test_oversized_entry_rejected_and_old_value_removed() -> None:
    store, _ = make(max_entries=10, max_bytes=4000, shards=4)  # 1000 bytes per stripe
    fits = 1000 - len("k") - OVERHEAD
    assert store.set("k", "old", expires_at=None, size=fits) is True
    assert store.set("k", "new", expires_at=None, size=fits + 1) is False
    assert store.get("k") is MISSING
    assert len(store) == 0
    assert store.bytes == 0
    assert store.stats()["rejected"] == 1
    store._check_invariants()


def test_max_entries_zero_turns_l1_off() -> None:
    store, _ = make(max_entries=0, max_bytes=1 << 20, shards=16)
    assert store.enabled is False
    assert store.set("k", 1, expires_at=None, size=1) is False
    assert store.get("k") is MISSING
    assert store.get_with_expiry("k") is None
    assert not store.contains("k")
    assert store.delete("k") is False
    assert store.sweep() == 0
    assert store.clear() == 0
    assert store.keys() == []
    assert len(store) == 0
    assert store.bytes == 0
    assert store.stats()["rejected"] == 0
    assert store.stats()["stripes"] == 1


def test_policy_seam_admission_refusal_counts_as_rejected() -> None:
    class NoNewcomersWhenFull(LRUPolicy):
        def admit(self, candidate: str, victim: str) -> bool:
            return False

    store = L1Store(max_entries=2, max_bytes=1 << 20, shards=1, policy=NoNewcomersWhenFull)
    assert store.set("a", 1, expires_at=None, size=1)
    assert store.set("b", 2, expires_at=None, size=1)
    assert store.set("a", 3, expires_at=None, size=1)  # replacing needs no room
    assert store.set("c", 4, expires_at=None, size=1) is False
    assert sorted(store.keys()) == ["a", "b"]
    assert store.stats()["rejected"] == 1
    assert store.stats()["evictions"] == 0


# -- threads ------------------------------------------------------------------


def test_threads_hammering_keep_accounting_consistent() -> None:
    clock = FakeClock()
    store = L1Store(max_entries=48, max_bytes=48 * 420, shards=4, max_ttl=30, clock=clock)
    keys = [f"key:{i}" for i in range(96)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(6000):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.45:
                    exp = None if rng.random() < 0.3 else clock() + rng.uniform(0, 3)
                    store.set(key, (seed, i), expires_at=exp, size=rng.randrange(0, 200))
                elif op < 0.85:
                    value = store.get(key)
                    assert value is MISSING or isinstance(value, tuple)
                elif op < 0.95:
                    store.delete(key)
                else:
                    store.contains(key)
        except BaseException as exc:
            errors.append(exc)

    def ticker() -> None:
        try:
            while not stop.is_set():
                clock.advance(0.01)
                store.sweep(5)
                assert len(store) <= 48
                assert store.bytes <= 48 * 420
                store.keys()
        except BaseException as exc:
            errors.append(exc)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        tick = threading.Thread(target=ticker)
        tick.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        tick.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []
    store._check_invariants()
    assert len(store) == len(raw_keys(store)) <= 48
    assert store.bytes == sum(e[2] for s in store._stripes for e in s.data.values())
    assert store.bytes <= 48 * 420
    clock.advance(100)
    while store.sweep(1000):
        pass
    assert store.keys() == raw_keys(store)  # only entries without expiry remain
    store._check_invariants()


# -- stateful model tests -----------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "ff", "ggg"])
TTLS = st.sampled_from([None, 0.5, 1.0, 1.7, 3.0, 8.0, -1.0, 0.0])


class L1Model(RuleBasedStateMachine):
    """One stripe against an exact model: LRU, charges, deadlines, counters."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = L1Store(max_entries=1, max_bytes=1, clock=self.clock)
        self.model: OrderedDict[str, tuple[Any, float | None, int, float | None]] = OrderedDict()
        self.max_entries = 1
        self.max_bytes = 1
        self.max_ttl: float | None = None
        self.counter = 0
        self.evictions = 0
        self.expirations = 0
        self.rejected = 0

    @initialize(
        max_entries=st.integers(1, 6),
        slots=st.integers(1, 6),
        max_ttl=st.sampled_from([None, 2.0, 5.0]),
    )
    def setup(self, max_entries: int, slots: int, max_ttl: float | None) -> None:
        self.max_entries = max_entries
        self.max_bytes = slots * (OVERHEAD + 100)
        self.max_ttl = max_ttl
        self.store = L1Store(
            max_entries=max_entries,
            max_bytes=self.max_bytes,
            shards=1,
            max_ttl=max_ttl,
            clock=self.clock,
            policy=LRUPolicy,
        )

    def _dead(self, deadline: float | None) -> bool:
        return deadline is not None and deadline <= self.clock.now

    def _drop(self, key: str) -> None:
        del self.model[key]

    @rule(key=KEYS, ttl=TTLS, size=st.integers(0, 700), none_value=st.booleans())
    def set(self, key: str, ttl: float | None, size: int, none_value: bool) -> None:
        self.counter += 1
        value = None if none_value else (key, self.counter)
        now = self.clock.now
        expires_at = None if ttl is None else now + ttl
        deadline = expires_at
        if self.max_ttl is not None and (deadline is None or deadline > now + self.max_ttl):
            deadline = now + self.max_ttl
        cost = charge(key, size, deadline is not None)
        self.model.pop(key, None)
        expected = True
        if cost > self.max_bytes:
            self.rejected += 1
            expected = False
        elif deadline is not None and deadline <= now:
            expected = False
        else:
            while (
                len(self.model) >= self.max_entries
                or sum(e[2] for e in self.model.values()) + cost > self.max_bytes
            ):
                self.model.popitem(last=False)
                self.evictions += 1
            self.model[key] = (value, deadline, cost, expires_at)
        assert self.store.set(key, value, expires_at=expires_at, size=size) is expected
        if expected:  # a get right after a set returns the value
            assert self.store.get(key) == value
            self.model.move_to_end(key)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        expected: Any = MISSING
        entry = self.model.get(key)
        if entry is not None:
            if self._dead(entry[1]):
                self._drop(key)
                self.expirations += 1
            else:
                self.model.move_to_end(key)
                expected = entry[0]
        got = self.store.get(key)
        assert got == expected
        assert (got is MISSING) == (expected is MISSING)

    @rule(key=KEYS)
    def get_with_expiry(self, key: str) -> None:
        expected: tuple[Any, float | None] | None = None
        entry = self.model.get(key)
        if entry is not None:
            if self._dead(entry[1]):
                self._drop(key)
                self.expirations += 1
            else:
                self.model.move_to_end(key)
                expected = (entry[0], entry[3])
        assert self.store.get_with_expiry(key) == expected

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        entry = self.model.get(key)
        expected = entry is not None and not self._dead(entry[1])
        if entry is not None and not expected:
            self._drop(key)
            self.expirations += 1
        assert self.store.contains(key) is expected

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        expected = self.model.pop(key, None) is not None
        assert self.store.delete(key) is expected

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(budget=st.integers(1, 4))
    def sweep(self, budget: int) -> None:
        now = self.clock.now
        due = {k for k, e in self.model.items() if e[1] is not None and math.ceil(e[1]) <= now}
        removed = self.store.sweep(budget)
        held = set(raw_keys(self.store))
        gone = set(self.model) - held
        assert removed == len(gone) <= budget
        assert gone <= due
        for key in gone:
            self._drop(key)
        self.expirations += removed

    @rule()
    def sweep_all(self) -> None:
        now = self.clock.now
        due = {k for k, e in self.model.items() if e[1] is not None and math.ceil(e[1]) <= now}
        assert self.store.sweep(10_000) == len(due)
        assert set(raw_keys(self.store)) == set(self.model) - due
        for key in due:
            self._drop(key)
        self.expirations += len(due)

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def clear(self) -> None:
        assert self.store.clear() == len(self.model)
        self.model.clear()

    @invariant()
    def matches_model(self) -> None:
        assert lru_keys(self.store) == list(self.model)  # same LRU order
        assert len(self.store) == len(self.model) <= self.max_entries
        assert self.store.bytes == sum(e[2] for e in self.model.values())
        assert self.store.bytes <= self.max_bytes
        stats = self.store.stats()
        assert stats["evictions"] == self.evictions
        assert stats["expirations"] == self.expirations
        assert stats["rejected"] == self.rejected
        live = [k for k, e in self.model.items() if not self._dead(e[1])]
        assert sorted(self.store.keys()) == sorted(live)
        self.store._check_invariants()


TestL1Model = L1Model.TestCase
TestL1Model.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


class L1MultiStripeBounds(RuleBasedStateMachine):
    """Several stripes: bounds hold, a fresh set is readable, bookkeeping adds up."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = L1Store(max_entries=1, max_bytes=1, clock=self.clock)
        self.max_entries = 1
        self.max_bytes = 1

    @initialize(
        max_entries=st.integers(0, 40),
        max_bytes=st.integers(0, 20_000),
        shards=st.sampled_from([1, 2, 4, 8, 16]),
        max_ttl=st.sampled_from([None, 3.0]),
    )
    def setup(self, max_entries: int, max_bytes: int, shards: int, max_ttl: float | None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.store = L1Store(
            max_entries=max_entries,
            max_bytes=max_bytes,
            shards=shards,
            max_ttl=max_ttl,
            clock=self.clock,
        )

    @rule(key=st.integers(0, 60), ttl=TTLS, size=st.integers(0, 3000))
    def set(self, key: int, ttl: float | None, size: int) -> None:
        name = f"k{key}"
        expires_at = None if ttl is None else self.clock.now + ttl
        if self.store.set(name, key, expires_at=expires_at, size=size):
            assert self.store.get(name) == key
        else:
            assert self.store.get(name) is MISSING

    @rule(key=st.integers(0, 60))
    def get(self, key: int) -> None:
        assert self.store.get(f"k{key}") in (MISSING, key)

    @rule(key=st.integers(0, 60))
    def delete(self, key: int) -> None:
        self.store.delete(f"k{key}")
        assert not self.store.contains(f"k{key}")

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(budget=st.integers(1, 50))
    def sweep(self, budget: int) -> None:
        before = len(self.store)
        removed = self.store.sweep(budget)
        assert 0 <= removed <= budget
        assert len(self.store) == before - removed

    @invariant()
    def within_bounds(self) -> None:
        assert len(self.store) <= self.max_entries
        assert self.store.bytes <= self.max_bytes
        self.store._check_invariants()


TestL1MultiStripeBounds = L1MultiStripeBounds.TestCase
TestL1MultiStripeBounds.settings = settings(
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------- stale grace


def test_stale_grace_keeps_dead_entries_for_get_stale_only() -> None:
    clock = FakeClock()
    store = L1Store(max_entries=10, max_bytes=100_000, shards=1, clock=clock, stale_grace=30)
    store.set("k", "v", expires_at=clock() + 10, size=10)
    assert store.get_stale("k") == "v"  # live values are returned too
    clock.advance(10)
    assert store.get("k") is MISSING
    assert not store.contains("k")
    assert store.get_with_expiry("k") is None
    assert store.get_stale("k") == "v"  # dead, but within the grace
    assert len(store) == 1
    clock.advance(29.9)
    assert store.get_stale("k") == "v"
    clock.advance(0.1)
    assert store.get_stale("k") is MISSING
    assert len(store) == 0
    store._check_invariants()


def test_stale_grace_entries_are_swept_after_the_grace() -> None:
    clock = FakeClock()
    store = L1Store(max_entries=100, max_bytes=100_000, shards=4, clock=clock, stale_grace=5)
    for i in range(20):
        store.set(f"k{i}", i, expires_at=clock() + 1, size=10)
    clock.advance(3)
    assert store.sweep(1000) == 0  # dead but within the grace
    assert store.get_stale("k3") == 3
    clock.advance(4)
    assert store.sweep(1000) == 20
    assert len(store) == 0
    store._check_invariants()


def test_stale_grace_must_be_finite_and_not_negative() -> None:
    with pytest.raises(ConfigurationError):
        L1Store(max_entries=1, max_bytes=1000, stale_grace=-1)
    with pytest.raises(ConfigurationError):
        L1Store(max_entries=1, max_bytes=1000, stale_grace=math.inf)


def test_expirations_are_counted_when_a_sweep_stops_on_its_skip_budget() -> None:
    """Regression (found by the state machine): overwrites leave duplicate wheel
    seconds; a sweep that removed an entry and then ran out of skips must
    still count that expiration."""
    clock = FakeClock()
    store = L1Store(max_entries=1, max_bytes=10_000, shards=1, clock=clock)
    for _ in range(3):
        store.set("a", 1, expires_at=clock() + 0.5, size=0)
    clock.advance(1.0)
    assert store.sweep(budget=1) == 1
    assert store.stats()["expirations"] == 1
    store._check_invariants()
