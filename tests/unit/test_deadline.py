"""SharedDeadline: asyncio.timeout semantics, one timer for many operations."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from resync_hierarchy.resilience.deadline import SharedDeadline


async def guarded(deadline: SharedDeadline, seconds: float) -> str:
    """An operation of ``seconds`` under ``deadline``, the way GuardedL2 runs one."""
    entry = deadline.start()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if entry.expired():
            return "timeout"
        raise
    finally:
        entry.finish()
    return "done"


async def test_fast_operations_finish_and_slow_ones_time_out() -> None:
    deadline = SharedDeadline(0.05)
    started = time.monotonic()
    results = await asyncio.gather(
        guarded(deadline, 0), guarded(deadline, 0.01), guarded(deadline, 5), guarded(deadline, 5)
    )
    elapsed = time.monotonic() - started
    assert results == ["done", "done", "timeout", "timeout"]
    assert elapsed < 1.0
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_deadlines_are_per_operation_start() -> None:
    deadline = SharedDeadline(0.1)
    first = asyncio.create_task(guarded(deadline, 0.15))
    await asyncio.sleep(0.07)
    second = asyncio.create_task(guarded(deadline, 0.06))  # ends at 0.13, within its own 0.17
    assert await first == "timeout"
    assert await second == "done"


async def test_outside_cancellation_propagates() -> None:
    deadline = SharedDeadline(10)
    task = asyncio.create_task(guarded(deadline, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outside_cancellation_wins_over_an_expired_deadline() -> None:
    deadline = SharedDeadline(0.01)

    async def cancelled_twice() -> str:
        entry = deadline.start()
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # someone else cancels...
        entry.state = 2  # ...and the deadline fires too, cancelling once more
        current.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            if entry.expired():
                return "timeout"
            raise
        finally:
            entry.finish()
        return "done"

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(cancelled_twice())


async def test_swallowed_cancellation_is_withdrawn() -> None:
    deadline = SharedDeadline(0.01)

    async def stubborn() -> int:
        entry = deadline.start()
        try:
            with contextlib.suppress(asyncio.CancelledError):  # ignores cancellation
                await asyncio.sleep(1)
        finally:
            entry.finish()
        current = asyncio.current_task()
        assert current is not None
        return current.cancelling()

    assert await asyncio.create_task(stubborn()) == 0


async def test_entries_are_released_and_timer_rearmed() -> None:
    deadline = SharedDeadline(0.02)
    for _ in range(3):
        assert await asyncio.gather(*(guarded(deadline, 0) for _ in range(100))) == ["done"] * 100
    assert await guarded(deadline, 1) == "timeout"
    await asyncio.sleep(0.05)
    assert len(deadline) == 0


def test_a_new_event_loop_starts_clean() -> None:
    deadline = SharedDeadline(0.02)
    assert asyncio.run(guarded(deadline, 1)) == "timeout"
    assert asyncio.run(guarded(deadline, 0)) == "done"
    assert asyncio.run(guarded(deadline, 1)) == "timeout"


async def test_a_swallowed_cancellation_is_repeated_until_the_operation_ends() -> None:
    """asyncio.wait_for on Python 3.11 can swallow a cancellation (redis-py
    writes commands under it): the deadline cancels again until it ends."""
    deadline = SharedDeadline(0.02)

    async def swallows_once() -> str:
        entry = deadline.start()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(5)  # the first cancellation is swallowed here
            await asyncio.sleep(5)  # the repeated one ends the operation
        except asyncio.CancelledError:
            if entry.expired():
                return "timeout"
            raise
        finally:
            entry.finish()
        return "done"

    started = time.monotonic()
    task = asyncio.create_task(swallows_once())
    assert await task == "timeout"
    assert time.monotonic() - started < 0.02 + 0.1
    assert task.cancelling() == 0
