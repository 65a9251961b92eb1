"""Redis Cluster vs one redis-server, same run, interleaved rounds.

Starts a private single redis-server and a private 3-master cluster (no
replicas) on free 127.0.0.1 ports, then measures:

1. ``get_many`` of 100 keys (all present, L1 off so every call reaches
   Redis) through a CacheHierarchy on: the single node, the cluster with
   ``cluster_multikey="split"``, the cluster with ``"hashtag"``. Per round
   and target: ``--calls`` sequential calls (median latency) and the same
   number spread over ``--tasks`` concurrent tasks (calls per second).
   Targets alternate within each round; the figure is the median over rounds
   and the ratio is to the single node of the same run.
2. The load scenario of ``resync-hierarchy bench`` (closed loop, in process,
   ``run_load``) on the single node and on the cluster (both strategies),
   interleaved, with L1 as configured by the bench and with L1 off.

    .venv/bin/python scripts/bench_cluster.py [--rounds 5] [--json]

Everything is torn down by pid at the end. Never touches port 6379.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.cli.bench import BenchOptions, build_cache, run_load
from resync_hierarchy.l2.cluster import ClusterL2
from resync_hierarchy.testing.cluster import RedisClusterHarness
from resync_hierarchy.testing.redis_server import RedisServer, redis_server_version

KEYS = [f"key:{i}" for i in range(100)]


def _targets(single: str, cluster: str) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "single": (single, {}),
        "cluster-split": (cluster, {"cluster_multikey": "split"}),
        "cluster-hashtag": (cluster, {"cluster_multikey": "hashtag"}),
    }


PIPELINE_ONLY = "cluster-split-pipeline"
"""``split`` without the per-node script: per-slot MGETs in redis-py's cluster pipeline."""


async def _get_many_round(
    url: str, config: dict[str, Any], calls: int, tasks: int
) -> dict[str, float]:
    pipeline_only = config.pop("pipeline_only", False)
    cache = CacheHierarchy.from_url(
        url, namespace="gm", l1_max_entries=0, invalidation=False, l2_timeout=2.0, **config
    )
    if pipeline_only:
        backend = cache._l2.backend if cache._l2 is not None else None
        if not isinstance(backend, ClusterL2):
            raise RuntimeError("pipeline_only applies to a cluster backend")
        backend.node_scripts = False
    async with cache:
        await cache.set_many({k: {"k": k, "pad": "x" * 100} for k in KEYS})
        for _ in range(20):  # connections, slot map, script cache
            await cache.get_many(KEYS)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            got = await cache.get_many(KEYS)
            latencies.append(time.perf_counter() - started)
            if len(got) != len(KEYS):
                raise RuntimeError(f"get_many returned {len(got)} of {len(KEYS)} keys")

        async def worker(n: int) -> None:
            for _ in range(n):
                await cache.get_many(KEYS)

        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // tasks) for _ in range(tasks)))
        concurrent_s = time.perf_counter() - started
        errors = int(cache.get_stats()["l2_errors"])
    if errors:
        raise RuntimeError(f"{errors} L2 errors during the get_many round")
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "calls_per_s": (calls // tasks) * tasks / concurrent_s,
    }


async def _load_round(url: str, config: dict[str, Any], options: BenchOptions) -> dict[str, float]:
    cache, _, _ = build_cache(url, "bench", options)
    if config:
        cache = CacheHierarchy.from_config(cache.config.replace(**config))
    async with cache:
        await cache.clear()
        result = await run_load(cache, options)
        await cache.clear()
    completed = result.reads + result.writes
    ordered = sorted(result.latencies)
    return {
        "rps": completed / result.duration_s,
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1e3 if ordered else 0.0,
        "errors": float(result.errors),
        "l2_errors": float(
            result.stats_after.get("l2_errors", 0) - result.stats_before.get("l2_errors", 0)
        ),
    }


def _summarize(rounds: dict[str, list[dict[str, float]]], base: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, samples in rounds.items():
        out[name] = {m: statistics.median(s[m] for s in samples) for m in samples[0]}
    for figures in out.values():
        for metric in list(figures):
            if metric in ("p50_ms", "p99_ms", "calls_per_s", "rps") and out[base][metric]:
                figures[f"{metric}_vs_{base}"] = figures[metric] / out[base][metric]
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with RedisServer() as server, RedisClusterHarness(masters=3) as cluster:
        targets = _targets(server.url, cluster.url)
        gm_targets = {
            **targets,
            PIPELINE_ONLY: (cluster.url, {"cluster_multikey": "split", "pipeline_only": True}),
        }
        get_many: dict[str, list[dict[str, float]]] = {name: [] for name in gm_targets}
        for _ in range(args.rounds):
            for name, (url, config) in gm_targets.items():
                get_many[name].append(
                    await _get_many_round(url, dict(config), args.calls, args.tasks)
                )
        load: dict[str, list[dict[str, float]]] = {}
        for l1 in ("l1", "l1-off"):
            options = BenchOptions(
                mode="closed",
                duration=args.load_seconds,
                warmup=1.0,
                concurrency=args.load_concurrency,
                keyspace=20_000,
                backend_delay_ms=0.0,
                l1_max_entries=0 if l1 == "l1-off" else None,
            )
            for target in targets:
                load[f"{target}/{l1}"] = []
            for _ in range(args.load_rounds):
                for name, (url, config) in targets.items():
                    load[f"{name}/{l1}"].append(await _load_round(url, config, options))
    load_summary = {
        **_summarize({k: v for k, v in load.items() if k.endswith("/l1")}, "single/l1"),
        **_summarize({k: v for k, v in load.items() if k.endswith("/l1-off")}, "single/l1-off"),
    }
    return {
        "command": "python scripts/bench_cluster.py " + " ".join(sys.argv[1:]),
        "redis_server": redis_server_version(),
        "rounds": args.rounds,
        "get_many_100": _summarize(get_many, "single"),
        "load_rounds": args.load_rounds,
        "load_closed_loop": load_summary,
    }


def _print_text(doc: dict[str, Any]) -> None:
    print(f"redis-server {doc['redis_server']}; {doc['rounds']} interleaved rounds (medians)")
    print("\nget_many(100 keys), L1 off:")
    print(f"  {'target':<18}{'p50 ms':>9}{'x single':>10}{'calls/s':>10}{'x single':>10}")
    for name, f in doc["get_many_100"].items():
        print(
            f"  {name:<18}{f['p50_ms']:>9.3f}{f['p50_ms_vs_single']:>10.2f}"
            f"{f['calls_per_s']:>10.0f}{f['calls_per_s_vs_single']:>10.2f}"
        )
    print(f"\nload scenario (closed loop), {doc['load_rounds']} rounds:")
    print(f"  {'target':<26}{'req/s':>10}{'x single':>10}{'p99 ms':>9}{'errors':>8}")
    for name, f in doc["load_closed_loop"].items():
        ratio = next(v for k, v in f.items() if k.startswith("rps_vs_"))
        print(
            f"  {name:<26}{f['rps']:>10.0f}{ratio:>10.2f}{f['p99_ms']:>9.2f}"
            f"{f['errors'] + f['l2_errors']:>8.0f}"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="get_many rounds (default 5)")
    parser.add_argument("--calls", type=int, default=400, help="get_many calls per round")
    parser.add_argument("--tasks", type=int, default=16, help="concurrent get_many tasks")
    parser.add_argument("--load-rounds", type=int, default=3, help="load rounds (default 3)")
    parser.add_argument("--load-seconds", type=float, default=4.0, help="per load run")
    parser.add_argument("--load-concurrency", type=int, default=200, help="load tasks")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args()
    doc = asyncio.run(main(args))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_text(doc)


if __name__ == "__main__":
    cli()
