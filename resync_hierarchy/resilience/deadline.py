"""One timer for every in-flight L2 operation.

``asyncio.timeout()`` schedules (and cancels) a loop timer per use: about
4 µs here, as much as the rest of an L2 hit's overhead together. Every
routine L2 operation has the same time limit, ``l2_timeout``, so deadlines
are reached in the order operations start. A FIFO of deadlines with a single
loop timer, armed for the oldest live one, enforces them at the cost of an
append and a flag per operation.

The semantics are those of ``asyncio.timeout``: when a deadline passes, the
task running the operation is cancelled; the operation's ``CancelledError``
is turned into :class:`TimeoutError` by :meth:`SharedDeadline.expired`,
unless the task is also being cancelled by someone else, in which case the
cancellation propagates. Only for use from one event loop at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["DeadlineEntry", "SharedDeadline"]

_ACTIVE, _DONE, _EXPIRED, _SETTLED = 0, 1, 2, 3


_RECANCEL_AFTER = 0.005
"""Seconds after which an expired operation that has not ended is cancelled
again: ``asyncio.wait_for`` on Python 3.11 (used inside redis-py's command
writes) can swallow a cancellation that arrives as its inner step completes."""


class DeadlineEntry:
    """One operation's deadline; ``finish()`` it when the operation ends."""

    __slots__ = ("cancelling", "cancels", "deadline", "state", "task")

    def __init__(self, deadline: float, task: asyncio.Task[object], cancelling: int) -> None:
        self.deadline = deadline
        self.task = task
        self.cancelling = cancelling
        self.cancels = 0  # cancellation requests this deadline made
        self.state = _ACTIVE

    def _withdraw(self) -> int:
        """Take back every cancellation this deadline requested; returns the
        task's remaining cancellation count."""
        remaining = self.task.cancelling()
        for _ in range(self.cancels):
            remaining = self.task.uncancel()
        self.cancels = 0
        return remaining

    def finish(self) -> None:
        """Mark the operation ended. If the deadline fired but the operation
        swallowed the cancellation, the cancellation request is withdrawn so
        the task's cancel count stays balanced."""
        state = self.state
        if state == _ACTIVE:
            self.state = _DONE
        elif state == _EXPIRED:
            self.state = _SETTLED
            self._withdraw()

    def expired(self) -> bool:
        """After a ``CancelledError``: True if this deadline caused it (and the
        cancellation was taken back), False if it must propagate."""
        if self.state != _EXPIRED:
            return False
        self.state = _SETTLED
        return self._withdraw() <= self.cancelling


class SharedDeadline:
    """Enforces a deadline of ``timeout`` seconds on many operations with one timer."""

    __slots__ = ("_entries", "_loop", "_timer", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._entries: deque[DeadlineEntry] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def start(self) -> DeadlineEntry:
        """Register the current task's operation, which must end within ``timeout``."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - only reachable outside a task
            raise RuntimeError("SharedDeadline.start() must be called from a task")
        if loop is not self._loop:
            self._reset(loop)
        entry = DeadlineEntry(loop.time() + self.timeout, task, task.cancelling())
        self._entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.deadline, self._expire)
        return entry

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._entries.clear()
        self._loop = loop

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        if loop is None:  # pragma: no cover - the timer only exists with a loop
            return
        now = loop.time()
        entries = self._entries
        while entries:
            entry = entries[0]
            if entry.state != _ACTIVE:
                entries.popleft()
                continue
            if entry.deadline > now:
                self._timer = loop.call_at(entry.deadline, self._expire)
                return
            entries.popleft()
            entry.state = _EXPIRED
            self._cancel(loop, entry)

    def _cancel(self, loop: asyncio.AbstractEventLoop, entry: DeadlineEntry) -> None:
        """Cancel the expired operation's task, and again every few ms until
        the operation has ended (a swallowed cancellation must not turn the
        deadline into redis-py's socket timeout)."""
        if entry.state != _EXPIRED or entry.task.done():
            return
        entry.cancels += 1
        entry.task.cancel()
        loop.call_later(_RECANCEL_AFTER, self._cancel, loop, entry)
