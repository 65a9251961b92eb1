"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]

_ATTEMPTS = 100
_WAIT = 0.05


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if needed.

    On Python 3.11 ``asyncio.wait_for`` (used inside redis-py and fakeredis)
    can swallow a cancellation that arrives as its inner step completes, so
    a single ``cancel()`` may leave a task running and its owner's shutdown
    hanging. Gives up after about five seconds. A failure of the task is
    retrieved and dropped: shutdown must not fail because of it.
    """
    if task is None:
        return
    for _ in range(_ATTEMPTS):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_WAIT)
        if done:
            break
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.result()
