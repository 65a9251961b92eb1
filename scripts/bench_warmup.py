"""Warm-up rate: the library loader against raw redis-py pipelines of SETs.

Starts its own redis-server (never touches 127.0.0.1:6379), writes N entries
(~200-byte values, each with its own remaining TTL, as a dump has) to a JSON
Lines file, then runs interleaved rounds of:

* ``loader cN``: ``warm_up(cache, FileSource(file), batch=B, concurrency=N)``:
  reads and parses the file, validates and envelopes every value, writes with
  per-entry TTLs, announces the keys (invalidation on, the default).
* ``raw script``: what an ops script with redis-py would do with the same
  file: read it, ``json.loads`` each line, ``SET key <msgpack value> PX ttl``
  in pipelines of B, one pipeline at a time.
* ``raw pipeline``: the floor: the same SETs from bytes already in memory
  (no file, no parsing), pipelines of B, one at a time.

The database is flushed before each run. Rates are keys/s of wall-clock time;
ratios are the median of per-round ratios (same round, same server). On a
shared, noisy machine the wall-clock rates swing with other processes' load,
so the keys per CPU-second of this process (time.process_time: the client
side, where the variants differ) are reported too.

    python scripts/bench_warmup.py [--keys 50000] [--rounds 7] [--batch 500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import string
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.testing.redis_server import RedisServer
from resync_hierarchy.warmup import FileSource, warm_up


def make_file(path: Path, keys: int, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    with path.open("w", encoding="utf-8") as out:
        for i in range(keys):
            value = {"id": i, "text": "".join(rng.choices(alphabet, k=170))}
            ttl = round(300 + rng.random() * 3300, 3)  # remaining TTLs differ, as in a dump
            out.write(json.dumps({"key": f"prompt:{i}", "value": value, "ttl": ttl}) + "\n")


async def run_loader(url: str, path: Path, batch: int, concurrency: int) -> tuple[float, float]:
    cache = CacheHierarchy.from_url(url, namespace="bench")
    try:
        await cache.start()
        started, cpu = time.perf_counter(), time.process_time()
        report = await warm_up(cache, FileSource(str(path)), batch=batch, concurrency=concurrency)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await cache.shutdown()
    if not report.ok:
        raise SystemExit(f"loader run was not clean: {report.as_dict()}")
    return report.loaded / elapsed, report.loaded / cpu


async def run_raw_script(client: Any, path: Path, batch: int) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    count = 0
    pipe = client.pipeline(transaction=False)
    with path.open("rb") as lines:
        for line in lines:
            record = json.loads(line)
            ttl = record["ttl"]
            pipe.set(
                "bench:" + record["key"],
                msgpack.packb(record["value"]),
                px=None if ttl is None else max(1, round(ttl * 1000)),
            )
            count += 1
            if len(pipe) >= batch:
                await pipe.execute()
    if len(pipe):
        await pipe.execute()
    return count / (time.perf_counter() - started), count / (time.process_time() - cpu)


async def run_raw_pipeline(
    client: Any, items: list[tuple[str, bytes, int]], batch: int
) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(items), batch):
        pipe = client.pipeline(transaction=False)
        for key, value, ttl_ms in items[start : start + batch]:
            pipe.set(key, value, px=ttl_ms)
        await pipe.execute()
    return len(items) / (time.perf_counter() - started), len(items) / (time.process_time() - cpu)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisServer().start()
    try:
        return await _bench(args, server, server.url)
    finally:
        server.stop()


async def _bench(args: argparse.Namespace, server: RedisServer, url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dump.jsonl"
        make_file(path, args.keys, args.seed)
        items = []
        with path.open("rb") as lines:
            for line in lines:
                r = json.loads(line)
                items.append(
                    ("bench:" + r["key"], msgpack.packb(r["value"]), round(r["ttl"] * 1000))
                )
        client = aioredis.Redis.from_url(url)
        direct = aioredis.Redis.from_url(server.url)
        names = ("loader_c4", "loader_c1", "raw_script", "raw_pipeline")
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu_rates: dict[str, list[float]] = {name: [] for name in names}
        try:
            for round_number in range(args.rounds):
                order = list(rates)
                random.Random(round_number).shuffle(order)
                for name in order:
                    await direct.flushdb()
                    if name == "loader_c4":
                        rate = await run_loader(url, path, args.batch, 4)
                    elif name == "loader_c1":
                        rate = await run_loader(url, path, args.batch, 1)
                    elif name == "raw_script":
                        rate = await run_raw_script(client, path, args.batch)
                    else:
                        rate = await run_raw_pipeline(client, items, args.batch)
                    rates[name].append(rate[0])
                    cpu_rates[name].append(rate[1])
                    if await direct.dbsize() != args.keys:
                        raise SystemExit(f"{name}: not every key landed")
                if not args.json:
                    print(
                        f"round {round_number + 1}: "
                        + ", ".join(f"{n} {rates[n][-1]:,.0f}/s" for n in rates)
                    )
            await direct.flushdb()
        finally:
            await client.aclose()
            await direct.aclose()

    def ratios(table: dict[str, list[float]]) -> dict[str, float]:
        out = {}
        for loader in ("loader_c4", "loader_c1"):
            for raw in ("raw_script", "raw_pipeline"):
                pairs = zip(table[loader], table[raw], strict=True)
                out[f"{loader}/{raw}"] = round(statistics.median(x / y for x, y in pairs), 3)
        return out

    return {
        "keys": args.keys,
        "rounds": args.rounds,
        "batch": args.batch,
        "median_keys_per_second": {n: round(statistics.median(v)) for n, v in rates.items()},
        "wall_clock_ratios": ratios(rates),
        "median_keys_per_cpu_second": {
            n: round(statistics.median(v)) for n, v in cpu_rates.items()
        },
        "cpu_ratios": ratios(cpu_rates),
        "goal": "loader >= 0.7x raw",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.keys <= 1_000_000 or not 1 <= args.rounds <= 50:
        parser.error("--keys 1..1000000 and --rounds 1..50")
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
