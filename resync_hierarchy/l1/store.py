"""L1Store: the in-process tier, a lock-striped, bounded, TTL-aware map.

Layout
------
The store is ``stripes`` independent stripes. A key lives in stripe
``hash(key) & (stripes - 1)``. Each stripe has its own ``threading.Lock``, its
own mapping (an ``OrderedDict`` of key to entry), its own eviction policy
(:mod:`resync_hierarchy.l1.policy`: W-TinyLFU by default, or LRU), its own
timer wheel and its own byte total. Locks are held only around a few dict
operations; nothing in L1 awaits, sleeps or logs, so it is safe to call from
asyncio tasks and from threads.

Capacity
--------
``max_entries`` and ``max_bytes`` are split evenly across the stripes (the
first ``max_entries % stripes`` stripes hold one entry more, likewise for
bytes), so the per-stripe bounds add up to exactly the global ones and the
global bounds hold at every instant: a stripe evicts *before* it inserts, so
not even a lock-free reader of :attr:`L1Store.bytes` or ``len()`` sees them
exceeded. Eviction and admission are decided *within a stripe* by the
stripe's policy; across the store that approximates the policy run globally
(the victim is chosen among the keys of the stripe the new key hashes to).

If ``max_entries`` is smaller than ``shards``, the store uses fewer stripes:
the largest power of two not above ``max_entries``, so that every stripe holds
at least one entry. :meth:`L1Store.stats` reports the number in use.

``max_entries == 0`` turns L1 off (``enabled`` is False): ``set`` returns
False at once and stores nothing, ``sweep`` returns 0 at once, and reads miss
(one lock and one lookup in an empty dict; check ``enabled`` to skip even that).

Bytes are an estimate: an entry is charged ``size + len(key) +
ENTRY_OVERHEAD`` (plus ``EXPIRY_OVERHEAD`` if it expires), where ``size`` is
the encoded value's length given by the caller. An entry whose charge alone
exceeds its stripe's byte budget (``max_bytes // stripes``, see
``stats()["max_entry_bytes"]``) is not stored, any older value under its key
is removed, and it counts as ``rejected``.

Expiry
------
``expires_at`` is an absolute wall-clock time (seconds since the epoch, as
returned by the injected ``clock``); ``None`` means never. With ``max_ttl``
the entry leaves L1 at ``min(expires_at, now + max_ttl)`` (its *deadline*).
An entry is dead from its deadline on (``clock() >= deadline``): ``get``
never returns it, and removes it when it finds it (lazy expiry).

With ``stale_grace`` (fail-safe), a dead entry is kept, still counted
against the bounds and still evictable, for ``stale_grace`` more seconds:
``get`` never returns it, :meth:`L1Store.get_stale` does. It is removed once
``clock() >= deadline + stale_grace``.

Expired entries nobody reads are reclaimed by :meth:`L1Store.sweep`. Each
stripe keeps a timer wheel: a dict from whole second ``ceil(deadline)`` to
the set of keys due then, plus a min-heap of those seconds. Removing an
entry for any reason also takes its key out of its bucket, so the wheel
holds exactly the stripe's expiring entries and a sweep removes only due
entries, oldest second first, in O(budget) work. Because buckets are whole
seconds, an entry is swept up to one second after its deadline (reads are
exact regardless). Emptied buckets leave their second in the heap until the
sweep reaches it or the heap is rebuilt (when it grows past twice the
number of live buckets plus 64; amortised O(1) per insert).
"""

from __future__ import annotations

import heapq
import math
import threading
from collections import OrderedDict
from typing import Any, Final

from resync_hierarchy._types import MISSING, Clock, Missing, wall_clock
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.l1.policy import EvictionPolicy, PolicyFactory, TinyLFUPolicy

__all__ = ["L1Store"]

# (value, deadline, charge) or (value, deadline, charge, expires_at): deadline
# is the expiry in L1 (max_ttl applied); expires_at (as given) is stored only
# when max_ttl made the deadline differ from it. Three fields instead of four
# save 16 bytes per entry (a 4-tuple rounds up to 80 bytes, a 3-tuple to 64).
_Entry = tuple[Any, ...]

_INF: Final = math.inf

_SWEEP_CHUNK: Final = 256
"""Most entries a sweep removes (and most stale wheel slots it skips) per
hold of one stripe's lock."""

_HEAP_SLACK: Final = 64
"""A stripe's heap of wheel seconds is rebuilt when it holds more than
``2 * buckets + _HEAP_SLACK`` seconds."""


class _Stripe:
    """One lock stripe. Every method must be called with ``lock`` held."""

    __slots__ = (
        "bytes",
        "data",
        "evictions",
        "expirations",
        "grace",
        "heap",
        "lock",
        "max_bytes",
        "max_entries",
        "policy",
        "rejected",
        "touch",
        "wheel",
    )

    def __init__(
        self, max_entries: int, max_bytes: int, policy: PolicyFactory, grace: float = 0.0
    ) -> None:
        self.grace = grace
        self.lock = threading.Lock()
        self.data: OrderedDict[str, _Entry] = OrderedDict()
        # The most entries the stripe can hold: under a byte bound, fewer
        # than max_entries (every entry is charged at least ENTRY_OVERHEAD),
        # which keeps a frequency sketch sized to what can be held.
        capacity = min(max_entries, max_bytes // L1Store.ENTRY_OVERHEAD)
        self.policy: EvictionPolicy = policy(self.data, max(capacity, 1))
        self.touch = self.policy.record_hit
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.wheel: dict[int, set[str]] = {}
        self.heap: list[int] = []
        self.evictions = 0
        self.expirations = 0
        self.rejected = 0

    def unlink(self, key: str, entry: _Entry) -> None:
        """Account for ``entry`` (already popped from ``data``) leaving."""
        self.bytes -= entry[2]
        deadline = entry[1]
        if deadline is not None:
            second = math.ceil(deadline + self.grace)
            bucket = self.wheel.get(second)
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self.wheel[second]
        self.policy.record_remove(key)

    def expire(self, key: str, entry: _Entry) -> None:
        del self.data[key]
        self.unlink(key, entry)
        self.expirations += 1

    def schedule(self, key: str, deadline: float) -> None:
        """Put ``key`` in the wheel bucket of its removal time (deadline + grace)."""
        second = math.ceil(deadline + self.grace)
        wheel = self.wheel
        bucket = wheel.get(second)
        if bucket is not None:
            bucket.add(key)
            return
        wheel[second] = {key}
        heap = self.heap
        if len(heap) > 2 * len(wheel) + _HEAP_SLACK:
            heap[:] = wheel
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, second)

    def sweep(self, now: float, max_remove: int, max_skip: int) -> tuple[int, int, bool]:
        """Remove up to ``max_remove`` due entries, skipping up to ``max_skip``
        stale heap seconds. Returns (removed, skipped, stopped_by_a_limit)."""
        removed = skipped = 0
        heap = self.heap
        wheel = self.wheel
        data = self.data
        record_remove = self.policy.record_remove
        while heap and heap[0] <= now:
            second = heap[0]
            bucket = wheel.get(second)
            if bucket is None:  # emptied bucket, or a duplicate second
                if skipped >= max_skip:
                    self.expirations += removed
                    return removed, skipped, True
                heapq.heappop(heap)
                skipped += 1
                continue
            while bucket:
                if removed >= max_remove:
                    self.expirations += removed
                    return removed, skipped, True
                key = bucket.pop()
                self.bytes -= data.pop(key)[2]
                record_remove(key)
                removed += 1
            del wheel[second]
            heapq.heappop(heap)
        self.expirations += removed
        return removed, skipped, False

    def check(self) -> None:
        """Raise AssertionError if the stripe's bookkeeping is inconsistent."""
        data = self.data
        if len(data) > self.max_entries:
            raise AssertionError(f"{len(data)} entries > {self.max_entries}")
        total = sum(entry[2] for entry in data.values())
        if total != self.bytes:
            raise AssertionError(f"byte total {self.bytes} != recomputed {total}")
        if self.bytes > self.max_bytes:
            raise AssertionError(f"{self.bytes} bytes > {self.max_bytes}")
        expected: dict[int, set[str]] = {}
        for key, entry in data.items():
            if entry[2] > self.max_bytes:
                raise AssertionError(f"oversized entry {key!r} stored")
            if entry[1] is not None:
                expected.setdefault(math.ceil(entry[1] + self.grace), set()).add(key)
        if expected != self.wheel:
            raise AssertionError("timer wheel does not match the entries")
        held = list(self.policy.ordered_keys())
        if len(held) != len(data) or set(held) != set(data):
            raise AssertionError("the policy's keys do not match the entries")
        if not set(self.wheel) <= set(self.heap):
            raise AssertionError("a wheel second is missing from the heap")
        if len(self.heap) > 2 * len(self.wheel) + _HEAP_SLACK + 1:
            raise AssertionError("heap of wheel seconds not compacted")


class L1Store:
    """Bounded, lock-striped in-process cache with per-entry expiry.

    See the module docstring for the layout, capacity split, byte estimate
    and expiry rules. All methods are synchronous and thread-safe.

    ``policy`` builds each stripe's eviction policy (default W-TinyLFU; see
    :mod:`resync_hierarchy.l1.policy`).
    """

    ENTRY_OVERHEAD: Final[int] = 380
    """Bytes charged per entry on top of ``size + len(key)``: what an entry
    costs beyond its key's characters and its encoded value. Measured with
    tracemalloc on CPython 3.11 (scripts/compare_peers.py, 100k entries of
    200-byte ``bytes`` values, 15-character keys, W-TinyLFU): the key and
    value object headers (about 90 B), and the store's own structures: the
    mapping's dict slot and OrderedDict node, the entry tuple, the charge
    int and the frequency sketch (about 215 B once the cache is warm, about
    285 B while every entry is still in probation, which costs one more
    OrderedDict entry, and dict tables that keep their size after evictions).
    With 380, a full store that keeps evicting holds about 1.0 times
    ``max_bytes`` by tracemalloc's count, a warm one about 0.9. A value
    that decodes into a bigger object than its encoding (a dict, say) costs
    more than it is charged."""

    EXPIRY_OVERHEAD: Final[int] = 200
    """Bytes charged on top of :attr:`ENTRY_OVERHEAD` for an entry that
    expires: its deadline float and its slot in a timer-wheel set (measured
    about 117 B with deadlines spread over 300 seconds, about 200 B counting
    what a full store that keeps evicting leaves allocated; more when every entry
    expires in a second of its own)."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        shards: int = 16,
        max_ttl: float | None = None,
        clock: Clock = wall_clock,
        policy: PolicyFactory = TinyLFUPolicy,
        stale_grace: float = 0.0,
    ) -> None:
        if max_entries < 0:
            raise ConfigurationError(f"max_entries must be >= 0, got {max_entries}")
        if max_bytes < 0:
            raise ConfigurationError(f"max_bytes must be >= 0, got {max_bytes}")
        if shards < 1 or shards & (shards - 1):
            raise ConfigurationError(f"shards must be a power of two >= 1, got {shards}")
        if max_ttl is not None:
            if not max_ttl > 0:  # also refuses NaN
                raise ConfigurationError(f"max_ttl must be > 0 seconds or None, got {max_ttl}")
            if max_ttl == _INF:
                max_ttl = None
        if not stale_grace >= 0 or stale_grace == _INF:
            raise ConfigurationError(f"stale_grace must be a finite number >= 0, got {stale_grace}")
        self._grace = float(stale_grace)
        self.enabled: bool = max_entries > 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_ttl = max_ttl
        self._clock = clock
        stripes = shards
        while stripes > max(max_entries, 1):
            stripes >>= 1
        entries_each, entries_extra = divmod(max_entries, stripes)
        bytes_each, bytes_extra = divmod(max_bytes, stripes)
        self._stripes: list[_Stripe] = [
            _Stripe(
                entries_each + (i < entries_extra),
                bytes_each + (i < bytes_extra),
                policy,
                self._grace,
            )
            for i in range(stripes)
        ]
        self._mask = stripes - 1
        self._sweep_cursor = 0

    # -- reads ---------------------------------------------------------------

    def get(self, key: str) -> Any | Missing:
        """The live value under ``key`` (a hit for the policy), or MISSING."""
        # The hot path. acquire/try/finally is ~70 ns cheaper than ``with lock``
        # on CPython 3.11; ``touch`` is the policy's bound C-level callable.
        stripe = self._stripes[hash(key) & self._mask]
        lock = stripe.lock
        lock.acquire()
        try:
            entry = stripe.data.get(key)
            if entry is None:
                return MISSING
            if entry[1] is not None:
                now = self._clock()
                if entry[1] <= now:
                    if now >= entry[1] + stripe.grace:
                        stripe.expire(key, entry)
                    return MISSING
            stripe.touch(key)
            return entry[0]
        finally:
            lock.release()

    def get_stale(self, key: str) -> Any | Missing:
        """The value under ``key`` even if expired, as long as it is within
        ``stale_grace`` seconds of its deadline (for fail-safe serving while
        the shared tier is unavailable); else MISSING. Not a hit for the policy."""
        stripe = self._stripes[hash(key) & self._mask]
        with stripe.lock:
            entry = stripe.data.get(key)
            if entry is None:
                return MISSING
            if entry[1] is not None and self._clock() >= entry[1] + stripe.grace:
                stripe.expire(key, entry)
                return MISSING
            return entry[0]

    def get_with_expiry(self, key: str) -> tuple[Any, float | None] | None:
        """``(value, expires_at)`` of the live entry under ``key`` (a hit),
        or None. ``expires_at`` is the one given to :meth:`set` (``inf`` made
        None), not shortened by ``max_ttl``."""
        stripe = self._stripes[hash(key) & self._mask]
        lock = stripe.lock
        lock.acquire()
        try:
            entry = stripe.data.get(key)
            if entry is None:
                return None
            if entry[1] is not None and entry[1] <= self._clock():
                if self._clock() >= entry[1] + stripe.grace:
                    stripe.expire(key, entry)
                return None
            stripe.touch(key)
            return entry[0], entry[3] if len(entry) > 3 else entry[1]
        finally:
            lock.release()

    def contains(self, key: str) -> bool:
        """Whether a live entry is under ``key``. Not a hit; an expired
        entry found is removed."""
        stripe = self._stripes[hash(key) & self._mask]
        lock = stripe.lock
        lock.acquire()
        try:
            entry = stripe.data.get(key)
            if entry is None:
                return False
            if entry[1] is not None and entry[1] <= self._clock():
                if self._clock() >= entry[1] + stripe.grace:
                    stripe.expire(key, entry)
                return False
            return True
        finally:
            lock.release()

    # -- writes --------------------------------------------------------------

    def set(self, key: str, value: Any, *, expires_at: float | None, size: int) -> bool:
        """Store ``value`` under ``key``; True if stored.

        ``size`` is the encoded value's length in bytes. Not stored, with any
        older value under ``key`` removed all the same, when: L1 is off; the
        charge exceeds the stripe's byte budget (counted as ``rejected``); the
        policy refuses admission (``rejected``); the deadline has passed
        already. Evicts entries of the stripe chosen by its policy as needed
        (with W-TinyLFU, a newcomer always enters the window; the duel for
        the main space is between the window's oldest key and the main
        space's victim, so a burst of one-time keys cannot flush hot ones).
        Raises ValueError, changing nothing, if ``size`` is negative or
        ``expires_at`` is NaN. ``expires_at=inf`` means no expiry.
        """
        if not self.enabled:
            return False
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if expires_at is not None and not expires_at < _INF:  # inf or NaN
            if expires_at != _INF:
                raise ValueError("expires_at must be a number of seconds, got NaN")
            expires_at = None
        max_ttl = self._max_ttl
        deadline = expires_at
        now = 0.0
        if deadline is not None or max_ttl is not None:
            now = self._clock()
            if max_ttl is not None and (deadline is None or deadline > now + max_ttl):
                deadline = now + max_ttl
        charge = size + len(key) + self.ENTRY_OVERHEAD
        if deadline is not None:
            charge += self.EXPIRY_OVERHEAD
        stripe = self._stripes[hash(key) & self._mask]
        lock = stripe.lock
        lock.acquire()
        try:
            data = stripe.data
            old = data.pop(key, None)
            if old is not None:
                stripe.unlink(key, old)
            if charge > stripe.max_bytes:
                stripe.rejected += 1
                return False
            if deadline is not None and deadline <= now:
                return False
            policy = stripe.policy
            while len(data) >= stripe.max_entries or stripe.bytes + charge > stripe.max_bytes:
                victim = policy.victim()
                if not policy.admit(key, victim):
                    stripe.rejected += 1
                    return False
                stripe.unlink(victim, data.pop(victim))
                stripe.evictions += 1
            data[key] = (
                (value, deadline, charge)
                if deadline is expires_at
                else (value, deadline, charge, expires_at)
            )
            stripe.bytes += charge
            if deadline is not None:
                stripe.schedule(key, deadline)
            policy.record_write(key)
            return True
        finally:
            lock.release()

    def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; True if one (live or expired) was there."""
        stripe = self._stripes[hash(key) & self._mask]
        lock = stripe.lock
        lock.acquire()
        try:
            entry = stripe.data.pop(key, None)
            if entry is None:
                return False
            stripe.unlink(key, entry)
            return True
        finally:
            lock.release()

    def clear(self) -> int:
        """Remove every entry (live or expired); returns how many. Counters stay."""
        removed = 0
        for stripe in self._stripes:
            with stripe.lock:
                removed += len(stripe.data)
                stripe.data.clear()
                stripe.wheel.clear()
                stripe.heap.clear()
                stripe.bytes = 0
                stripe.policy.reset()
        return removed

    def sweep(self, budget: int = 1000) -> int:
        """Remove up to ``budget`` expired entries; returns how many.

        Work is O(budget) (at most ``budget`` removals plus at most ``budget``
        skips of stale wheel seconds, each O(log n)) plus one brief visit per
        stripe, never a scan. Stripes are visited round-robin, resuming where
        the previous call stopped, each lock held for at most 256 removals.
        An entry becomes due for the sweep at ``ceil(deadline + stale_grace)``
        (whole seconds). Calling it periodically reclaims every expired entry. A
        return below ``budget`` normally means nothing more is due; it can
        also mean the call spent its skip allowance on stale seconds (of
        buckets emptied by deletes, overwrites and evictions), which the next
        call continues past.
        """
        if budget <= 0 or not self.enabled:
            return 0
        now = self._clock()
        stripes = self._stripes
        mask = self._mask
        index = self._sweep_cursor & mask
        remove_left = skip_left = budget
        idle = 0  # consecutive stripe visits that made no progress
        while remove_left > 0 and idle <= mask:
            stripe = stripes[index]
            index = (index + 1) & mask
            with stripe.lock:
                removed, skipped, limited = stripe.sweep(
                    now, min(remove_left, _SWEEP_CHUNK), min(skip_left, _SWEEP_CHUNK)
                )
            remove_left -= removed
            skip_left -= skipped
            idle = 0 if limited and (removed or skipped) else idle + 1
        self._sweep_cursor = index
        return budget - remove_left

    # -- introspection ---------------------------------------------------------

    def __len__(self) -> int:
        """Entries held, including expired ones not yet removed by a read or
        a sweep."""
        return sum(len(stripe.data) for stripe in self._stripes)

    @property
    def bytes(self) -> int:
        """Estimated bytes held (the sum of the entries' charges)."""
        return sum(stripe.bytes for stripe in self._stripes)

    def stats(self) -> dict[str, int]:
        """Counters and sizes. ``evictions``: removed to make room;
        ``expirations``: expired entries removed by reads and sweeps;
        ``rejected``: sets not stored for size (or admission)."""
        stripes = self._stripes
        return {
            "entries": len(self),
            "bytes": self.bytes,
            "max_entries": self._max_entries,
            "max_bytes": self._max_bytes,
            "evictions": sum(s.evictions for s in stripes),
            "expirations": sum(s.expirations for s in stripes),
            "rejected": sum(s.rejected for s in stripes),
            "stripes": len(stripes),
            "max_entry_bytes": min(s.max_bytes for s in stripes) if self.enabled else 0,
        }

    def keys(self) -> list[str]:
        """Snapshot of the live keys, stripe by stripe (each lock held briefly),
        in the order of the stripe's mapping (least recently used first with
        LRU)."""
        now = self._clock()
        out: list[str] = []
        for stripe in self._stripes:
            with stripe.lock:
                out.extend(
                    key for key, entry in stripe.data.items() if entry[1] is None or entry[1] > now
                )
        return out

    def _check_invariants(self) -> None:
        """Raise AssertionError if any stripe's bookkeeping is inconsistent
        (for tests and debugging; takes each lock)."""
        for stripe in self._stripes:
            with stripe.lock:
                stripe.check()
