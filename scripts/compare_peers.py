#!/usr/bin/env python3
"""resync-hierarchy next to the caches a user would pick instead, in ONE run.

    python scripts/compare_peers.py            # full run (a few minutes)
    python scripts/compare_peers.py --quick    # smoke run (tiny sizes, seconds)
    python scripts/compare_peers.py --json     # the numbers, as JSON

Starts its own redis-server (resync_hierarchy.testing.RedisServer) on a free
loopback port and measures, every figure as a median over interleaved rounds
and every ratio against a floor measured in the same run:

  l1_hit    floor: an ``async def`` returning ``dict.get``. Ours:
            ``CacheHierarchy.get`` answered by L1 (metrics on, the default).
            Peers, each behind an ``async def`` where they are synchronous:
            theine (nolock), cachetools TTLCache, aiocache memory (with its
            default 5 s timeout and with ``timeout=None``), cashews ``mem://``.
  l2_hit    floor: redis.asyncio ``GET`` + ``msgpack.unpackb``. Ours:
            ``CacheHierarchy.get`` with L1 off. Peers: cashews ``redis://``,
            aiocache ``RedisCache`` with its msgpack serializer.
  load      ``resync-hierarchy bench``'s machinery (run_load): 2,000 tasks,
            Zipf 0.99 over 100k keys, 90 % reads, ``get_or_set`` with a 2 ms
            loader, L1 at 10 % of the keys. Steady state, not a cold start:
            every key is in Redis beforehand, and our L1 is warmed by 300k
            Zipf-distributed reads (get_many, 1,000 a round trip; with a
            cold L1, most reads of a 6 s run are first reads). Baseline: raw redis-py (GET, else
            load + SET) behind a FIFO (fair) semaphore of 64, the size of our
            L2 limiter. Ours runs with l2_timeout=30 s, as the baseline has
            no timeout (L2 errors and circuit trips are reported: nonzero
            means ours was serving degraded). Closed loop for throughput and
            starved tasks; then open loop for both at the same offered rate
            (half the baseline's closed-loop throughput), p99 from each
            request's scheduled start.
  hit_ratio scripts/hit_ratio.py: Belady OPT, ours, LRU, theine (1M requests).
  memory    tracemalloc bytes per entry of 100k entries with 200-byte values
            in L1Store vs a plain dict; the store's own byte accounting vs
            tracemalloc under l1_max_bytes.
  growth    L1-hit and L2-hit medians with 1k, 100k and 1M entries held.

A peer that is not installed (``pip install -e '.[bench]'``) is skipped with
a printed reason. Nothing here is a pass/fail test: it reports, and the goals
of issue 8 are checked against the numbers at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_paths
import hit_ratio

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.cli.bench import BenchOptions, ZipfSampler, percentile, run_load
from resync_hierarchy.l1 import L1Store, LRUPolicy
from resync_hierarchy.observe.logging import configure_cli_logging
from resync_hierarchy.testing.redis_server import RedisServer

VALUE = bench_paths.VALUE
LOAD_L2_TIMEOUT = 30.0
Side = Callable[[str], Awaitable[Any]]
skipped: dict[str, str] = {}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- L1-hit path


async def l1_sides(url: str) -> tuple[dict[str, Side], list[Callable[[], Awaitable[None]]]]:
    """Every L1-hit side, each already holding key ``k``, and their closers."""
    closers: list[Callable[[], Awaitable[None]]] = []
    table = {"k": VALUE}

    async def floor(key: str) -> Any:
        return table.get(key)

    sides: dict[str, Side] = {"floor": floor}
    ours = CacheHierarchy.from_url(url, namespace="peers-l1", l1_sweep_interval=0)
    await ours.set("k", VALUE)
    closers.append(ours.shutdown)
    sides["ours"] = ours.get

    try:
        from theine import Cache as TheineCache
    except ImportError as exc:
        skipped["theine"] = f"not installed ({exc})"
    else:
        theine: Any = TheineCache(100_000, nolock=True)
        theine.set("k", VALUE)

        async def theine_get(key: str) -> Any:
            return theine.get(key)[0]

        sides["theine"] = theine_get

    try:
        from cachetools import TTLCache
    except ImportError as exc:
        skipped["cachetools"] = f"not installed ({exc})"
    else:
        ttl_cache: Any = TTLCache(maxsize=100_000, ttl=300)
        ttl_cache["k"] = VALUE

        async def cachetools_get(key: str) -> Any:
            return ttl_cache.get(key)

        sides["cachetools"] = cachetools_get

    try:
        from aiocache import SimpleMemoryCache
    except ImportError as exc:
        skipped["aiocache"] = f"not installed ({exc})"
    else:
        plain: Any = SimpleMemoryCache(timeout=None)
        await plain.set("k", VALUE)
        sides["aiocache"] = plain.get
        timed: Any = SimpleMemoryCache()  # the default: timeout=5 (asyncio.wait_for)
        await timed.set("k", VALUE)
        sides["aiocache_timeout"] = timed.get

    try:
        from cashews import Cache as CashewsCache
    except ImportError as exc:
        skipped["cashews"] = f"not installed ({exc})"
    else:
        mem: Any = CashewsCache()
        mem.setup("mem://")
        await mem.set("k", VALUE)
        sides["cashews"] = mem.get
        csc: Any = CashewsCache()
        try:
            csc.setup(url, client_side=True)
            await csc.init()
            await csc.set("k", VALUE)
            await csc.get("k")  # now held client-side
        except Exception as exc:  # a peer's failure must not stop the comparison
            skipped["cashews_client_side"] = f"setup failed: {exc!r}"
        else:
            sides["cashews_client_side"] = csc.get
            closers.append(csc.close)
        closers.append(mem.close)
    return sides, closers


# ---------------------------------------------------------------- L2-hit path


async def l2_sides(url: str) -> tuple[dict[str, Side], list[Callable[[], Awaitable[None]]]]:
    closers: list[Callable[[], Awaitable[None]]] = []
    raw = aioredis.Redis.from_url(url)
    await raw.set(b"peers-raw", msgpack.packb(VALUE))
    closers.append(raw.aclose)

    async def raw_get(_key: str) -> Any:
        return msgpack.unpackb(await raw.get(b"peers-raw"))

    sides: dict[str, Side] = {"floor": raw_get}
    ours = CacheHierarchy.from_url(url, namespace="peers-l2", l1_max_entries=0)
    await ours.set("k", VALUE)
    closers.append(ours.shutdown)
    sides["ours"] = ours.get

    try:
        from cashews import Cache as CashewsCache
    except ImportError:
        pass  # reported with the L1 sides
    else:
        cashews: Any = CashewsCache()
        cashews.setup(url)
        await cashews.init()
        await cashews.set("k", VALUE)
        sides["cashews"] = cashews.get
        closers.append(cashews.close)

    try:
        from aiocache import RedisCache
        from aiocache.serializers import MsgPackSerializer
    except ImportError:
        pass
    else:
        server = url.split("//", 1)[1].split("/", 1)[0]
        host, port = server.rsplit(":", 1)
        aio: Any = RedisCache(
            # encoding=None: with the default utf-8, aiocache 0.12's redis
            # backend decodes the msgpack bytes as text and fails.
            serializer=MsgPackSerializer(encoding=None),
            endpoint=host,
            port=int(port),
            namespace="peers-aiocache",
            timeout=None,
        )
        await aio.set("k", VALUE)
        sides["aiocache"] = aio.get
        closers.append(aio.close)
    return sides, closers


async def measure_paths(
    build: Callable[[str], Awaitable[tuple[dict[str, Side], list[Callable[[], Awaitable[None]]]]]],
    url: str,
    calls: int,
    rounds: int,
) -> dict[str, dict[str, float]]:
    sides, closers = await build(url)
    try:
        samples = await bench_paths.interleaved(sides, "k", calls, rounds)
    finally:
        for close in closers:
            await close()
    return bench_paths.summary(samples, "floor")


# ---------------------------------------------------------------- load


class FairSemaphore:
    """FIFO semaphore: waiters are served strictly in arrival order."""

    def __init__(self, permits: int) -> None:
        self._free = permits
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()
            else:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the permit passes straight to it
                return
        self._free += 1


class RawRedisCache:
    """The baseline of the load scenario: redis-py and msgpack, nothing else,
    behind a fair semaphore (the same 64 permits as our L2 limiter)."""

    def __init__(self, url: str, permits: int = 64) -> None:
        self._redis = aioredis.Redis.from_url(url, max_connections=permits)
        self._gate = FairSemaphore(permits)
        self.hits = self.misses = 0

    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[Any]], ttl: float | None = None
    ) -> Any:
        full = "raw:" + key
        async with self._gate:
            blob = await self._redis.get(full)
        if blob is not None:
            self.hits += 1
            return msgpack.unpackb(blob)
        self.misses += 1
        value = await factory()
        async with self._gate:
            await self._redis.set(full, msgpack.packb(value), ex=int(ttl or 300))
        return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        async with self._gate:
            await self._redis.set("raw:" + key, msgpack.packb(value), ex=int(ttl or 300))

    def get_stats(self) -> dict[str, Any]:
        return {"l2_hits": self.hits, "misses": self.misses}

    async def close(self) -> None:
        await self._redis.aclose()


def load_row(result: Any) -> dict[str, Any]:
    latencies = sorted(result.latencies)
    return {
        "throughput_rps": round(result.requests / result.duration_s, 1),
        "requests": result.requests,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "starved_tasks": result.starved_tasks,
        "errors": result.errors,
        "unsent": result.unsent,
    }


def _load_value(key: str) -> dict[str, Any]:
    return {"key": key, "n": 0, "payload": "x" * 168}  # as the bench's loader makes


async def populate(url: str, keyspace: int, ttl: float) -> None:
    """Every key of the keyspace in Redis for both sides, so the run measures
    the steady state (L2 hits, L1 absorbing reads) rather than a cold start
    where most reads are first reads that neither side can answer."""
    raw = aioredis.Redis.from_url(url)
    cache = CacheHierarchy.from_url(url, namespace="peers-load", l1_max_entries=0)
    try:
        keys = [f"k:{n}" for n in range(keyspace)]
        for start in range(0, keyspace, 5000):
            chunk = keys[start : start + 5000]
            async with raw.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.set("raw:" + key, msgpack.packb(_load_value(key)), ex=int(ttl))
                await pipe.execute()
            await cache.set_many({key: _load_value(key) for key in chunk}, ttl=ttl)
    finally:
        await cache.shutdown()
        await raw.aclose()


async def prewarm(cache: CacheHierarchy, options: BenchOptions, draws: int) -> None:
    """Read ``draws`` Zipf-distributed keys (the bench's own popularity, another
    seed) in batches of 1,000, one round trip each: L1 then holds what it
    would after that much traffic, its admission policy included."""
    sampler = ZipfSampler(options.keyspace, options.zipf_s, seed=options.seed)
    rng = random.Random(options.seed + 7)
    for start in range(0, draws, 1000):
        await cache.get_many([sampler.key(rng) for _ in range(min(1000, draws - start))])


async def run_side(
    side: str, url: str, options: BenchOptions, prewarm_draws: int = 0
) -> dict[str, Any]:
    if side == "ours":
        # As `resync-hierarchy bench` builds it, but with an L2 timeout long
        # enough that 2,000 tasks queueing for 64 connections on a loaded
        # machine do not trip it: the baseline has no timeout either, and a
        # tripped circuit would serve from L1 (fail-safe) and inflate ours.
        cache = CacheHierarchy.from_url(
            url,
            namespace="peers-load",
            default_ttl=options.ttl,
            l1_max_entries=options.effective_l1_max_entries,
            l2_timeout=LOAD_L2_TIMEOUT,
        )
        async with cache:
            await prewarm(cache, options, prewarm_draws)
            result = await run_load(cache, options)
            stats = cache.get_stats()
        row = load_row(result)
        reads = max(result.reads, 1)
        before = result.stats_before
        row["l1_hit_ratio_of_reads"] = round(
            (stats["l1_hits"] - before.get("l1_hits", 0)) / reads, 3
        )
        for name in (
            "l2_errors",
            "l2_short_circuited",
            "circuit_opens",
            "recovery_overflowed",
            "promotions",
            "promotions_skipped",
            "write_races",
        ):
            if name in stats:
                row[name] = stats[name] - before.get(name, 0)
        return row
    raw = RawRedisCache(url)
    try:
        result = await run_load(raw, options)
    finally:
        await raw.close()
    return load_row(result)


async def measure_load(url: str, quick: bool) -> dict[str, Any]:
    duration, warmup = (1.0, 0.3) if quick else (6.0, 2.0)
    closed = BenchOptions(
        duration=duration,
        warmup=warmup,
        concurrency=200 if quick else 2000,
        mode="closed",
        keyspace=10_000 if quick else 100_000,
        clear=False,
    )
    out: dict[str, Any] = {
        "options": {
            "concurrency": closed.concurrency,
            "keyspace": closed.keyspace,
            "duration_s": duration,
            "l1_max_entries": closed.effective_l1_max_entries,
        }
    }
    raw = aioredis.Redis.from_url(url)
    await raw.flushdb()
    await populate(url, closed.keyspace, closed.ttl)
    out["closed_raw"] = await run_side("raw", url, closed)
    draws = 5_000 if quick else 300_000
    out["options"]["l1_prewarm_reads"] = draws
    out["closed_ours"] = await run_side("ours", url, closed, draws)
    rate = max(100.0, 0.5 * out["closed_raw"]["throughput_rps"])
    opened = BenchOptions(
        duration=duration,
        warmup=warmup,
        concurrency=closed.concurrency,
        mode="open",
        rate=rate,
        keyspace=closed.keyspace,
        clear=False,
    )
    out["open_rate_rps"] = round(rate, 1)
    out["open_raw"] = await run_side("raw", url, opened)
    out["open_ours"] = await run_side("ours", url, opened, draws)
    await raw.flushdb()
    await raw.aclose()
    out["throughput_ratio"] = round(
        out["closed_ours"]["throughput_rps"] / out["closed_raw"]["throughput_rps"], 2
    )
    return out


# ---------------------------------------------------------------- memory


def _value(i: int) -> bytes:
    return i.to_bytes(8, "little") * 25  # 200 bytes, distinct per entry


def memory(entries: int) -> dict[str, Any]:
    """Bytes per entry by tracemalloc, keys and values included on both sides
    (the same data: ``user:%010d`` keys, distinct 200-byte values)."""

    def key(i: int) -> str:
        return f"user:{i:010d}"

    def traced(build: Callable[[], Any]) -> tuple[float, Any]:
        gc.collect()
        tracemalloc.start()
        obj = build()
        used, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return used / entries, obj

    def plain() -> dict[str, bytes]:
        return {key(i): _value(i) for i in range(entries)}

    def store(ttl: bool = False, warm: bool = False, lru: bool = False) -> L1Store:
        extra: dict[str, Any] = {"policy": LRUPolicy} if lru else {}
        l1 = L1Store(max_entries=entries, max_bytes=1 << 40, **extra)
        for i in range(entries):
            # TTLs spread over 300 s: about entries / 300 keys per wheel second
            l1.set(key(i), _value(i), expires_at=2e9 + i % 300 if ttl else None, size=200)
        if warm:  # every key read once: the segments reach their steady shares
            for i in range(entries):
                l1.get(key(i))
                if i % 50 == 0:  # writes drain the buffered hits, as misses would
                    l1.set(key(i), _value(i), expires_at=None, size=200)
        return l1

    floor, obj = traced(plain)
    del obj
    ours, obj = traced(store)
    accounted = obj.bytes / entries
    del obj
    warm, obj = traced(lambda: store(warm=True))
    del obj
    with_ttl, obj = traced(lambda: store(ttl=True))
    accounted_ttl = obj.bytes / entries
    del obj
    lru, obj = traced(lambda: store(lru=True))
    del obj
    out: dict[str, Any] = {
        "entries": entries,
        "dict_bytes_per_entry": round(floor, 1),
        "ours_bytes_per_entry": round(ours, 1),
        "ours_ratio": round(ours / floor, 3),
        "ours_warm_bytes_per_entry": round(warm, 1),
        "ours_warm_ratio": round(warm / floor, 3),
        "ours_with_ttl_bytes_per_entry": round(with_ttl, 1),
        "ours_with_ttl_ratio": round(with_ttl / floor, 3),
        "ours_lru_bytes_per_entry": round(lru, 1),
        "ours_lru_ratio": round(lru / floor, 3),
        "charged_bytes_per_entry": round(accounted, 1),
        "charged_with_ttl_bytes_per_entry": round(accounted_ttl, 1),
    }
    # l1_max_bytes held: fill a byte-bounded store far past its budget and
    # compare what tracemalloc sees it hold with the budget.
    for label, ttl in (("", False), ("_ttl", True)):
        budget = entries * 500

        def bounded(ttl: bool = ttl, budget: int = budget) -> L1Store:
            l1 = L1Store(max_entries=10 * entries, max_bytes=budget)
            for i in range(2 * entries):
                l1.set(key(i), _value(i), expires_at=2e9 + i % 300 if ttl else None, size=200)
            return l1

        held, obj = traced(bounded)
        out[f"held{label}_over_max_bytes"] = round(held * entries / budget, 3)
        out[f"held{label}_entries"] = len(obj)
        del obj
    return out


# ---------------------------------------------------------------- cost growth


async def growth(url: str, sizes: list[int], calls: int, rounds: int) -> dict[str, Any]:
    """L1-hit and L2-hit medians with each size held, rounds interleaved across
    sizes (each size's L2 keys in a Redis database of its own), so drifting
    machine load hits every size alike."""
    rng = random.Random(5)
    out: dict[str, Any] = {"sizes": sizes}
    base = url.rsplit("/", 1)[0]
    l1_gets: list[Side] = []
    dict_gets: list[Side] = []
    l2_gets: list[Side] = []
    probes: list[list[str]] = []
    caches: list[CacheHierarchy] = []
    for db, size in enumerate(sizes, start=1):
        keys = [f"g:{i}" for i in range(size)]
        probes.append([keys[rng.randrange(size)] for _ in range(1024)])
        l1_cache = CacheHierarchy.from_url(
            "memory://",
            namespace="growth",
            # room for every entry in every stripe (keys spread unevenly over
            # the 16 stripes, each bounded by its share): all probes hit
            l1_max_entries=2 * size,
            l1_max_bytes=size * 2048,
            l1_sweep_interval=0,
        )
        l1 = l1_cache._l1
        if l1 is None:
            raise SystemExit("L1 is expected to be on")
        for key in keys:
            l1.set(key, 1, expires_at=None, size=8)
        if len(l1) != size:
            raise SystemExit(f"L1 holds {len(l1)} of {size} entries")
        l2_cache = CacheHierarchy.from_url(f"{base}/{db}", namespace="growth", l1_max_entries=0)
        await l2_cache.clear()
        for start in range(0, size, 5000):
            await l2_cache.set_many(dict.fromkeys(keys[start : start + 5000], 1), ttl=3600)
        caches += [l1_cache, l2_cache]
        table = dict.fromkeys(keys, 1)

        async def dict_get(key: str, table: dict[str, int] = table) -> Any:
            return table.get(key)

        dict_gets.append(dict_get)
        l1_gets.append(l1_cache.get)
        l2_gets.append(l2_cache.get)
        log(f"  growth: {size:,} entries held")
    l1_samples: list[list[float]] = [[] for _ in sizes]
    dict_samples: list[list[float]] = [[] for _ in sizes]
    l2_samples: list[list[float]] = [[] for _ in sizes]
    for _ in range(rounds):
        for i in range(len(sizes)):
            dict_samples[i].append(await _cycling_ns(dict_gets[i], probes[i], calls))
            l1_samples[i].append(await _cycling_ns(l1_gets[i], probes[i], calls))
        for i in range(len(sizes)):
            l2_samples[i].append(await _cycling_ns(l2_gets[i], probes[i], max(calls // 25, 200)))
    for cache in caches:
        await cache.clear()
        await cache.shutdown()
    del caches, l1_gets, l2_gets, dict_gets
    gc.collect()
    for tier, samples in (
        ("dict_floor", dict_samples),
        ("l1_hit", l1_samples),
        ("l2_hit", l2_samples),
    ):
        out[tier + "_ns"] = {
            size: round(statistics.median(values), 1)
            for size, values in zip(sizes, samples, strict=True)
        }
        # each size against the smallest, per round (paired), median over rounds
        out[tier + "_vs_smallest"] = {
            size: round(bench_paths.paired_ratio(values, samples[0]), 3)
            for size, values in zip(sizes, samples, strict=True)
        }
        ratios = out[tier + "_vs_smallest"].values()
        out[tier + "_spread"] = round(max(ratios) / min(ratios) - 1, 3)
    return out


async def _cycling_ns(get: Side, probe: list[str], calls: int) -> float:
    n = len(probe)
    start = time.perf_counter_ns()
    for i in range(calls):
        await get(probe[i % n])
    return (time.perf_counter_ns() - start) / calls


# ---------------------------------------------------------------- report


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    l1 = result["l1_hit"]["ours"]["ratio"]
    l2 = result["l2_hit"]["ours"]["ratio"]
    load = result["load"]
    starved = load["closed_ours"]["starved_tasks"] + load["open_ours"]["starved_tasks"]
    rows = [
        {"goal": "1 L1-hit <= 6x floor", "value": l1, "met": l1 <= 6},
        {"goal": "2 L2-hit <= 1.05x raw", "value": l2, "met": l2 <= 1.05},
        {
            "goal": "3 load >= 10x raw, no starved task",
            "value": f"{load['throughput_ratio']}x, starved {starved}",
            "met": load["throughput_ratio"] >= 10 and starved == 0,
        },
    ]
    traces = result.get("hit_ratio", {}).get("traces", {})
    if traces:
        gaps_ok = all(
            row["ours"]["gap_points"] <= row["theine"]["gap_points"]
            for rows in traces.values()
            for row in rows.values()
            if "theine" in row
        )
        zipf1 = traces["zipf"]["1%"]
        lead = round(zipf1["lru"]["gap_points"] - zipf1["ours"]["gap_points"], 2)
        rows.append(
            {
                "goal": "4 gap to OPT <= theine's everywhere; >= 8 pts over LRU (Zipf, 1%)",
                "value": f"theine matched: {gaps_ok}; over LRU {lead} pts",
                "met": gaps_ok and lead >= 8,
            }
        )
    mem = result["memory"]
    rows.append(
        {
            "goal": "5 bytes/entry <= 1.5x dict; l1_max_bytes held within 5%",
            "value": f"{mem['ours_ratio']}x (warm {mem['ours_warm_ratio']}x), held "
            f"{mem['held_over_max_bytes']}x (with TTL {mem['held_ttl_over_max_bytes']}x)",
            "met": mem["ours_ratio"] <= 1.5
            and 0.95 <= mem["held_over_max_bytes"] <= 1.05
            and 0.95 <= mem["held_ttl_over_max_bytes"] <= 1.05,
        }
    )
    grow = result["growth"]
    rows.append(
        {
            "goal": "6 L1/L2-hit medians at 1k..1M within 20%",
            "value": f"l1 {grow['l1_hit_spread']:+.0%}, l2 {grow['l2_hit_spread']:+.0%}",
            "met": grow["l1_hit_spread"] <= 0.2 and grow["l2_hit_spread"] <= 0.2,
        }
    )
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Python {result['python']}, redis-server {result['redis']}, {result['rounds']} rounds"
    ]
    for section, floor in (
        ("l1_hit", "async def + dict.get"),
        ("l2_hit", "redis-py GET + msgpack"),
    ):
        lines.append(f"{section} (floor: {floor})")
        for name, row in result[section].items():
            lines.append(f"  {name:<22} {row['median_ns'] / 1000:9.3f} us  {row['ratio']:7.2f}x")
    load = result["load"]
    lines.append(f"load {load['options']}")
    for key in ("closed_raw", "closed_ours", "open_raw", "open_ours"):
        lines.append(f"  {key:<12} {load[key]}")
    lines.append(
        f"  throughput ours/raw (closed): {load['throughput_ratio']}x; "
        f"open-loop rate {load['open_rate_rps']} req/s"
    )
    if "hit_ratio" in result:
        lines.append(hit_ratio.render(result["hit_ratio"]))
    lines.append(f"memory {result['memory']}")
    lines.append(f"growth {result['growth']}")
    if skipped:
        lines.append(f"skipped: {skipped}")
    lines.append("goals:")
    for goal in result["goals"]:
        lines.append(f"  [{'met' if goal['met'] else 'NOT met'}] {goal['goal']}: {goal['value']}")
    return "\n".join(lines)


def _us(ns: float) -> str:
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def render_markdown(result: dict[str, Any]) -> str:
    """The README's "Against the peers" tables, from one run's result."""
    names = {
        "floor": None,
        "ours": "**resync-hierarchy** `CacheHierarchy.get`",
        "theine": "theine `Cache(nolock=True)` behind an `async def`",
        "cachetools": "cachetools `TTLCache` behind an `async def`",
        "aiocache": "aiocache `SimpleMemoryCache(timeout=None)`",
        "aiocache_timeout": "aiocache `SimpleMemoryCache()` (default 5 s timeout)",
        "cashews": "cashews `mem://`",
        "cashews_client_side": "cashews `redis://` with `client_side=True` (a local hit)",
    }
    l2_names = {
        "ours": "**resync-hierarchy** `CacheHierarchy.get` (L1 off)",
        "cashews": "cashews `redis://`",
        "aiocache": "aiocache `RedisCache` with `MsgPackSerializer`",
    }
    out = [
        f"Python {result['python']}, redis-server {result['redis']}, "
        f"{result['rounds']} interleaved rounds; ratios are medians of per-round ratios.",
        "",
        "| L1-hit `get` | median | ratio to the floor |",
        "| --- | --- | --- |",
    ]
    l1 = result["l1_hit"]
    out.append(
        f"| floor: `async def` returning `dict.get` | {_us(l1['floor']['median_ns'])} | 1x |"
    )
    for key, row in l1.items():
        if names.get(key):
            out.append(f"| {names[key]} | {_us(row['median_ns'])} | {row['ratio']:.2f}x |")
    l2 = result["l2_hit"]
    out += ["", "| L2-hit `get` | median | ratio to the floor |", "| --- | --- | --- |"]
    out.append(
        f"| floor: redis.asyncio `GET` + `msgpack.unpackb` | {_us(l2['floor']['median_ns'])} | 1x |"
    )
    for key, row in l2.items():
        if key in l2_names:
            out.append(f"| {l2_names[key]} | {_us(row['median_ns'])} | {row['ratio']:.2f}x |")
    load = result["load"]
    out += [
        "",
        "| load (2,000 tasks, Zipf 0.99, 100k keys, 90% reads) | throughput | p50 | p99 "
        "| starved tasks | L1 hits / reads |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, label in (
        ("closed_raw", "raw redis-py + fair semaphore, closed loop"),
        ("closed_ours", "resync-hierarchy, closed loop"),
        ("open_raw", f"raw, open loop at {load['open_rate_rps']:,.0f}/s"),
        ("open_ours", f"resync-hierarchy, open loop at {load['open_rate_rps']:,.0f}/s"),
    ):
        row = load[key]
        hits = row.get("l1_hit_ratio_of_reads")
        out.append(
            f"| {label} | {row['throughput_rps']:,.0f}/s | {row['p50_ms']:.2f} ms "
            f"| {row['p99_ms']:.1f} ms | {row['starved_tasks']} "
            f"| {'-' if hits is None else f'{hits:.0%}'} |"
        )
    if "hit_ratio" in result:
        traces = result["hit_ratio"]["traces"]
        out += [
            "",
            f"| hit ratio, {result['hit_ratio']['requests']:,} requests | OPT | resync-hierarchy "
            "(W-TinyLFU) | theine | LRU |",
            "| --- | --- | --- | --- | --- |",
        ]
        for trace, rows in traces.items():
            for label, row in rows.items():
                cells = [f"{row['OPT']:.3f}"]
                for policy in ("ours", "theine", "lru"):
                    cell = row.get(policy)
                    cells.append(
                        "-"
                        if cell is None
                        else f"{cell['hit_ratio']:.3f} (-{cell['gap_points']:.1f})"
                    )
                out.append(f"| {trace}, capacity {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    rounds = 5 if quick else args.rounds
    server = RedisServer().start()
    started = time.perf_counter()
    try:
        url = server.url
        info = await aioredis.Redis.from_url(url).info("server")
        result: dict[str, Any] = {
            "python": sys.version.split()[0],
            "redis": info.get("redis_version"),
            "rounds": rounds,
            "quick": quick,
        }
        log("l1_hit ...")
        result["l1_hit"] = await measure_paths(l1_sides, url, 2_000 if quick else 40_000, rounds)
        log("l2_hit ...")
        result["l2_hit"] = await measure_paths(l2_sides, url, 200 if quick else 2_000, rounds)
        log("load ...")
        result["load"] = await measure_load(url, quick)
        if not args.skip_hit_ratio:
            log("hit ratio ...")
            result["hit_ratio"] = hit_ratio.measure(20_000 if quick else args.requests, [0.01, 0.1])
        log("memory ...")
        result["memory"] = memory(5_000 if quick else 100_000)
        log("growth ...")
        sizes = [1_000, 10_000] if quick else [1_000, 100_000, 1_000_000]
        result["growth"] = await growth(url, sizes, 2_000 if quick else 40_000, 3 if quick else 7)
    finally:
        server.stop()
    result["skipped"] = dict(skipped)
    result["goals"] = goals(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=1_000_000, help="hit-ratio trace length")
    parser.add_argument("--skip-hit-ratio", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="the README's tables")
    parser.add_argument("--from-json", metavar="FILE", help="render a saved --json result")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(render_markdown(saved) if args.markdown else render(saved))
        return
    # The load scenario overloads L2 on purpose: the cache's warnings (L2
    # timeouts, circuit, recovery queue) are counted in the load rows instead.
    configure_cli_logging(level=50)
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(render_markdown(result) if args.markdown else render(result))


if __name__ == "__main__":
    main()
