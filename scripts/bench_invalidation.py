#!/usr/bin/env python3
"""Cross-process L1 invalidation of resync-hierarchy: delay and write cost.

    python scripts/bench_invalidation.py            # starts a private redis-server
    python scripts/bench_invalidation.py --json     # one JSON document on stdout
    python scripts/bench_invalidation.py --redis-url redis://127.0.0.1:6390/0

A (writer) and B (reader) are separate OS processes (multiprocessing "spawn"),
each with its own asyncio loop and ``CacheHierarchy.from_url(...)`` with
invalidation on, driven by this process over Pipes.

Invalidation delay (goal: p99 < 10 ms on loopback). Per sample, B reads a key
(an L2 hit, promoted: B's L1 holds the old value), then A ``set``s a new value
and reads the clock as soon as ``set`` returned. B reports when its L1 stopped
holding the old value. Delay = B's reading - A's reading, both
``time.clock_gettime_ns(CLOCK_MONOTONIC)`` (system-wide on Linux). ``set``
returns before the PUBLISH is sent (it goes out from a background task on
A's next loop turn), so the delay covers A's publish, Redis' fan-out and B's
receive and eviction. Two ways of seeing B's L1, both reported:
  callback  B's eviction callback (the hierarchy's ``evict`` given to its
            Invalidator) is wrapped; the clock is read right after the
            original returned, when the key is checked to be gone from L1.
            No polling: the exact moment, with no probe cost.
  poll      a task polls ``cache._l1.get(key)`` in a tight loop
            (``await asyncio.sleep(0)`` between looks) until the old value is
            gone. Adds the poller's scheduling, and burns a CPU while it waits.

Write throughput, invalidation on vs off, same run: A writes ``--writes``
distinct keys from ``--concurrency`` tasks, to a cache with invalidation on
(B subscribed to its channel, so each PUBLISH is delivered) and to one with it
off, in interleaved rounds (on/off, then off/on, ...). A round's time runs
until the on-cache has nothing left to publish. Ratio = time on / time off per
round; the median is reported (goal: <= 1.15x). Concurrency 1 is measured
too (no coalescing possible there).

A, B and redis-server share this machine's CPUs. Runtime is bounded
(``--budget``, 50 s by default): phases stop early and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlparse

from resync_hierarchy import MISSING, CacheHierarchy
from resync_hierarchy.testing.redis_server import (
    FORBIDDEN_PORTS,
    RedisServer,
    redis_server_version,
)

NS_LATENCY = "bench-inv-latency"
NS_ON = "bench-inv-on"
NS_OFF = "bench-inv-off"
CHILD_LIFETIME = 120.0  # seconds: a child never outlives this
ANSWER_TIMEOUT = 30.0
PROBE_TIMEOUT = 2.0  # seconds B waits for one eviction before calling the sample lost
VALUE = {"text": "x" * 100, "n": 1}


def now_ns() -> int:
    """System-wide monotonic clock (comparable across processes on Linux)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ================================================================================ children


class Child:
    """State of one child process: its caches and B's eviction probe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.caches: dict[str, CacheHierarchy] = {}
        self.watched: str | None = None
        self.evicted_at: int | None = None
        self.evicted = asyncio.Event()
        self.poller: asyncio.Task[None] | None = None
        self.evict_all_calls = 0

    async def cache(self, namespace: str, invalidation: bool = True) -> CacheHierarchy:
        cache = CacheHierarchy.from_url(self.url, namespace=namespace, invalidation=invalidation)
        await cache.start()
        for _ in range(5000):  # up to ~5 s for the first subscription
            if cache.get_stats()["l1_trusted"]:
                break
            await asyncio.sleep(0.001)
        else:
            raise RuntimeError(f"{namespace}: L1 never trusted (no subscription)")
        self.caches[namespace] = cache
        return cache

    def instrument(self, cache: CacheHierarchy) -> None:
        """Wrap the eviction callbacks the hierarchy gave its Invalidator."""
        invalidator = cache._invalidator
        l1 = cache._l1
        if invalidator is None or l1 is None:
            raise RuntimeError("the latency cache needs L1 and invalidation on")
        evict, evict_all = invalidator._evict, invalidator._evict_all

        def timed_evict(keys: list[str]) -> None:
            evict(keys)
            watched = self.watched
            if watched is not None and self.poller is None and watched in keys:
                if l1.get(watched) is not MISSING:
                    raise AssertionError("evict returned but the key is still in L1")
                self.evicted_at = now_ns()
                self.watched = None
                self.evicted.set()

        def timed_evict_all() -> None:
            evict_all()
            self.evict_all_calls += 1
            if self.watched is not None and self.poller is None:
                self.evicted_at = now_ns()
                self.watched = None
                self.evicted.set()

        invalidator._evict = timed_evict
        invalidator._evict_all = timed_evict_all

    async def arm(self, key: str, probe: str) -> bool:
        """Read ``key`` into L1 (a promotion) and start watching it."""
        cache = self.caches[NS_LATENCY]
        l1 = cache._l1
        if l1 is None:
            raise RuntimeError("the latency cache needs L1")
        old = await cache.get(key)
        if old is None or l1.get(key) is MISSING:
            return False
        self.evicted.clear()
        self.evicted_at = None
        if probe == "callback":
            self.poller = None
            self.watched = key
        else:
            self.watched = key

            async def poll() -> None:
                deadline = time.monotonic() + PROBE_TIMEOUT
                while time.monotonic() < deadline:
                    if l1.get(key) is MISSING:
                        self.evicted_at = now_ns()
                        self.evicted.set()
                        return
                    await asyncio.sleep(0)

            self.poller = asyncio.create_task(poll())
        return True

    async def collect(self) -> int | None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self.evicted.wait()
        except TimeoutError:
            return None
        finally:
            self.watched = None
            if self.poller is not None:
                self.poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.poller
                self.poller = None
        return self.evicted_at

    async def throughput(self, mode: str, writes: int, concurrency: int, tag: str) -> float:
        """Seconds for ``writes`` sets of distinct keys from ``concurrency`` tasks."""
        cache = self.caches[NS_ON if mode == "on" else NS_OFF]
        keys = [f"{tag}:{i}" for i in range(writes)]
        next_index = iter(range(writes))
        invalidator = cache._invalidator

        async def worker() -> None:
            for i in next_index:
                await cache.set(keys[i], VALUE)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if invalidator is not None:  # the round ends when everything is published
            for _ in range(100_000):
                publisher = invalidator._publisher
                if not invalidator._pending and (publisher is None or publisher.done()):
                    break
                await asyncio.sleep(0)
        return time.perf_counter() - started

    async def handle(self, command: str, args: list[Any]) -> Any:
        if command == "open":  # (namespace, invalidation, instrument)
            cache = await self.cache(args[0], args[1])
            if args[2]:
                self.instrument(cache)
            return True
        if command == "set":
            await self.caches[NS_LATENCY].set(args[0], args[1])
            return now_ns()
        if command == "set_many":
            await self.caches[NS_LATENCY].set_many(args[0])
            return True
        if command == "arm":
            return await self.arm(args[0], args[1])
        if command == "collect":
            return await self.collect()
        if command == "throughput":
            return await self.throughput(*args)
        if command == "stats":
            return {ns: cache.get_stats() for ns, cache in self.caches.items()}
        if command == "evict_all_calls":
            return self.evict_all_calls
        if command == "clear":
            for cache in self.caches.values():
                await cache.clear()
            return True
        raise ValueError(f"unknown command {command!r}")

    async def close(self) -> None:
        for cache in self.caches.values():
            await cache.shutdown()


async def child_loop(conn: Connection, url: str) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("stop",))

    child = Child(url)
    loop.add_reader(conn.fileno(), readable)
    try:
        conn.send(("ok", os.getpid()))
        while True:
            command, *args = await inbox.get()
            if command == "stop":
                return
            try:
                result = await child.handle(command, args)
            except Exception:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        await child.close()


def child_main(conn: Connection, url: str) -> None:
    try:
        asyncio.run(asyncio.wait_for(child_loop(conn, url), CHILD_LIFETIME))
    except Exception:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Proc:
    """Parent-side handle of a child."""

    def __init__(self, name: str, url: str) -> None:
        context = mp.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(target=child_main, args=(child, url), name=name)
        self.process.start()
        child.close()
        self.result(60.0)  # started (imports done)

    def send(self, command: str, *args: Any) -> None:
        self.conn.send((command, *args))

    def result(self, timeout: float = ANSWER_TIMEOUT) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name}: no answer within {timeout}s")
        status, payload = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.name} failed:\n{payload}")
        return payload

    def call(self, command: str, *args: Any, timeout: float = ANSWER_TIMEOUT) -> Any:
        self.send(command, *args)
        return self.result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            if self.process.is_alive():
                self.send("stop")
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()


# ================================================================================ parent


def percentiles(samples_ms: list[float]) -> dict[str, float | int]:
    if not samples_ms:
        return {"n": 0}
    ordered = sorted(samples_ms)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {
        "n": len(ordered),
        "p50": round(pct(50), 4),
        "p90": round(pct(90), 4),
        "p99": round(pct(99), 4),
        "max": round(ordered[-1], 4),
        "mean": round(statistics.fmean(ordered), 4),
        "min": round(ordered[0], 4),
    }


def wait_heard(reader: Proc, namespace: str, keys: int, cap: float = 10.0) -> None:
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if reader.call("stats")[namespace]["invalidation"]["received_keys"] >= keys:
            return
        time.sleep(0.005)
    raise RuntimeError(f"B did not hear about {keys} keys within {cap}s")


def measure_delay(
    a: Proc, b: Proc, *, probe: str, samples: int, tag: str, deadline: float
) -> dict[str, Any]:
    keys = [f"{tag}:{i}" for i in range(samples)]
    heard_before = b.call("stats")[NS_LATENCY]["invalidation"]["received_keys"]
    for start in range(0, samples, 500):
        a.call("set_many", dict.fromkeys(keys[start : start + 500], "old"))
    wait_heard(b, NS_LATENCY, heard_before + samples)
    delays: list[float] = []
    lost = skipped = 0
    for key in keys:
        if time.monotonic() > deadline:
            break
        if not b.call("arm", key, probe):
            skipped += 1
            continue
        done = a.call("set", key, "new")
        evicted = b.call("collect")
        if evicted is None:
            lost += 1
            continue
        delays.append((evicted - done) / 1e6)
    result: dict[str, Any] = percentiles(delays)
    result.update(probe=probe, lost=lost, not_armed=skipped, truncated=len(delays) + lost < samples)
    result["goal_p99_ms"] = 10.0
    result["goal_met"] = bool(delays) and result["p99"] < 10.0 and lost == 0
    return result


def measure_throughput(
    a: Proc, rounds: int, writes: int, concurrency: int, deadline: float
) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    ratios: list[float] = []
    a.call("throughput", "on", writes // 4, concurrency, f"warm{concurrency}")  # warm up
    a.call("throughput", "off", writes // 4, concurrency, f"warm{concurrency}")
    for r in range(rounds):
        if time.monotonic() > deadline:
            break
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        took = {
            mode: a.call("throughput", mode, writes, concurrency, f"c{concurrency}r{r}")
            for mode in order
        }
        for mode in order:
            seconds[mode].append(took[mode])
        ratios.append(took["on"] / took["off"])
    if not ratios:
        return {"concurrency": concurrency, "rounds": 0}
    return {
        "concurrency": concurrency,
        "writes_per_round": writes,
        "rounds": len(ratios),
        "on_writes_per_s_median": round(writes / statistics.median(seconds["on"])),
        "off_writes_per_s_median": round(writes / statistics.median(seconds["off"])),
        "ratios_on_over_off": [round(x, 4) for x in ratios],
        "median_ratio": round(statistics.median(ratios), 4),
        "goal_ratio": 1.15,
        "goal_met": statistics.median(ratios) <= 1.15,
    }


def check_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "unix"):
        raise SystemExit(f"--redis-url: redis:// or unix:// only, got {url!r}")
    if parsed.scheme == "redis":
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--redis-url: loopback only (127.0.0.1)")
        if (parsed.port or 6379) in FORBIDDEN_PORTS:
            raise SystemExit("--redis-url: port 6379 is not ours to use")


def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.budget
    procs: list[Proc] = []
    try:
        a = Proc("A", url)
        procs.append(a)
        b = Proc("B", url)
        procs.append(b)
        b.call("open", NS_LATENCY, True, True)
        b.call("open", NS_ON, True, False)  # B subscribed: A's PUBLISHes are delivered
        a.call("open", NS_LATENCY, True, False)
        a.call("open", NS_ON, True, False)
        a.call("open", NS_OFF, False, False)
        probes = ["callback", "poll"] if args.probe == "both" else [args.probe]
        delay: dict[str, Any] = {}
        for index, probe in enumerate(probes):
            # Leave time for the throughput phase: latency gets up to 40% of the budget.
            phase_deadline = started + args.budget * 0.2 * (index + 1) * (2 / len(probes))
            delay[probe] = measure_delay(
                a, b, probe=probe, samples=args.samples, tag=f"d{probe}", deadline=phase_deadline
            )
        throughput = {}
        for index, concurrency in enumerate(args.concurrency):
            phases_left = len(args.concurrency) - index  # share what is left of the budget
            phase_deadline = time.monotonic() + (deadline - time.monotonic()) / phases_left
            throughput[f"concurrency_{concurrency}"] = measure_throughput(
                a, args.rounds, args.writes, concurrency, phase_deadline
            )
        a_stats = a.call("stats")
        b_stats = b.call("stats")
        evict_all_calls = b.call("evict_all_calls")
        if args.redis_url:  # leave someone else's server as it was
            a.call("clear")
    finally:
        for proc in procs:
            proc.stop()
    return {
        "delay_ms": delay,
        "throughput": throughput,
        "counters": {
            "a_published_messages_on": a_stats[NS_ON]["invalidation"]["published_messages"],
            "a_published_keys_on": a_stats[NS_ON]["invalidation"]["published_keys"],
            "b_received_messages_on": b_stats[NS_ON]["invalidation"]["received_messages"],
            "b_gaps": b_stats[NS_LATENCY]["invalidation"]["gaps"],
            "b_resubscribes": b_stats[NS_LATENCY]["invalidation"]["resubscribes"],
            "b_evict_all_calls": evict_all_calls,
        },
        "seconds": round(time.monotonic() - started, 2),
    }


def print_table(report: dict[str, Any]) -> None:
    print(
        f"redis-server {report['redis_version']} on {report['machine']['cpus']} CPUs, "
        f"python {report['machine']['python']}, {report['seconds']} s"
    )
    print("\nInvalidation delay, A's set returned -> B's L1 no longer holds the old value (ms)")
    print(
        f"  {'probe':<9} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'lost':>5}"
        "  goal p99<10"
    )
    for probe, d in report["delay_ms"].items():
        if d.get("n"):
            print(
                f"  {probe:<9} {d['n']:>5} {d['p50']:>8.3f} {d['p90']:>8.3f} {d['p99']:>8.3f} "
                f"{d['max']:>8.3f} {d['lost']:>5}  {'met' if d['goal_met'] else 'NOT met'}"
                f"{' (truncated)' if d['truncated'] else ''}"
            )
    print("\nWrite throughput, invalidation on vs off (interleaved rounds)")
    for name, t in report["throughput"].items():
        if not t.get("rounds"):
            print(f"  {name}: no rounds within the budget")
            continue
        print(
            f"  {name}: on {t['on_writes_per_s_median']}/s, off {t['off_writes_per_s_median']}/s, "
            f"median ratio on/off {t['median_ratio']:.3f}x over {t['rounds']} rounds  "
            f"goal <= 1.15x {'met' if t['goal_met'] else 'NOT met'}"
        )
        print(f"    per round: {', '.join(f'{x:.3f}' for x in t['ratios_on_over_off'])}")
    c = report["counters"]
    print(
        f"\nA published {c['a_published_keys_on']} keys in {c['a_published_messages_on']} "
        f"messages (on-cache); B: gaps {c['b_gaps']}, resubscribes {c['b_resubscribes']}, "
        f"whole-L1 evictions {c['b_evict_all_calls']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--redis-url", help="use this Redis (loopback, not 6379) instead of a private one"
    )
    parser.add_argument("--samples", type=int, default=2000, help="delay samples per probe")
    parser.add_argument("--probe", choices=["callback", "poll", "both"], default="both")
    parser.add_argument("--writes", type=int, default=4000, help="writes per throughput round")
    parser.add_argument("--rounds", type=int, default=8, help="throughput rounds per side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 8, 1])
    parser.add_argument("--budget", type=float, default=50.0, help="seconds for everything")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    server: RedisServer | None = None
    try:
        if args.redis_url:
            check_url(args.redis_url)
            url = args.redis_url
        else:
            server = RedisServer().start()
            url = server.url
        report = run(args, url)
    finally:
        if server is not None:
            server.stop()
    report = {
        "redis_version": redis_server_version() if server is not None else "external",
        "redis_url": "private" if server is not None else args.redis_url,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        **report,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)


if __name__ == "__main__":
    main()
