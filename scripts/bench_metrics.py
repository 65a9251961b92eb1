#!/usr/bin/env python3
"""What metrics cost on the hot path: L1-hit ``get`` with metrics on vs off.

    python scripts/bench_metrics.py [--rounds 15] [--calls 50000] [--json]

Three sides, measured in interleaved rounds in one run (median ns per call;
ratios are medians of per-round ratios):
  floor        an ``async def`` returning ``dict.get(key)``
  metrics_off  ``CacheHierarchy.get`` answered by L1, ``metrics=False``
  metrics_on   the same with metrics on (the default), registered in a
               registry that is scraped once per round, as Prometheus would

The goal (issue 6) is metrics_on / metrics_off <= 1.25.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paths import VALUE, paired_ratio, per_call_ns

from resync_hierarchy import CacheHierarchy


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    table = {"k": VALUE}

    async def floor(key: str) -> Any:
        return table.get(key)

    registry = CollectorRegistry()
    on = CacheHierarchy.from_url(
        "memory://", namespace="bench-on", l1_sweep_interval=0, registry=registry
    )
    off = CacheHierarchy.from_url(
        "memory://", namespace="bench-off", l1_sweep_interval=0, metrics=False
    )
    for cache in (on, off):
        await cache.set("k", VALUE)
    sides = {"floor": floor, "metrics_off": off.get, "metrics_on": on.get}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():
        await per_call_ns(fn, "k", max(calls // 10, 10))
    for _ in range(rounds):
        for name, fn in sides.items():
            samples[name].append(await per_call_ns(fn, "k", calls))
        generate_latest(registry)  # a scrape between rounds, as in production
    await on.shutdown()
    await off.shutdown()
    return {
        "rounds": rounds,
        "calls": calls,
        "median_ns": {name: round(statistics.median(v), 1) for name, v in samples.items()},
        "on_vs_off": round(paired_ratio(samples["metrics_on"], samples["metrics_off"]), 3),
        "on_vs_floor": round(paired_ratio(samples["metrics_on"], samples["floor"]), 3),
        "off_vs_floor": round(paired_ratio(samples["metrics_off"], samples["floor"]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(measure(args.calls, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    ns = result["median_ns"]
    print(f"L1-hit get, {args.rounds} interleaved rounds of {args.calls} calls, medians")
    print(f"  floor        {ns['floor']:8.1f} ns")
    print(f"  metrics off  {ns['metrics_off']:8.1f} ns  {result['off_vs_floor']:.2f}x floor")
    print(f"  metrics on   {ns['metrics_on']:8.1f} ns  {result['on_vs_floor']:.2f}x floor")
    print(f"  on / off     {result['on_vs_off']:.3f}x  (goal <= 1.25x)")


if __name__ == "__main__":
    main()
