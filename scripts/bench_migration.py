#!/usr/bin/env python3
"""MigrationManager benchmarks, each against a baseline measured in the same run.

    python scripts/bench_migration.py            # text
    python scripts/bench_migration.py --json     # one JSON document

Starts its own private redis-servers (one for legacy, one for new) on
127.0.0.1 and stops them at the end. Three measurements:

propagation     ``--children`` manager processes (multiprocessing, spawn) follow
                the fleet-wide flag record of new's Redis. The parent flips the
                record ``--flips`` times (rollout 100 / rollback, as ``migrate``
                does, through FlagRecord.write); each child stamps the moment it
                applied the change. Latency = child's stamp - the parent's stamp
                taken just before the write, both on the system-wide
                CLOCK_MONOTONIC. Goal: p99 < 100 ms.
dual_write_set  ``MigrationManager.set`` (read_new: writes legacy and new
                concurrently) vs ``CacheHierarchy.set`` on the manager's own new
                (and legacy) hierarchy. Goal: median ratio <= 1.3. Measured on
                loopback, and again (``dual_write_set_with_rtt``) through
                latency proxies (``--rtt-delay-ms`` each way, in a process of
                their own): on loopback a set is bound by this process's CPU
                (``cpu_ns`` ~ ``median_ns``), which two concurrent writes cannot
                share, so the ratio there approaches 2; with a network round
                trip the two writes overlap.
read_new_get    ``MigrationManager.get`` at read_new 100 % vs ``get`` on the bare
                new hierarchy: L1 hits, and L2 hits with L1 off. Also measured:
                the same with migration metrics off, and at 50 % with a key in
                the share (the bucket hash is computed). Goal: ratio <= 1.05.

Rounds of the sides being compared alternate (their order rotates every round)
and a ratio is the median of the per-round ratios, so drift in machine load
affects both sides alike. Nothing here is a pass/fail test: it reports, and
says for each figure whether its goal was met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import queue as queue_module
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from resync_hierarchy import CacheHierarchy, MigrationManager
from resync_hierarchy.migration import FlagRecord, MigrationFlags, reads_new
from resync_hierarchy.testing.proxy import FaultProxy
from resync_hierarchy.testing.redis_server import RedisServer

VALUE = {"prompt_hash": "9f2c" * 8, "tokens": 512, "text": "x" * 160}
READ_NEW = MigrationFlags(use_new_cache=True, rollout_percent=100)
ROLLBACK = MigrationFlags(use_new_cache=False, rollout_percent=100)
FLEET_NS = "bench-fleet"


def mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


# --------------------------------------------------------------------------- 1. propagation


class _StampingManager(MigrationManager):
    """Reports (pid, revision, CLOCK_MONOTONIC ns) each time flags are applied."""

    reports: Any = None

    def _apply_flags(self, flags: MigrationFlags, revision: int) -> None:
        super()._apply_flags(flags, revision)
        stamp = mono_ns()
        if self.reports is not None:
            self.reports.put(("applied", os.getpid(), revision, stamp, flags.mode))


def _child(legacy_url: str, new_url: str, reports: Any, stop: Any, lifetime: float) -> None:
    # 4 processes x every flip would log migration_flags_changed: warnings only, on stderr
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    asyncio.run(_child_main(legacy_url, new_url, reports, stop, lifetime))


async def _child_main(
    legacy_url: str, new_url: str, reports: Any, stop: Any, lifetime: float
) -> None:
    mm = _StampingManager(
        CacheHierarchy.from_url(legacy_url, namespace="bench-legacy"),
        CacheHierarchy.from_url(new_url, namespace=FLEET_NS),
        flags=MigrationFlags(),
        registry=CollectorRegistry(),
    )
    mm.reports = reports
    async with mm:
        await mm.set(f"child:{os.getpid()}", 1)
        await asyncio.sleep(0.3)  # the listener is subscribed by now
        reports.put(("ready", os.getpid(), mm.status()["fleet"]["revision"], mono_ns(), ""))
        await asyncio.to_thread(stop.wait, lifetime)  # the loop keeps following the record


def _wait_for(
    reports: Any, pids: set[int], revision: int, timeout: float, stamps: dict[int, int]
) -> None:
    deadline = time.monotonic() + timeout
    while not pids <= stamps.keys():
        left = deadline - time.monotonic()
        if left <= 0:
            missing = sorted(pids - stamps.keys())
            raise RuntimeError(f"revision {revision} not applied by {missing} in {timeout}s")
        try:
            kind, pid, rev, stamp, _ = reports.get(timeout=left)
        except queue_module.Empty:
            continue
        if kind == "applied" and rev == revision:
            stamps.setdefault(pid, stamp)


async def _flip(record: FlagRecord, flags: MigrationFlags) -> tuple[int, int, int]:
    before = mono_ns()
    revision = await record.write(flags, by="bench")
    return revision, before, mono_ns()


def propagation(
    legacy_url: str, new_url: str, children: int, flips: int, warmup: int = 3
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    stop = context.Event()
    procs = [
        context.Process(
            target=_child, args=(legacy_url, new_url, reports, stop, 120.0), daemon=True
        )
        for _ in range(children)
    ]
    loop = asyncio.new_event_loop()
    ops = CacheHierarchy.from_url(new_url, namespace=FLEET_NS, invalidation=False)
    latencies_ms: list[float] = []
    write_ms: list[float] = []
    per_flip_max_ms: list[float] = []
    try:
        loop.run_until_complete(ops.start())
        record = FlagRecord(ops)
        for proc in procs:
            proc.start()
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < children:
            kind, pid, *_ = reports.get(timeout=max(0.1, deadline - time.monotonic()))
            if kind == "ready":
                pids.add(pid)
        rng = random.Random(7)
        for index in range(warmup + flips):
            flags = READ_NEW if index % 2 == 0 else ROLLBACK
            revision, before, after = loop.run_until_complete(_flip(record, flags))
            stamps: dict[int, int] = {}
            _wait_for(reports, pids, revision, 5.0, stamps)
            if index >= warmup:
                lags = [(stamp - before) / 1e6 for stamp in stamps.values()]
                latencies_ms.extend(lags)
                per_flip_max_ms.append(max(lags))
                write_ms.append((after - before) / 1e6)
            time.sleep(rng.uniform(0.01, 0.04))
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        with contextlib.suppress(Exception):
            loop.run_until_complete(ops.shutdown())
        loop.close()
        reports.close()
        reports.join_thread()
    p99 = percentile(latencies_ms, 99)
    return {
        "children": children,
        "flips": flips,
        "samples": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 50), 3),
        "p90_ms": round(percentile(latencies_ms, 90), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(max(latencies_ms), 3),
        "fleet_p99_ms": round(percentile(per_flip_max_ms, 99), 3),
        "record_write_p50_ms": round(percentile(write_ms, 50), 3),
        "goal": "p99 < 100 ms",
        "met": p99 < 100,
        "exit_codes": [proc.exitcode for proc in procs],
    }


# --------------------------------------------------------------------------- 2-3. hot paths

Op = Callable[[str], Awaitable[Any]]


async def _per_call_ns(op: Op, keys: list[str], calls: int) -> tuple[float, float]:
    """(wall ns, CPU ns of this process) per call."""
    n = len(keys)
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    for i in range(calls):
        await op(keys[i % n])
    return (time.perf_counter_ns() - start) / calls, (time.process_time_ns() - cpu) / calls


async def interleaved(
    sides: dict[str, tuple[Op, list[str]]], calls: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-call wall and CPU ns of each side, ``rounds`` times; the order
    rotates each round."""
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for op, keys in sides.values():  # warm-up
        await _per_call_ns(op, keys, max(calls // 5, 20))
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            op, keys = sides[name]
            w, c = await _per_call_ns(op, keys, calls)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def paired(
    samples: dict[str, list[float]], base: str, cpu: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    """Per path: median wall ns, median CPU ns (this process), and the median
    of the per-round ratios to ``base``."""
    floor = samples[base]
    return {
        name: {
            "median_ns": round(statistics.median(values), 1),
            "cpu_ns": round(statistics.median(cpu[name]), 1),
            "ratio": round(statistics.median(v / b for v, b in zip(values, floor, strict=True)), 3),
        }
        for name, values in samples.items()
    }


def _manager(
    legacy_url: str,
    new_url: str,
    flags: MigrationFlags,
    namespace: str,
    **overrides: Any,
) -> MigrationManager:
    return MigrationManager(
        CacheHierarchy.from_url(legacy_url, namespace=f"{namespace}-legacy", **overrides),
        CacheHierarchy.from_url(new_url, namespace=f"{namespace}-new", **overrides),
        flags=flags,
        registry=CollectorRegistry(),
    )


def _proxy_child(upstream_ports: list[int], delay: float, conn: Any, stop: Any) -> None:
    asyncio.run(_proxy_main(upstream_ports, delay, conn, stop))


async def _proxy_main(upstream_ports: list[int], delay: float, conn: Any, stop: Any) -> None:
    proxies = [FaultProxy(upstream_port=port) for port in upstream_ports]
    try:
        for proxy in proxies:
            await proxy.start()
            proxy.set_delay(delay)
        conn.send([proxy.url for proxy in proxies])
        await asyncio.to_thread(stop.wait, 120.0)
    finally:
        for proxy in proxies:
            await proxy.stop()


@contextlib.contextmanager
def delayed(servers: list[RedisServer], delay: float) -> Iterator[list[str]]:
    """URLs of latency proxies (``delay`` s each way) to ``servers``, run in a
    process of their own so that forwarding costs no CPU time of the bench."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    stop = context.Event()
    proc = context.Process(
        target=_proxy_child, args=([s.port for s in servers], delay, theirs, stop), daemon=True
    )
    proc.start()
    try:
        if not ours.poll(60):
            raise RuntimeError("the latency proxies did not start")
        urls: list[str] = ours.recv()
        yield urls
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


async def dual_write_set(legacy_url: str, new_url: str, calls: int, rounds: int) -> dict[str, Any]:
    keys = [f"w:{i}" for i in range(1000)]
    async with _manager(legacy_url, new_url, READ_NEW, "dw") as mm:

        async def single_new(key: str) -> None:
            await mm.new.set(key, VALUE)

        async def single_legacy(key: str) -> None:
            await mm.legacy.set(key, VALUE)

        async def dual(key: str) -> None:
            await mm.set(key, VALUE)

        samples, cpu = await interleaved(
            {
                "new.set": (single_new, keys),
                "legacy.set": (single_legacy, keys),
                "manager.set": (dual, keys),
            },
            calls,
            rounds,
        )
    table = paired(samples, "new.set", cpu)
    vs_legacy = statistics.median(
        d / s for d, s in zip(samples["manager.set"], samples["legacy.set"], strict=True)
    )
    ratio = table["manager.set"]["ratio"]
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "paths": table,
        "ratio": ratio,
        "ratio_vs_legacy_set": round(vs_legacy, 3),
        "goal": "manager.set / new.set <= 1.3",
        "met": ratio <= 1.3,
    }


async def _read_paths(
    legacy_url: str, new_url: str, calls: int, rounds: int, *, l1: bool
) -> dict[str, Any]:
    overrides: dict[str, Any] = {} if l1 else {"l1_max_entries": 0}
    tag = "l1" if l1 else "l2"
    quiet = READ_NEW.replace(enable_metrics=False)
    half = MigrationFlags(use_new_cache=True, rollout_percent=50)
    async with (
        _manager(legacy_url, new_url, READ_NEW, f"r{tag}", **overrides) as mm,
        _manager(legacy_url, new_url, quiet, f"r{tag}q", **overrides) as mm_quiet,
        _manager(legacy_url, new_url, half, f"r{tag}h", **overrides) as mm_half,
    ):
        keys = [f"r:{i}" for i in range(200)]
        in_share = [k for k in (f"r:{i}" for i in range(5000)) if reads_new(k, 50)][:200]
        for manager in (mm, mm_quiet):
            await manager.new.set_many(dict.fromkeys(keys, VALUE))
        await mm_half.new.set_many(dict.fromkeys(in_share, VALUE))
        for manager, wanted in ((mm, keys), (mm_quiet, keys), (mm_half, in_share)):
            for key in wanted:  # every read below is a hit where it should be
                if await manager.get(key) != VALUE or await manager.new.get(key) != VALUE:
                    raise RuntimeError(f"setup: {key!r} is not readable from new")
        sides: dict[str, tuple[Op, list[str]]] = {
            "new.get": (mm.new.get, keys),
            "manager.get": (mm.get, keys),
            "manager.get (metrics off)": (mm_quiet.get, keys),
            "manager.get (50 %, key in share)": (mm_half.get, in_share),
        }
        samples, cpu = await interleaved(sides, calls, rounds)
        for manager in (mm, mm_quiet, mm_half):
            status = manager.status()
            if status["fallbacks"] or status["legacy_reads"]:
                raise RuntimeError(f"reads left new: {status}")
    table = paired(samples, "new.get", cpu)
    ratio = table["manager.get"]["ratio"]
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "paths": table,
        "ratio": ratio,
        "goal": "manager.get / new.get <= 1.05",
        "met": ratio <= 1.05,
    }


async def read_new_get(
    legacy_url: str, new_url: str, l1_calls: int, l2_calls: int, rounds: int
) -> dict[str, Any]:
    return {
        "l1_hits": await _read_paths(legacy_url, new_url, l1_calls, rounds, l1=True),
        "l2_hits_l1_off": await _read_paths(legacy_url, new_url, l2_calls, rounds, l1=False),
    }


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "command": " ".join(["python", *sys.argv]),
    }
    with RedisServer() as legacy_server, RedisServer() as new_server:
        result["redis"] = {"legacy": legacy_server.url, "new": new_server.url}
        result["propagation"] = propagation(
            legacy_server.url, new_server.url, args.children, args.flips
        )
        result["dual_write_set"] = asyncio.run(
            dual_write_set(legacy_server.url, new_server.url, args.write_calls, args.rounds)
        )
        if args.rtt_delay_ms > 0:
            with delayed([legacy_server, new_server], args.rtt_delay_ms / 1000) as (lu, nu):
                block = asyncio.run(dual_write_set(lu, nu, args.rtt_write_calls, args.rtt_rounds))
            block["delay_ms_each_way"] = args.rtt_delay_ms
            result["dual_write_set_with_rtt"] = block
        result["read_new_get"] = asyncio.run(
            read_new_get(
                legacy_server.url, new_server.url, args.l1_calls, args.l2_calls, args.rounds
            )
        )
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def text(result: dict[str, Any]) -> str:
    p = result["propagation"]
    lines = [
        f"propagation to {p['children']} processes over {p['flips']} flips "
        f"({p['samples']} samples): p50 {p['p50_ms']} ms, p90 {p['p90_ms']} ms, "
        f"p99 {p['p99_ms']} ms, max {p['max_ms']} ms  [{p['goal']}: "
        f"{'met' if p['met'] else 'NOT met'}]",
    ]
    for label in ("dual_write_set", "dual_write_set_with_rtt"):
        d = result.get(label)
        if d is None:
            continue
        extra = f" (+{d['delay_ms_each_way']} ms each way)" if "delay_ms_each_way" in d else ""
        lines.append(f"{label}{extra}: ratio {d['ratio']}  [{d['goal']}: "
                     f"{'met' if d['met'] else 'NOT met'}]")  # fmt: skip
        lines += [f"  {name:<36} {row['median_ns'] / 1000:8.2f} us  x{row['ratio']}"
                  f"  (CPU {row['cpu_ns'] / 1000:.2f} us)"
                  for name, row in d["paths"].items()]  # fmt: skip
    for label, block in result["read_new_get"].items():
        lines.append(f"read-new get, {label}: ratio {block['ratio']}  [{block['goal']}: "
                     f"{'met' if block['met'] else 'NOT met'}]")  # fmt: skip
        lines += [f"  {name:<36} {row['median_ns'] / 1000:8.2f} us  x{row['ratio']}"
                  for name, row in block["paths"].items()]  # fmt: skip
    lines.append(f"{result['seconds']} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--children", type=int, default=4, help="manager processes (4)")
    parser.add_argument("--flips", type=int, default=50, help="flag flips measured (50)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (15)")
    parser.add_argument("--write-calls", type=int, default=400, help="sets per round (400)")
    parser.add_argument(
        "--rtt-delay-ms",
        type=float,
        default=0.5,
        help="dual write again through latency proxies adding this each way (0.5; 0: skip)",
    )
    parser.add_argument("--rtt-write-calls", type=int, default=100, help="sets per round (100)")
    parser.add_argument("--rtt-rounds", type=int, default=9, help="rounds with latency (9)")
    parser.add_argument("--l1-calls", type=int, default=20_000, help="L1 gets per round")
    parser.add_argument("--l2-calls", type=int, default=400, help="L2 gets per round (400)")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
