"""Eviction policy of one L1 stripe: which key goes when the stripe is full.

A policy is pure bookkeeping. It takes no locks, reads no clock, does no I/O
and never touches the store's byte or entry accounting: the store calls every
hook with the stripe's lock held, and removes the chosen victim itself.

The seam is shaped so that the hit path stays a couple of dict operations:

* :attr:`EvictionPolicy.record_hit` is an *attribute* holding a callable, not a
  method. The store copies it into the stripe once and calls it directly on
  every hit, so it must be a C-level callable: for LRU the mapping's own bound
  ``OrderedDict.move_to_end``; for TinyLFU a bounded ``deque.append``. Either
  way a hit costs one C call and no Python frame.
* Every other hook runs on the write/removal paths only.

Each stripe gets its own policy instance, built by a :data:`PolicyFactory`
from the stripe's mapping (an ``OrderedDict`` of key to entry, owned and
mutated by the store; a policy may reorder it with ``move_to_end``, which
costs no memory, and must do nothing else to it) and the stripe's capacity in
entries. The store keeps two promises to its policy:

* a key passed to :meth:`~EvictionPolicy.record_write` is new to the mapping
  and was just inserted at its end (an overwrite is a removal, reported
  through :meth:`~EvictionPolicy.record_remove`, then a fresh insert);
* every key that leaves the stripe (delete, overwrite, expiry, sweep,
  eviction) is reported through :meth:`~EvictionPolicy.record_remove`, except
  on ``clear``, which calls :meth:`~EvictionPolicy.reset` instead.

Two policies ship: :class:`TinyLFUPolicy` (W-TinyLFU, the default) and
:class:`LRUPolicy`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

from resync_hierarchy.l1.sketch import FrequencySketch

__all__ = ["POLICIES", "EvictionPolicy", "LRUPolicy", "PolicyFactory", "TinyLFUPolicy"]


class EvictionPolicy(Protocol):
    """What a stripe asks of its eviction policy (all calls under the stripe lock)."""

    record_hit: Callable[[str], None]
    """Called with the key on every hit (``get``, ``get_with_expiry``). Must be
    a C-level callable: it is on the hot path."""

    def record_write(self, key: str) -> None:
        """``key`` was just inserted (it is new to the mapping, at its end)."""

    def record_remove(self, key: str) -> None:
        """``key`` left the mapping (deleted, replaced, expired or evicted)."""

    def victim(self) -> str:
        """The key to evict next. Called only while the mapping is not empty;
        must return a key that is in the mapping."""

    def admit(self, candidate: str, victim: str) -> bool:
        """Whether ``candidate`` (about to be inserted) is worth evicting
        ``victim`` for. False makes the store drop the candidate (counted as
        ``rejected``) instead of evicting ``victim``."""

    def reset(self) -> None:
        """The mapping was cleared: forget everything."""

    def ordered_keys(self) -> Iterator[str]:
        """Every key held, those to be evicted soonest first (LRU: least
        recently used first; W-TinyLFU: probation, window, then protected,
        each least recent first). For tests, invariant checks and the hot-key
        snapshot, which keeps the end of this order."""


PolicyFactory = Callable[["OrderedDict[str, Any]", int], EvictionPolicy]
"""Builds the policy of one stripe from the stripe's mapping and capacity."""


class LRUPolicy:
    """Least recently used, kept in the mapping's own ``OrderedDict`` order.

    The front of the mapping is the least recently read or written key: the
    store appends new keys at the end, and a hit moves its key to the end.
    """

    __slots__ = ("_data", "record_hit")

    def __init__(self, data: OrderedDict[str, Any], capacity: int = 0) -> None:
        self._data = data
        self.record_hit: Callable[[str], None] = data.move_to_end

    def record_write(self, key: str) -> None:
        """Nothing to do: the store inserted ``key`` at the end already."""

    def record_remove(self, key: str) -> None:
        """Nothing to do: the mapping forgot ``key`` already."""

    def victim(self) -> str:
        return next(iter(self._data))

    def admit(self, candidate: str, victim: str) -> bool:
        return True

    def reset(self) -> None:
        """Nothing to do: the order lives in the mapping."""

    def ordered_keys(self) -> Iterator[str]:
        return iter(list(self._data))


_WINDOW_PERCENT: Final = 1
_PROTECTED_PERCENT: Final = 80
_HIT_BUFFER: Final = 64


class TinyLFUPolicy:
    """W-TinyLFU (Einziger, Friedman, Manes 2017), per stripe.

    Segments, each in least-recent-first order:

    * *window*: about 1% of the capacity (at least one entry), plain LRU.
      Every new key enters here, so a burst of one-hit wonders churns the
      window only.
    * *probation* and *protected*: the main space, a segmented LRU. A key
      admitted from the window lands in probation; a hit in probation
      promotes it to protected (80% of the main space); protected's least
      recent key is demoted back to probation when protected overflows.

    Admission: when the stripe must make room, the window's least recent key
    (the *candidate*) duels the main space's next victim (probation's least
    recent key): the one with the higher :class:`FrequencySketch` estimate
    stays, a tie keeps the incumbent. Writes count in the sketch too (a miss
    in L1 is normally followed by a ``set`` of the key, from a promotion out
    of L2 or a load), so the sketch sees misses as well as hits.

    Memory: window and probation (about a fifth of the keys) are small
    ``OrderedDict`` s of key to None; protected, most of the keys, costs
    nothing extra: its order is the stripe mapping's own order, with the
    window and probation keys, whose position in the mapping means nothing,
    skipped (and moved to the end, so each is skipped about once per pass)
    when looking for protected's least recent key. Amortised O(1).

    Hits do not run Python code: :attr:`record_hit` is the ``append`` of a
    bounded ``deque`` (64 keys). The buffer is drained, in order, on the
    write path (before a write and before choosing a victim), which is the
    only time the order matters: nothing is evicted without a write. A
    stripe that gets more than 64 hits between two writes keeps the last 64,
    a sample of its hit stream, as Caffeine's lossy read buffers do. Work
    per hit is O(1), amortised on writes.
    """

    __slots__ = (
        "_buffer",
        "_data",
        "_probation",
        "_protected_max",
        "_window",
        "_window_max",
        "record_hit",
        "sketch",
    )

    def __init__(self, data: OrderedDict[str, Any], capacity: int) -> None:
        capacity = max(capacity, 1)
        self._data = data
        self._window_max = max(1, capacity * _WINDOW_PERCENT // 100)
        main = max(capacity - self._window_max, 1)
        self._protected_max = max(1, main * _PROTECTED_PERCENT // 100)
        self._window: OrderedDict[str, None] = OrderedDict()
        self._probation: OrderedDict[str, None] = OrderedDict()
        self.sketch = FrequencySketch(capacity)
        self._buffer: deque[str] = deque(maxlen=_HIT_BUFFER)
        self.record_hit: Callable[[str], None] = self._buffer.append

    def _protected_len(self) -> int:
        return len(self._data) - len(self._window) - len(self._probation)

    def _oldest_protected(self) -> str:
        """Protected's least recent key (call only while protected is not empty)."""
        data = self._data
        window = self._window
        probation = self._probation
        while True:
            key = next(iter(data))
            if key not in window and key not in probation:
                return key
            data.move_to_end(key)  # its place in the mapping means nothing

    def _drain(self) -> None:
        buffer = self._buffer
        if not buffer:
            return
        increment = self.sketch.increment
        data = self._data
        window = self._window
        probation = self._probation
        for key in buffer:
            increment(key)
            if key in window:
                window.move_to_end(key)
            elif key in probation:
                del probation[key]
                data.move_to_end(key)  # now protected, most recent
                if self._protected_len() > self._protected_max:
                    probation[self._oldest_protected()] = None
            elif key in data:
                data.move_to_end(key)
            # else: removed since the hit; the count above still stands
        buffer.clear()

    def record_write(self, key: str) -> None:
        self._drain()
        self.sketch.increment(key)
        window = self._window
        window[key] = None
        if len(window) > self._window_max:
            # Room in the stripe (the store evicts before inserting): the
            # window's oldest key moves to the main space without a duel.
            moved, _ = window.popitem(last=False)
            self._probation[moved] = None

    def record_remove(self, key: str) -> None:
        window = self._window
        if key in window:
            del window[key]
        else:
            self._probation.pop(key, None)

    def victim(self) -> str:
        self._drain()
        window = self._window
        probation = self._probation
        if probation:
            main_victim = next(iter(probation))
        elif self._protected_len() > 0:
            main_victim = self._oldest_protected()
        else:
            return next(iter(window))
        if len(window) < self._window_max or not window:
            return main_victim
        candidate = next(iter(window))
        frequency = self.sketch.frequency
        if frequency(candidate) > frequency(main_victim):
            del window[candidate]
            probation[candidate] = None
            return main_victim
        return candidate

    def admit(self, candidate: str, victim: str) -> bool:
        """Always: the duel happens inside :meth:`victim`, between keys already
        held (a new key always enters the window)."""
        return True

    def reset(self) -> None:
        self._buffer.clear()
        self._window.clear()
        self._probation.clear()
        self.sketch.clear()

    def ordered_keys(self) -> Iterator[str]:
        self._drain()
        window = self._window
        probation = self._probation
        protected = [k for k in self._data if k not in window and k not in probation]
        return iter([*probation, *window, *protected])

    def segment_sizes(self) -> tuple[int, int, int]:
        """(window, probation, protected) entries, for tests and tuning."""
        return len(self._window), len(self._probation), self._protected_len()


POLICIES: Final[dict[str, PolicyFactory]] = {"tinylfu": TinyLFUPolicy, "lru": LRUPolicy}
"""Policy factories by the name used in configuration (``l1_policy``)."""
