"""``resync-hierarchy bench``: the load scenario that validates a cache before it takes traffic.

What it does
------------
Up to 2,000 worker tasks drive the cache for ``--duration`` seconds:

* **open loop** (default, ``--mode open``): request *i* is *scheduled* at
  ``t0 + i / rate``. Worker *w* of *C* handles requests ``w, w + C, w + 2C, ...``
  (the wrk2 scheme): it sleeps until a request's scheduled time if it is early
  and starts it at once if it is late. Latency is measured from the
  **scheduled** time to completion, so a system that cannot keep up shows its
  queueing in the percentiles instead of hiding it (no coordinated omission).
  Requests that were due before the end but never started because the workers
  were behind are reported as ``unsent``.
* **closed loop** (``--mode closed``): every worker issues requests back to
  back; the throughput is the most this cache sustains at this concurrency.
  Latency is measured from each request's actual start.

Keys are ``k:<n>`` drawn from a Zipf distribution (``--zipf-s``, default 0.99)
over ``--keyspace`` keys; ranks are permuted so the hot keys are spread over
the key names (and so over L1's lock stripes). A request is a read with
probability ``--read-share``: ``get_or_set(key, loader, ttl)``, where the
loader simulates the source of truth (it sleeps ``--backend-delay-ms`` and
returns a value of about ``--value-size`` bytes); otherwise a write:
``set(key, value, ttl)``. Any exception from the cache counts as an error (by
type, with the first few messages) and never stops the bench.

Results
-------
Throughput (completed requests / measured seconds), latency mean and
p50/p95/p99/max (nearest-rank percentiles over every sample), L1 and L2 hit
ratios and the miss ratio (shares of the reads, from ``get_stats()`` deltas
over the measured window), errors, starved tasks, and the SLA checks
(mean < 10 ms, p95 < 50 ms, error rate < 0.1 %, and L2 error rate < 0.1 %:
the cache hides Redis failures from callers, so without that check a run
against a dead Redis would pass). Exit status 0 when every SLA check passes,
1 otherwise.

A task is *starved* when, in some full 1-second window of the measured run,
it completed nothing although it had work due for at least half a second of
that window (closed loop: it always has work due).

Everything is bounded: workers stop issuing at the end of the duration;
requests still in flight get at most ``drain`` seconds (5 s) and are then
cancelled and counted as errors.

Backend: ``--redis-url`` (or ``$REDIS_URL``) for a real Redis; otherwise an
embedded in-process fakeredis serves as L2 (``pip install
'resync-hierarchy[embedded]'``), and the output says so. The bench namespace
(``--namespace``, default ``bench``) is cleared before and after the run
unless ``--no-clear``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Literal, Protocol

from resync_hierarchy.errors import BackendUnavailableError, ConfigurationError
from resync_hierarchy.observe.metrics import serve_http

__all__ = [
    "EMBEDDED_DESCRIPTION",
    "MAX_CONCURRENCY",
    "BenchCache",
    "BenchOptions",
    "LoadResult",
    "ZipfSampler",
    "add_arguments",
    "build_cache",
    "build_document",
    "format_text",
    "options_from_args",
    "percentile",
    "run",
    "run_load",
]

MAX_CONCURRENCY = 2000
MAX_KEYSPACE = 10_000_000
MAX_VALUE_SIZE = 512 * 1024
EMBEDDED_DESCRIPTION = "embedded fakeredis (in-process, no server)"

SLA_MEAN_MS = 10.0
SLA_P95_MS = 50.0
SLA_ERROR_RATE = 0.001  # 0.1 %

_ERROR_SAMPLES = 5  # distinct error messages kept for the report
_KEEP_UP_SHARE = 0.95  # open loop: below this share of the target rate, say it could not keep up
_PROGRESS_INTERVAL = 0.25
_STARVED_DUE_SLACK = 0.5  # seconds of a window a request must have been due to count as starvation
_VALUE_OVERHEAD = 32  # approximate msgpack bytes of the value dict besides its payload

Mode = Literal["open", "closed"]


class BenchCache(Protocol):
    """What the bench needs of a cache (a CacheHierarchy, or a fake in tests)."""

    async def get_or_set(
        self, key: str, factory: Callable[[], Awaitable[Any]], ttl: float | None = None
    ) -> Any: ...

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    def get_stats(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """Every setting of one bench run, validated when built (ConfigurationError)."""

    duration: float = 8.0
    concurrency: int = 500
    rate: float = 5_000.0
    mode: Mode = "open"
    keyspace: int = 100_000
    zipf_s: float = 0.99
    read_share: float = 0.9
    value_size: int = 200
    backend_delay_ms: float = 2.0
    ttl: float = 300.0
    seed: int = 1
    warmup: float = 2.0
    l1_max_entries: int | None = None  # None: 10 % of the keyspace
    clear: bool = True
    drain: float = 5.0

    def __post_init__(self) -> None:
        _check_number("duration", self.duration, low=0.0, low_open=True, high=86_400.0)
        _check_int("concurrency", self.concurrency, low=1, high=MAX_CONCURRENCY)
        _check_number("rate", self.rate, low=0.0, low_open=True, high=10_000_000.0)
        if self.mode not in ("open", "closed"):
            raise ConfigurationError(f"bench mode must be 'open' or 'closed', got {self.mode!r}")
        _check_int("keyspace", self.keyspace, low=1, high=MAX_KEYSPACE)
        _check_number("zipf-s", self.zipf_s, low=0.0, high=10.0)
        _check_number("read-share", self.read_share, low=0.0, high=1.0)
        _check_int("value-size", self.value_size, low=1, high=MAX_VALUE_SIZE)
        _check_number("backend-delay-ms", self.backend_delay_ms, low=0.0, high=60_000.0)
        _check_number("ttl", self.ttl, low=0.0, low_open=True, high=10.0**9)
        _check_int("seed", self.seed, low=-(2**63), high=2**63)
        _check_number("warmup", self.warmup, low=0.0, high=3_600.0)
        if self.l1_max_entries is not None:
            _check_int("l1-max-entries", self.l1_max_entries, low=0, high=10**9)
        _check_number("drain", self.drain, low=0.0, low_open=True, high=3_600.0)

    @property
    def effective_l1_max_entries(self) -> int:
        """``l1_max_entries``, or 10 % of the keyspace (at least 1) when not given."""
        if self.l1_max_entries is not None:
            return self.l1_max_entries
        return max(1, self.keyspace // 10)


def _check_number(
    name: str, value: object, *, low: float, high: float, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"bench --{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        lower = f"> {low:g}" if low_open else f">= {low:g}"
        raise ConfigurationError(f"bench --{name} must be {lower} and <= {high:g}, got {value:g}")


def _check_int(name: str, value: object, *, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"bench --{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigurationError(f"bench --{name} must be between {low} and {high}, got {value}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench-specific options (the lead's parser adds --redis-url, --namespace, --json)."""
    d = BenchOptions()
    parser.add_argument(
        "--duration",
        type=float,
        default=d.duration,
        metavar="S",
        help=f"measured seconds of load (default {d.duration:g})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        metavar="N",
        help=f"worker tasks, 1-{MAX_CONCURRENCY} (default {d.concurrency})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        metavar="RPS",
        help=f"open loop: target requests per second (default {d.rate:g})",
    )
    parser.add_argument(
        "--mode",
        choices=("open", "closed"),
        default=d.mode,
        help="open: fixed target rate, latency from each request's scheduled start; "
        "closed: back-to-back requests, finds the maximum throughput (default open)",
    )
    parser.add_argument(
        "--keyspace",
        type=int,
        default=d.keyspace,
        metavar="N",
        help=f"distinct keys (default {d.keyspace})",
    )
    parser.add_argument(
        "--zipf-s",
        type=float,
        default=d.zipf_s,
        metavar="S",
        help=f"Zipf exponent of key popularity, 0 = uniform (default {d.zipf_s:g})",
    )
    parser.add_argument(
        "--read-share",
        type=float,
        default=d.read_share,
        metavar="F",
        help=f"share of reads, 0-1; the rest are writes (default {d.read_share:g})",
    )
    parser.add_argument(
        "--value-size",
        type=int,
        default=d.value_size,
        metavar="BYTES",
        help=f"approximate size of each value (default {d.value_size})",
    )
    parser.add_argument(
        "--backend-delay-ms",
        type=float,
        default=d.backend_delay_ms,
        metavar="MS",
        help="simulated source-of-truth latency of a miss's loader "
        f"(default {d.backend_delay_ms:g})",
    )
    parser.add_argument(
        "--ttl",
        type=float,
        default=d.ttl,
        metavar="S",
        help=f"TTL of every value written (default {d.ttl:g})",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    parser.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        metavar="S",
        help=f"unmeasured seconds of load before the measured run (default {d.warmup:g})",
    )
    parser.add_argument(
        "--l1-max-entries",
        type=int,
        default=None,
        metavar="N",
        help="L1 size in entries (default: 10%% of the keyspace)",
    )
    parser.add_argument("--l1-off", action="store_true", help="turn L1 off (every read goes to L2)")
    parser.add_argument(
        "--no-clear",
        action="store_true",
        help="do not clear the bench namespace before and after the run",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="N",
        help="serve this process's Prometheus metrics on port N while the bench runs",
    )
    parser.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 in a container)",
    )


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """BenchOptions from parsed arguments; attributes not present take their defaults."""
    d = BenchOptions()
    l1: int | None = getattr(args, "l1_max_entries", None)
    if getattr(args, "l1_off", False):
        l1 = 0
    return BenchOptions(
        duration=getattr(args, "duration", d.duration),
        concurrency=getattr(args, "concurrency", d.concurrency),
        rate=getattr(args, "rate", d.rate),
        mode=getattr(args, "mode", d.mode),
        keyspace=getattr(args, "keyspace", d.keyspace),
        zipf_s=getattr(args, "zipf_s", d.zipf_s),
        read_share=getattr(args, "read_share", d.read_share),
        value_size=getattr(args, "value_size", d.value_size),
        backend_delay_ms=getattr(args, "backend_delay_ms", d.backend_delay_ms),
        ttl=getattr(args, "ttl", d.ttl),
        seed=getattr(args, "seed", d.seed),
        warmup=getattr(args, "warmup", d.warmup),
        l1_max_entries=l1,
        clear=not getattr(args, "no_clear", False),
    )


# ---------------------------------------------------------------------------- keys


class ZipfSampler:
    """Keys ``k:<n>`` with Zipf(s) popularity over ``n`` keys: O(log n) per draw.

    Rank r (1 = hottest) has weight ``1 / r**s``. The normalized CDF is
    precomputed (an ``array('d')``) and a draw is one bisection. Ranks map to
    key names through a seeded permutation, so the hottest key is not ``k:0``
    and hot keys are spread over the key space.
    """

    __slots__ = ("_cdf", "_names", "n", "s")

    def __init__(self, n: int, s: float = 0.99, *, seed: int = 1) -> None:
        if n < 1:
            raise ConfigurationError(f"keyspace must be >= 1, got {n}")
        self.n = n
        self.s = s
        cdf = array("d", bytes(8 * n))
        total = 0.0
        for rank in range(1, n + 1):
            total += rank**-s
            cdf[rank - 1] = total
        for index in range(n):
            cdf[index] /= total
        cdf[n - 1] = 1.0
        self._cdf = cdf
        names = array("q", range(n))
        permute = random.Random(seed)  # noqa: S311 - load generation, not cryptography
        permute.shuffle(names)
        self._names = names

    def rank(self, rng: random.Random) -> int:
        """A rank in ``1..n`` (1 is the most popular)."""
        return min(bisect.bisect_right(self._cdf, rng.random()), self.n - 1) + 1

    def key_of(self, rank: int) -> str:
        """The key name of ``rank``."""
        return f"k:{self._names[rank - 1]}"

    def key(self, rng: random.Random) -> str:
        """A key drawn by popularity."""
        return f"k:{self._names[min(bisect.bisect_right(self._cdf, rng.random()), self.n - 1)]}"


# ---------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    """Raw outcome of the measured phase of :func:`run_load`."""

    mode: Mode
    target_rps: float | None
    concurrency: int
    duration_s: float  # measured seconds: start of the run to the last worker's end
    planned_duration_s: float
    reads: int = 0
    writes: int = 0
    errors: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    service: array[float] = field(default_factory=lambda: array("d"))  # from actual start
    scheduled: int = 0  # open loop: requests due within the duration
    unsent: int = 0  # open loop: due but never started (workers behind schedule)
    cancelled_at_drain: int = 0
    starved_tasks: int = 0
    stats_before: dict[str, Any] = field(default_factory=dict)
    stats_after: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.reads + self.writes


class _Phase:
    """One timed run of the worker pool (warm-up or measured)."""

    def __init__(
        self,
        cache: BenchCache,
        options: BenchOptions,
        sampler: ZipfSampler,
        *,
        duration: float,
        seed_offset: int,
    ) -> None:
        self.cache = cache
        self.options = options
        self.sampler = sampler
        self.duration = duration
        self.seed_offset = seed_offset
        self.read_share = options.read_share
        self.ttl = options.ttl
        self.delay = options.backend_delay_ms / 1000.0
        self.payload = "x" * max(0, options.value_size - _VALUE_OVERHEAD)
        self.windows = max(1, math.ceil(duration)) + 1
        concurrency = options.concurrency
        self.counts = [[0] * self.windows for _ in range(concurrency)]
        self.latencies: array[float] = array("d")
        self.service: array[float] = array("d")
        self.reads = 0
        self.writes = 0
        self.errors = 0
        self.error_types: Counter[str] = Counter()
        self.error_samples: list[str] = []
        self.issued = 0
        self.cancelled = 0
        self.version = 0
        self.t0 = 0.0
        self.end = 0.0

    @property
    def completed(self) -> int:
        return self.reads + self.writes

    def _value(self, key: str) -> dict[str, Any]:
        self.version += 1
        return {"key": key, "n": self.version, "payload": self.payload}

    def _loader(self, key: str) -> Callable[[], Awaitable[Any]]:
        delay = self.delay

        async def load() -> dict[str, Any]:
            if delay > 0:
                await asyncio.sleep(delay)
            return self._value(key)

        return load

    def _error(self, exc: BaseException, message: str | None = None) -> None:
        self.errors += 1
        name = type(exc).__name__
        self.error_types[name] += 1
        if len(self.error_samples) < _ERROR_SAMPLES:
            text = f"{name}: {message if message is not None else exc}"[:300]
            if text not in self.error_samples:
                self.error_samples.append(text)

    async def _request(self, worker: int, rng: random.Random, start: float) -> None:
        """One request; its latency counts from ``start`` (open loop: the scheduled time)."""
        began = time.perf_counter()
        key = self.sampler.key(rng)
        is_read = rng.random() < self.read_share
        self.issued += 1
        try:
            if is_read:
                await self.cache.get_or_set(key, self._loader(key), self.ttl)
            else:
                await self.cache.set(key, self._value(key), self.ttl)
        except asyncio.CancelledError as exc:
            # Still in flight after the drain: a failed request; its latency is a lower bound.
            self.cancelled += 1
            self._error(exc, "request still in flight when the bench's drain time ran out")
            self._completed(worker, is_read, start, began)
            raise
        except Exception as exc:
            self._error(exc)
        self._completed(worker, is_read, start, began)

    def _completed(self, worker: int, is_read: bool, start: float, began: float) -> None:
        done = time.perf_counter()
        self.latencies.append(max(0.0, done - start))
        self.service.append(done - began)
        if is_read:
            self.reads += 1
        else:
            self.writes += 1
        window = int(done - self.t0)
        if 0 <= window < self.windows:
            self.counts[worker][window] += 1

    def _rng(self, worker: int) -> random.Random:
        seed = (self.options.seed * 1_000_003 + self.seed_offset) * 4099 + worker
        return random.Random(seed)  # noqa: S311 - load generation, not cryptography

    async def _open_worker(self, worker: int) -> None:
        rng = self._rng(worker)
        rate = self.options.rate
        stride = self.options.concurrency
        t0 = self.t0
        end = self.end
        index = worker
        while True:
            scheduled = t0 + index / rate
            if scheduled >= end:
                return
            now = time.perf_counter()
            if now >= end:
                return  # behind schedule: the rest is reported as unsent
            # Yield even when late, so that L1 hits (which never suspend) cannot
            # monopolize the event loop.
            await asyncio.sleep(scheduled - now if scheduled > now else 0)
            await self._request(worker, rng, scheduled)
            index += stride

    async def _closed_worker(self, worker: int) -> None:
        rng = self._rng(worker)
        end = self.end
        while True:
            await asyncio.sleep(0)
            start = time.perf_counter()
            if start >= end:
                return
            await self._request(worker, rng, start)

    async def run(self, progress: _Progress | None) -> float:
        """Run the pool for the duration (+ a bounded drain); return the measured seconds."""
        options = self.options
        worker = self._open_worker if options.mode == "open" else self._closed_worker
        self.t0 = time.perf_counter()
        self.end = self.t0 + self.duration
        tasks = [
            asyncio.create_task(worker(w), name=f"bench-worker-{w}")
            for w in range(options.concurrency)
        ]
        ticker = (
            asyncio.create_task(progress.tick_until_done(self), name="bench-progress")
            if progress is not None
            else None
        )
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.duration + options.drain)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
        elapsed = time.perf_counter() - self.t0
        for outcome in results:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):  # a bug in the bench itself: report it, never hide it
                self._error(outcome)
        return elapsed

    def scheduled_total(self) -> int:
        """Open loop: requests due within the duration (index / rate < duration)."""
        return math.ceil(self.duration * self.options.rate)

    def starved(self) -> int:
        """Workers that completed nothing in some full 1-second window while work was due."""
        full_windows = math.floor(self.duration)
        open_loop = self.options.mode == "open"
        rate = self.options.rate
        stride = self.options.concurrency
        starved = 0
        for worker, counts in enumerate(self.counts):
            done_before = 0
            for window in range(full_windows):
                if counts[window] == 0:
                    if not open_loop:
                        starved += 1
                        break
                    due_by = (window + _STARVED_DUE_SLACK) * rate - worker
                    due = max(0, math.ceil(due_by / stride))
                    if due > done_before:
                        starved += 1
                        break
                done_before += counts[window]
        return starved


class _Progress:
    """A one-line progress bar on a terminal (``\\r``-updated about 4 times a second)."""

    def __init__(self, stream: IO[str], *, label: str = "bench") -> None:
        self.stream = stream
        self.label = label

    async def tick_until_done(self, phase: _Phase) -> None:
        last_done = 0
        last_time = time.perf_counter()
        try:
            while True:
                await asyncio.sleep(_PROGRESS_INTERVAL)
                now = time.perf_counter()
                done = phase.completed
                rate = (done - last_done) / max(now - last_time, 1e-9)
                last_done, last_time = done, now
                self._draw(phase, now, done, rate)
        finally:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def _draw(self, phase: _Phase, now: float, done: int, rate: float) -> None:
        total = phase.duration
        elapsed = min(now - phase.t0, total)
        width = 24
        filled = int(width * elapsed / total) if total > 0 else width
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {elapsed:5.1f}/{total:.1f}s "
            f"{done:>10,} req {rate:>10,.0f} req/s"
        )
        self.stream.flush()


async def run_load(
    cache: BenchCache,
    options: BenchOptions,
    *,
    progress: IO[str] | None = None,
    sampler: ZipfSampler | None = None,
) -> LoadResult:
    """Drive ``cache`` as ``options`` say: an optional warm-up, then the measured run.

    ``cache`` is anything with ``get_or_set``, ``set`` and ``get_stats``.
    ``progress``: a stream for the progress bar (None: no bar). Never raises
    because the cache raises: those are counted as errors.
    """
    if sampler is None:
        sampler = ZipfSampler(options.keyspace, options.zipf_s, seed=options.seed)
    if options.warmup > 0:
        warm = _Phase(cache, options, sampler, duration=options.warmup, seed_offset=1)
        bar = _Progress(progress, label="warm-up") if progress is not None else None
        await warm.run(bar)
    phase = _Phase(cache, options, sampler, duration=options.duration, seed_offset=0)
    stats_before = dict(cache.get_stats())
    bar = _Progress(progress, label="bench  ") if progress is not None else None
    elapsed = await phase.run(bar)
    stats_after = dict(cache.get_stats())
    open_loop = options.mode == "open"
    scheduled = phase.scheduled_total() if open_loop else 0
    return LoadResult(
        mode=options.mode,
        target_rps=options.rate if open_loop else None,
        concurrency=options.concurrency,
        duration_s=elapsed,
        planned_duration_s=options.duration,
        reads=phase.reads,
        writes=phase.writes,
        errors=phase.errors,
        error_types=phase.error_types,
        error_samples=phase.error_samples,
        latencies=phase.latencies,
        service=phase.service,
        scheduled=scheduled,
        unsent=max(0, scheduled - phase.issued) if open_loop else 0,
        cancelled_at_drain=phase.cancelled,
        starved_tasks=phase.starved(),
        stats_before=stats_before,
        stats_after=stats_after,
    )


# ---------------------------------------------------------------------------- report


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ascending ``sorted_values``: the smallest value
    such that at least ``p`` percent of the values are <= it (0.0 when empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * n))
    return float(sorted_values[min(rank, n) - 1])


def _summary_ms(sorted_seconds: Sequence[float]) -> dict[str, float]:
    count = len(sorted_seconds)
    mean = math.fsum(sorted_seconds) / count if count else 0.0
    return {
        "mean": round(mean * 1000, 4),
        "p50": round(percentile(sorted_seconds, 50) * 1000, 4),
        "p95": round(percentile(sorted_seconds, 95) * 1000, 4),
        "p99": round(percentile(sorted_seconds, 99) * 1000, 4),
        "max": round((sorted_seconds[-1] if count else 0.0) * 1000, 4),
    }


def _delta(result: LoadResult, name: str) -> int:
    after = result.stats_after.get(name, 0)
    before = result.stats_before.get(name, 0)
    if not isinstance(after, int) or not isinstance(before, int):
        return 0
    return max(0, after - before)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


def build_document(
    result: LoadResult,
    options: BenchOptions,
    *,
    backend: str,
    embedded: bool,
    namespace: str = "bench",
    l2_health: str | None = None,
) -> dict[str, Any]:
    """The bench's JSON document (also the source of the text report)."""
    latencies = sorted(result.latencies)
    latency_ms = _summary_ms(latencies)
    mean_s = latency_ms["mean"] / 1000
    requests = result.requests
    reads = result.reads
    duration = result.duration_s
    throughput = requests / duration if duration > 0 else 0.0
    l1_hits = _delta(result, "l1_hits")
    l2_hits = _delta(result, "l2_hits")
    misses = _delta(result, "misses")
    joined = _delta(result, "loads_joined")
    # Calls refused by an open circuit breaker failed to reach L2 just the same.
    l2_errors = _delta(result, "l2_errors") + _delta(result, "l2_short_circuited")
    error_rate = _ratio(result.errors, requests)
    l2_error_rate = _ratio(l2_errors, requests)
    mean_ms = mean_s * 1000
    p95_ms = percentile(latencies, 95) * 1000
    sla = {
        "mean_lt_10ms": {
            "value": round(mean_ms, 4),
            "limit": SLA_MEAN_MS,
            "unit": "ms",
            "pass": mean_ms < SLA_MEAN_MS,
        },
        "p95_lt_50ms": {
            "value": round(p95_ms, 4),
            "limit": SLA_P95_MS,
            "unit": "ms",
            "pass": p95_ms < SLA_P95_MS,
        },
        "error_rate_lt_0.1pct": {
            "value": round(error_rate, 6),
            "limit": SLA_ERROR_RATE,
            "unit": "ratio",
            "pass": error_rate < SLA_ERROR_RATE and requests > 0,
        },
        # The cache absorbs L2 failures, so callers see no errors while Redis is
        # down; a cache about to take traffic must not pass on a dead L2.
        "l2_error_rate_lt_0.1pct": {
            "value": round(l2_error_rate, 6),
            "limit": SLA_ERROR_RATE,
            "unit": "ratio",
            "pass": l2_error_rate < SLA_ERROR_RATE,
        },
    }
    passed = all(check["pass"] for check in sla.values())
    achieved = (
        throughput / result.target_rps
        if result.target_rps is not None and result.target_rps
        else None
    )
    warnings: list[str] = []
    if requests == 0:
        warnings.append("no request completed")
    if achieved is not None and achieved < _KEEP_UP_SHARE:
        warnings.append(
            f"the system could not keep up: {throughput:,.0f} req/s achieved of "
            f"{result.target_rps:,.0f} req/s targeted ({achieved:.1%}); "
            f"{result.unsent:,} due requests were never sent"
        )
    if l2_errors:
        warnings.append(
            f"{l2_errors:,} L2 operations failed (absorbed by the cache: reads fell back "
            "to L1/the loader, writes applied to L1 only)"
        )
    if l2_health not in (None, "ok", "disabled"):
        warnings.append(f"cache health at start was {l2_health!r}: L2 is not answering")
    if result.starved_tasks:
        warnings.append(
            f"{result.starved_tasks} of {result.concurrency} tasks completed nothing in "
            "some 1-second window while work was due"
        )
    config = asdict(options)
    config.pop("l1_max_entries", None)
    config["l1_max_entries"] = options.effective_l1_max_entries
    config["namespace"] = namespace
    return {
        "backend": backend,
        "embedded": embedded,
        "mode": result.mode,
        "config": config,
        "requests": requests,
        "reads": reads,
        "writes": result.writes,
        "errors": result.errors,
        "error_rate": round(error_rate, 6),
        "error_types": dict(result.error_types),
        "error_samples": list(result.error_samples),
        "duration_s": round(duration, 4),
        "throughput_rps": round(throughput, 2),
        "target_rps": result.target_rps,
        "achieved_share": round(achieved, 4) if achieved is not None else None,
        "scheduled": result.scheduled if result.mode == "open" else None,
        "unsent": result.unsent,
        "cancelled_at_drain": result.cancelled_at_drain,
        "latency_ms": latency_ms,
        "latency_percentile_method": "nearest-rank",
        "latency_from": "scheduled start" if result.mode == "open" else "actual start",
        "service_ms": _summary_ms(sorted(result.service)),
        "l1_hit_ratio": round(_ratio(l1_hits, reads), 6),
        "l2_hit_ratio": round(_ratio(l2_hits, reads), 6),
        "miss_ratio": round(_ratio(misses, reads), 6),
        "coalesced_ratio": round(_ratio(joined, reads), 6),
        "l1_hits": l1_hits,
        "l2_hits": l2_hits,
        "misses": misses,
        "loads_joined": joined,
        "l2_errors": l2_errors,
        "l2_health_at_start": l2_health,
        "starved_tasks": result.starved_tasks,
        "tasks": result.concurrency,
        "sla": sla,
        "passed": passed,
        "warnings": warnings,
    }


_STAT_KEYS = ("mean", "p50", "p95", "p99", "max")


def _pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def format_text(doc: dict[str, Any]) -> str:
    """A readable report of a :func:`build_document` document."""
    cfg = doc["config"]
    lat = doc["latency_ms"]
    lines = [f"backend: {doc['backend']}"]
    if doc["embedded"]:
        lines.append(
            "  (no --redis-url or REDIS_URL given: L2 is an in-process fakeredis; "
            "pass --redis-url to bench a real Redis)"
        )
    rate = f"rate={cfg['rate']:,.0f}/s " if doc["mode"] == "open" else ""
    lines += [
        f"config:  mode={doc['mode']} {rate}concurrency={cfg['concurrency']} "
        f"duration={cfg['duration']:g}s warmup={cfg['warmup']:g}s namespace={cfg['namespace']}",
        f"         keyspace={cfg['keyspace']:,} zipf_s={cfg['zipf_s']:g} "
        f"read_share={cfg['read_share']:g} value_size={cfg['value_size']}B "
        f"backend_delay={cfg['backend_delay_ms']:g}ms ttl={cfg['ttl']:g}s "
        f"l1_max_entries={cfg['l1_max_entries']:,} seed={cfg['seed']}",
        "",
    ]
    throughput = f"{doc['throughput_rps']:,.0f} req/s"
    if doc["target_rps"] is not None:
        throughput += (
            f"  (target {doc['target_rps']:,.0f} req/s, {doc['achieved_share']:.1%} achieved)"
        )
    else:
        throughput += "  (closed loop: the most this cache sustains at this concurrency)"
    lines += [
        f"throughput      {throughput}",
        f"requests        {doc['requests']:,} in {doc['duration_s']:.2f}s "
        f"(reads {doc['reads']:,}, writes {doc['writes']:,})"
        + (f", unsent {doc['unsent']:,}" if doc["mode"] == "open" else ""),
        f"latency (ms)    from {doc['latency_from']} (service: from actual start), "
        "nearest-rank percentiles",
        "                    mean       p50       p95       p99       max",
        "  latency     " + "".join(f"{lat[k]:>10.3f}" for k in _STAT_KEYS),
        "  service     " + "".join(f"{doc['service_ms'][k]:>10.3f}" for k in _STAT_KEYS),
        f"hit ratios      L1 {doc['l1_hit_ratio']:.1%}   L2 {doc['l2_hit_ratio']:.1%}   "
        f"miss {doc['miss_ratio']:.1%}   coalesced {doc['coalesced_ratio']:.1%}  (of reads)",
        f"errors          {doc['errors']:,} ({doc['error_rate']:.3%})",
    ]
    for name, count in sorted(doc["error_types"].items(), key=lambda item: -item[1]):
        lines.append(f"                  {count:,} x {name}")
    lines.extend(f"                  e.g. {sample}" for sample in doc["error_samples"])
    lines += [
        f"l2 errors       {doc['l2_errors']:,} (absorbed by the cache)",
        f"starved tasks   {doc['starved_tasks']} of {doc['tasks']}",
        "",
        "SLA",
    ]
    labels = {
        "mean_lt_10ms": "mean latency < 10 ms",
        "p95_lt_50ms": "p95 latency < 50 ms",
        "error_rate_lt_0.1pct": "error rate < 0.1%",
        "l2_error_rate_lt_0.1pct": "L2 error rate < 0.1%",
    }
    for name, check in doc["sla"].items():
        value = f"{check['value']:.3f} ms" if check["unit"] == "ms" else f"{check['value']:.3%}"
        lines.append(f"  {labels.get(name, name):<24}{value:>14}   {_pf(check['pass'])}")
    lines.extend(f"warning: {warning}" for warning in doc["warnings"])
    verdict = _pf(doc["passed"])
    if doc["warnings"]:
        count = len(doc["warnings"])
        verdict += f" (with {count} warning{'s' if count > 1 else ''}, see above)"
    lines += ["", f"verdict: {verdict}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command


def build_cache(url: str | None, namespace: str, options: BenchOptions) -> tuple[Any, str, bool]:
    """(cache, backend description, embedded?) for ``url``, or the embedded default."""
    from resync_hierarchy.config import HierarchyConfig
    from resync_hierarchy.hierarchy import CacheHierarchy

    settings: dict[str, Any] = {
        "namespace": namespace,
        "default_ttl": options.ttl,
        "l1_max_entries": options.effective_l1_max_entries,
    }
    if url:
        cache = CacheHierarchy.from_url(url, **settings)
        return cache, cache.config.redacted_url, False
    try:
        import fakeredis
    except ImportError as exc:
        raise BackendUnavailableError(
            "bench without --redis-url runs on an embedded in-process Redis (fakeredis), "
            "which is not installed: pip install 'resync-hierarchy[embedded]', "
            "or pass --redis-url redis://HOST:PORT/DB (or set REDIS_URL)"
        ) from exc
    from resync_hierarchy.l2.redis import RedisL2

    l2 = RedisL2(fakeredis.aioredis.FakeRedis(), description=EMBEDDED_DESCRIPTION)
    cache = CacheHierarchy(HierarchyConfig(url="memory://", **settings), l2=l2)
    return cache, EMBEDDED_DESCRIPTION, True


def _serve_metrics(port: int, addr: str) -> None:
    if not 0 < port < 65536:
        raise ConfigurationError(f"--metrics-port must be 1-65535, got {port}")
    try:
        serve_http(port, addr=addr)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}; "
            "choose a free --metrics-port"
        ) from exc


async def run(args: argparse.Namespace) -> int:
    """``resync-hierarchy bench``: 0 if every SLA check passed, 1 otherwise."""
    options = options_from_args(args)
    url: str | None = getattr(args, "redis_url", None) or os.environ.get("REDIS_URL") or None
    namespace: str = getattr(args, "namespace", None) or "bench"
    as_json = bool(getattr(args, "json", False))
    show_progress = not as_json and not getattr(args, "no_progress", False) and sys.stderr.isatty()
    cache, backend, embedded = build_cache(url, namespace, options)
    metrics_port = getattr(args, "metrics_port", None)
    if metrics_port is not None:
        _serve_metrics(metrics_port, getattr(args, "metrics_addr", "127.0.0.1"))
    if not as_json:
        print(f"bench: running on {backend} for {options.duration:g}s", file=sys.stderr)
    async with cache:
        health = await cache.health()
        l2_status = health.get("l2", {}).get("status")
        if options.clear:
            await cache.clear()
        try:
            result = await run_load(cache, options, progress=sys.stderr if show_progress else None)
        finally:
            if options.clear:
                await cache.clear()
    doc = build_document(
        result,
        options,
        backend=backend,
        embedded=embedded,
        namespace=namespace,
        l2_health=l2_status if isinstance(l2_status, str) else None,
    )
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(format_text(doc))
    return 0 if doc["passed"] else 1
