"""FrequencySketch: the count-min sketch behind TinyLFU admission."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from resync_hierarchy.l1 import FrequencySketch


def test_unseen_key_is_zero_and_counts_rise() -> None:
    sketch = FrequencySketch(100)
    assert sketch.frequency("never") == 0
    for expected in range(1, 6):
        sketch.increment("k")
        assert sketch.frequency("k") == expected
    assert sketch.frequency("other") <= 1  # a collision at most costs one


def test_counters_saturate_at_fifteen() -> None:
    sketch = FrequencySketch(1000)
    for _ in range(100):
        sketch.increment("hot")
    assert sketch.frequency("hot") == 15


def test_width_is_four_counters_per_entry_per_row() -> None:
    assert FrequencySketch(1).nbytes == 4 * 16
    assert FrequencySketch(1000).nbytes == 4 * 8000
    assert FrequencySketch(1000).sample_size == 40_000


def test_halving_after_sample_size_increments() -> None:
    sketch = FrequencySketch(1)  # sample_size 40
    assert sketch.sample_size == 40
    for _ in range(12):
        sketch.increment("a")
    assert sketch.frequency("a") == 12
    for _ in range(8):
        sketch.increment("b")
    for i in range(19):
        sketch.increment(f"filler:{i}")
    assert sketch.samples == 39
    sketch.increment("b")  # the 40th increment halves everything
    assert sketch.samples == 20
    assert sketch.frequency("a") == 6
    assert 4 <= sketch.frequency("b") <= 7  # 9 // 2, or a little more on collisions


def test_clear_forgets() -> None:
    sketch = FrequencySketch(10)
    for _ in range(5):
        sketch.increment("k")
    sketch.clear()
    assert sketch.frequency("k") == 0
    assert sketch.samples == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300), max_size=400))
def test_never_underestimates_before_a_halving(draws: list[int]) -> None:
    sketch = FrequencySketch(64)  # sample_size 2560 > 400: no halving here
    counts = Counter(f"key:{n}" for n in draws)
    for n in draws:
        sketch.increment(f"key:{n}")
    for key, count in counts.items():
        assert sketch.frequency(key) >= min(count, 15)


def test_estimates_separate_hot_from_cold_keys() -> None:
    sketch = FrequencySketch(200)
    for round_ in range(10):
        for i in range(20):
            sketch.increment(f"hot:{i}")
        for i in range(100):
            sketch.increment(f"cold:{round_}:{i}")
    hot = [sketch.frequency(f"hot:{i}") for i in range(20)]
    cold = [sketch.frequency(f"cold:9:{i}") for i in range(100)]
    assert min(hot) >= 8
    assert sum(cold) / len(cold) < 2
