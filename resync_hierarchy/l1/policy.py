"""Eviction policy of one L1 stripe: which key goes when the stripe is full.

A policy is pure bookkeeping. It takes no locks, reads no clock, does no I/O
and never touches the store's byte or entry accounting: the store calls every
hook with the stripe's lock held, and removes the chosen victim itself.

The seam is shaped so that the hit path stays a couple of dict operations:

* :attr:`EvictionPolicy.record_hit` is an *attribute* holding a callable, not a
  method. The store copies it into the stripe once and calls it directly on
  every hit. For LRU it is the stripe mapping's own bound
  ``OrderedDict.move_to_end``, so a hit costs one C call and no Python frame.
* Every other hook runs on the write/removal paths only.

Each stripe gets its own policy instance, built by a :data:`PolicyFactory`
from the stripe's mapping (an ``OrderedDict`` of key to entry, owned and
mutated by the store). The store keeps two promises to its policy:

* a key passed to :meth:`~EvictionPolicy.record_write` is new to the mapping
  and was just inserted at its end (an overwrite is a removal, reported
  through :meth:`~EvictionPolicy.record_remove`, then a fresh insert);
* every key that leaves the mapping (delete, overwrite, expiry, sweep,
  eviction) is reported through :meth:`~EvictionPolicy.record_remove`, except
  on ``clear``, which calls :meth:`~EvictionPolicy.reset` instead.

A W-TinyLFU replacement would keep its own window/probation/protected
segments and frequency sketch keyed by the same strings, increment the sketch
in ``record_hit`` and ``record_write`` (a miss in L1 is normally followed by a
``set`` of the same key, so writes stand in for counted misses), pick the
victim from its own segments, and refuse weak candidates in :meth:`admit`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EvictionPolicy", "LRUPolicy", "PolicyFactory"]


class EvictionPolicy(Protocol):
    """What a stripe asks of its eviction policy (all calls under the stripe lock)."""

    record_hit: Callable[[str], None]
    """Called with the key on every hit (``get``, ``get_with_expiry``). Keep it a
    C-level callable or a very small function: it is on the hot path."""

    def record_write(self, key: str) -> None:
        """``key`` was just inserted (it is new to the mapping, at its end)."""

    def record_remove(self, key: str) -> None:
        """``key`` left the mapping (deleted, replaced, expired or evicted)."""

    def victim(self) -> str:
        """The key to evict next. Called only while the mapping is not empty;
        must return a key that is in the mapping."""

    def admit(self, candidate: str, victim: str) -> bool:
        """Whether ``candidate`` is worth evicting ``victim`` for.

        False makes the store drop the candidate (counted as ``rejected``)
        instead of evicting ``victim``.
        """

    def reset(self) -> None:
        """The mapping was cleared: forget everything."""


PolicyFactory = Callable[["OrderedDict[str, Any]"], EvictionPolicy]
"""Builds the policy of one stripe from the stripe's mapping."""


class LRUPolicy:
    """Least recently used, kept in the mapping's own ``OrderedDict`` order.

    The front of the mapping is the least recently read or written key: the
    store appends new keys at the end, and a hit moves its key to the end.
    """

    __slots__ = ("_data", "record_hit")

    def __init__(self, data: OrderedDict[str, Any]) -> None:
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
