"""CacheHierarchy: an in-process L1 in front of a shared L2 (Redis).

Read path::

    get(key)
      ├─ L1 hit ──────────────────────────────────► value      (no await, no lock held across one)
      └─ L1 miss: validate key, note the key's write generation
           └─ L2 (GuardedL2: deadline, FIFO queue)
                ├─ hit: decode envelope ─ expired/corrupt? ─► miss (corrupt: counted, deleted)
                │        └─ promote into L1 with the remaining TTL, unless a local
                │           write or delete of the key happened meanwhile ──► value
                ├─ miss ──────────────────────────────► default
                └─ unavailable (down, slow, refusing) ► default   (never raises)

Write path (write-through): validate key, ttl and value (encode) before
touching anything; write L2; bump the key's write generation; write L1.
If L2 is unavailable the write still applies to L1 and the failure is
counted and logged.

Consistency: within one process, a read that raced with a local write never
leaves the older value in L1 (the write generation check). Across processes,
L1 entries live at most their TTL (or ``l1_ttl``); cross-process
invalidation is a separate feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, Self
from urllib.parse import quote

from resync_hierarchy._tasks import cancel_and_wait
from resync_hierarchy._types import MISSING, Clock, wall_clock
from resync_hierarchy.codec import Codec, CorruptValueError
from resync_hierarchy.config import HierarchyConfig
from resync_hierarchy.errors import CacheClosedError, InvalidKeyError, InvalidTTLError
from resync_hierarchy.hierarchy import hot_keys
from resync_hierarchy.hierarchy.invalidation import Invalidator
from resync_hierarchy.hierarchy.singleflight import SingleFlight
from resync_hierarchy.l1 import POLICIES, L1Store
from resync_hierarchy.l2.base import L2Backend
from resync_hierarchy.observe.latency import LatencyRecorder
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.observe.metrics import (
    TIMED_OPERATIONS,
    CollectorRegistry,
    HierarchySample,
    register_hierarchy_source,
)
from resync_hierarchy.resilience.guard import UNAVAILABLE_KINDS, GuardedL2, L2Unavailable
from resync_hierarchy.resilience.recovery import PendingWrite, RecoveryQueue

__all__ = ["CacheHierarchy", "Entry"]

_log = get_logger("resync_hierarchy.hierarchy")

_GENERATIONS = 1024  # stripes of the per-key write generation (a power of two)
_SWEEP_BUDGET = 2000  # expired L1 entries reclaimed per sweeper tick at most
_CLEAR_MIN_SECONDS = 10.0  # clear() scans the namespace: it gets a longer deadline
_REPLAY_BATCH = 200  # pending writes replayed per round trip
_L1_TIMING_EVERY = 64  # one L1 hit in this many is timed (timing costs as much as the hit)
_NEVER = 1 << 62  # a countdown that does not reach zero


class _Unavailable:
    """L2 did not answer: distinct from a miss, so fail-safe can step in."""


_UNAVAILABLE = _Unavailable()


class Entry(NamedTuple):
    """A cached value with its absolute expiry and write version."""

    value: Any
    expires_at: float | None
    version: int | None


def namespace_prefix(namespace: str) -> bytes:
    """The L2 key prefix of ``namespace``.

    The namespace is percent-encoded (every character but ASCII letters,
    digits and ``_.-~``), so the prefix never contains ``:`` or a glob
    metacharacter and the first ``:`` of a full key always ends the
    namespace: two namespaces can never produce the same full key.
    """
    return quote(namespace, safe="").encode("ascii") + b":"


class CacheHierarchy:
    """Two-tier cache. Build it with :meth:`from_url`, :meth:`from_config`
    or :meth:`from_env`; use it as ``async with cache:`` or call
    :meth:`start` and :meth:`shutdown`.

    Safe to share between the tasks of one event loop. Values returned from
    L1 are shared objects: treat them as read-only.
    """

    def __init__(
        self,
        config: HierarchyConfig,
        *,
        l2: L2Backend | None = None,
        clock: Clock = wall_clock,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``registry``: the Prometheus registry to export to (the default one
        if None); nothing is exported when ``config.metrics`` is False."""
        self.config = config
        self._clock = clock
        self._codec = Codec(
            max_value_bytes=config.max_value_bytes, signing_key=config.signing_key_bytes
        )
        backend = l2 if l2 is not None else _backend_for(config)
        self._prefix = namespace_prefix(config.namespace)
        self._l1: L1Store | None = (
            L1Store(
                max_entries=config.l1_max_entries,
                max_bytes=config.l1_max_bytes,
                shards=config.l1_shards,
                max_ttl=config.l1_ttl,
                clock=clock,
                policy=POLICIES[config.l1_policy],
                # Fail-safe keeps expired entries only while an L2 could fail.
                stale_grace=config.fail_safe_max_stale if backend is not None else 0.0,
            )
            if config.l1_enabled
            else None
        )
        self._l2: GuardedL2 | None = (
            GuardedL2(
                backend,
                timeout=config.l2_timeout,
                max_in_flight=config.l2_max_connections,
                retries=config.l2_retries,
                retry_backoff=config.l2_retry_backoff,
                retry_backoff_max=config.l2_retry_backoff_max,
                breaker_failure_threshold=config.breaker_failure_threshold,
                breaker_reset_timeout=config.breaker_reset_timeout,
                on_available=self._l2_available,
            )
            if backend is not None
            else None
        )
        self._invalidator: Invalidator | None = None
        if self._l2 is not None and config.invalidation:
            self._invalidator = Invalidator(
                self._l2,
                b"resync:inv:" + self._prefix[:-1],
                evict=self._evict_keys,
                evict_all=self._evict_all,
                trust=self._trust_l1,
                ping_interval=config.invalidation_ping_interval,
            )
        # Reads use _l1_read, None while L1 may be missing invalidations (see
        # invalidation.py); writes always go to _l1.
        self._l1_read: L1Store | None = self._l1 if self._invalidator is None else None
        self._recovery = RecoveryQueue(config.recovery_queue_max)
        self._replay_task: asyncio.Task[None] | None = None
        self._replay_wakeup = asyncio.Event()
        self._deleted_during_replay: dict[bytes, int] = {}
        self._generations = [0] * _GENERATIONS
        self._flight = SingleFlight()
        self._last_version = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False
        self._background_started = False
        self._closed = False
        # Plain integers: a Prometheus counter on the hit path would cost as much as the hit.
        self._l1_hits = 0
        self._l2_hits = 0
        self._misses = 0
        self._sets = 0
        self._deletes = 0
        self._corrupt = 0
        self._promotions = 0
        self._promotions_skipped = 0
        self._stale_served = 0
        self._write_races = 0
        self._replayed = 0
        self._replay_superseded = 0
        self._unavailable_misses = 0  # misses because L2 did not answer (and nothing stale)
        self._set_failures = 0  # writes that reached L1 but not L2 (kept for replay)
        self._delete_failures = 0
        self._last_ping_seconds: float | None = None  # from the latest health()
        self._latency: LatencyRecorder | None = None
        self._l1_timing_countdown = _NEVER
        if config.metrics:
            self._latency = LatencyRecorder(
                (operation, tier)
                for operation, tier in TIMED_OPERATIONS
                # without L2 everything is answered by L1; with L2 only reads may be
                if (tier == "l1") == (self._l2 is None) or operation in ("get", "get_many")
            )
            self._l1_timing_countdown = 0
            register_hierarchy_source(self, registry)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str | None = None,
        *,
        registry: CollectorRegistry | None = None,
        **overrides: Any,
    ) -> Self:
        """A hierarchy on ``url`` (``redis://…``, ``rediss://…``, ``unix://…``
        or ``memory://``); keyword ``overrides`` set any HierarchyConfig field.
        ``registry``: the Prometheus registry (the default one if None)."""
        if namespace is not None:
            overrides["namespace"] = namespace
        return cls(HierarchyConfig.from_url(url, **overrides), registry=registry)

    @classmethod
    def from_config(
        cls, config: HierarchyConfig, *, registry: CollectorRegistry | None = None
    ) -> Self:
        return cls(config, registry=registry)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        registry: CollectorRegistry | None = None,
        **overrides: Any,
    ) -> Self:
        """A hierarchy configured by ``RESYNC_CACHE_URL``, ``RESYNC_CACHE_NAMESPACE``
        and ``RESYNC_CACHE_<FIELD>`` variables (see :meth:`HierarchyConfig.from_env`)."""
        return cls(HierarchyConfig.from_env(environ, **overrides), registry=registry)

    def __repr__(self) -> str:
        l2 = self._l2.backend.description if self._l2 is not None else "none"
        return (
            f"<CacheHierarchy namespace={self.config.namespace!r} l2={l2!r} "
            f"l1={'off' if self._l1 is None else len(self._l1)}>"
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start background work (the L1 sweeper) and check L2 once.

        Never fails because L2 is down: the cache then serves from L1 and uses
        L2 again as soon as it answers. Idempotent.
        """
        self._ensure_open()
        if self._started:
            return
        self._started = True
        if self._invalidator is not None:
            # Give the subscription up to l2_timeout, so that L1 serves reads
            # from the first request on (it does not before it is subscribed).
            await self._invalidator.wait_subscribed(self.config.l2_timeout)
        if self._l2 is not None:
            try:
                await self._l2.call(self._l2.backend.ping)
            except L2Unavailable as exc:
                _log.warning(
                    "l2_unavailable_at_start",
                    backend=self._l2.backend.description,
                    kind=exc.kind,
                    namespace=self.config.namespace,
                )
        if self.config.hot_keys_snapshot is not None:
            await hot_keys.preload(self)  # fill L1 from L2 before traffic; never raises

    async def shutdown(self) -> None:
        """Stop background work and close L2 connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.config.hot_keys_snapshot is not None:
            hot_keys.save(self)  # this process's most used L1 keys; never raises
        for task in (self._sweeper, self._replay_task, *list(self._background)):
            await cancel_and_wait(task)
        if self._recovery and self._l2 is not None:
            _log.warning(
                "shutdown_with_pending_writes",
                namespace=self.config.namespace,
                pending=len(self._recovery),
                clear_pending=self._recovery.clear_version is not None,
            )
        if self._invalidator is not None:
            await self._invalidator.aclose()
        if self._l2 is not None:
            await self._l2.aclose()

    async def stop(self) -> None:
        """Legacy alias of :meth:`shutdown`."""
        await self.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ reads

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` from L1, else from L2 (promoted into L1), else ``default``."""
        l1 = self._l1_read
        if l1 is not None and type(key) is str:
            if self._l1_timing_countdown:
                self._l1_timing_countdown -= 1
                value = l1.get(key)
                if value is not MISSING:
                    self._l1_hits += 1
                    return value
            else:
                return await self._timed_get(l1, key, default)
        return await self._get_through(key, default)

    def get_local(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` if this process's L1 holds it (and L1 is
        trusted), else ``default``: no await, never L2. A hit counts as an L1
        hit; a miss is not counted, since the caller goes on to :meth:`get`.
        For hot paths that can answer without suspending (``@cached`` does)."""
        l1 = self._l1_read
        if l1 is not None and type(key) is str:
            value = l1.get(key)
            if value is not MISSING:
                self._l1_hits += 1
                return value
        return default

    async def _timed_get(self, l1: L1Store, key: str, default: Any) -> Any:
        self._l1_timing_countdown = _L1_TIMING_EVERY - 1
        started = time.perf_counter()
        value = l1.get(key)
        if value is MISSING:
            return await self._get_through(key, default)
        self._l1_hits += 1
        if self._latency is not None:
            self._latency.observe(("get", "l1"), time.perf_counter() - started)
        return value

    async def _get_through(self, key: str, default: Any) -> Any:
        full = self._full_key(key)
        l1 = self._l1_read
        if l1 is not None and type(key) is not str:  # a str subclass skipped the fast path
            value = l1.get(key)
            if value is not MISSING:
                self._l1_hits += 1
                return value
        started = time.perf_counter()
        value = await self._read_l2(key, full)
        if self._latency is not None:
            self._latency.observe(
                ("get", "l1" if self._l2 is None else "l2"), time.perf_counter() - started
            )
        if value is _UNAVAILABLE:
            value = self._fail_safe(key)
            if value is MISSING:
                self._unavailable_misses += 1
        elif value is not MISSING:
            self._l2_hits += 1
            return value
        if value is MISSING:
            self._misses += 1
            return default
        return value

    def _fail_safe(self, key: str) -> Any:
        """L2 is unavailable: the L1 entry, even expired within
        fail_safe_max_stale, or MISSING. With fail_safe_max_stale=0 an L1
        that may have missed invalidations (untrusted) answers nothing."""
        if self._l1 is None:
            return MISSING
        if self._l1_read is None and self.config.fail_safe_max_stale == 0:
            return MISSING
        value = self._l1.get_stale(key)
        if value is not MISSING:
            self._stale_served += 1
        return value

    async def _read_l2(self, key: str, full: bytes) -> Any:
        """The value of ``key`` in L2 (promoted into L1), MISSING, or _UNAVAILABLE."""
        l2 = self._l2
        if l2 is None:
            return MISSING
        self._ensure_open()
        generation = self._generation(key)
        try:
            blob = await l2.call(l2.backend.get, full)
        except L2Unavailable:
            return _UNAVAILABLE
        pending = self._recovery.get(full) if self._recovery else None
        if pending is not None:  # our newer write has not reached L2 yet
            blob = pending.blob
        elif self._deleted_during_replay and full in self._deleted_during_replay:
            return MISSING  # deleted here; a replay may have written an older value back
        if blob is None:
            return MISSING
        return self._accept_from_l2(key, full, blob, generation)

    def _accept_from_l2(self, key: str, full: bytes, blob: bytes, generation: int) -> Any:
        """Decode an L2 value and promote it into L1; MISSING if expired or corrupt."""
        try:
            envelope = self._codec.decode(blob)
        except CorruptValueError as exc:
            self._corrupt += 1
            _log.warning(
                "corrupt_value",
                reason=exc.reason,
                namespace=self.config.namespace,
                bytes=len(blob),
            )
            if self._l2 is not None:
                self._spawn(_delete_if_unchanged(self._l2, full, blob))
            return MISSING
        expires_at = envelope.expires_at
        if expires_at is not None and expires_at <= self._clock():
            return MISSING
        l1 = self._l1
        if l1 is not None:
            if self._generations[hash(key) & (_GENERATIONS - 1)] == generation:
                l1.set(key, envelope.value, expires_at=expires_at, size=len(blob))
                self._promotions += 1
            else:
                self._promotions_skipped += 1
        return envelope.value

    async def get_entry(self, key: str, *, l2_only: bool = False) -> Entry | None:
        """``Entry(value, expires_at, version)`` of ``key``, or None: like
        :meth:`get`, for callers that carry the expiry and the write version
        on (a migration copying a value between caches). ``expires_at`` is
        absolute epoch seconds or None; ``version`` is the write version
        when the value came from L2 (None from L1, which does not keep it).
        ``l2_only`` skips L1, to get the version; if L2 is unavailable the
        answer still comes from L1."""
        full = self._full_key(key)
        l1 = self._l1_read
        if l1 is not None and not l2_only:
            hit = l1.get_with_expiry(key)
            if hit is not None:
                self._l1_hits += 1
                return Entry(hit[0], hit[1], None)
        l2 = self._l2
        blob: bytes | None = None
        if l2 is not None:
            self._ensure_open()
            try:
                blob = await l2.call(l2.backend.get, full)
            except L2Unavailable:
                if l1 is not None and (hit := l1.get_with_expiry(key)) is not None:
                    return Entry(hit[0], hit[1], None)
        if blob is not None:
            try:
                envelope = self._codec.decode(blob)
            except CorruptValueError:
                envelope = None
            if envelope is not None and (
                envelope.expires_at is None or envelope.expires_at > self._clock()
            ):
                self._l2_hits += 1
                return Entry(envelope.value, envelope.expires_at, envelope.version)
        self._misses += 1
        return None

    async def store_if_newer(
        self,
        key: str,
        value: Any,
        *,
        expires_at: float | None,
        version: int,
        unless_changed_since: int | None = None,
    ) -> bool:
        """Write ``value`` to L2 only if L2 holds no newer version of ``key``
        (and then to L1, announcing it); True if written. Best effort: False
        too when L2 is unavailable. For copies that must never overwrite a
        write made meanwhile (migration fallback and backfill); ``version``
        is a write version (wall-clock microseconds) taken before the source
        was read. ``unless_changed_since`` (from :meth:`write_generation`)
        skips the write if the key was written, deleted or invalidated here
        since then: a delete leaves no version in Redis to compare with."""
        full = self._full_key(key)
        if unless_changed_since is not None and self._generation(key) != unless_changed_since:
            return False
        if expires_at is not None and expires_at <= self._clock():
            return False
        encoded = self._codec.encode(value, expires_at=expires_at, version=version)
        generation = self._generation(key)
        l2 = self._l2
        if l2 is not None:
            self._ensure_open()
            ttl_ms = (
                None if expires_at is None else max(1, round((expires_at - self._clock()) * 1000))
            )
            try:
                applied = await l2.call(
                    l2.backend.write_if_newer, [(full, encoded.blob, version, ttl_ms)]
                )
            except L2Unavailable:
                return False
            if not applied[0]:
                return False
            if self._invalidator is not None:
                self._invalidator.announce((key,))
        self._fill_after_write(key, generation, encoded.value, expires_at, len(encoded.blob))
        return True

    def write_generation(self, key: str) -> int:
        """A counter that moves whenever ``key`` is written or deleted in this
        process or an invalidation for it arrives (see :meth:`store_if_newer`)."""
        return self._generation(key)

    def new_version(self) -> int:
        """A write version (wall-clock microseconds, increasing in this process)."""
        return self._next_version()

    async def exists(self, key: str) -> bool:
        """True if ``key`` holds a live value in L1 or L2."""
        full = self._full_key(key)
        if self._l1_read is not None and self._l1_read.contains(key):
            return True
        l2 = self._l2
        if l2 is None:
            return False
        self._ensure_open()
        try:
            return await l2.call(l2.backend.exists, full)
        except L2Unavailable:  # answer as get() would: from L1, fail-safe included
            return self._l1 is not None and self._l1.get_stale(key) is not MISSING

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The keys found, with their values: L1 first, then one L2 round trip
        for all L1 misses. Keys not found are absent from the result."""
        started = time.perf_counter()
        wanted = list(dict.fromkeys(keys))
        fulls = [self._full_key(k) for k in wanted]
        found: dict[str, Any] = {}
        pending: list[tuple[str, bytes]] = []
        l1 = self._l1_read
        for key, full in zip(wanted, fulls, strict=True):
            value = l1.get(key) if l1 is not None else MISSING
            if value is MISSING:
                pending.append((key, full))
            else:
                self._l1_hits += 1
                found[key] = value
        l2 = self._l2
        if pending and l2 is not None:
            self._ensure_open()
            generations = [self._generation(k) for k, _ in pending]
            available = True
            try:
                blobs = await l2.call(l2.backend.get_many, [f for _, f in pending])
            except L2Unavailable:
                available = False
                blobs = [None] * len(pending)
            recovery = self._recovery
            for (key, full), stored, generation in zip(pending, blobs, generations, strict=True):
                blob = stored
                if recovery and (queued := recovery.get(full)) is not None:
                    blob = queued.blob
                elif self._deleted_during_replay and full in self._deleted_during_replay:
                    blob = None  # deleted here; a replay may have written an older value back
                if not available:
                    value = self._fail_safe(key)
                    if value is not MISSING:
                        found[key] = value
                        continue
                    self._unavailable_misses += 1
                value = (
                    MISSING if blob is None else self._accept_from_l2(key, full, blob, generation)
                )
                if value is MISSING:
                    self._misses += 1
                else:
                    self._l2_hits += 1
                    found[key] = value
        else:
            self._misses += len(pending)
        if self._latency is not None and wanted:
            tier = "l2" if pending and l2 is not None else "l1"
            self._latency.observe(("get_many", tier), time.perf_counter() - started)
        return found

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Awaitable[Any]] | Callable[[], Any],
        ttl: float | None = None,
    ) -> Any:
        """The cached value of ``key``; on a miss, ``factory()`` (awaited if it
        returns an awaitable) is called once per key per process however many
        callers wait, and its result is stored and returned to all of them.

        If ``factory`` raises, every waiting caller gets the exception and
        nothing is cached. The value returned is the stored form (a tuple
        comes back as a list), as any later ``get`` would return it.
        """
        l1 = self._l1_read
        if l1 is not None and type(key) is str:
            value = l1.get(key)
            if value is not MISSING:
                self._l1_hits += 1
                return value
        full = self._full_key(key)
        ttl_seconds = self._resolve_ttl(ttl)
        self._ensure_open()
        return await self._flight.run(key, lambda: self._load(key, full, factory, ttl_seconds))

    async def _load(
        self,
        key: str,
        full: bytes,
        factory: Callable[[], Awaitable[Any]] | Callable[[], Any],
        ttl_seconds: float | None,
    ) -> Any:
        if self._l1_read is not None:
            value = self._l1_read.get(key)
            if value is not MISSING:
                self._l1_hits += 1
                return value
        value = await self._read_l2(key, full)
        if value is not MISSING and value is not _UNAVAILABLE:
            self._l2_hits += 1
            return value
        if value is _UNAVAILABLE:
            stale = self._fail_safe(key)
            if stale is not MISSING:
                return stale
            self._unavailable_misses += 1
        self._misses += 1
        try:
            produced = factory()
            if inspect.isawaitable(produced):
                produced = await produced
        except Exception:
            if self._l1 is not None:
                stale = self._l1.get_stale(key)
                if stale is not MISSING:
                    self._stale_served += 1
                    _log.warning("factory_failed_serving_stale", namespace=self.config.namespace)
                    return stale
            raise
        return await self._write(key, full, produced, ttl_seconds)

    # ------------------------------------------------------------------ writes

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Write ``value`` through to L2 and L1. ``ttl`` in seconds (None: default_ttl).

        Raises a :class:`CacheError` subclass, changing nothing, for a bad key,
        ttl or value. Never raises because L2 is unavailable.
        """
        full = self._full_key(key)
        ttl_seconds = self._resolve_ttl(ttl)
        started = time.perf_counter()
        await self._write(key, full, value, ttl_seconds)
        if self._latency is not None:
            self._latency.observe(
                ("set", "l1" if self._l2 is None else "l2"), time.perf_counter() - started
            )

    async def _write(self, key: str, full: bytes, value: Any, ttl_seconds: float | None) -> Any:
        self._ensure_open()
        expires_at = None if ttl_seconds is None else self._clock() + ttl_seconds
        version = self._next_version()
        encoded = self._codec.encode(value, expires_at=expires_at, version=version)
        generation = self._generation(key)
        l2 = self._l2
        if l2 is not None:
            try:
                await l2.call(l2.backend.set, full, encoded.blob, _ttl_ms(ttl_seconds))
            except L2Unavailable as exc:
                self._set_failures += 1
                self._keep_for_replay(
                    exc, PendingWrite(full, key, encoded.blob, version, expires_at)
                )
                if exc.kind == "oom":
                    await self._drop_refused([key], [full])
            else:
                if self._recovery:
                    self._recovery.supersede(full)
                self._deleted_during_replay.pop(full, None)
                if self._invalidator is not None:
                    self._invalidator.announce((key,))
        self._fill_after_write(key, generation, encoded.value, expires_at, len(encoded.blob))
        self._sets += 1
        return encoded.value

    def _fill_after_write(
        self, key: str, generation: int, value: Any, expires_at: float | None, size: int
    ) -> None:
        """Put a written value into L1, unless the key was written here or
        invalidated from elsewhere while the L2 write was in flight: then
        Redis may hold the other write's value, so this one must not stay in
        L1 (the next read goes to L2)."""
        self._fill(key, self._generation(key) == generation, value, expires_at, size)

    def _fill(
        self, key: str, untouched: bool, value: Any, expires_at: float | None, size: int
    ) -> None:
        self._bump(key)
        l1 = self._l1
        if l1 is None:
            return
        if untouched:
            l1.set(key, value, expires_at=expires_at, size=size)
        else:
            self._write_races += 1
            l1.delete(key)

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Write every item in one L2 round trip. All keys and values are checked
        first: one bad item raises and nothing is written."""
        ttl_seconds = self._resolve_ttl(ttl)
        expires_at = None if ttl_seconds is None else self._clock() + ttl_seconds
        ttl_ms = _ttl_ms(ttl_seconds)
        versions = [self._next_version() for _ in mapping]
        items = [
            (key, self._full_key(key), self._codec.encode(value, expires_at=expires_at, version=v))
            for (key, value), v in zip(mapping.items(), versions, strict=True)
        ]
        if not items:
            return
        self._ensure_open()
        generations = [self._generation(key) for key, _, _ in items]
        l2 = self._l2
        started = time.perf_counter()
        if l2 is not None:
            try:
                await l2.call(
                    l2.backend.set_many, [(full, enc.blob, ttl_ms) for _, full, enc in items]
                )
            except L2Unavailable as exc:
                self._set_failures += len(items)
                for (key, full, enc), version in zip(items, versions, strict=True):
                    self._keep_for_replay(
                        exc, PendingWrite(full, key, enc.blob, version, expires_at)
                    )
                if exc.kind == "oom":
                    await self._drop_refused([k for k, _, _ in items], [f for _, f, _ in items])
            else:
                if self._recovery:
                    for _, full, _ in items:
                        self._recovery.supersede(full)
                for _, full, _ in items:
                    self._deleted_during_replay.pop(full, None)
                if self._invalidator is not None:
                    self._invalidator.announce(key for key, _, _ in items)
        # Compare every generation before bumping any: keys of one batch may
        # share a generation stripe.
        unchanged = [
            self._generation(key) == generation
            for (key, _, _), generation in zip(items, generations, strict=True)
        ]
        for (key, _, encoded), untouched in zip(items, unchanged, strict=True):
            self._fill(key, untouched, encoded.value, expires_at, len(encoded.blob))
        self._sets += len(items)
        if self._latency is not None:
            self._latency.observe(
                ("set_many", "l1" if l2 is None else "l2"), time.perf_counter() - started
            )

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from both tiers; True if it existed in either."""
        return await self._delete_many([key], "delete") == 1

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Remove ``keys`` from both tiers in one L2 round trip; returns how
        many existed in either tier."""
        return await self._delete_many(keys, "delete_many")

    async def _delete_many(self, keys: Iterable[str], operation: str) -> int:
        wanted = list(dict.fromkeys(keys))
        fulls = [self._full_key(k) for k in wanted]
        if not wanted:
            return 0
        self._ensure_open()
        started = time.perf_counter()
        in_l2 = [False] * len(wanted)
        l2 = self._l2
        if l2 is not None:
            if self._recovery or (self._replay_task is not None and not self._replay_task.done()):
                # A replay could land after this DEL and bring an older value
                # back; the replay then deletes again with this version. Noted
                # before the DEL is sent, so no ordering of replies escapes it.
                version = self._next_version()
                for full in fulls:
                    self._deleted_during_replay[full] = version
            try:
                in_l2 = await l2.call(l2.backend.delete_many, fulls)
            except L2Unavailable as exc:
                self._delete_failures += len(wanted)
                for key, full in zip(wanted, fulls, strict=True):
                    self._keep_for_replay(
                        exc, PendingWrite(full, key, None, self._next_version(), None)
                    )
            else:
                if self._recovery:
                    for full in fulls:
                        self._recovery.supersede(full)
                if self._invalidator is not None:
                    self._invalidator.announce(wanted)
        removed = 0
        l1 = self._l1
        for key, existed in zip(wanted, in_l2, strict=True):
            self._bump(key)
            in_l1 = l1.delete(key) if l1 is not None else False
            removed += existed or in_l1
        self._deletes += len(wanted)
        if self._latency is not None:
            self._latency.observe(
                (operation, "l1" if l2 is None else "l2"), time.perf_counter() - started
            )
        return removed

    async def clear(self) -> None:
        """Remove every key of this namespace from both tiers (SCAN + UNLINK in
        L2, never FLUSHDB); other namespaces are untouched. The L2 part may
        take longer than ``l2_timeout`` on a large namespace."""
        self._ensure_open()
        for index in range(_GENERATIONS):
            self._generations[index] += 1
        if self._l1 is not None:
            self._l1.clear()
        l2 = self._l2
        if l2 is None:
            return
        version = self._next_version()
        deadline = max(_CLEAR_MIN_SECONDS, 100 * l2.timeout)
        try:
            await l2.call_within(deadline, l2.backend.clear_prefix, self._prefix)
        except L2Unavailable as exc:
            self._recovery.record_clear(version)
            _log.warning("clear_kept_for_replay", namespace=self.config.namespace, kind=exc.kind)
        else:
            self._recovery.record_clear(version)
            self._recovery.clear_version = None  # done: nothing older is left to replay
            if self._invalidator is not None:
                self._invalidator.announce_clear()

    # ------------------------------------------------------------------ recovery

    def _keep_for_replay(self, exc: L2Unavailable, write: PendingWrite) -> None:
        """A write could not reach L2 because L2 is unavailable: keep it for
        replay. Other failures (OOM, no permission) are counted, not kept:
        Redis answered, and replaying would fail the same way."""
        if exc.kind in UNAVAILABLE_KINDS:
            self._recovery.record(write)
            if write.blob is not None:  # a newer local write than any delete noted
                self._deleted_during_replay.pop(write.full_key, None)
            self._ensure_replayer()

    async def _drop_refused(self, keys: list[str], fulls: list[bytes]) -> None:
        """Redis refused a write for lack of memory (maxmemory, noeviction)
        and still holds the value it was to replace. Delete that value (DEL
        needs no memory) and announce it, so that no process reads it as
        current: a miss instead of an outdated value."""
        l2 = self._l2
        if l2 is None:  # pragma: no cover - only called after an L2 write
            return
        with contextlib.suppress(L2Unavailable):
            await l2.call(l2.backend.delete_many, fulls)
            if self._invalidator is not None:
                self._invalidator.announce(keys)

    def _l2_available(self) -> None:
        """L2 answers again (called by GuardedL2): resubscribe and replay now."""
        if self._invalidator is not None:
            self._invalidator.wake()
        if self._recovery:
            self._replay_wakeup.set()
            self._ensure_replayer()

    def _ensure_replayer(self) -> None:
        if self._closed or (self._replay_task is not None and not self._replay_task.done()):
            return
        self._replay_task = asyncio.get_running_loop().create_task(
            self._replay_until_done(), name="resync-replay"
        )

    async def _replay_until_done(self) -> None:
        """Replay until nothing is pending. After a failed attempt, wait for
        L2 to come back (woken by GuardedL2) or ``breaker_reset_timeout``,
        whichever is first, so writes are replayed even in a process whose
        reads all hit L1 and that makes no L2 call of its own."""
        wakeup = self._replay_wakeup
        while self._recovery and not self._closed:
            wakeup.clear()
            replayed = await self._replay()
            self._deleted_during_replay.clear()
            if replayed:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.breaker_reset_timeout):
                    await wakeup.wait()

    async def _replay(self) -> bool:
        """Write what was kept during the outage, oldest first, each only if
        L2 holds no newer version of the key. Returns False at the first
        failure (what is left stays queued)."""
        l2 = self._l2
        recovery = self._recovery
        if l2 is None:  # pragma: no cover - nothing is kept without an L2
            return True
        started = time.monotonic()
        replayed_before = self._replayed + self._replay_superseded
        try:
            if recovery.clear_version is not None:
                await self._replay_clear(l2, recovery.clear_version)
                recovery.clear_version = None
                if self._invalidator is not None:
                    self._invalidator.announce_clear()
            while True:
                batch = recovery.oldest(_REPLAY_BATCH)
                if not batch:
                    break
                now = self._clock()
                items: list[tuple[bytes, bytes | None, int, int | None]] = []
                for write in batch:
                    ttl_ms: int | None = None
                    blob = write.blob
                    if blob is not None and write.expires_at is not None:
                        left = write.expires_at - now
                        if left <= 0:
                            blob = None  # expired meanwhile: what it replaced is gone too
                        else:
                            ttl_ms = max(1, round(left * 1000))
                    items.append((write.full_key, blob, write.version, ttl_ms))
                applied = await l2.call(l2.backend.write_if_newer, items)
                await self._undo_replays_behind_deletes(l2, batch, applied)
                for write, done in zip(batch, applied, strict=True):
                    if not recovery.done(write):
                        continue  # replaced while in flight: the newer one replays next
                    if done:
                        self._replayed += 1
                        if self._invalidator is not None:
                            self._invalidator.announce((write.key,))
                    else:
                        # Another process wrote a newer value meanwhile: ours is
                        # outdated, and so is the copy in this process's L1.
                        self._replay_superseded += 1
                        self._bump(write.key)
                        if self._l1 is not None:
                            self._l1.delete(write.key)
        except L2Unavailable as exc:
            if exc.kind != "circuit_open":
                _log.warning(
                    "replay_interrupted",
                    namespace=self.config.namespace,
                    kind=exc.kind,
                    pending=len(recovery),
                )
            return False
        _log.info(
            "replay_done",
            namespace=self.config.namespace,
            writes=self._replayed + self._replay_superseded - replayed_before,
            seconds=round(time.monotonic() - started, 3),
        )
        return True

    async def _undo_replays_behind_deletes(
        self, l2: GuardedL2, batch: list[PendingWrite], applied: list[bool]
    ) -> None:
        """A delete of a key reached Redis while that key's older write was
        being replayed, and the replay landed after it: delete again, only
        if nothing newer than the delete is there."""
        deleted = self._deleted_during_replay
        if not deleted:
            return
        undo = [
            (write.full_key, None, deleted[write.full_key], None)
            for write, done in zip(batch, applied, strict=True)
            if done and deleted.get(write.full_key, -1) > write.version
        ]
        if undo:
            await l2.call(l2.backend.write_if_newer, undo)

    async def _replay_clear(self, l2: GuardedL2, version: int) -> None:
        """Delete the namespace's keys written before the ``clear()`` at ``version``."""
        pages = l2.backend.scan_prefix(self._prefix)
        try:
            while True:
                try:
                    page = await l2.call(anext, pages)
                except StopAsyncIteration:
                    return
                await l2.call(
                    l2.backend.write_if_newer, [(key, None, version, None) for key in page]
                )
        finally:
            await pages.aclose()

    # ------------------------------------------------------------------ introspection

    def size(self) -> int:
        """Entries held in L1 (legacy contract)."""
        return len(self._l1) if self._l1 is not None else 0

    def get_stats(self) -> dict[str, Any]:
        """Counters since start. Plain integers, cheap to read."""
        l1 = self._l1.stats() if self._l1 is not None else {}
        l2 = self._l2
        return {
            "namespace": self.config.namespace,
            "l1_hits": self._l1_hits,
            "l2_hits": self._l2_hits,
            "misses": self._misses,
            "sets": self._sets,
            "deletes": self._deletes,
            "l1_entries": l1.get("entries", 0),
            "l1_bytes": l1.get("bytes", 0),
            "l1_evictions": l1.get("evictions", 0),
            "l1_expirations": l1.get("expirations", 0),
            "l1_rejected": l1.get("rejected", 0),
            "l2_errors": l2.error_count if l2 is not None else 0,
            "l2_errors_by_kind": dict(l2.errors) if l2 is not None else {},
            "l2_in_flight": l2.limiter.in_use if l2 is not None else 0,
            "l2_waiting": l2.limiter.waiting if l2 is not None else 0,
            "corrupt_values": self._corrupt,
            "promotions": self._promotions,
            "promotions_skipped": self._promotions_skipped,
            "loads": self._flight.started,
            "loads_joined": self._flight.joined,
            "stale_served": self._stale_served,
            "write_races": self._write_races,
            "l2_retries": l2.retried if l2 is not None else 0,
            "l2_short_circuited": l2.short_circuited if l2 is not None else 0,
            "circuit_state": l2.circuit_state if l2 is not None else "closed",
            "circuit_opens": l2.breaker.opens if l2 is not None else 0,
            "recovery_pending": len(self._recovery),
            "recovery_overflowed": self._recovery.overflowed,
            "recovery_replayed": self._replayed,
            "recovery_superseded": self._replay_superseded,
            "l1_trusted": self._l1_read is not None,
            "invalidation": (
                self._invalidator.stats() if self._invalidator is not None else {"enabled": False}
            ),
        }

    def metric_sample(self) -> HierarchySample | None:
        """This hierarchy's numbers for the Prometheus collector (read at
        scrape time, from the scraping thread); None once shut down or with
        ``metrics=False``."""
        if self._closed or self._latency is None:
            return None
        l2 = self._l2
        write_tier = "l1" if l2 is None else "l2"
        misses = self._misses - self._unavailable_misses
        requests = {
            ("get", "l1", "hit"): self._l1_hits,
            ("get", "l1", "stale"): self._stale_served,
            ("get", write_tier, "miss"): misses,
            ("get", "l2", "hit"): self._l2_hits,
            ("get", "l2", "error"): self._unavailable_misses,
            ("set", write_tier, "ok"): self._sets - self._set_failures,
            ("set", "l2", "error"): self._set_failures,
            ("delete", write_tier, "ok"): self._deletes - self._delete_failures,
            ("delete", "l2", "error"): self._delete_failures,
        }
        sample = HierarchySample(
            namespace=self.config.namespace,
            requests=requests,
            latency=list(self._latency.snapshot()),
            l1=self._l1.stats() if self._l1 is not None else None,
            l1_trusted=self._l1_read is not None,
            loads=self._flight.started,
            corrupt_values=self._corrupt,
        )
        if l2 is not None:
            sample.l2_errors = dict(l2.errors)
            sample.l2_retries = l2.retried
            sample.l2_up = l2.circuit_state == "closed" and not l2.unhealthy
            sample.l2_in_flight = l2.limiter.in_use
            sample.l2_waiting = l2.limiter.waiting
            sample.circuit_state = l2.circuit_state
            sample.circuit_opens = l2.breaker.opens
            sample.recovery_depth = len(self._recovery)
            sample.recovery_overflowed = self._recovery.overflowed
            sample.recovery_replayed = self._replayed
            sample.l2_ping_seconds = self._last_ping_seconds
            if self._invalidator is not None:
                stats = self._invalidator.stats()
                sample.invalidation = {
                    "sent": int(stats["published_keys"]),
                    "received": int(stats["received_keys"]),
                    "gaps": int(stats["gaps"]),
                }
        return sample

    async def iter_keys(self, batch: int = 500) -> AsyncIterator[list[str]]:
        """Batches of this namespace's keys: L2's (by SCAN) when there is an L2,
        else L1's. Keys written during the scan may or may not appear."""
        l2 = self._l2
        if l2 is None:
            keys = self._l1.keys() if self._l1 is not None else []
            for start in range(0, len(keys), batch):
                yield keys[start : start + batch]
            return
        self._ensure_open()
        prefix_length = len(self._prefix)
        pages = l2.backend.scan_prefix(self._prefix, batch)
        while True:
            try:
                page = await l2.call(anext, pages)
            except StopAsyncIteration:
                return
            except L2Unavailable:
                await pages.aclose()
                raise
            yield [k[prefix_length:].decode("utf-8", "surrogateescape") for k in page]

    async def l2_summary(self) -> dict[str, Any]:
        """For operators: this namespace's key count in L2 (a full SCAN) and
        the server's facts. ``{"status": "disabled"}`` without an L2;
        ``{"status": "down", "error": ...}`` when L2 does not answer."""
        l2 = self._l2
        if l2 is None:
            return {"status": "disabled"}
        try:
            server = await l2.call(l2.backend.info)
            count = 0
            async for page in self.iter_keys():
                count += len(page)
        except L2Unavailable as exc:
            return {"status": "down", "error": exc.kind, "backend": l2.backend.description}
        return {
            "status": "ok",
            "backend": l2.backend.description,
            "namespace_keys": count,
            "server": server,
        }

    def get_detailed_metrics(self) -> dict[str, Any]:
        """Legacy alias of :meth:`get_stats`."""
        return self.get_stats()

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded"|"down", "l1": {...}, "l2": {...}}``.

        ``ok``: every configured tier answers. ``degraded``: L2 does not answer
        but L1 serves. ``down``: nothing can serve (L2 down and L1 off, or
        the cache is shut down). Never raises; waits at most ``l2_timeout``.
        """
        try:
            return await self._health()
        except Exception as exc:  # health must answer whatever happens
            return {
                "status": "down",
                "error": f"{type(exc).__name__}: {exc}",
                "l1": {},
                "l2": {},
            }

    async def _health(self) -> dict[str, Any]:
        l1_info: dict[str, Any] = {
            "enabled": self._l1 is not None,
            "status": "disabled" if self._l1 is None else "closed" if self._closed else "ok",
            # False while L1 may have missed invalidations: reads then go to L2.
            "trusted": self._l1_read is not None,
        }
        if self._l1 is not None:
            stats = self._l1.stats()
            l1_info.update(stats)
            l1_info["fill_ratio"] = round(
                max(
                    stats["entries"] / max(stats["max_entries"], 1),
                    stats["bytes"] / max(stats["max_bytes"], 1),
                ),
                4,
            )
        l2 = self._l2
        l2_info: dict[str, Any]
        if self._closed:
            return {
                "status": "down",
                "reason": "cache is shut down",
                "l1": l1_info,
                "l2": {"status": "closed"},
            }
        if l2 is None:
            l2_info = {"status": "disabled", "backend": "none"}
            return {"status": "ok", "l1": l1_info, "l2": l2_info}
        l2_info = {
            "backend": l2.backend.description,
            "timeout_seconds": l2.timeout,
            "in_flight": l2.limiter.in_use,
            "waiting": l2.limiter.waiting,
            "errors": l2.error_count,
            "circuit_state": l2.circuit_state,
            "recovery_pending": len(self._recovery),
            "recovery_overflowed": self._recovery.overflowed,
            "errors_by_kind": dict(l2.errors),
        }
        if l2.last_error is not None and l2.last_error_at is not None:
            # An error Redis answered with (noperm, oom) leaves PING working:
            # the latest error is shown even while the status is ok.
            l2_info["last_error"] = l2.last_error
            l2_info["last_error_seconds_ago"] = round(time.monotonic() - l2.last_error_at, 3)
        started = time.perf_counter()
        try:
            await l2.call(l2.backend.ping)
        except L2Unavailable as exc:
            self._last_ping_seconds = None
            l2_info.update(status="down", error=exc.kind, last_error=l2.last_error)
            status = "degraded" if self._l1 is not None else "down"
        else:
            self._last_ping_seconds = time.perf_counter() - started
            l2_info.update(status="ok", ping_ms=round(self._last_ping_seconds * 1000, 3))
            status = "ok"
        return {"status": status, "l1": l1_info, "l2": l2_info}

    # ------------------------------------------------------------------ helpers

    def _full_key(self, key: str) -> bytes:
        """Validate ``key`` and return its L2 key. Raises InvalidKeyError."""
        if not isinstance(key, str):
            raise InvalidKeyError(
                f"cache keys must be str, got {type(key).__name__} {key!r:.80}; "
                "convert the key to a str first (e.g. f'user:{user_id}')"
            )
        if not key:
            raise InvalidKeyError("cache key must not be empty; use a non-empty str")
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(
                f"cache key {key!r:.80} is not valid Unicode text (lone surrogate at "
                f"position {exc.start}); keys must encode as UTF-8"
            ) from exc
        if len(encoded) > self.config.max_key_bytes:
            raise InvalidKeyError(
                f"cache key is {len(encoded)} bytes of UTF-8, over max_key_bytes="
                f"{self.config.max_key_bytes}; hash long keys (e.g. hashlib.blake2b) or raise "
                "max_key_bytes"
            )
        return self._prefix + encoded

    def _resolve_ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return self.config.default_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
            raise InvalidTTLError(
                f"ttl must be a positive number of seconds or None (default_ttl), got {ttl!r}"
            )
        if ttl <= 0:
            raise InvalidTTLError(
                f"ttl must be > 0 seconds, got {ttl}; use delete() to remove a key"
            )
        return float(ttl)

    def _generation(self, key: str) -> int:
        return self._generations[hash(key) & (_GENERATIONS - 1)]

    def _bump(self, key: str) -> None:
        self._generations[hash(key) & (_GENERATIONS - 1)] += 1

    def _next_version(self) -> int:
        version = max(self._last_version + 1, int(self._clock() * 1_000_000))
        self._last_version = version
        return version

    def _start_background(self) -> None:
        """The sweeper and the invalidation listener; at start(), or at the
        first operation that reaches past L1 when start() was not called."""
        self._background_started = True
        if self._l1 is not None and self.config.l1_sweep_interval > 0:
            self._sweeper = asyncio.get_running_loop().create_task(
                _sweep_forever(self._l1, self.config.l1_sweep_interval), name="resync-l1-sweeper"
            )
        if self._invalidator is not None:
            self._invalidator.start()

    def _evict_keys(self, keys: list[str]) -> None:
        """Another process changed ``keys``: drop them here, and make any
        promotion of them already in flight land nowhere."""
        l1 = self._l1
        for key in keys:
            self._bump(key)
            if l1 is not None:
                l1.delete(key)

    def _evict_all(self) -> None:
        for index in range(_GENERATIONS):
            self._generations[index] += 1
        if self._l1 is not None:
            self._l1.clear()

    def _trust_l1(self, trusted: bool) -> None:
        self._l1_read = self._l1 if trusted else None

    def _ensure_open(self) -> None:
        if self._closed:
            raise CacheClosedError(
                f"cache for namespace {self.config.namespace!r} was shut down; "
                "create a new CacheHierarchy to use it again"
            )
        if not self._background_started:
            self._start_background()

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # pragma: no cover - no loop: called outside async code
            coro.close()
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)


async def _sweep_forever(l1: L1Store, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        l1.sweep(_SWEEP_BUDGET)


async def _delete_if_unchanged(l2: GuardedL2, full: bytes, blob: bytes) -> None:
    with contextlib.suppress(L2Unavailable):
        await l2.call(l2.backend.delete_if_value, full, blob)


def _ttl_ms(ttl_seconds: float | None) -> int | None:
    return None if ttl_seconds is None else max(1, round(ttl_seconds * 1000))


def _backend_for(config: HierarchyConfig) -> L2Backend | None:
    if config.parsed_url.kind == "memory":
        return None
    if config.parsed_url.kind == "cluster":
        from resync_hierarchy.l2.cluster import ClusterL2

        return ClusterL2.from_parsed_url(
            config.parsed_url,
            config.url,
            timeout=config.l2_timeout,
            max_connections=config.l2_max_connections,
            multikey=config.cluster_multikey,
        )
    from resync_hierarchy.l2.redis import RedisL2

    return RedisL2.from_parsed_url(
        config.parsed_url,
        config.url,
        timeout=config.l2_timeout,
        max_connections=config.l2_max_connections,
    )
