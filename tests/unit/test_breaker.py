"""CircuitBreaker: the state machine on a fake clock."""

from __future__ import annotations

from resync_hierarchy.resilience.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, Clock, list[str]]:
    clock = Clock()
    seen: list[str] = []
    breaker = CircuitBreaker(
        failure_threshold=threshold,
        reset_timeout=reset,
        clock=clock,
        on_transition=lambda old, new, reason: seen.append(f"{old.value}>{new.value}"),
    )
    return breaker, clock, seen


def test_opens_after_threshold_consecutive_failures_only() -> None:
    breaker, _, seen = make(threshold=3)
    breaker.record_failure("x")
    breaker.record_failure("x")
    breaker.record_success()  # not consecutive any more
    breaker.record_failure("x")
    breaker.record_failure("x")
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure("x")
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert seen == ["closed>open"]
    assert breaker.opens == 1


def test_half_open_after_reset_timeout_and_one_probe_decides() -> None:
    breaker, clock, seen = make(threshold=1, reset=10)
    breaker.record_failure("down")
    assert not breaker.probe_due()
    assert breaker.seconds_until_probe() == 10
    clock.now += 9.9
    assert not breaker.probe_due()
    clock.now += 0.1
    assert breaker.probe_due()
    breaker.start_probe()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only the probe goes out
    breaker.record_failure("still down")
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_probe() == 10  # a full new wait
    clock.now += 10
    breaker.start_probe()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    assert breaker.seconds_until_probe() == 0
    assert seen == ["closed>open", "open>half_open", "half_open>open", "open>half_open",
                    "half_open>closed"]  # fmt: skip


def test_start_probe_only_from_open() -> None:
    breaker, _, seen = make()
    breaker.start_probe()
    assert breaker.state is BreakerState.CLOSED
    assert seen == []
