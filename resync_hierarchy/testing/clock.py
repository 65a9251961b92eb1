"""A manual clock: TTL tests advance time instead of sleeping."""

from __future__ import annotations

__all__ = ["FakeClock"]


class FakeClock:
    """Callable like :func:`time.time`; moves only when told to.

    >>> clock = FakeClock(1000.0)
    >>> clock.advance(5)
    >>> clock()
    1005.0
    """

    __slots__ = ("now",)

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self.now += seconds
