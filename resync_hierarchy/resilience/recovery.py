"""Writes that could not reach L2, kept for replay when it is back.

One entry per key: the last operation wins (a delete after a set replaces
it, and a later write that reaches L2 removes it). A ``clear()`` made during
the outage drops every pending entry of the namespace and is remembered as a
version, so the replay deletes what was written to L2 before it.

Replays are conditional on the envelope's write version (see
``RedisL2.write_if_newer``): a replayed write never overwrites a value that
another process wrote to Redis later. The queue is bounded; past
``max_entries`` the oldest pending write is dropped, counted in
``overflowed`` and logged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from resync_hierarchy.observe.logging import get_logger

__all__ = ["PendingWrite", "RecoveryQueue"]

_log = get_logger("resync_hierarchy.recovery")
_LOG_EVERY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """A set (``blob``) or a delete (``blob is None``) waiting for L2."""

    full_key: bytes
    key: str
    blob: bytes | None
    version: int
    expires_at: float | None


class RecoveryQueue:
    """Pending L2 writes, oldest first, at most one per key."""

    __slots__ = (
        "_clock",
        "_logged_at",
        "_logged_overflowed",
        "_pending",
        "clear_version",
        "max_entries",
        "overflowed",
        "recorded",
    )

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._logged_at: float | None = None
        self._logged_overflowed = 0
        self._pending: OrderedDict[bytes, PendingWrite] = OrderedDict()
        self.clear_version: int | None = None
        self.overflowed = 0
        self.recorded = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        return bool(self._pending) or self.clear_version is not None

    def get(self, full_key: bytes) -> PendingWrite | None:
        return self._pending.get(full_key)

    def record(self, write: PendingWrite) -> None:
        """Keep ``write`` for replay, replacing any older one for its key."""
        pending = self._pending
        pending.pop(write.full_key, None)
        pending[write.full_key] = write
        self.recorded += 1
        if len(pending) > self.max_entries:
            _, dropped = pending.popitem(last=False)
            self.overflowed += 1
            now = self._clock()
            # At most one event a second: an outage under load drops thousands.
            if self._logged_at is None or now - self._logged_at >= _LOG_EVERY_SECONDS:
                _log.error(
                    "recovery_queue_overflow",
                    dropped_key_bytes=len(dropped.full_key),
                    dropped_since_last_event=self.overflowed - self._logged_overflowed,
                    max_entries=self.max_entries,
                    overflowed=self.overflowed,
                )
                self._logged_at = now
                self._logged_overflowed = self.overflowed

    def supersede(self, full_key: bytes) -> None:
        """A newer write of ``full_key`` reached L2: nothing left to replay."""
        self._pending.pop(full_key, None)

    def record_clear(self, version: int) -> None:
        """The namespace was cleared at ``version``: nothing older survives it."""
        self._pending.clear()
        self.clear_version = version

    def oldest(self, count: int) -> list[PendingWrite]:
        """Up to ``count`` pending writes, oldest first (they stay queued)."""
        out: list[PendingWrite] = []
        for write in self._pending.values():
            if len(out) >= count:
                break
            out.append(write)
        return out

    def done(self, write: PendingWrite) -> bool:
        """Remove ``write`` if it is still the pending one for its key (it was
        not replaced while it was being replayed). True if removed."""
        if self._pending.get(write.full_key) is write:
            del self._pending[write.full_key]
            return True
        return False
