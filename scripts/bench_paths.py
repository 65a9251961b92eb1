#!/usr/bin/env python3
"""Hot-path microbenchmarks, each as a ratio to a floor measured in the same run.

    python scripts/bench_paths.py                 # starts a private redis-server
    python scripts/bench_paths.py --redis-url redis://127.0.0.1:6390/0 --json

Paths (median ns per call over interleaved rounds; ratios are the median of
the per-round ratios, each round's sides measured back to back):
  floor      an ``async def`` returning ``dict.get(key)``
  l1_hit     ``CacheHierarchy.get`` answered by L1 (memory://)
  raw_l2     redis.asyncio ``GET`` + ``msgpack.unpackb`` (hiredis parser)
  l2_hit     ``CacheHierarchy.get`` answered by L2 (L1 off), same server
  l2_bare    the same, with the resilience guard (deadline, FIFO limiter,
             breaker, retries) replaced by a plain pass-through: the guard's
             cost is l2_hit / l2_bare

Rounds of the two sides of each ratio alternate, so drift in machine load
affects both alike. Nothing here is a pass/fail test: it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import redis.asyncio as aioredis

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.testing.redis_server import RedisServer

VALUE = {"prompt_hash": "9f2c" * 8, "tokens": 512, "text": "x" * 160}


async def per_call_ns(fn: Callable[[str], Awaitable[Any]], key: str, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        await fn(key)
    return (time.perf_counter_ns() - start) / calls


async def interleaved(
    sides: dict[str, Callable[[str], Awaitable[Any]]], key: str, calls: int, rounds: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():  # warm up
        await per_call_ns(fn, key, max(calls // 10, 10))
    for _ in range(rounds):
        for name, fn in sides.items():
            samples[name].append(await per_call_ns(fn, key, calls))
    return samples


def paired_ratio(values: list[float], base: list[float]) -> float:
    """Median over rounds of the ratio within each round: the two sides of a
    round ran back to back, so load that drifts between rounds cancels out."""
    return statistics.median(v / b for v, b in zip(values, base, strict=True))


def summary(samples: dict[str, list[float]], floor: str) -> dict[str, dict[str, float]]:
    base = samples[floor]
    return {
        name: {
            "median_ns": round(statistics.median(values), 1),
            "ratio": round(paired_ratio(values, base), 3),
        }
        for name, values in samples.items()
    }


async def l1_paths(calls: int, rounds: int) -> dict[str, dict[str, float]]:
    table = {"k": VALUE}

    async def floor(key: str) -> Any:
        return table.get(key)

    cache = CacheHierarchy.from_url("memory://", namespace="bench", l1_sweep_interval=0)
    await cache.set("k", VALUE)
    samples = await interleaved({"floor": floor, "l1_hit": cache.get}, "k", calls, rounds)
    await cache.shutdown()
    return summary(samples, "floor")


async def l2_paths(url: str, calls: int, rounds: int) -> dict[str, dict[str, float]]:
    raw = aioredis.Redis.from_url(url)
    cache = CacheHierarchy.from_url(url, namespace="bench-paths", l1_max_entries=0)
    bare = CacheHierarchy.from_url(url, namespace="bench-paths", l1_max_entries=0)
    await cache.set("k", VALUE)
    await raw.set(b"bench-raw", msgpack.packb(VALUE))

    async def raw_get(_key: str) -> Any:
        return msgpack.unpackb(await raw.get(b"bench-raw"))

    async def passthrough(op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await op(*args)

    if bare._l2 is None:
        raise SystemExit("an L2 was expected for a redis:// URL")
    bare._l2.call = passthrough  # type: ignore[method-assign]
    sides = {"raw_l2": raw_get, "l2_hit": cache.get, "l2_bare": bare.get}
    try:
        samples = await interleaved(sides, "k", calls, rounds)
    finally:
        await cache.clear()
        await raw.delete(b"bench-raw")
        await cache.shutdown()
        await bare.shutdown()
        await raw.aclose()
    result = summary(samples, "raw_l2")
    guard = paired_ratio(samples["l2_hit"], samples["l2_bare"])
    result["guard_overhead"] = {"median_ns": 0.0, "ratio": round(guard, 3)}
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "rounds": args.rounds,
        "l1": await l1_paths(args.l1_calls, args.rounds),
    }
    server: RedisServer | None = None
    url = args.redis_url
    if url is None:
        server = RedisServer().start()
        url = server.url
    try:
        result["l2"] = await l2_paths(url, args.l2_calls, args.rounds)
    finally:
        if server is not None:
            server.stop()
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"Python {result['python']}, {result['rounds']} interleaved rounds, medians"]
    for section, floor in (("l1", "floor"), ("l2", "raw_l2")):
        for name, row in result[section].items():
            if name == "guard_overhead":
                lines.append(f"  guard overhead (l2_hit / l2_bare): {row['ratio']:.3f}x")
                continue
            ratio = "" if name == floor else f"  {row['ratio']:.3f}x {floor}"
            lines.append(f"  {name:<8} {row['median_ns'] / 1000:9.3f} us{ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--l1-calls", type=int, default=50_000)
    parser.add_argument("--l2-calls", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()
