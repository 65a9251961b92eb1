"""FifoLimiter: a cap on in-flight L2 commands, served in arrival order."""

from __future__ import annotations

import asyncio

import pytest

from resync_hierarchy.resilience.limiter import FifoLimiter


async def test_uncontended_acquire_does_not_wait() -> None:
    limiter = FifoLimiter(2)
    await limiter.acquire()
    await limiter.acquire()
    assert limiter.in_use == 2
    limiter.release()
    limiter.release()
    assert limiter.in_use == 0
    with pytest.raises(RuntimeError, match="more times"):
        limiter.release()


async def test_waiters_are_served_in_arrival_order_without_barging() -> None:
    limiter = FifoLimiter(1)
    order: list[int] = []
    await limiter.acquire()

    async def worker(n: int) -> None:
        async with limiter:
            order.append(n)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker(n)) for n in range(20)]
    await asyncio.sleep(0)  # all twenty are queued now
    assert limiter.waiting == 20
    limiter.release()
    # A newcomer arriving after the release must queue behind the twenty.
    late = asyncio.create_task(worker(99))
    await asyncio.gather(*tasks, late)
    assert order == [*range(20), 99]
    assert limiter.in_use == 0


async def test_cancelled_waiter_is_skipped_and_a_handed_slot_is_passed_on() -> None:
    limiter = FifoLimiter(1)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    limiter.release()
    await second  # got the slot although first was ahead of it
    assert limiter.in_use == 1
    limiter.release()

    # Slot handed over at the very moment the waiter is cancelled: not lost.
    await limiter.acquire()
    victim = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # hands the slot to victim's future
    victim.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert limiter.in_use == 0
    await asyncio.wait_for(limiter.acquire(), 1)


async def test_no_task_starves_under_2000_concurrent_callers() -> None:
    limiter = FifoLimiter(8)
    done = 0
    max_in_use = 0

    async def caller() -> None:
        nonlocal done, max_in_use
        for _ in range(3):
            async with limiter:
                max_in_use = max(max_in_use, limiter.in_use)
                await asyncio.sleep(0)
        done += 1

    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(2000))), 30)
    assert done == 2000
    assert max_in_use == 8


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        FifoLimiter(0)
