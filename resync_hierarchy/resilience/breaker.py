"""The circuit breaker in front of L2: a pure state machine.

::

             failure_threshold consecutive failures
    CLOSED ───────────────────────────────────────► OPEN ◄──────────┐
      ▲                                              │ reset_timeout │ probe failed
      │ probe succeeded                              ▼ elapsed       │
      └───────────────────────────────────────── HALF_OPEN ──────────┘

While OPEN and HALF_OPEN, L2 calls fail fast with no network I/O. In
HALF_OPEN exactly one probe runs (the owner sends it, see GuardedL2); its
outcome closes or re-opens the circuit. Only failures that say L2 is
unreachable count (connection errors, timeouts, a loading server): an OOM or
a permission error means Redis is up and answering, and leaves the breaker
alone.

No I/O, no locks, no asyncio here: the owner calls :meth:`allow`,
:meth:`record_success` and :meth:`record_failure`, and listens to transitions
through ``on_transition``. Time comes from the injected ``clock``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Transition = Callable[[BreakerState, BreakerState, str], None]


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures; open
    → half-open after ``reset_timeout`` seconds; one probe decides."""

    __slots__ = (
        "_clock",
        "_on_transition",
        "consecutive_failures",
        "failure_threshold",
        "opened_at",
        "opens",
        "reset_timeout",
        "state",
    )

    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Transition | None = None,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_transition = on_transition
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.opens = 0

    @property
    def closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def allow(self) -> bool:
        """May a regular L2 call go out now? Only while closed."""
        return self.state is BreakerState.CLOSED

    def probe_due(self) -> bool:
        """Open for ``reset_timeout`` already: time for the half-open probe."""
        return (
            self.state is BreakerState.OPEN
            and self.opened_at is not None
            and self._clock() - self.opened_at >= self.reset_timeout
        )

    def seconds_until_probe(self) -> float:
        if self.state is not BreakerState.OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.reset_timeout - self._clock())

    def start_probe(self) -> None:
        """OPEN → HALF_OPEN: the caller is about to send the one probe."""
        if self.state is BreakerState.OPEN:
            self._move(BreakerState.HALF_OPEN, "reset timeout elapsed: probing")

    def record_success(self) -> None:
        self.consecutive_failures = 0
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "probe succeeded")

    def record_failure(self, reason: str) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open(f"probe failed: {reason}")
            return
        self.consecutive_failures += 1
        if (
            self.state is BreakerState.CLOSED
            and self.consecutive_failures >= self.failure_threshold
        ):
            self._open(f"{self.consecutive_failures} consecutive failures, last: {reason}")

    def _open(self, reason: str) -> None:
        self.opened_at = self._clock()
        self.opens += 1
        self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> None:
        old = self.state
        self.state = new
        if new is BreakerState.CLOSED:
            self.opened_at = None
        if self._on_transition is not None:
            self._on_transition(old, new, reason)
