"""scripts/hit_ratio.py: Belady's OPT is exact, and the traces are what they say."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import hit_ratio


def brute_force_opt(trace: list[str], capacity: int) -> int:
    """Most hits any policy with bypass can get: every choice tried."""
    best: dict[frozenset[str], int] = {frozenset(): 0}
    for key in trace:
        nxt: dict[frozenset[str], int] = {}
        for held, hits in best.items():
            if key in held:
                options = [(held, hits + 1)]
            else:
                options = [(held, hits)]  # bypass
                if len(held) < capacity:
                    options.append((held | {key}, hits))
                else:
                    options += [((held - {out}) | {key}, hits) for out in held]
            for state, score in options:
                if nxt.get(state, -1) < score:
                    nxt[state] = score
        best = nxt
    return max(best.values())


@settings(max_examples=150, deadline=None)
@given(
    trace=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=14),
    capacity=st.integers(min_value=1, max_value=3),
)
def test_belady_matches_brute_force(trace: list[str], capacity: int) -> None:
    nxt = hit_ratio.next_uses(trace)
    assert hit_ratio.belady(trace, capacity, nxt) == brute_force_opt(trace, capacity)


def test_next_uses() -> None:
    never = sys.maxsize
    assert hit_ratio.next_uses(["a", "b", "a", "c", "b"]) == [2, 4, never, never, never]


def test_opt_is_an_upper_bound_of_the_policies() -> None:
    trace = hit_ratio.zipf_trace(5000, keys=500, seed=3)
    opt = hit_ratio.belady(trace, 20, hit_ratio.next_uses(trace))
    assert opt >= hit_ratio.run_lru(trace, 20)
    assert opt >= hit_ratio.run_store(trace, hit_ratio.our_store(20))


def test_traces_are_seeded_and_shaped() -> None:
    assert hit_ratio.zipf_trace(1000) == hit_ratio.zipf_trace(1000)
    zipf = hit_ratio.zipf_trace(20_000)
    counts = sorted(
        (sum(1 for _ in group) for _, group in itertools.groupby(sorted(zipf))), reverse=True
    )
    assert counts[0] > 20 * counts[len(counts) // 2]  # heavily skewed
    mixed = hit_ratio.scan_mix_trace(40_000)
    assert mixed[:20_000] == zipf
    assert mixed[20_000:30_000] == [f"scan:{i}" for i in range(10_000)]
    assert mixed[30_000:] == hit_ratio.zipf_trace(30_000)[20_000:]
