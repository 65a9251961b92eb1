"""The fleet-wide flag record: one place every running manager follows.

The record lives in the NEW configuration's Redis, under the key
``#resync:migration:<new namespace>``. ``#`` can never begin a cache key, as
namespaces are percent-encoded, so no namespace can collide with it. The
record is a JSON document:

    {"use_new_cache": true, "rollout_percent": 25, "enable_metrics": true,
     "dual_write": true, "shadow_read_percent": 0, "finished": false,
     "revision": 7, "updated_at": 1764000000.0, "updated_by": "cli:ops-host"}

A change is written (revision + 1) and announced on the channel
``#resync:migration:<new namespace>`` (the same name, in pub/sub's own name
space). Every manager applies it on the announcement, and polls the record
every ``poll_interval`` as a safety net, so a missed announcement delays a
change by at most ``poll_interval``. A record whose values do not validate
is refused: the manager logs ``migration_flags_rejected``, counts it and
keeps its flags. JSON only: nothing here is ever unpickled.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from resync_hierarchy._tasks import cancel_and_wait
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.l2.base import L2Error
from resync_hierarchy.migration.flags import MigrationFlags
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.resilience.guard import GuardedL2, L2Unavailable

__all__ = ["FlagRecord", "FleetFlags", "record_key"]

_log = get_logger("resync_hierarchy.migration")


def record_key(namespace: str) -> bytes:
    """The flag record's key (and channel) for the new configuration's namespace."""
    return b"#resync:migration:" + quote(namespace, safe="").encode("ascii")


class FlagRecord:
    """Reads and writes the record through a hierarchy's L2 connection."""

    def __init__(self, new: CacheHierarchy) -> None:
        l2 = new._l2
        if l2 is None:
            raise ConfigurationError(
                "the new configuration has no Redis (memory://): fleet-wide migration flags "
                "need one; give the new cache a redis:// URL"
            )
        self._l2: GuardedL2 = l2
        self.key = record_key(new.config.namespace)

    async def read(self) -> tuple[MigrationFlags, int] | None:
        """The record's flags and revision, None if there is no record.
        (:meth:`read_stamped` also gives the write time.)

        Raises ConfigurationError for a record that does not validate and
        L2Unavailable when Redis does not answer.
        """
        found = await self.read_stamped()
        return None if found is None else (found[0], found[1])

    async def read_stamped(self) -> tuple[MigrationFlags, int, float] | None:
        """Flags, revision and ``updated_at`` of the record, or None."""
        raw = await self._l2.call(self._l2.backend.get, self.key)
        if raw is None:
            return None
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"the flag record is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigurationError("the flag record is not a JSON object")
        return self._parse(document)

    @staticmethod
    def _parse(document: dict[str, Any]) -> tuple[MigrationFlags, int, float]:
        revision = document.get("revision", 0)
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise ConfigurationError(f"the flag record's revision {revision!r} is not an integer")
        stamp = document.get("updated_at", 0.0)
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
            raise ConfigurationError(f"the flag record's updated_at {stamp!r} is not a number")
        return MigrationFlags.from_record(document), revision, float(stamp)

    async def write(self, flags: MigrationFlags, *, by: str | None = None) -> int:
        """Store ``flags`` as the next revision and announce it; returns the revision.

        Last writer wins between two simultaneous writers; both are announced.
        """
        current = await self.read_lenient()
        revision = (current[1] if current else 0) + 1
        document = {
            **flags.as_dict(),
            "revision": revision,
            "updated_at": time.time(),
            "updated_by": by or f"cli:{socket.gethostname()}",
        }
        document.pop("mode", None)
        payload = json.dumps(document, sort_keys=True).encode()
        await self._l2.call(self._l2.backend.set, self.key, payload, None)
        await self._l2.call(self._l2.backend.publish, self.key, str(revision).encode())
        return revision

    async def read_lenient(self) -> tuple[MigrationFlags, int] | None:
        """Like :meth:`read`, but a broken record counts as no record."""
        try:
            return await self.read()
        except ConfigurationError:
            return None


class FleetFlags:
    """Keeps a manager's flags in step with the record (push, then poll)."""

    def __init__(
        self,
        record: FlagRecord,
        *,
        apply: Callable[[MigrationFlags, int], None],
        poll_interval: float,
        l2: GuardedL2,
        on_rejected: Callable[[], None] | None = None,
    ) -> None:
        self._record = record
        self._on_rejected = on_rejected
        self._apply = apply
        self._poll_interval = poll_interval
        self._l2 = l2
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.revision = 0
        self._applied: tuple[int, float] | None = None
        self.rejected = 0
        self.last_error: str | None = None

    async def refresh(self) -> None:
        """Read the record now and apply it if it is not the one last applied.

        "Not the same" rather than "newer": a record that was lost or broken
        and written again starts over at revision 1, and must still apply.
        """
        try:
            found = await self._record.read_stamped()
        except ConfigurationError as exc:
            self.rejected += 1  # every refused read counts...
            if self._on_rejected is not None:
                self._on_rejected()
            if str(exc) != self.last_error:  # ...but a broken record is logged once
                self.last_error = str(exc)
                _log.error("migration_flags_rejected", error=str(exc), kept_revision=self.revision)
            return
        except L2Unavailable:
            return
        if found is None:
            return
        flags, revision, stamp = found
        if (revision, stamp) != self._applied:
            self._applied = (revision, stamp)
            self.revision = revision
            self._apply(flags, revision)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._poll_forever(), name="resync-migration-poll"),
            loop.create_task(self._listen_forever(), name="resync-migration-listen"),
        ]

    async def _poll_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._poll_interval)
            await self.refresh()

    async def _listen_forever(self) -> None:
        while not self._closing:
            try:
                subscription = await self._l2.call(self._l2.backend.subscribe, self._record.key)
            except L2Unavailable:
                await asyncio.sleep(self._poll_interval)
                continue
            try:
                await self.refresh()  # anything announced before the subscription
                while not self._closing:
                    if await subscription.next_message(self._poll_interval) is not None:
                        await self.refresh()
            except L2Error:
                pass  # the poll covers the gap; subscribe again
            finally:
                await subscription.aclose()

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            await cancel_and_wait(task)

    def describe(self) -> dict[str, Any]:
        return {"revision": self.revision, "rejected": self.rejected, "last_error": self.last_error}
