"""GuardedL2: every L2 call under one deadline, behind a fair queue.

::

    caller ──► GuardedL2.call(op)
                 │  SharedDeadline(l2_timeout)   one timer for all calls; covers queueing too
                 │    FifoLimiter (l2_max_connections)
                 │      backend op (RedisL2: redis-py, no retries of its own)
                 ▼
               result, or L2Unavailable(kind) after recording the failure

Above this layer there are no Redis exceptions, only :class:`L2Unavailable`,
which the hierarchy turns into a miss (reads) or an L1-only write.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from resync_hierarchy.l2.base import L2Backend, L2Error
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.resilience.deadline import SharedDeadline
from resync_hierarchy.resilience.limiter import FifoLimiter

__all__ = ["GuardedL2", "L2Unavailable"]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("resync_hierarchy.l2")

_LOG_EVERY_SECONDS = 5.0


class L2Unavailable(Exception):
    """L2 could not answer within its deadline; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class GuardedL2:
    """Wraps an :class:`L2Backend` with a deadline and a FIFO admission queue.

    Records failures by kind and the time of the last success and failure,
    and logs failures at most once per kind every few seconds.
    """

    def __init__(self, backend: L2Backend, *, timeout: float, max_in_flight: int) -> None:
        self.backend = backend
        self.timeout = timeout
        self.limiter = FifoLimiter(max_in_flight)
        self._deadline = SharedDeadline(timeout)
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self._last_logged: dict[str, float] = {}

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    async def call(self, op: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``op(*args)`` within ``timeout``; raise :class:`L2Unavailable` on failure."""
        entry = self._deadline.start()
        limiter = self.limiter
        try:
            await limiter.acquire()
            try:
                result = await op(*args, **kwargs)
            finally:
                limiter.release()
        except asyncio.CancelledError:
            if entry.expired():
                raise self._failed("timeout", f"no answer within {self.timeout}s") from None
            raise
        except L2Error as exc:
            raise self._failed(exc.kind, str(exc)) from exc
        finally:
            entry.finish()
        self.last_success_at = time.monotonic()
        return result

    async def call_within(
        self, seconds: float, op: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Like :meth:`call` with its own deadline of ``seconds`` (for long scans)."""
        try:
            async with asyncio.timeout(seconds):
                await self.limiter.acquire()
                try:
                    result = await op(*args, **kwargs)
                finally:
                    self.limiter.release()
        except TimeoutError as exc:
            raise self._failed("timeout", f"no answer within {seconds}s") from exc
        except L2Error as exc:
            raise self._failed(exc.kind, str(exc)) from exc
        self.last_success_at = time.monotonic()
        return result

    def _failed(self, kind: str, message: str) -> L2Unavailable:
        self.errors[kind] += 1
        now = time.monotonic()
        self.last_error = f"{kind}: {message}"
        self.last_error_at = now
        if now - self._last_logged.get(kind, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
            self._last_logged[kind] = now
            _log.warning(
                "l2_error",
                kind=kind,
                error=message,
                backend=self.backend.description,
                errors_of_kind=self.errors[kind],
            )
        return L2Unavailable(kind, message)
