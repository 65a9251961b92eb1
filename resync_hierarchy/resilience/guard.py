"""GuardedL2: every L2 call under one deadline, a circuit breaker and retries.

::

    caller ──► GuardedL2.call(op)
                 │  circuit open or half-open? ──► L2Unavailable("circuit_open"), no I/O
                 │  SharedDeadline(l2_timeout)    one timer for all calls; covers everything below
                 │    FifoLimiter(l2_max_connections)
                 │      backend op (RedisL2: redis-py, no retries of its own)
                 │    failed quickly and retryable? retry (tenacity: exponential, full
                 │      jitter, at most l2_retries more attempts, none once the circuit opens)
                 ▼
               result, or L2Unavailable(kind) after telling the breaker

When the breaker opens, one background task waits ``breaker_reset_timeout``,
moves it to half-open and sends exactly one probe (PING): success closes the
circuit, failure opens it again for another ``breaker_reset_timeout``. When
L2 answers again after failures (the circuit closed, or a call succeeded),
``on_available`` is called so the owner can replay writes it kept.

Above this layer there are no Redis exceptions, only :class:`L2Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from resync_hierarchy._tasks import cancel_and_wait
from resync_hierarchy.l2.base import L2Backend, L2Error
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.resilience.breaker import BreakerState, CircuitBreaker
from resync_hierarchy.resilience.deadline import SharedDeadline
from resync_hierarchy.resilience.limiter import FifoLimiter
from resync_hierarchy.resilience.retry import RETRYABLE_KINDS, retry_operation

__all__ = ["BREAKER_KINDS", "UNAVAILABLE_KINDS", "GuardedL2", "L2Unavailable"]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("resync_hierarchy.l2")

_LOG_EVERY_SECONDS = 5.0

BREAKER_KINDS = frozenset({"connection", "timeout", "busy", "readonly", "tls", "auth", "other"})
"""Failures that say L2 is unreachable or unusable: they count for the breaker.
An OOM, a permission error (``noperm``) or an error reply mean Redis is up and
answering. A refused TLS handshake (``tls``) or password (``auth``) leaves no
usable connection: they open the circuit, so a misconfigured fleet does not
hammer Redis with handshakes, but they are never retried (see RETRYABLE_KINDS)."""

UNAVAILABLE_KINDS = BREAKER_KINDS | {"circuit_open"}
"""Failures after which a write is kept for replay."""


class L2Unavailable(Exception):
    """L2 could not answer within its deadline; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class GuardedL2:
    """Wraps an :class:`L2Backend` with a deadline, a FIFO admission queue,
    retries and a circuit breaker. Records failures by kind."""

    def __init__(
        self,
        backend: L2Backend,
        *,
        timeout: float,
        max_in_flight: int,
        retries: int = 0,
        retry_backoff: float = 0.01,
        retry_backoff_max: float = 0.2,
        breaker_failure_threshold: int = 5,
        breaker_reset_timeout: float = 5.0,
        on_available: Callable[[], None] | None = None,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.limiter = FifoLimiter(max_in_flight)
        self.breaker = CircuitBreaker(
            failure_threshold=breaker_failure_threshold,
            reset_timeout=breaker_reset_timeout,
            clock=breaker_clock,
            on_transition=self._transition,
        )
        self.on_available = on_available
        self._deadline = SharedDeadline(timeout)
        self._probe_task: asyncio.Task[None] | None = None
        self._unhealthy = False  # a call failed since the last success
        self.errors: Counter[str] = Counter()
        self.short_circuited = 0
        self.retried = 0
        self.probes = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self._last_logged: dict[str, float] = {}

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def circuit_state(self) -> str:
        return self.breaker.state.value

    @property
    def unhealthy(self) -> bool:
        """True when the latest L2 call failed (until one succeeds)."""
        return self._unhealthy

    async def call(self, op: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``op(*args)`` within ``timeout``; raise :class:`L2Unavailable` on failure."""
        breaker = self.breaker
        if breaker.state is not BreakerState.CLOSED:
            self.short_circuited += 1
            raise L2Unavailable("circuit_open", f"circuit {breaker.state.value}: L2 not called")
        entry = self._deadline.start()
        limiter = self.limiter
        try:
            await limiter.acquire()
            try:
                if self.circuit_state != "closed":
                    # Opened while this call queued: it must not add to the storm.
                    self.short_circuited += 1
                    raise L2Unavailable(
                        "circuit_open", f"circuit {breaker.state.value}: L2 not called"
                    )
                result = await op(*args, **kwargs)
            finally:
                limiter.release()
        except asyncio.CancelledError:
            if entry.expired():
                raise self._failed("timeout", f"no answer within {self.timeout}s") from None
            raise
        except L2Error as exc:
            try:
                result = await self._retry(exc, op, *args, **kwargs)
            except asyncio.CancelledError:
                if entry.expired():
                    raise self._failed("timeout", f"no answer within {self.timeout}s") from None
                raise
            except L2Error as last:
                raise self._failed(last.kind, str(last)) from last
        finally:
            entry.finish()
        if self._unhealthy:
            self._recovered()
        return result

    async def _retry(
        self, first: L2Error, op: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self.retries <= 0 or first.kind not in RETRYABLE_KINDS or not self.breaker.allow():
            raise first

        async def attempt() -> T:
            if not self.breaker.allow():  # opened while this retry was backing off
                raise L2Error("circuit_open", "circuit opened: retry not sent")
            await self.limiter.acquire()
            try:
                return await op(*args, **kwargs)
            finally:
                self.limiter.release()

        def counted() -> None:
            self.retried += 1

        return await retry_operation(
            attempt,
            retries=self.retries,
            base=self.retry_backoff,
            cap=self.retry_backoff_max,
            allowed=self.breaker.allow,
            on_retry=counted,
        )

    async def call_within(
        self, seconds: float, op: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Like :meth:`call` with its own deadline of ``seconds`` and no
        retries (for long scans such as ``clear``)."""
        if not self.breaker.allow():
            self.short_circuited += 1
            raise L2Unavailable("circuit_open", "circuit open: L2 not called")
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
        if self._unhealthy:
            self._recovered()
        return result

    def _recovered(self) -> None:
        self._unhealthy = False
        self.last_success_at = time.monotonic()
        self.breaker.record_success()
        if self.on_available is not None:
            self.on_available()

    def _failed(self, kind: str, message: str) -> L2Unavailable:
        self.errors[kind] += 1
        self._unhealthy = True
        now = time.monotonic()
        self.last_error = f"{kind}: {message}"
        self.last_error_at = now
        if kind in BREAKER_KINDS:
            self.breaker.record_failure(f"{kind}: {message}")
        if now - self._last_logged.get(kind, -_LOG_EVERY_SECONDS) >= _LOG_EVERY_SECONDS:
            self._last_logged[kind] = now
            _log.warning(
                "l2_error",
                kind=kind,
                error=message,
                backend=self.backend.description,
                errors_of_kind=self.errors[kind],
                circuit_state=self.circuit_state,
            )
        return L2Unavailable(kind, message)

    # -- breaker transitions and the half-open probe ---------------------------------

    def _transition(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        event = {
            BreakerState.OPEN: "circuit_opened",
            BreakerState.HALF_OPEN: "circuit_half_open",
            BreakerState.CLOSED: "circuit_closed",
        }[new]
        log = _log.warning if new is BreakerState.OPEN else _log.info
        log(
            event,
            previous=old.value,
            reason=reason,
            backend=self.backend.description,
            reset_timeout=self.breaker.reset_timeout,
        )
        if new is BreakerState.OPEN:
            self._ensure_prober()

    def _ensure_prober(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - transitions happen inside calls
            return
        self._probe_task = loop.create_task(self._probe_until_closed(), name="resync-l2-probe")

    async def _probe_until_closed(self) -> None:
        breaker = self.breaker
        while breaker.state is BreakerState.OPEN:
            await asyncio.sleep(breaker.seconds_until_probe())
            if not breaker.probe_due():
                continue
            breaker.start_probe()
            self.probes += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await self.backend.ping()
            except (L2Error, TimeoutError) as exc:
                kind = exc.kind if isinstance(exc, L2Error) else "timeout"
                self.errors[kind] += 1
                breaker.record_failure(f"probe: {kind}: {exc}")
            else:
                self._recovered()

    async def aclose(self) -> None:
        """Stop the probe and close the backend."""
        await cancel_and_wait(self._probe_task)
        with contextlib.suppress(L2Error):  # a broken connection must not fail shutdown
            await self.backend.aclose()
