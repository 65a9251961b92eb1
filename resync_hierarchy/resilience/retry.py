"""Retries of one L2 operation. The only module that imports tenacity.

A retry is worth it only for failures that are quick and may not repeat: a
connection refused or reset (the pool opens a fresh connection) or a server
still loading its data. A timeout is not retried: the operation already used
its whole time budget. Neither is an OOM, a permission error or a bad reply:
they would fail the same way again.

Waits are exponential with full jitter: before retry *n* the operation sleeps
a uniform random time in ``[0, min(cap, base * 2**(n-1))]``, so clients that
failed together do not return together. All attempts run inside the caller's
deadline (``l2_timeout``); when it passes, the retrying stops with it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from resync_hierarchy.l2.base import L2Error

__all__ = ["RETRYABLE_KINDS", "retry_operation"]

T = TypeVar("T")

RETRYABLE_KINDS = frozenset({"connection", "busy"})


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, L2Error) and exc.kind in RETRYABLE_KINDS


class _stop_unless(stop_base):
    """Stop retrying as soon as ``allowed()`` is False (the circuit opened)."""

    def __init__(self, allowed: Callable[[], bool]) -> None:
        self._allowed = allowed

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self._allowed()


async def retry_operation(
    attempt: Callable[[], Awaitable[T]],
    *,
    retries: int,
    base: float,
    cap: float,
    allowed: Callable[[], bool],
    on_retry: Callable[[], None],
) -> T:
    """Retry ``attempt`` (whose first try already failed) up to ``retries`` times.

    Raises the last :class:`L2Error` when the retries are spent, when the
    failure is not retryable, or when ``allowed()`` turns False.
    """
    await asyncio.sleep(random.uniform(0, base))  # noqa: S311 - jitter, not security
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries) | _stop_unless(allowed),
        wait=wait_random_exponential(multiplier=2 * base, max=cap),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )
    async for trial in retrying:
        with trial:
            on_retry()
            return await attempt()
    raise AssertionError("unreachable: tenacity reraises the last failure")  # pragma: no cover
