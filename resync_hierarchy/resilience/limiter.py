"""A first-come-first-served cap on concurrent L2 commands.

redis-py's default pool raises ``MaxConnectionsError`` past its limit, and
its ``BlockingConnectionPool`` wakes waiters in no particular order, so under
thousands of concurrent tasks some starve for seconds. This limiter admits at
most ``limit`` holders; everyone else waits in a FIFO queue, and a released
slot is handed directly to the oldest live waiter (no barging), so no waiter
is overtaken by a later arrival.

Only for use from one event loop. The uncontended path allocates nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

__all__ = ["FifoLimiter"]


class FifoLimiter:
    """At most ``limit`` concurrent holders, the rest served in arrival order."""

    __slots__ = ("_free", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        """Slots currently held."""
        return self._limit - self._free

    @property
    def waiting(self) -> int:
        """Callers queued for a slot (cancelled waiters excluded)."""
        return sum(1 for fut in self._waiters if not fut.done())

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release()
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to this waiter as it is
                return
        if self._free >= self._limit:
            raise RuntimeError("FifoLimiter.release() called more times than acquire()")
        self._free += 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
