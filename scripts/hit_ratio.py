#!/usr/bin/env python3
"""L1 hit ratio of each eviction policy next to Belady's OPT, on fixed traces.

    python scripts/hit_ratio.py                      # 1M requests per trace
    python scripts/hit_ratio.py --requests 100000 --json

Traces (seeded, so every run sees the same requests):
  zipf     Zipf(0.99) over 100,000 keys
  scanmix  the same Zipf stream, with sequential scans spliced in: every
           20,000 requests, a run of 10,000 distinct keys read once each
           in order (one third of the requests are scan keys, each read
           again only when its scan range comes round: 40 ranges cycle)

Capacities are 1% and 10% of the 100,000 base keys (1,000 and 10,000 entries).

Policies (a miss is followed by a set of the key, as a read-through does):
  OPT          Belady with bypass, exact: the cache evicts the key whose next
               use is farthest (a max-heap over next-use indices), and does
               not admit a key used again later than every key it holds
  ours         resync_hierarchy's L1Store with its default policy (W-TinyLFU)
               and its default 16 stripes: the real store, not a model
  ours-1       the same store with one stripe
  ours-lru     the real store with LRUPolicy (16 stripes)
  lru          a plain OrderedDict LRU
  theine       theine.Cache (W-TinyLFU, Rust core), when installed

Each row reports the hit ratio and its gap to OPT in percentage points.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from resync_hierarchy._types import MISSING
from resync_hierarchy.l1 import L1Store, LRUPolicy

BASE_KEYS = 100_000
SEED = 20260424
_NEVER = sys.maxsize


def zipf_trace(
    requests: int, keys: int = BASE_KEYS, s: float = 0.99, seed: int = SEED
) -> list[str]:
    """``requests`` keys drawn from Zipf(s) over ``keys`` keys (rank 1 most
    popular), ranks shuffled onto key names so popularity is unrelated to
    the key's text."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, keys + 1)))
    total = cumulative[-1]
    names = [f"k:{i}" for i in range(keys)]
    rng.shuffle(names)
    pick = bisect.bisect_left
    return [names[min(pick(cumulative, rng.random() * total), keys - 1)] for _ in range(requests)]


def scan_mix_trace(requests: int, seed: int = SEED) -> list[str]:
    """The Zipf stream with a 10,000-key sequential scan spliced in every
    20,000 requests (the scans cycle over 40 ranges of scan keys)."""
    zipf = zipf_trace(requests, seed=seed)
    out: list[str] = []
    scan_run, period, ranges = 10_000, 20_000, 40
    source = iter(zipf)
    scan_index = 0
    while len(out) < requests:
        for key in itertools.islice(source, period):
            out.append(key)
        base = (scan_index % ranges) * scan_run
        out.extend(f"scan:{base + i}" for i in range(scan_run))
        scan_index += 1
    return out[:requests]


def next_uses(trace: list[str]) -> list[int]:
    """For each request, the index of the next request of the same key."""
    result = [_NEVER] * len(trace)
    seen: dict[str, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        key = trace[i]
        result[i] = seen.get(key, _NEVER)
        seen[key] = i
    return result


def belady(trace: list[str], capacity: int, nxt: list[int]) -> int:
    """Hits of the optimal offline policy with bypass (exact)."""
    held: dict[str, int] = {}  # key -> index of its next use
    heap: list[tuple[int, str]] = []  # (-next use, key), stale entries skipped
    hits = 0
    for i, key in enumerate(trace):
        upcoming = nxt[i]
        if key in held:
            hits += 1
            if upcoming == _NEVER:
                del held[key]  # never read again: drop it now
            else:
                held[key] = upcoming
                heapq.heappush(heap, (-upcoming, key))
            continue
        if upcoming == _NEVER:
            continue  # bypass: never read again
        if len(held) >= capacity:
            while True:
                farthest, victim = heap[0]
                if held.get(victim) == -farthest:
                    break
                heapq.heappop(heap)  # stale
            if -farthest <= upcoming:
                continue  # bypass: everything held is needed sooner
            heapq.heappop(heap)
            del held[victim]
        held[key] = upcoming
        heapq.heappush(heap, (-upcoming, key))
    return hits


def run_store(trace: list[str], store: L1Store) -> int:
    hits = 0
    get = store.get
    put = store.set
    for key in trace:
        if get(key) is MISSING:
            put(key, 1, expires_at=None, size=0)
        else:
            hits += 1
    return hits


def run_lru(trace: list[str], capacity: int) -> int:
    cache: OrderedDict[str, int] = OrderedDict()
    hits = 0
    for key in trace:
        if key in cache:
            cache.move_to_end(key)
            hits += 1
        else:
            if len(cache) >= capacity:
                cache.popitem(last=False)
            cache[key] = 1
    return hits


def run_theine(trace: list[str], capacity: int) -> int:
    from theine import Cache

    cache: Any = Cache(capacity, nolock=True)
    hits = 0
    for key in trace:
        _value, ok = cache.get(key)
        if ok:
            hits += 1
        else:
            cache.set(key, 1)
    cache.close()
    return hits


def our_store(capacity: int, *, shards: int = 16, policy: Any = None) -> L1Store:
    extra = {} if policy is None else {"policy": policy}
    return L1Store(max_entries=capacity, max_bytes=capacity * 10_000, shards=shards, **extra)


def policies() -> dict[str, Callable[[list[str], int], int]]:
    table: dict[str, Callable[[list[str], int], int]] = {
        "ours": lambda trace, cap: run_store(trace, our_store(cap)),
        "ours-1": lambda trace, cap: run_store(trace, our_store(cap, shards=1)),
        "ours-lru": lambda trace, cap: run_store(trace, our_store(cap, policy=LRUPolicy)),
        "lru": run_lru,
    }
    try:
        import theine  # noqa: F401
    except ImportError:
        print("theine not installed: its rows are skipped", file=sys.stderr)
    else:
        table["theine"] = run_theine
    return table


def measure(requests: int, capacities: list[float]) -> dict[str, Any]:
    result: dict[str, Any] = {"requests": requests, "base_keys": BASE_KEYS, "traces": {}}
    runners = policies()
    for name, build in (("zipf", zipf_trace), ("scanmix", scan_mix_trace)):
        trace = build(requests)
        nxt = next_uses(trace)
        rows: dict[str, Any] = {}
        for fraction in capacities:
            capacity = max(int(BASE_KEYS * fraction), 1)
            opt = belady(trace, capacity, nxt) / requests
            row: dict[str, Any] = {"capacity": capacity, "OPT": round(opt, 4)}
            for policy, run in runners.items():
                started = time.perf_counter()
                ratio = run(trace, capacity) / requests
                row[policy] = {
                    "hit_ratio": round(ratio, 4),
                    "gap_points": round(100 * (opt - ratio), 2),
                    "seconds": round(time.perf_counter() - started, 2),
                }
            rows[f"{fraction:.0%}"] = row
        result["traces"][name] = rows
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"L1 hit ratio, {result['requests']:,} requests per trace, "
        f"{result['base_keys']:,} base keys; gap = points below OPT"
    ]
    for trace, rows in result["traces"].items():
        for label, row in rows.items():
            cells = [f"OPT {row['OPT']:.3f}"]
            cells += [
                f"{name} {cell['hit_ratio']:.3f} (-{cell['gap_points']:.1f})"
                for name, cell in row.items()
                if isinstance(cell, dict)
            ]
            lines.append(f"  {trace:<8} {label:>4} ({row['capacity']:>6,}): " + ", ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--capacities", default="0.01,0.1", help="fractions of the base keys")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    capacities = [float(part) for part in args.capacities.split(",")]
    result = measure(args.requests, capacities)
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
