"""Chaos scenarios: Redis misbehaving under load, and what the cache must still do.

Each scenario is ``async def scenario_x(target: ChaosTarget) -> ScenarioReport``. The
same code runs in the test suite (``tests/chaos``, one private ``redis-server`` per
test) and as an operator's rehearsal (``scripts/chaos.py``). A scenario never
raises for a failed expectation: it records checks and measurements in its
:class:`ScenarioReport`, whose ``passed`` is True only when every check held.

The pass criteria, checked by every scenario that applies them:

* no exception reaches a caller of ``get``/``set``/``delete``;
* every call returns within ``l2_timeout + call_allowance`` (100 ms);
* the breaker opens during an outage and is closed again within
  ``breaker_reset_timeout + recovery_allowance`` (1 s) of Redis coming back;
* after recovery, no write or delete acknowledged during the outage is lost, and
  no value older than a later acknowledged write is served (checked during the
  run by reading each key back from the cache that wrote it, and afterwards by
  reading every key through a fresh cache with L1 off, i.e. from Redis itself).

The load (:class:`LoadDriver`): ``tasks`` concurrent tasks (200), each the only
writer of its own ``keys_per_task`` keys, so every key has a well-defined last
acknowledged write, recorded in a ledger. Each task loops over a bounded number
of operations with a random think time: reads of its own keys, reads of other
tasks' keys through the same cache and through a second cache with L1 off (a
second process's view; every value must belong to the key asked for), sets and
deletes. A prober reads L1-resident keys every 2 ms (the cost of an L1 hit in
each phase, and the event loop's lag); a monitor polls the breaker's state and
the count of failed L2 calls.

A read of a task's own key must return its last acknowledged write (None after a
delete). A miss instead is allowed only where Redis may lack the value: it lost
its data (killed, restarted), it evicts (allkeys-lru), it refused the write
(OOM), or some L2 call failed around that read (the L1 may then be bypassed or
emptied: the invalidation subscription is down). Any other value is stale.

When a check fails, each violation is classified by its shape (the
``PATTERN_*`` constants; :func:`classify_stale`, :func:`classify_overrun`) and a
check whose violations all share one known shape names it in
:attr:`Check.pattern`, so a test or an operator can tell a known library bug
from something new.

Destructive scenarios need the :class:`RedisServer` handle (kill, pause, config
changes); the proxy scenarios (``e``, ``g``) only need a Redis URL on the loopback
interface, in front of which they put a :class:`FaultProxy`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import math
import random
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from resync_hierarchy.config import HierarchyConfig
from resync_hierarchy.hierarchy.core import CacheHierarchy
from resync_hierarchy.testing.proxy import FaultProxy
from resync_hierarchy.testing.redis_server import RedisServer, RespValue

__all__ = [
    "PATTERN_DEADLINE_SWALLOWED",
    "PATTERN_OOM_LEFT_OLDER_VALUE",
    "PATTERN_OOM_NOT_COUNTED_AS_OOM",
    "PATTERN_REPLAY_OVERTOOK_DELETE",
    "SCENARIOS",
    "UNEXPLAINED",
    "ChaosSettings",
    "ChaosTarget",
    "Check",
    "LedgerEntry",
    "LoadDriver",
    "Measurements",
    "ScenarioReport",
    "ScenarioSpec",
    "Verification",
    "Violation",
    "classify_overrun",
    "classify_stale",
    "percentile",
    "run_scenario",
    "scenario_a_kill",
    "scenario_b_sigstop",
    "scenario_c_slow",
    "scenario_d_restart",
    "scenario_e_proxy",
    "scenario_f1_noeviction",
    "scenario_f2_allkeys_lru",
    "scenario_g_retry_count",
    "verify_l2",
]

T = TypeVar("T")
Value = dict[str, Any]

_POLL: Final = 0.005  # seconds between polls of the breaker state
_PROBE_EVERY: Final = 0.002  # seconds between rounds of the L1 prober
_PROBE_BATCH: Final = 5  # L1 gets per prober round
_HOT_KEYS: Final = 20
_DETAILS: Final = 8  # examples kept per kind of failure
_VERIFY_CHUNK: Final = 200

UNEXPLAINED: Final = "unexplained"
PATTERN_REPLAY_OVERTOOK_DELETE: Final = "replay_overtook_delete"
"""A value written while Redis was failing (kept for replay) is in Redis again
after a later delete of the key was acknowledged: the replay landed after it."""
PATTERN_DEADLINE_SWALLOWED: Final = "deadline_overrun_by_one_socket_timeout"
"""A call took one more socket timeout than l2_timeout (2 x l2_timeout, within the
allowance): its deadline's cancellation was lost and only redis-py's own socket
timeout ended the wait. (redis-py's ``send_packed_command`` runs the write under
``asyncio.wait_for``, which returns normally, dropping the cancellation, when the
write completes in the same loop iteration as the cancel.)"""
PATTERN_OOM_LEFT_OLDER_VALUE: Final = "oom_refused_write_left_older_value"
"""A set refused with OOM was acknowledged to the caller, and Redis kept the
value that set replaced."""
PATTERN_OOM_NOT_COUNTED_AS_OOM: Final = "oom_counted_under_another_kind"
"""OOM replies were counted, but not as kind ``oom``."""

_KEPT_FOR_REPLAY: Final = frozenset({"outage", "recovery"})  # phases whose writes may queue


# --------------------------------------------------------------------------- settings, target


@dataclass(frozen=True, kw_only=True)
class ChaosSettings:
    """Knobs of the scenarios. Cache settings are passed explicitly to every cache."""

    l2_timeout: float = 0.2
    l2_retries: int = 2
    breaker_failure_threshold: int = 5
    breaker_reset_timeout: float = 0.5
    l2_max_connections: int = 64
    call_allowance: float = 0.1  # every call returns within l2_timeout + this
    recovery_allowance: float = 1.0  # closed within breaker_reset_timeout + this
    tasks: int = 200
    keys_per_task: int = 5
    think_min: float = 0.03  # seconds a task waits between two operations
    think_max: float = 0.12
    value_bytes: int = 64  # padding of each value
    max_ops_per_task: int = 2000  # hard bound on each task's loop
    warmup_seconds: float = 0.5  # tasks write their keys, staggered over this
    healthy_seconds: float = 1.0
    outage_seconds: float = 1.2
    settle_seconds: float = 0.5  # load after recovery, before the final checks
    drain_timeout: float = 5.0  # for the recovery queue to empty after recovery
    run_limit: float = 60.0  # hard bound on one load run
    seed: int = 1

    @property
    def call_limit(self) -> float:
        return self.l2_timeout + self.call_allowance

    @property
    def recovery_limit(self) -> float:
        return self.breaker_reset_timeout + self.recovery_allowance

    @property
    def keyspace(self) -> int:
        return self.tasks * self.keys_per_task

    def cache_config(self, **overrides: Any) -> dict[str, Any]:
        """HierarchyConfig fields of the caches under test (all explicit)."""
        config: dict[str, Any] = {
            "l2_timeout": self.l2_timeout,
            "l2_retries": self.l2_retries,
            "breaker_failure_threshold": self.breaker_failure_threshold,
            "breaker_reset_timeout": self.breaker_reset_timeout,
            "l2_max_connections": self.l2_max_connections,
            "default_ttl": 300.0,
            "l1_max_entries": max(10_000, 4 * (self.keyspace + _HOT_KEYS)),
            "fail_safe_max_stale": 300.0,
            "recovery_queue_max": max(10_000, 2 * self.keyspace),
            "l1_sweep_interval": 1.0,
        }
        config.update(overrides)
        return config


@dataclass
class ChaosTarget:
    """Where a scenario runs: a Redis URL, and for destructive scenarios the
    :class:`RedisServer` behind it (kill, pause, restart, CONFIG SET)."""

    redis_url: str
    server: RedisServer | None = None
    namespace: str = "chaos"
    settings: ChaosSettings = field(default_factory=ChaosSettings)

    @classmethod
    def for_server(cls, server: RedisServer, **kwargs: Any) -> ChaosTarget:
        return cls(server.url, server, **kwargs)

    @property
    def host(self) -> str:
        return urlsplit(self.redis_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.redis_url).port or 6379

    def url_via(self, port: int, host: str = "127.0.0.1") -> str:
        """The target URL with its host and port replaced (credentials, db and
        query kept): how a client reaches Redis through a proxy on ``port``."""
        parts = urlsplit(self.redis_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def proxy(self) -> FaultProxy:
        """A (not yet started) fault proxy in front of the target."""
        return FaultProxy(upstream_port=self.port, upstream_host=self.host)

    def require_server(self, scenario: str) -> RedisServer:
        if self.server is None:
            raise ValueError(
                f"scenario {scenario} is destructive: it needs a RedisServer it may kill, "
                "pause or reconfigure, not just a URL"
            )
        return self.server

    async def command(self, *args: str | int, wait: float = 5.0) -> RespValue:
        """One command to the target's own server (in a thread: it may block)."""
        server = self.require_server("command")
        return await asyncio.to_thread(server.command, *args, timeout=wait)

    async def info(self, section: str) -> dict[str, str]:
        reply = await self.command("INFO", section)
        text = reply.decode() if isinstance(reply, bytes) else ""
        out: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and not name.startswith("#"):
                out[name.strip()] = value.strip()
        return out


# --------------------------------------------------------------------------- the report


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    # A failed check whose every violation has the same known shape names it
    # here (see the PATTERN_* constants); None if passed or not all explained.
    pattern: str | None = None


@dataclass
class Measurements:
    """What a scenario measured. Durations in seconds unless the name says otherwise."""

    calls: int = 0
    exceptions: int = 0
    max_call_seconds: float = 0.0
    p50_call_seconds: float = 0.0
    p99_call_seconds: float = 0.0
    calls_over_limit: int = 0
    breaker_transitions: list[str] = field(default_factory=list)
    circuit_opens: int = 0
    recovery_seconds: float | None = None  # worst episode: Redis back -> circuit closed
    recovery_by_episode: dict[str, float | None] = field(default_factory=dict)
    writes_during_outage: int = 0  # set/delete calls acknowledged while Redis was failing
    outage_writes_verified: int = 0  # keys whose last write was made then, found in Redis
    keys_verified: int = 0
    l1_get_p99_healthy_us: float | None = None
    l1_get_p99_outage_us: float | None = None
    loop_lag_p99_healthy_ms: float | None = None
    loop_lag_p99_outage_ms: float | None = None
    l2_errors_by_kind: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScenarioReport:
    name: str
    description: str
    checks: list[Check] = field(default_factory=list)
    measurements: Measurements = field(default_factory=Measurements)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check(
        self, name: str, passed: bool, detail: str = "", *, patterns: Counter[str] | None = None
    ) -> bool:
        """Record a check. ``patterns`` counts the shapes of its violations; when
        it failed and they all share one known shape, the check names it."""
        pattern = None
        if not passed and patterns:
            shapes = set(patterns)
            if len(shapes) == 1 and UNEXPLAINED not in shapes:
                pattern = shapes.pop()
            detail += " [shapes: " + ", ".join(f"{k} x{v}" for k, v in patterns.items()) + "]"
        self.checks.append(Check(name, bool(passed), detail, pattern))
        return bool(passed)

    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def failure_summary(self) -> str:
        """The failed checks, one per line (for assertion messages)."""
        failed = self.failed_checks()
        if not self.checks:
            return f"{self.name}: no checks ran"
        if not failed:
            return f"{self.name}: all {len(self.checks)} checks passed"
        lines = [f"{self.name}: {len(failed)} of {len(self.checks)} checks failed"]
        lines += [
            f"  - {c.name}: {c.detail}" + (f" (known shape: {c.pattern})" if c.pattern else "")
            for c in failed
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# --------------------------------------------------------------------------- the load


@dataclass
class LedgerEntry:
    """A write (set, or delete: ``value`` None) of a key, acknowledged to its caller."""

    value: Value | None  # None: deleted
    seq: int
    started: float  # time.monotonic() when the acknowledged call started
    phase: str  # phase kind when it started


@dataclass
class _Episode:
    label: str
    began: float
    ended: float | None = None  # when the fault was lifted
    closed_after: float | None = None  # seconds from ended to circuit closed
    recovered_at: float | None = None  # circuit closed and nothing pending (monotonic)
    reopened: int = 0  # openings after recovered_at, before the next fault
    opens_during: int = 0
    errors_during: int = 0
    short_circuited_during: int = 0


class LoadDriver:
    """Bounded concurrent load on ``app`` (and reads through ``other``), with a
    write ledger, per-call timing and a breaker monitor. See the module docstring."""

    def __init__(
        self,
        app: CacheHierarchy,
        settings: ChaosSettings,
        *,
        other: CacheHierarchy | None = None,
        write_share: float = 0.25,
    ) -> None:
        self.app = app
        self.other = other
        self.settings = settings
        self.write_share = write_share
        self.t0 = time.monotonic()
        self.phase = "warmup"
        self.marks: list[tuple[float, str]] = [(0.0, "warmup")]
        self.ledger: dict[str, LedgerEntry] = {}
        self.uncertain: set[str] = set()  # a write raised: its outcome is unknown
        self.history: dict[str, list[LedgerEntry]] = {}  # every acknowledged write, in order
        # Set when Redis lost its data (killed, restarted): a write acknowledged
        # before then may read back as a miss once L1 is bypassed or emptied.
        self.data_lost_at: float | None = None
        self.misses_after_data_loss = 0
        self.misses_while_failing = 0  # own keys read as misses while Redis was failing
        self._misses_to_settle: list[tuple[float, float, str, LedgerEntry, str, str]] = []
        self.fail_samples: list[tuple[float, int]] = []  # (time, failed + short-circuited)
        self.evictions = False  # Redis may evict keys (allkeys-lru): a miss is allowed
        # Whether Redis refused this write (OOM): the cache then deletes the value
        # it could not replace, so a read that skips L1 may miss it.
        self.refused: Callable[[LedgerEntry], bool] = lambda entry: False
        self.misses_redis_may_lack = 0
        self.max_loop_lag: tuple[float, float] = (0.0, 0.0)  # (seconds, when)
        self.gc_pauses = 0
        self.gc_max_pause: tuple[float, float, int] = (0.0, 0.0, -1)  # (seconds, when, gen)
        self._gc_started: float | None = None
        self.hot: dict[str, Value] = {}
        self.durations: list[float] = []
        self.durations_by_phase: dict[str, list[float]] = {}
        self.l1_samples: dict[str, list[float]] = {}
        self.loop_lag: dict[str, list[float]] = {}
        self.ops: Counter[str] = Counter()
        self.set_calls: list[tuple[float, float]] = []  # (start, end) of each set, monotonic
        self.exceptions = 0
        self.exception_examples: list[str] = []
        self.over_limit = 0
        self.over_limit_durations: list[float] = []
        self.slowest: list[tuple[float, str]] = []
        self.stale_reads = 0  # own-key reads that returned anything but the ledger's value
        self.stale_patterns: Counter[str] = Counter()
        # Names the shape of a stale read: (key, last acknowledged entry, value read).
        self.classify: Callable[[str, LedgerEntry | None, Any], str] = self._classify
        self.stale_examples: list[str] = []
        self.foreign_mismatches = 0  # a value that belongs to another key
        self.foreign_examples: list[str] = []
        self.writes_by_phase: Counter[str] = Counter()
        self.transitions: list[tuple[float, str, str]] = []
        self.episodes: list[_Episode] = []
        self.driver_errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._monitor_task: asyncio.Task[None] | None = None
        self._hard_deadline = self.t0 + settings.run_limit
        self._state = "closed"

    # -- keys and values -----------------------------------------------------------

    @staticmethod
    def own_keys(task: int, count: int) -> list[str]:
        return [f"w{task:04d}:{j}" for j in range(count)]

    def all_keys(self) -> list[str]:
        s = self.settings
        keys = [k for t in range(s.tasks) for k in self.own_keys(t, s.keys_per_task)]
        keys += list(self.hot)
        return keys + sorted(set(self.ledger) - set(keys))

    def _value(self, key: str, seq: int) -> Value:
        return {"key": key, "seq": seq, "pad": "x" * self.settings.value_bytes}

    # -- phases --------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, phase: str) -> float:
        """Enter ``phase``: warmup, healthy (before any fault), degraded (slow but
        answering), outage (a fault is on), recovery (lifted, until the circuit is
        closed and nothing is pending), settle (between faults), after."""
        self.phase = phase
        self.marks.append((self.now(), phase))
        return time.monotonic()

    def begin_outage(self, label: str) -> _Episode:
        stats = self.app.get_stats()
        episode = _Episode(label, time.monotonic())
        episode.opens_during = -int(stats["circuit_opens"])
        episode.errors_during = -int(stats["l2_errors"]) - int(stats["l2_retries"])
        episode.short_circuited_during = -int(stats["l2_short_circuited"])
        self.episodes.append(episode)
        self.mark("outage")
        return episode

    def end_outage(self, episode: _Episode) -> float:
        """The fault is lifted (Redis is back): returns that moment."""
        stats = self.app.get_stats()
        episode.opens_during += int(stats["circuit_opens"])
        episode.errors_during += int(stats["l2_errors"]) + int(stats["l2_retries"])
        episode.short_circuited_during += int(stats["l2_short_circuited"])
        episode.ended = self.mark("recovery")
        return episode.ended

    async def wait_recovered(self, episode: _Episode) -> None:
        """Wait (bounded) until the circuit is closed and no write is pending;
        record how long the circuit took to close after the fault was lifted."""
        ended = episode.ended if episode.ended is not None else time.monotonic()
        limit = ended + self.settings.recovery_limit + self.settings.drain_timeout
        closed_at: float | None = None
        while time.monotonic() < limit:
            stats = self.app.get_stats()
            if stats["circuit_state"] == "closed":
                if closed_at is None:
                    closed_at = time.monotonic()
                if stats["recovery_pending"] == 0:
                    break
            else:
                closed_at = None
            await asyncio.sleep(_POLL)
        if closed_at is not None:
            episode.closed_after = max(0.0, closed_at - ended)
            episode.recovered_at = time.monotonic()

    def count_reopenings(self) -> None:
        """For each fault: how often the breaker opened after it had recovered from
        it and before the next fault began (Redis healthy meanwhile)."""
        for index, episode in enumerate(self.episodes):
            if episode.recovered_at is None:
                continue
            start = episode.recovered_at - self.t0
            nxt = self.episodes[index + 1] if index + 1 < len(self.episodes) else None
            end = math.inf if nxt is None else nxt.began - self.t0
            episode.reopened = sum(
                1 for t, _, new in self.transitions if new == "open" and start < t < end
            )

    # -- running -------------------------------------------------------------------

    async def start(self) -> None:
        """Write the hot keys, then start the tasks, the prober and the monitor."""
        for i in range(_HOT_KEYS):
            key = f"hot:{i}"
            value = self._value(key, 1)
            began = time.monotonic()
            ok, _ = await self.timed("set", self.app.set(key, value))
            self._acknowledge(key, ok, LedgerEntry(value, 1, began, "warmup"))
            if ok:
                self.hot[key] = value
        gc.callbacks.append(self._on_gc)
        loop = asyncio.get_running_loop()
        for index in range(self.settings.tasks):
            self._tasks.append(loop.create_task(self._worker(index), name=f"chaos-w{index}"))
        self._tasks.append(loop.create_task(self._prober(), name="chaos-prober"))
        self._monitor_task = loop.create_task(self._monitor(), name="chaos-monitor")

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._hard_deadline

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        """Time the garbage collector's pauses: a long one stalls every task."""
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif self._gc_started is not None:
            pause = now - self._gc_started
            self._gc_started = None
            self.gc_pauses += 1
            if pause > self.gc_max_pause[0]:
                self.gc_max_pause = (pause, self.now(), int(info.get("generation", -1)))

    async def stop(self) -> None:
        """Stop the load (every task ends within one call and one think time)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        tasks = list(self._tasks)
        if self._monitor_task is not None:
            tasks.append(self._monitor_task)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.call_limit + 5.0)
        for task in pending:
            task.cancel()
            self.driver_errors.append(f"task {task.get_name()} did not stop")
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and (exc := task.exception()) is not None:
                self.driver_errors.append(f"{task.get_name()}: {exc!r}")
        stats = self.app.get_stats()
        self.fail_samples.append(
            (self.now(), int(stats["l2_errors"]) + int(stats["l2_short_circuited"]))
        )
        self.settle_misses()
        self.count_reopenings()

    async def drain(self) -> int:
        """Wait (bounded) for the app's recovery queue to empty; returns what is left."""
        limit = time.monotonic() + self.settings.drain_timeout
        while time.monotonic() < limit:
            pending = int(self.app.get_stats()["recovery_pending"])
            if pending == 0:
                return 0
            await asyncio.sleep(_POLL)
        return int(self.app.get_stats()["recovery_pending"])

    async def timed(self, op: str, call: Awaitable[T]) -> tuple[bool, T | None]:
        """Await one cache call; record its duration and any exception (never raised)."""
        phase = self.phase
        started = time.perf_counter()
        try:
            result = await call
        except Exception as exc:  # a caller saw an exception: exactly what must not happen
            self._record(op, phase, time.perf_counter() - started)
            self.exceptions += 1
            if len(self.exception_examples) < _DETAILS:
                self.exception_examples.append(f"{op} in {phase}: {type(exc).__name__}: {exc}")
            return False, None
        self._record(op, phase, time.perf_counter() - started)
        return True, result

    def _record(self, op: str, phase: str, took: float) -> None:
        self.ops[op] += 1
        self.durations.append(took)
        self.durations_by_phase.setdefault(phase, []).append(took)
        if took > self.settings.call_limit:
            self.over_limit += 1
            self.over_limit_durations.append(took)
            self.slowest.append((took, f"{op} in {phase} at {self.now():.3f}s: {_ms(took)}"))
            self.slowest.sort(reverse=True)
            del self.slowest[_DETAILS:]

    async def set_key(self, key: str, seq: int) -> bool:
        value = self._value(key, seq)
        began = time.monotonic()
        phase = self.phase
        ok, _ = await self.timed("set", self.app.set(key, value))
        self.set_calls.append((began, time.monotonic()))
        self._acknowledge(key, ok, LedgerEntry(value, seq, began, phase))
        return ok

    async def delete_key(self, key: str, seq: int) -> bool:
        began = time.monotonic()
        phase = self.phase
        ok, _ = await self.timed("delete", self.app.delete(key))
        self._acknowledge(key, ok, LedgerEntry(None, seq, began, phase))
        return ok

    def _acknowledge(self, key: str, ok: bool, entry: LedgerEntry) -> None:
        if ok:
            self.ledger[key] = entry
            self.history.setdefault(key, []).append(entry)
            self.writes_by_phase[entry.phase] += 1
        else:
            self.uncertain.add(key)

    def lost_before(self, entry: LedgerEntry) -> bool:
        """Whether Redis lost its data after ``entry`` started (so may lack it)."""
        return self.data_lost_at is not None and entry.started < self.data_lost_at

    def _classify(self, key: str, entry: LedgerEntry | None, got: Any) -> str:
        return classify_stale(self.history.get(key, ()), entry, got)

    async def read_own(self, key: str) -> None:
        began = self.now()
        ok, got = await self.timed("get", self.app.get(key))
        if ok and key not in self.uncertain:
            self._judge_read(key, self.ledger.get(key), got, "get", began)

    def _judge_read(
        self, key: str, entry: LedgerEntry | None, got: Any, what: str, began: float
    ) -> None:
        """A read of a key only this process writes returns its last acknowledged
        write. A miss may be fine (see :meth:`settle_misses`, run at the end, when
        the monitor's record of failures is complete); anything else is a stale
        or lost value."""
        expected = None if entry is None else entry.value
        if got == expected:
            return
        if got is None and entry is not None:  # judged once the run is over
            self._misses_to_settle.append((began, self.now(), key, entry, what, self.phase))
            return
        self._stale(key, entry, got, f"{what}({key!r}) in {self.phase} at {self.now():.3f}s")

    def _stale(self, key: str, entry: LedgerEntry | None, got: Any, where: str) -> None:
        self.stale_reads += 1
        self.stale_patterns[self.classify(key, entry, got)] += 1
        if len(self.stale_examples) < _DETAILS:
            expected = None if entry is None else entry.value
            self.stale_examples.append(
                f"{where} returned {_describe(got)}, last acknowledged: {_describe(expected)}"
            )

    def settle_misses(self) -> None:
        """Misses of keys that hold a value: fine after Redis lost its data, where
        it may evict or refuse writes, or if some L2 call failed (or was
        short-circuited) around that read; a lost or hidden write otherwise."""
        fails = self.fail_samples
        times = [t for t, _ in fails]
        for began, ended, key, entry, what, phase in self._misses_to_settle:
            if self.lost_before(entry):
                self.misses_after_data_loss += 1
                continue
            if self.evictions or self.refused(entry):
                self.misses_redis_may_lack += 1
                continue
            lo = bisect.bisect_left(times, began - 2 * _POLL)
            hi = bisect.bisect_right(times, ended + 2 * _POLL)
            window = fails[max(lo - 1, 0) : hi + 1]
            if len({count for _, count in window}) > 1:
                self.misses_while_failing += 1
            else:
                self._stale(
                    key,
                    entry,
                    None,
                    f"{what}({key!r}) in {phase} at {ended:.3f}s, while L2 was answering,",
                )
        self._misses_to_settle.clear()

    async def read_foreign(self, cache: CacheHierarchy, key: str, op: str) -> None:
        ok, got = await self.timed(op, cache.get(key))
        if ok and got is not None and not (isinstance(got, dict) and got.get("key") == key):
            self.foreign_mismatches += 1
            if len(self.foreign_examples) < _DETAILS:
                self.foreign_examples.append(f"{op}({key!r}) returned {_describe(got)}")

    async def _worker(self, index: int) -> None:
        s = self.settings
        rng = random.Random(s.seed * 1_000_003 + index)  # noqa: S311 - load, not crypto
        own = self.own_keys(index, s.keys_per_task)
        seq = 0
        # Warm-up: write every own key once, staggered so the start is no burst.
        await asyncio.sleep(rng.uniform(0.0, s.warmup_seconds))
        for key in own:
            seq += 1
            await self.set_key(key, seq)
        write = self.write_share
        for _ in range(s.max_ops_per_task):
            await asyncio.sleep(rng.uniform(s.think_min, s.think_max))
            if not self.running():
                return
            r = rng.random()
            if r < write * 0.7:
                seq += 1
                await self.set_key(rng.choice(own), seq)
            elif r < write:
                seq += 1
                await self.delete_key(rng.choice(own), seq)
            elif r < write + (1 - write) * 0.5:
                await self.read_own(rng.choice(own))
            else:
                peer = rng.randrange(s.tasks)
                key = self.own_keys(peer, s.keys_per_task)[rng.randrange(s.keys_per_task)]
                if self.other is not None and rng.random() < 0.5:
                    await self.read_foreign(self.other, key, "get(other)")
                else:
                    await self.read_foreign(self.app, key, "get")

    async def _prober(self) -> None:
        """Reads of L1-resident keys (the hot keys, never rewritten) and loop lag."""
        hot = list(self.hot)
        if not hot:
            return
        i = 0
        while self.running():
            before = time.perf_counter()
            await asyncio.sleep(_PROBE_EVERY)
            phase = self.phase
            lag = max(0.0, time.perf_counter() - before - _PROBE_EVERY)
            self.loop_lag.setdefault(phase, []).append(lag)
            if lag > self.max_loop_lag[0]:
                self.max_loop_lag = (lag, self.now())
            samples = self.l1_samples.setdefault(phase, [])
            for _ in range(_PROBE_BATCH):
                key = hot[i % len(hot)]
                i += 1
                started = time.perf_counter()
                began = self.now()
                ok, got = await self.timed("get", self.app.get(key))
                samples.append(time.perf_counter() - started)
                if ok:
                    self._judge_read(key, self.ledger.get(key), got, "hot get", began)

    async def _monitor(self) -> None:
        """The breaker's state, and the count of failed or short-circuited L2 calls."""
        last = str(self.app.get_stats()["circuit_state"])
        while self.running():
            stats = self.app.get_stats()
            state = str(stats["circuit_state"])
            if state != last:
                self.transitions.append((self.now(), last, state))
                last = state
            failures = int(stats["l2_errors"]) + int(stats["l2_short_circuited"])
            self.fail_samples.append((self.now(), failures))
            await asyncio.sleep(_POLL)

    # -- results -------------------------------------------------------------------

    def fill(self, m: Measurements) -> None:
        """Copy the load's figures into ``m``."""
        m.calls = len(self.durations)
        m.exceptions = self.exceptions
        m.max_call_seconds = max(self.durations, default=0.0)
        m.p50_call_seconds = percentile(self.durations, 50)
        m.p99_call_seconds = percentile(self.durations, 99)
        m.calls_over_limit = self.over_limit
        m.breaker_transitions = [f"{t:.3f}s {a}->{b}" for t, a, b in self.transitions]
        m.writes_during_outage = self.writes_by_phase["outage"]
        for phase, attr in (("healthy", "healthy"), ("outage", "outage")):
            samples = self.l1_samples.get(phase)
            if samples:
                setattr(m, f"l1_get_p99_{attr}_us", round(percentile(samples, 99) * 1e6, 3))
            lag = self.loop_lag.get(phase)
            if lag:
                setattr(m, f"loop_lag_p99_{attr}_ms", round(percentile(lag, 99) * 1e3, 3))
        stats = self.app.get_stats()
        m.circuit_opens = int(stats["circuit_opens"])
        m.l2_errors_by_kind = dict(stats["l2_errors_by_kind"])
        recoveries = {e.label: e.closed_after for e in self.episodes}
        m.recovery_by_episode = recoveries
        if recoveries:
            known = [v for v in recoveries.values() if v is not None]
            m.recovery_seconds = None if len(known) < len(recoveries) else max(known)
        m.extra.update(
            ops=dict(self.ops),
            phases=[f"{t:.3f}s {p}" for t, p in self.marks],
            l2_retries=int(stats["l2_retries"]),
            l2_short_circuited=int(stats["l2_short_circuited"]),
            stale_served=int(stats["stale_served"]),
            recovery_replayed=int(stats["recovery_replayed"]),
            recovery_superseded=int(stats["recovery_superseded"]),
            recovery_overflowed=int(stats["recovery_overflowed"]),
            max_loop_lag_ms=round(self.max_loop_lag[0] * 1e3, 3),
            max_loop_lag_at=round(self.max_loop_lag[1], 3),
            gc_collections=self.gc_pauses,
            gc_max_pause_ms=round(self.gc_max_pause[0] * 1e3, 3),
            gc_max_pause_at=round(self.gc_max_pause[1], 3),
            gc_max_pause_generation=self.gc_max_pause[2],
            misses_after_data_loss=self.misses_after_data_loss,
            misses_while_failing=self.misses_while_failing,
            misses_evicted_or_refused=self.misses_redis_may_lack,
            l1_get_us_by_phase={
                p: {
                    "n": len(v),
                    "p50": round(percentile(v, 50) * 1e6, 3),
                    "p99": round(percentile(v, 99) * 1e6, 3),
                    "max": round(max(v) * 1e6, 3),
                }
                for p, v in self.l1_samples.items()
                if v
            },
        )
        if isinstance(stats.get("invalidation"), dict):
            m.extra["invalidation"] = dict(stats["invalidation"])
        if self.other is not None:
            other = self.other.get_stats()
            m.extra["other_cache"] = {
                "l2_errors_by_kind": dict(other["l2_errors_by_kind"]),
                "circuit_opens": int(other["circuit_opens"]),
                "misses": int(other["misses"]),
                "l2_hits": int(other["l2_hits"]),
            }


def _describe(value: Any) -> str:
    if value is None:
        return "None (absent/deleted)"
    if isinstance(value, dict) and "key" in value:
        return f"{value.get('key')!r} seq {value.get('seq')}"
    return f"{type(value).__name__} {value!r:.60}"


# --------------------------------------------------------------------------- verification


def classify_overrun(took: float, settings: ChaosSettings) -> str:
    """The known shape of a call that took ``took`` seconds, over the limit."""
    low = 2 * settings.l2_timeout
    if low <= took <= low + settings.call_allowance:
        return PATTERN_DEADLINE_SWALLOWED
    return UNEXPLAINED


def classify_stale(history: Sequence[LedgerEntry], last: LedgerEntry | None, got: Any) -> str:
    """The known shape of reading ``got`` when ``last`` was the last acknowledged
    write of the key (``history``: all of them, in order), or UNEXPLAINED."""
    if last is None or last.value is not None or not isinstance(got, dict):
        return UNEXPLAINED
    written = next((e for e in history if e.value is not None and e.seq == got.get("seq")), None)
    if (
        written is not None
        and written.phase in _KEPT_FOR_REPLAY
        and last.phase != "outage"
        and last.seq > written.seq
    ):
        return PATTERN_REPLAY_OVERTOOK_DELETE
    return UNEXPLAINED


@dataclass
class Violation:
    problem: str  # lost write, lost delete, older value, foreign value, ...
    key: str
    detail: str
    pattern: str = UNEXPLAINED


@dataclass
class Verification:
    """Every key of the ledger read back from Redis through a fresh cache (L1 off)."""

    checked: int = 0
    ok: int = 0
    lost_writes: int = 0  # set acknowledged, Redis has nothing
    lost_deletes: int = 0  # delete acknowledged, Redis has a value
    older: int = 0  # Redis has a value older than the last acknowledged write
    unexpected: int = 0  # a value nobody acknowledged writing
    allowed_missing: int = 0  # absent, but allowed (lost with Redis' memory, evicted, OOM)
    outage_ok: int = 0  # keys whose last write was made during an outage, found intact
    read_errors: int = 0  # L2 errors of the verifying cache: the result is not conclusive
    violations: list[Violation] = field(default_factory=list)

    def select(self, *problems: str) -> list[Violation]:
        return [v for v in self.violations if v.problem in problems]


async def verify_l2(
    url: str,
    namespace: str,
    ledger: dict[str, LedgerEntry],
    keys: Iterable[str],
    *,
    uncertain: set[str] | None = None,
    may_be_missing: Callable[[LedgerEntry], bool] | None = None,
    history: dict[str, list[LedgerEntry]] | None = None,
    classify: Callable[[str, LedgerEntry | None, Any], str] | None = None,
    l2_timeout: float = 2.0,
) -> Verification:
    """Read ``keys`` through a new cache with L1 off and compare with ``ledger``.

    ``may_be_missing(entry)`` says whether Redis may have lost that write (a
    restart without persistence, an eviction, a refused write); everything
    else must be exactly the last acknowledged value, or absent after a delete.
    Each violation is classified by ``classify(key, last entry, value read)``
    if given, else by :func:`classify_stale` on ``history``.
    """
    result = Verification()
    uncertain = uncertain or set()
    wanted = list(keys)
    reader = CacheHierarchy.from_url(
        url,
        namespace=namespace,
        l1_max_entries=0,
        l2_timeout=l2_timeout,
        l2_retries=2,
        breaker_failure_threshold=1_000,
    )
    found: dict[str, Any] = {}
    async with reader:
        for start in range(0, len(wanted), _VERIFY_CHUNK):
            found.update(await reader.get_many(wanted[start : start + _VERIFY_CHUNK]))
        result.read_errors = int(reader.get_stats()["l2_errors"])
    for key in wanted:
        if key in uncertain:
            continue
        result.checked += 1
        entry = ledger.get(key)
        expected = None if entry is None else entry.value
        got = found.get(key)
        problem: str | None = None
        if got == expected:
            result.ok += 1
            if entry is not None and entry.phase == "outage":
                result.outage_ok += 1
            continue
        if entry is None:  # never written (got is not None here)
            result.unexpected += 1
            problem = "value never written"
        elif got is None:  # a set was acknowledged, Redis has nothing
            if may_be_missing is not None and may_be_missing(entry):
                result.allowed_missing += 1
                continue
            result.lost_writes += 1
            problem = "lost write"
        elif entry.value is None:
            result.lost_deletes += 1
            problem = "lost delete"
        elif not isinstance(got, dict) or got.get("key") != key:
            result.unexpected += 1
            problem = "foreign value"
        elif int(got.get("seq", 0)) < entry.seq:
            result.older += 1
            problem = "older value"
        else:
            result.unexpected += 1
            problem = "unacknowledged newer value"
        if classify is not None:
            pattern = classify(key, entry, got)
        else:
            pattern = classify_stale((history or {}).get(key, ()), entry, got)
        phase = entry.phase if entry is not None else "-"
        detail = (
            f"{problem}: {key!r} in Redis {_describe(got)}, last acknowledged "
            f"{_describe(expected)} (during {phase})"
        )
        result.violations.append(Violation(problem, key, detail, pattern))
    return result


# --------------------------------------------------------------------------- shared steps


@contextlib.asynccontextmanager
async def _caches(
    url: str, target: ChaosTarget, settings: ChaosSettings, **overrides: Any
) -> AsyncIterator[tuple[CacheHierarchy, CacheHierarchy]]:
    """The cache under test and a second one with L1 off (another process's view)."""
    app = CacheHierarchy.from_url(
        url, namespace=target.namespace, **settings.cache_config(**overrides)
    )
    other = CacheHierarchy.from_url(
        url,
        namespace=target.namespace,
        **settings.cache_config(**{**overrides, "l1_max_entries": 0}),
    )
    try:
        await app.start()
        await other.start()
        yield app, other
    finally:
        await other.shutdown()
        await app.shutdown()


def _judge_load(report: ScenarioReport, driver: LoadDriver) -> None:
    """Checks every load run must pass: no exception, bounded calls, consistent reads."""
    s = driver.settings
    driver.fill(report.measurements)
    report.check(
        "load_ran",
        not driver.driver_errors and driver.ops["set"] > 0 and len(driver.durations) > 0,
        f"{len(driver.durations)} calls, {dict(driver.ops)}; "
        + ("; ".join(driver.driver_errors[:_DETAILS]) or "driver ok"),
    )
    report.check(
        "no_exception_reaches_callers",
        driver.exceptions == 0,
        f"{driver.exceptions} exceptions; " + "; ".join(driver.exception_examples),
    )
    report.check(
        "every_call_within_deadline",
        driver.over_limit == 0,
        f"{driver.over_limit} of {len(driver.durations)} calls took over "
        f"{_ms(s.call_limit)} (l2_timeout + {_ms(s.call_allowance)}); max "
        f"{_ms(max(driver.durations, default=0.0))}; slowest: "
        + "; ".join(text for _, text in driver.slowest)
        + f" (event loop: max lag {_ms(driver.max_loop_lag[0])} at "
        f"{driver.max_loop_lag[1]:.3f}s; GC: max pause {_ms(driver.gc_max_pause[0])} at "
        f"{driver.gc_max_pause[1]:.3f}s)",
        patterns=Counter(classify_overrun(d, s) for d in driver.over_limit_durations),
    )
    report.check(
        "reads_return_last_acknowledged_write",
        driver.stale_reads == 0,
        f"{driver.stale_reads} reads of a task's own keys returned something other than "
        "the last acknowledged write; " + "; ".join(driver.stale_examples),
        patterns=driver.stale_patterns,
    )
    report.check(
        "replies_match_keys",
        driver.foreign_mismatches == 0,
        f"{driver.foreign_mismatches} reads returned another key's value; "
        + "; ".join(driver.foreign_examples),
    )


def _judge_episodes(
    report: ScenarioReport,
    settings: ChaosSettings,
    episodes: Iterable[_Episode],
    *,
    expect_open: bool,
) -> None:
    """The fault bit, the breaker opened (if expected) and closed in time."""
    s = settings
    for ep in episodes:
        report.check(
            f"fault_took_effect[{ep.label}]",
            ep.errors_during > 0,
            f"{ep.errors_during} L2 failures and retries during the fault",
        )
        if expect_open:
            report.check(
                f"breaker_opened[{ep.label}]",
                ep.opens_during >= 1 and ep.short_circuited_during > 0,
                f"opened {ep.opens_during} time(s), {ep.short_circuited_during} calls "
                "short-circuited while open",
            )
        report.check(
            f"breaker_stays_closed_after_recovery[{ep.label}]",
            ep.reopened == 0,
            f"opened {ep.reopened} time(s) after it had closed, with Redis healthy",
        )
        closed = ep.closed_after
        report.check(
            f"breaker_closed_in_time[{ep.label}]",
            closed is not None and closed <= s.recovery_limit,
            f"closed {'never' if closed is None else f'{closed:.3f}s'} after Redis came "
            f"back (limit breaker_reset_timeout + {s.recovery_allowance}s = "
            f"{s.recovery_limit:.2f}s); opened {ep.opens_during} time(s) during the fault",
        )


def _judge_verification(
    report: ScenarioReport, verification: Verification, pending: int, overflowed: int
) -> None:
    v = verification
    m = report.measurements
    m.keys_verified = v.checked
    m.outage_writes_verified = v.outage_ok
    m.extra["verification"] = {
        "checked": v.checked,
        "ok": v.ok,
        "allowed_missing": v.allowed_missing,
        "lost_writes": v.lost_writes,
        "lost_deletes": v.lost_deletes,
        "older": v.older,
        "unexpected": v.unexpected,
    }
    report.check(
        "recovery_queue_drained",
        pending == 0 and overflowed == 0,
        f"{pending} writes still pending after recovery, {overflowed} dropped by overflow",
    )
    report.check(
        "verification_read_redis",
        v.read_errors == 0 and v.checked > 0,
        f"{v.checked} keys read back, {v.read_errors} L2 errors while reading",
    )
    lost = v.select("lost write", "lost delete")
    report.check(
        "no_write_or_delete_lost",
        not lost,
        f"{v.lost_writes} lost writes, {v.lost_deletes} lost deletes of {v.checked} keys; "
        + "; ".join(x.detail for x in lost[:_DETAILS]),
        patterns=Counter(x.pattern for x in lost),
    )
    other = [x for x in v.violations if x not in lost]
    report.check(
        "no_older_value_in_redis",
        not other,
        f"{v.older} keys hold an older value than their last acknowledged write, "
        f"{v.unexpected} an unexpected one; " + "; ".join(x.detail for x in other[:_DETAILS]),
        patterns=Counter(x.pattern for x in other),
    )


async def _verify(target: ChaosTarget, driver: LoadDriver, **kwargs: Any) -> Verification:
    """Every key the load wrote, read back from Redis and compared with its ledger."""
    return await verify_l2(
        target.redis_url,
        target.namespace,
        driver.ledger,
        driver.all_keys(),
        uncertain=driver.uncertain,
        history=driver.history,
        **kwargs,
    )


async def _finish_load(report: ScenarioReport, driver: LoadDriver) -> tuple[int, int]:
    """Stop the load, wait for pending writes, judge the load. Returns
    (pending, overflowed) for :func:`_judge_verification` after the caches close."""
    await driver.stop()
    pending = await driver.drain()
    overflowed = int(driver.app.get_stats()["recovery_overflowed"])
    _judge_load(report, driver)
    return pending, overflowed


async def _run_outage(
    report: ScenarioReport,
    target: ChaosTarget,
    *,
    inject: Callable[[], Awaitable[None]],
    lift: Callable[[], Awaitable[None]],
    label: str,
    expect_open: bool = True,
    data_lost_on_inject: bool = False,
) -> None:
    """warm-up, healthy, outage (``inject``), ``lift``, recovery, settle, verify."""
    s = target.settings
    async with _caches(target.redis_url, target, s) as (app, other):
        driver = LoadDriver(app, s, other=other)
        try:
            await driver.start()
            await asyncio.sleep(s.warmup_seconds)
            driver.mark("healthy")
            await asyncio.sleep(s.healthy_seconds)
            episode = driver.begin_outage(label)
            await inject()
            if data_lost_on_inject:
                driver.data_lost_at = time.monotonic()
            await asyncio.sleep(s.outage_seconds)
            await lift()
            driver.end_outage(episode)
            await driver.wait_recovered(episode)
            driver.mark("after")
            await asyncio.sleep(s.settle_seconds)
        finally:
            pending, overflowed = await _finish_load(report, driver)
        _judge_episodes(report, s, driver.episodes, expect_open=expect_open)
    # Redis keeps no data across a kill: a key whose last write started before the
    # old process was gone may be absent (never an older value). A write started
    # after that failed or reached the new process, and must be there.
    verification = await _verify(target, driver, may_be_missing=driver.lost_before)
    _judge_verification(report, verification, pending, overflowed)


# --------------------------------------------------------------------------- scenarios


async def scenario_a_kill(target: ChaosTarget) -> ScenarioReport:
    """(a) kill -9 of Redis during a load of 200 concurrent tasks, then start it again."""
    server = target.require_server("a")
    report = ScenarioReport(
        "a_kill9", "SIGKILL redis-server under 200 concurrent tasks, restart it after the outage"
    )

    async def kill() -> None:
        await asyncio.to_thread(server.kill)

    async def start() -> None:
        await asyncio.to_thread(server.start)

    await _run_outage(
        report, target, inject=kill, lift=start, label="killed", data_lost_on_inject=True
    )
    return report


async def scenario_b_sigstop(target: ChaosTarget) -> ScenarioReport:
    """(b) SIGSTOP (a hung server: connections open, nothing answered), then SIGCONT."""
    server = target.require_server("b")
    report = ScenarioReport("b_sigstop", "SIGSTOP redis-server under load (hung), then SIGCONT")

    async def pause() -> None:
        server.pause()

    async def resume() -> None:
        server.resume()

    await _run_outage(report, target, inject=pause, lift=resume, label="sigstop")
    return report


async def scenario_c_slow(target: ChaosTarget) -> ScenarioReport:
    """(c) A slow server: CLIENT PAUSE WRITE (reads answered, writes held), then
    DEBUG SLEEP (nothing answered), each under load."""
    target.require_server("c")
    s = target.settings
    report = ScenarioReport(
        "c_slow", "CLIENT PAUSE WRITE, then DEBUG SLEEP, under 200 concurrent tasks"
    )
    async with _caches(target.redis_url, target, s) as (app, other):
        driver = LoadDriver(app, s, other=other)
        try:
            await driver.start()
            await asyncio.sleep(s.warmup_seconds)
            driver.mark("healthy")
            await asyncio.sleep(s.healthy_seconds)
            # 1. Writes held, reads answered. Lifted by CLIENT UNPAUSE (the pause
            #    itself is longer, so the end is ours, not a race with its expiry).
            paused = driver.begin_outage("client_pause_write")
            hits_before = int(other.get_stats()["l2_hits"])
            await target.command("CLIENT", "PAUSE", int((s.outage_seconds + 5) * 1000), "WRITE")
            await asyncio.sleep(s.outage_seconds)
            hits_during = int(other.get_stats()["l2_hits"]) - hits_before
            await target.command("CLIENT", "UNPAUSE")
            driver.end_outage(paused)
            await driver.wait_recovered(paused)
            driver.mark("settle")
            await asyncio.sleep(s.settle_seconds)
            # 2. Nothing answered while the server runs one slow command. The
            #    command returns when the server is responsive again.
            slept = driver.begin_outage("debug_sleep")
            await target.command("DEBUG", "SLEEP", f"{s.outage_seconds:.3f}", wait=30.0)
            driver.end_outage(slept)
            await driver.wait_recovered(slept)
            driver.mark("after")
            await asyncio.sleep(s.settle_seconds)
        finally:
            pending, overflowed = await _finish_load(report, driver)
        report.measurements.extra["reads_answered_during_write_pause"] = hits_during
        report.check(
            "reads_answered_while_writes_paused",
            hits_during > 0,
            f"{hits_during} L2 hits of the L1-less cache while writes were paused",
        )
        # Under CLIENT PAUSE WRITE reads succeed between failing writes, so whether
        # the breaker opens depends on the interleaving; if it did, it closes in time.
        _judge_episodes(report, s, [paused], expect_open=False)
        _judge_episodes(report, s, [slept], expect_open=True)
    verification = await _verify(target, driver)
    _judge_verification(report, verification, pending, overflowed)
    return report


async def scenario_d_restart(target: ChaosTarget) -> ScenarioReport:
    """(d) Restart on the same port under load: every pooled connection goes stale."""
    server = target.require_server("d")
    report = ScenarioReport(
        "d_restart", "restart redis-server on the same port under load (stale pooled connections)"
    )

    async def restart() -> None:
        await asyncio.to_thread(server.restart)

    async def nothing() -> None:
        return None

    s = target.settings
    # The restart is the whole fault: it is over when restart() returns.
    quick = replace(s, outage_seconds=0.0)
    await _run_outage(
        report,
        replace(target, settings=quick),
        inject=restart,
        lift=nothing,
        label="restart",
        expect_open=False,
        data_lost_on_inject=True,
    )
    return report


async def scenario_e_proxy(target: ChaosTarget) -> ScenarioReport:
    """(e) Through a fault proxy: added latency below and above l2_timeout,
    black-holed traffic, reset connections; each fault lifted, then the next."""
    s = target.settings
    report = ScenarioReport(
        "e_proxy",
        "fault proxy: latency below/above l2_timeout, black hole, connection resets",
    )
    degraded_delay = s.l2_timeout / 40  # each direction: a round trip of l2_timeout / 20
    async with target.proxy() as proxy:

        def reset() -> None:
            proxy.reset_new()
            proxy.cut_all()

        faults: list[tuple[str, Callable[[], None]]] = [
            ("latency_over_timeout", lambda: proxy.set_delay(s.l2_timeout * 2.5)),
            ("blackhole", proxy.blackhole),
            ("reset", reset),
        ]
        async with _caches(target.url_via(proxy.port), target, s) as (app, other):
            driver = LoadDriver(app, s, other=other)
            try:
                await driver.start()
                await asyncio.sleep(s.warmup_seconds)
                driver.mark("healthy")
                await asyncio.sleep(s.healthy_seconds)
                before = app.get_stats()
                driver.mark("degraded")
                proxy.set_delay(degraded_delay)
                await asyncio.sleep(s.healthy_seconds)
                proxy.heal()
                after = app.get_stats()
                driver.mark("settle")
                await asyncio.sleep(s.settle_seconds)
                for label, inject in faults:
                    episode = driver.begin_outage(label)
                    inject()
                    await asyncio.sleep(s.outage_seconds)
                    proxy.heal()
                    driver.end_outage(episode)
                    await driver.wait_recovered(episode)
                    driver.mark("settle")
                    await asyncio.sleep(s.settle_seconds)
                driver.mark("after")
            finally:
                proxy.heal()
                pending, overflowed = await _finish_load(report, driver)
            errors_slow = int(after["l2_errors"]) - int(before["l2_errors"])
            opens_slow = int(after["circuit_opens"]) - int(before["circuit_opens"])
            report.measurements.extra["latency_below_timeout"] = {
                "delay_each_way_s": degraded_delay,
                "l2_errors": errors_slow,
                "circuit_opens": opens_slow,
                "p99_call_s": percentile(driver.durations_by_phase.get("degraded", []), 99),
            }
            report.check(
                "latency_below_timeout_is_served",
                errors_slow == 0 and opens_slow == 0,
                f"with {_ms(degraded_delay)} added each way: {errors_slow} L2 errors, "
                f"{opens_slow} breaker openings",
            )
            report.measurements.extra["proxy"] = {
                k: v for k, v in proxy.stats.items() if k != "commands"
            }
            _judge_episodes(report, s, driver.episodes, expect_open=True)
    verification = await _verify(target, driver)
    _judge_verification(report, verification, pending, overflowed)
    return report


async def _commandstats(target: ChaosTarget) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = {}
    for name, raw in (await target.info("commandstats")).items():
        if name.startswith("cmdstat_"):
            fields = dict(part.split("=", 1) for part in raw.split(",") if "=" in part)
            stats[name.removeprefix("cmdstat_")] = {
                k: int(float(v)) for k, v in fields.items() if k != "usec_per_call"
            }
    return stats


def _attempts(stats: dict[str, dict[str, int]], command: str) -> int:
    """Calls of ``command`` that reached Redis, executed or refused."""
    row = stats.get(command, {})
    return row.get("calls", 0) + row.get("rejected_calls", 0)


async def scenario_f1_noeviction(target: ChaosTarget) -> ScenarioReport:
    """(f) maxmemory with noeviction: writes fail with OOM. Counted, not retried,
    the breaker stays closed (Redis is up), and no older value is left behind."""
    target.require_server("f1")
    s = target.settings
    report = ScenarioReport(
        "f1_oom_noeviction", "maxmemory reached with noeviction: writes refused with OOM"
    )
    probe = "probe:oom"
    await target.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    async with _caches(target.redis_url, target, s) as (app, other):
        driver = LoadDriver(app, s, other=other)

        def classify(key: str, entry: LedgerEntry | None, got: Any) -> str:
            # An older value of a key whose last write was made while Redis refused writes.
            if (
                entry is not None
                and entry.phase == "outage"
                and isinstance(got, dict)
                and int(got.get("seq", 0)) < entry.seq
            ):
                return PATTERN_OOM_LEFT_OLDER_VALUE
            return classify_stale(driver.history.get(key, ()), entry, got)

        driver.classify = classify
        driver.refused = lambda entry: entry.phase == "outage"  # made while writes were refused
        try:
            await driver.start()
            await driver.set_key(probe, 1)  # accepted by Redis
            await asyncio.sleep(s.warmup_seconds)
            driver.mark("healthy")
            await asyncio.sleep(s.healthy_seconds)
            episode = driver.begin_outage("oom")
            before = app.get_stats()
            window_start = time.monotonic()
            cmd_before = await _commandstats(target)
            await target.command("CONFIG", "SET", "maxmemory", "1")
            await driver.set_key(probe, 2)  # refused by Redis with OOM
            _, probe_read = await driver.timed("get", app.get(probe))
            await asyncio.sleep(s.outage_seconds)
            cmd_after = await _commandstats(target)
            window_end = time.monotonic()
            during = app.get_stats()
            await target.command("CONFIG", "SET", "maxmemory", "0")
            driver.end_outage(episode)
            await driver.wait_recovered(episode)
            driver.mark("after")
            await asyncio.sleep(s.settle_seconds)
        finally:
            with contextlib.suppress(Exception):
                await target.command("CONFIG", "SET", "maxmemory", "0")
            pending, overflowed = await _finish_load(report, driver)
        kinds_before: dict[str, int] = before["l2_errors_by_kind"]
        kinds_during: dict[str, int] = during["l2_errors_by_kind"]
        new_errors = {
            kind: n - kinds_before.get(kind, 0)
            for kind, n in kinds_during.items()
            if n > kinds_before.get(kind, 0)
        }
        oom = new_errors.get("oom", 0)
        retries = int(during["l2_retries"]) - int(before["l2_retries"])
        opens = int(during["circuit_opens"]) - int(before["circuit_opens"])
        # Each set call overlapping the window sent at most one SET if nothing retried.
        overlapping = sum(1 for a, b in driver.set_calls if a < window_end and b > window_start)
        set_attempts = _attempts(cmd_after, "set") - _attempts(cmd_before, "set")
        m = report.measurements
        m.extra["oom"] = {
            "oom_errors": oom,
            "l2_retries": retries,
            "set_attempts_in_redis": set_attempts,
            "set_calls_overlapping": overlapping,
        }
        report.check(
            "oom_counted",
            oom > 0,
            f"{oom} failures counted as kind 'oom'; new errors by kind: {new_errors}",
            patterns=Counter({PATTERN_OOM_NOT_COUNTED_AS_OOM: 1} if new_errors else {}),
        )
        report.check(
            "oom_not_retried",
            retries == 0 and 0 < set_attempts <= overlapping,
            f"{retries} retries; {set_attempts} SET commands reached Redis (INFO "
            f"commandstats) for {overlapping} set calls made in that window",
        )
        report.check(
            "breaker_stays_closed_on_oom",
            opens == 0 and not driver.transitions,
            f"{opens} openings, transitions seen: {m.breaker_transitions or 'none'}",
        )
        expected = driver.ledger[probe].value if probe in driver.ledger else None
        report.check(
            "oom_write_served_from_l1",
            probe_read is not None and probe_read == expected,
            f"after set({probe!r}, seq 2) was refused, the writer reads {_describe(probe_read)}",
        )
        report.check(
            "breaker_closed_after",
            app.get_stats()["circuit_state"] == "closed",
            f"circuit {app.get_stats()['circuit_state']}",
        )
    # A write refused with OOM may be missing from Redis (a miss is safe); what
    # must never happen is Redis keeping the value that write replaced.
    verification = await _verify(
        target, driver, may_be_missing=lambda e: e.phase == "outage", classify=classify
    )
    _judge_verification(report, verification, pending, overflowed)
    probe_wrong = [v for v in verification.violations if v.key == probe]
    report.check(
        "oom_refused_write_leaves_no_older_value",
        not probe_wrong,
        f"set({probe!r}, seq 1) accepted, set({probe!r}, seq 2) refused with OOM; a fresh "
        "cache then reads: " + ("; ".join(v.detail for v in probe_wrong) or "seq 2 or nothing"),
        patterns=Counter(v.pattern for v in probe_wrong),
    )
    return report


async def scenario_f2_allkeys_lru(target: ChaosTarget) -> ScenarioReport:
    """(f) maxmemory with allkeys-lru: keys vanish under the cache and read as misses."""
    target.require_server("f2")
    report = ScenarioReport(
        "f2_lru_eviction", "maxmemory with allkeys-lru: keys evicted under the cache"
    )
    s = replace(target.settings, value_bytes=4000)
    await target.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    # Evict as much as a write needs: with the default tenacity (10) eviction
    # is incremental and a write burst gets OOM errors although keys could go.
    await target.command("CONFIG", "SET", "maxmemory-eviction-tenacity", "100")
    limit = 0
    try:
        async with _caches(target.redis_url, target, s) as (app, other):
            driver = LoadDriver(app, s, other=other)
            driver.evictions = True
            try:
                await driver.start()
                await asyncio.sleep(s.warmup_seconds)
                # Every key written once and the connection pools grown: cap memory
                # at what is used now minus half the data, so that Redis must evict
                # (keys only; the clients' own memory stays well within the cap).
                memory = await target.info("memory")
                used = int(memory.get("used_memory", "0"))
                dataset = int(memory.get("used_memory_dataset", "0"))
                limit = max(used - dataset // 2, 1024 * 1024)
                await target.command("CONFIG", "SET", "maxmemory", limit)
                driver.mark("healthy")
                await asyncio.sleep(s.healthy_seconds + s.outage_seconds)
                driver.mark("after")
            finally:
                pending, overflowed = await _finish_load(report, driver)
            app_stats, other_stats = app.get_stats(), other.get_stats()
        evicted = int((await target.info("stats")).get("evicted_keys", "0"))
        verification = await _verify(target, driver, may_be_missing=lambda e: True)
    finally:
        with contextlib.suppress(Exception):
            await target.command("CONFIG", "SET", "maxmemory", "0")
    m = report.measurements
    errors = int(app_stats["l2_errors"]) + int(other_stats["l2_errors"])
    m.extra["eviction"] = {
        "maxmemory": limit,
        "evicted_keys": evicted,
        "read_as_misses": verification.allowed_missing,
        "other_cache_misses": int(other_stats["misses"]),
    }
    report.check("keys_were_evicted", evicted > 0, f"INFO evicted_keys={evicted}")
    report.check(
        "evicted_keys_read_as_misses",
        verification.allowed_missing > 0 and verification.read_errors == 0,
        f"{verification.allowed_missing} written keys read back as misses (no error)",
    )
    report.check(
        "eviction_is_not_an_error",
        errors == 0
        and int(app_stats["circuit_opens"]) == 0
        and int(other_stats["circuit_opens"]) == 0,
        f"{errors} L2 errors ({app_stats['l2_errors_by_kind']}, "
        f"{other_stats['l2_errors_by_kind']}), breaker openings: {app_stats['circuit_opens']} / "
        f"{other_stats['circuit_opens']}",
    )
    _judge_verification(report, verification, pending, overflowed)
    return report


def _has_invalidation() -> bool:
    """Whether this version has the cross-process invalidation subscriber."""
    return any(f.name == "invalidation" for f in fields(HierarchyConfig))


async def _settle(read: Callable[[], int], quiet: float = 0.05, limit: float = 2.0) -> None:
    """Wait until ``read()`` has not changed for ``quiet`` seconds (at most ``limit``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = read()
    while loop.time() < deadline:
        await asyncio.sleep(quiet)
        now = read()
        if now == last:
            return
        last = now


def _without_invalidation(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the invalidation subscriber off (if this version has
    one): its own connection attempts would blur per-call counts."""
    if _has_invalidation():
        config["invalidation"] = False
    return config


async def scenario_g_retry_count(target: ChaosTarget) -> ScenarioReport:
    """(g) No retry storm: one failed call makes at most l2_retries + 1 attempts,
    counted at a proxy in front of Redis (connections and commands)."""
    s = target.settings
    limit = s.l2_retries + 1
    report = ScenarioReport(
        "g_retry_count", f"attempts per failed call <= l2_retries + 1 = {limit}, counted at a proxy"
    )
    m = report.measurements
    calls = 10
    async with target.proxy() as proxy:
        url = target.url_via(proxy.port)
        # Without the breaker in the way (a huge threshold), every call gets its
        # retries; without the invalidation subscriber, every connection is the call's.
        lone = _without_invalidation(s.cache_config(breaker_failure_threshold=1_000_000))
        durations: list[float] = []
        exceptions: list[str] = []

        async def timed_get(cache: CacheHierarchy, key: str) -> Any:
            started = time.perf_counter()
            try:
                return await cache.get(key, "default")
            except Exception as exc:
                exceptions.append(f"get({key!r}): {type(exc).__name__}: {exc}")
                return None
            finally:
                durations.append(time.perf_counter() - started)

        # 1. Connections refused (reset at accept): each attempt is one connection.
        proxy.reset_new()
        refused = CacheHierarchy.from_url(url, namespace=target.namespace, **lone)
        per_call: list[int] = []
        try:
            for i in range(calls):
                proxy.reset_counts()
                await timed_get(refused, f"g:refused:{i}")
                per_call.append(proxy.stats["accepted"])
        finally:
            await refused.shutdown()
            proxy.heal()
        m.extra["connections_per_refused_call"] = per_call
        report.check(
            "refused_call_attempts",
            max(per_call, default=0) <= limit and min(per_call, default=0) >= 1,
            f"connections per failed call {per_call} (limit {limit})",
        )

        # 2. Connection reset after the command reached the proxy: each attempt is one GET.
        proxy.set_delay(0.005)  # so the reset comes before the answer
        watched = CacheHierarchy.from_url(url, namespace=target.namespace, **lone)
        stop = asyncio.Event()

        async def cut_each_get() -> None:
            seen = 0
            limit_at = time.monotonic() + 30.0
            while not stop.is_set() and time.monotonic() < limit_at:
                now = proxy.stats["commands"].get("GET", 0)
                if now != seen:
                    seen = now
                    proxy.cut_all()
                await asyncio.sleep(0.001)

        cutter = asyncio.create_task(cut_each_get())
        gets: list[int] = []
        try:
            for i in range(calls):
                before = proxy.stats["commands"].get("GET", 0)
                await timed_get(watched, f"g:cut:{i}")
                gets.append(proxy.stats["commands"].get("GET", 0) - before)
        finally:
            stop.set()
            await cutter
            await watched.shutdown()
            proxy.heal()
        m.extra["gets_per_reset_call"] = gets
        report.check(
            "reset_call_attempts",
            max(gets, default=0) <= limit and min(gets, default=0) >= 1,
            f"GET commands per failed call {gets} (limit {limit})",
        )

        # 3. A timeout is not retried: one GET, at most one connection.
        quiet = CacheHierarchy.from_url(url, namespace=target.namespace, **lone)
        timeouts: list[tuple[int, int]] = []
        try:
            await quiet.start()  # one pooled connection
            proxy.blackhole()
            for i in range(calls):
                proxy.reset_counts()
                await timed_get(quiet, f"g:hole:{i}")
                stats = proxy.stats
                timeouts.append((stats["commands"].get("GET", 0), stats["accepted"]))
        finally:
            await quiet.shutdown()
            proxy.heal()
        m.extra["gets_and_connections_per_timed_out_call"] = timeouts
        report.check(
            "timeout_not_retried",
            all(g <= 1 and c <= 1 for g, c in timeouts) and any(g == 1 for g, _ in timeouts),
            f"(GETs, connections) per timed-out call: {timeouts}",
        )

        # 4. A burst of concurrent failing calls with the real breaker: no storm.
        burst = s.tasks
        stormy = CacheHierarchy.from_url(
            url, namespace=target.namespace, **_without_invalidation(s.cache_config())
        )
        try:
            proxy.reset_new()
            proxy.reset_counts()
            await asyncio.gather(*(timed_get(stormy, f"g:burst:{i}") for i in range(burst)))
            opened = stormy.get_stats()
            state_after_first = str(opened["circuit_state"])
            # A connect the kernel completed during the burst reaches the
            # proxy's accept loop later: let those land in the first count.
            await _settle(lambda: proxy.stats["accepted"])
            first = proxy.stats["accepted"]
            proxy.reset_counts()
            await asyncio.gather(*(timed_get(stormy, f"g:burst2:{i}") for i in range(burst)))
            second = proxy.stats["accepted"]
            later = stormy.get_stats()
            second_burst = {
                "short_circuited": int(later["l2_short_circuited"])
                - int(opened["l2_short_circuited"]),
                "l2_errors": int(later["l2_errors"]) - int(opened["l2_errors"]),
                "circuit_opens": int(later["circuit_opens"]) - int(opened["circuit_opens"]),
                "circuit_after": str(later["circuit_state"]),
            }
        finally:
            await stormy.shutdown()
            proxy.heal()
        m.extra["burst"] = {
            "calls": burst,
            "connections_first_burst": first,
            "circuit_after_first_burst": state_after_first,
            "connections_second_burst": second,
            "second_burst": second_burst,
        }
        report.check(
            "burst_attempts_bounded",
            first <= burst * limit,
            f"{burst} concurrent failing calls made {first} connection attempts "
            f"(limit {burst} x {limit} = {burst * limit})",
        )
        report.check(
            "open_breaker_sends_nothing",
            state_after_first == "open" and second <= 1,
            f"circuit {state_after_first} after the first burst; the second burst of "
            f"{burst} calls made {second} connection attempts (at most the probe's); "
            f"{second_burst}",
        )

        # 5. No call at all, Redis unreachable: what background work (the
        #    invalidation subscriber, the breaker's probe) does on its own.
        if _has_invalidation():
            idle_for = 3 * s.breaker_reset_timeout
            idle = CacheHierarchy.from_url(url, namespace=target.namespace, **s.cache_config())
            try:
                await idle.start()  # subscribed
                proxy.reset_new()
                proxy.cut_all()
                proxy.reset_counts()
                await asyncio.sleep(idle_for)
                background = proxy.stats["accepted"]
            finally:
                await idle.shutdown()
                proxy.heal()
            # Each failed resubscription counts for the breaker: at most
            # threshold of them (with their retries), then one probe per reset_timeout.
            bound = (
                s.breaker_failure_threshold * limit
                + math.ceil(idle_for / s.breaker_reset_timeout)
                + 1
            )
            m.extra["idle_connection_attempts"] = {"seconds": idle_for, "attempts": background}
            report.check(
                "idle_reconnects_bounded",
                background <= bound,
                f"{background} connection attempts in {idle_for:.1f}s with no call made "
                f"(bound: breaker_failure_threshold x {limit} + one probe per "
                f"breaker_reset_timeout = {bound})",
            )
    m.calls = len(durations)
    m.exceptions = len(exceptions)
    m.max_call_seconds = max(durations, default=0.0)
    m.p50_call_seconds = percentile(durations, 50)
    m.p99_call_seconds = percentile(durations, 99)
    over = [d for d in durations if d > s.call_limit]
    m.calls_over_limit = len(over)
    report.check(
        "no_exception_reaches_callers",
        not exceptions,
        f"{len(exceptions)} exceptions; " + "; ".join(exceptions[:_DETAILS]),
    )
    report.check(
        "every_call_within_deadline",
        not over,
        f"{len(over)} of {len(durations)} calls over {_ms(s.call_limit)}; max "
        f"{_ms(m.max_call_seconds)}",
    )
    return report


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ScenarioSpec:
    key: str  # what --only selects: "a" ... "g" ("f" selects f1 and f2)
    name: str
    destructive: bool  # needs a RedisServer it may kill, pause or reconfigure
    run: Callable[[ChaosTarget], Awaitable[ScenarioReport]]

    @property
    def group(self) -> str:
        return self.key[0]


SCENARIOS: Final[tuple[ScenarioSpec, ...]] = (
    ScenarioSpec("a", "a_kill9", True, scenario_a_kill),
    ScenarioSpec("b", "b_sigstop", True, scenario_b_sigstop),
    ScenarioSpec("c", "c_slow", True, scenario_c_slow),
    ScenarioSpec("d", "d_restart", True, scenario_d_restart),
    ScenarioSpec("e", "e_proxy", False, scenario_e_proxy),
    ScenarioSpec("f1", "f1_oom_noeviction", True, scenario_f1_noeviction),
    ScenarioSpec("f2", "f2_lru_eviction", True, scenario_f2_allkeys_lru),
    ScenarioSpec("g", "g_retry_count", False, scenario_g_retry_count),
)


async def run_scenario(spec: ScenarioSpec, target: ChaosTarget) -> ScenarioReport:
    """Run one scenario; a crash of the scenario itself becomes a failed check."""
    started = time.monotonic()
    try:
        report = await spec.run(target)
    except Exception as exc:
        report = ScenarioReport(spec.name, "scenario crashed")
        report.check(
            "scenario_ran",
            False,
            f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc(limit=8)),
        )
    report.seconds = round(time.monotonic() - started, 3)
    return report
