"""Per-key single flight: concurrent loads of one key share one run.

The first caller starts the load as a task and every caller (the first
included) awaits it through :func:`asyncio.shield`, so a caller that is
cancelled or times out never cancels the load for the others. The entry is
dropped when the load finishes, success or failure, so a failure is shared
by the callers waiting at that moment and never cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["SingleFlight"]


class SingleFlight:
    """One running load per key within one event loop."""

    __slots__ = ("_inflight", "joined", "started")

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self.started = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: str, load: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Return the result of ``load()``, sharing a run already in flight for ``key``."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._inflight[key] = task
            self.started += 1
            task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.joined += 1
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so that no waiter-less failure is reported as lost
