"""MigrationManager: move from a "legacy" cache configuration to a "new" one.

The manager has every operation of a CacheHierarchy, so a consumer cannot
tell it from one. What each operation does depends on the mode, derived from
the flags (see :mod:`resync_hierarchy.migration.flags`):

============  ======================================  ===============================
mode          reads                                   writes (set, delete, clear)
============  ======================================  ===============================
legacy_only   legacy                                  legacy
dual_write    legacy; a sampled share is also read    both, concurrently
              from new and compared (shadow read:
              counts mismatches, never changes the
              answer)
read_new      keys in the rollout share: new, and on  both, concurrently
              a miss (or an error, which new
              absorbs as a miss) legacy, whose hit
              is copied into new unless new got a
              newer value meanwhile; other keys:
              legacy
new_only      new (``migrate finish``)                new
============  ======================================  ===============================

Each side is a full CacheHierarchy, so a write that one side cannot take
(its Redis is down) is kept in that side's recovery queue and replayed later,
while the other side takes it at once: dual writes lose nothing. Flags start
from the environment and follow the fleet-wide record at run time (push,
with a poll as a safety net; see :mod:`resync_hierarchy.migration.fleet`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Self

from prometheus_client import CollectorRegistry

from resync_hierarchy._tasks import cancel_and_wait
from resync_hierarchy._types import MISSING
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.migration.flags import MigrationFlags
from resync_hierarchy.migration.fleet import FlagRecord, FleetFlags
from resync_hierarchy.migration.rollout import rollout_bucket
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.observe.metrics import register_migration_source

__all__ = ["MigrationManager"]

_log = get_logger("resync_hierarchy.migration")


class MigrationManager:
    """A CacheHierarchy look-alike over a ``legacy`` and a ``new`` hierarchy."""

    def __init__(
        self,
        legacy: CacheHierarchy,
        new: CacheHierarchy,
        *,
        flags: MigrationFlags | None = None,
        poll_interval: float = 0.5,
        registry: CollectorRegistry | None = None,
        follow_fleet: bool = True,
    ) -> None:
        if legacy is new:
            raise ConfigurationError("legacy and new must be two different CacheHierarchy objects")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.legacy = legacy
        self.new = new
        self.flags = flags if flags is not None else MigrationFlags.from_env()
        self._fleet: FleetFlags | None = None
        if follow_fleet and new._l2 is not None:
            self._fleet = FleetFlags(
                FlagRecord(new),
                apply=self._apply_flags,
                poll_interval=poll_interval,
                l2=new._l2,
                on_rejected=lambda: self._count("errors"),
            )
        self._background: set[asyncio.Task[Any]] = set()
        # Exported counters: move only while MIGRATION_ENABLE_METRICS is true.
        self._exported = dict.fromkeys(
            ("legacy_hits", "new_hits", "fallbacks", "errors", "mismatches", "flag_changes"), 0
        )
        self._bucket_cache: dict[str, int] = {}
        self._started = False
        self.legacy_reads = 0
        self.new_reads = 0
        self.fallbacks = 0
        self.fallback_copies = 0
        self.errors = 0
        self.mismatches = 0
        self.shadow_reads = 0
        self.flag_changes = 0
        register_migration_source(self, registry)

    # ------------------------------------------------------------------ metrics

    def metric_values(self) -> dict[str, int] | None:
        return dict(self._exported) if self.flags.enable_metrics else None

    def metric_mode(self) -> tuple[str, float] | None:
        if not self.flags.enable_metrics:
            return None
        return self.flags.mode, self.flags.rollout_percent

    # ------------------------------------------------------------------ flags

    def _apply_flags(self, flags: MigrationFlags, revision: int) -> None:
        old = self.flags
        self.flags = flags
        if flags != old:
            self.flag_changes += 1
            if flags.enable_metrics:
                self._exported["flag_changes"] += 1
            _log.info(
                "migration_flags_changed",
                revision=revision,
                mode=flags.mode,
                previous_mode=old.mode,
                rollout_percent=flags.rollout_percent,
                previous_rollout_percent=old.rollout_percent,
            )

    def _reads_new(self, key: str) -> bool:
        flags = self.flags
        if flags.finished:
            return True
        if not flags.use_new_cache:
            return False
        percent = flags.rollout_percent
        if percent >= 100:
            return True
        if percent <= 0:
            return False
        bucket = self._bucket_cache.get(key)
        if bucket is None:
            bucket = rollout_bucket(key)
            cache = self._bucket_cache
            if len(cache) >= 65_536:
                cache.clear()  # bounded memo: recomputing a bucket costs ~1 µs
            cache[key] = bucket
        return bucket < round(percent * 100)

    def _writes(self) -> tuple[bool, bool]:
        """(write legacy?, write new?)."""
        mode = self.flags.mode
        if mode == "new_only":
            return False, True
        if mode == "legacy_only":
            return True, False
        return True, True

    def _count(self, name: str, amount: int = 1) -> None:
        setattr(self, name, getattr(self, name) + amount)
        if self.flags.enable_metrics:
            exported = _EXPORTED_NAME.get(name)
            if exported is not None:
                self._exported[exported] += amount

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await asyncio.gather(self.legacy.start(), self.new.start())
        if self._fleet is not None:
            await self._fleet.refresh()
            self._fleet.start()

    async def shutdown(self) -> None:
        if self._fleet is not None:
            await self._fleet.aclose()
        for task in list(self._background):
            await cancel_and_wait(task)
        await asyncio.gather(self.legacy.shutdown(), self.new.shutdown())

    async def stop(self) -> None:
        """Legacy alias of :meth:`shutdown`."""
        await self.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ reads

    async def get(self, key: str, default: Any = None) -> Any:
        if self._reads_new(key):
            l1 = self.new._l1_read
            if l1 is not None and type(key) is str:  # the L1 hit, without detours
                value = l1.get(key)
                if value is not MISSING:
                    self.new._l1_hits += 1
                    self.new_reads += 1
                    if self.flags.enable_metrics:
                        self._exported["new_hits"] += 1
                    return value
            value = await self._read_new(key)
            return default if value is MISSING else value
        value = await self.legacy.get(key, MISSING)
        if value is not MISSING:
            self._count("legacy_reads")
            if self.flags.shadow_read_percent and self.flags.mode == "dual_write":
                self._maybe_shadow(key, value)
            return value
        return default

    async def _read_new(self, key: str) -> Any:
        """New's value of ``key``; on a miss (new absorbs its errors as
        misses), legacy's, copied into new: the value or MISSING."""
        before_new = self.new.new_version()
        generation = self.new.write_generation(key)
        entry = await self.new.get_entry(key)
        if entry is not None:
            self._count("new_reads")
            return entry.value
        if self.flags.finished:
            return MISSING
        return await self._fallback(key, before_new, generation)

    async def _fallback(self, key: str, before_new: int, generation: int) -> Any:
        """New missed ``key``: read legacy and copy a hit into new with the
        legacy value's own write version (from legacy's L2), through a
        version-conditional write, and with its remaining TTL. Any write that
        reached new with a newer version wins, whenever it arrived. If
        legacy's L2 could not give the version (it answered from L1), the
        version taken before new was read is used. A delete leaves no version
        behind, so the copy is also skipped if the key was written, deleted or
        invalidated in this process since new was read; a delete made
        elsewhere whose invalidation has not arrived yet (about a millisecond)
        can still be undone by the copy."""
        entry = await self.legacy.get_entry(key, l2_only=True)
        if entry is None:
            return MISSING
        self._count("fallbacks")
        self._count("legacy_reads")
        version = entry.version if entry.version is not None else before_new
        try:
            copied = await self.new.store_if_newer(
                key,
                entry.value,
                expires_at=entry.expires_at,
                version=version,
                unless_changed_since=generation,
            )
        except Exception as exc:  # a copy is best effort: never fail the read
            self._count("errors")
            _log.warning("migration_copy_failed", error=f"{type(exc).__name__}: {exc}")
        else:
            if copied:
                self.fallback_copies += 1
        return entry.value

    def _maybe_shadow(self, key: str, legacy_value: Any) -> None:
        sample = self.flags.shadow_read_percent
        if rollout_bucket(key) < round(sample * 100):
            self._spawn(self._shadow_read(key, legacy_value))

    async def _shadow_read(self, key: str, legacy_value: Any) -> None:
        self.shadow_reads += 1
        try:
            entry = await self.new.get_entry(key)
        except Exception:
            self._count("errors")
            return
        if entry is not None and entry.value != legacy_value:
            self._count("mismatches")

    async def exists(self, key: str) -> bool:
        if self._reads_new(key):
            if await self.new.exists(key):
                return True
            return not self.flags.finished and await self.legacy.exists(key)
        return await self.legacy.exists(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        to_new = [k for k in wanted if self._reads_new(k)]
        to_legacy = [k for k in wanted if not self._reads_new(k)]
        found: dict[str, Any] = {}
        if to_new:
            before_new = self.new.new_version()
            generations = {k: self.new.write_generation(k) for k in to_new}
            from_new = await self.new.get_many(to_new)
            self._count("new_reads", len(from_new))
            found.update(from_new)
            if not self.flags.finished:
                for key in to_new:
                    if key not in from_new:
                        value = await self._fallback(key, before_new, generations[key])
                        if value is not MISSING:
                            found[key] = value
        if to_legacy:
            from_legacy = await self.legacy.get_many(to_legacy)
            self._count("legacy_reads", len(from_legacy))
            found.update(from_legacy)
        return {k: found[k] for k in wanted if k in found}

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Awaitable[Any]] | Callable[[], Any],
        ttl: float | None = None,
    ) -> Any:
        write_legacy, write_new = self._writes()
        if self._reads_new(key):
            value = await self._read_new(key)
            if value is not MISSING:
                return value

            async def produce() -> Any:
                produced = await _call(factory)
                if write_legacy:
                    await self.legacy.set(key, produced, ttl)
                return produced

            # Single flight for the factory; new re-checks its tiers first.
            return await self.new.get_or_set(key, produce, ttl)

        async def load_legacy() -> Any:
            produced = await _call(factory)
            if write_new:
                await self.new.set(key, produced, ttl)
            return produced

        value = await self.legacy.get_or_set(key, load_legacy, ttl)
        self._count("legacy_reads")
        return value

    # ------------------------------------------------------------------ writes

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        write_legacy, write_new = self._writes()
        if write_legacy and write_new:
            await _both(self.legacy.set(key, value, ttl), self.new.set(key, value, ttl))
        elif write_new:
            await self.new.set(key, value, ttl)
        else:
            await self.legacy.set(key, value, ttl)

    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        write_legacy, write_new = self._writes()
        if write_legacy and write_new:
            await _both(self.legacy.set_many(mapping, ttl), self.new.set_many(mapping, ttl))
        elif write_new:
            await self.new.set_many(mapping, ttl)
        else:
            await self.legacy.set_many(mapping, ttl)

    async def delete(self, key: str) -> bool:
        return await self.delete_many([key]) == 1

    async def delete_many(self, keys: Iterable[str]) -> int:
        wanted = list(dict.fromkeys(keys))
        write_legacy, write_new = self._writes()
        if write_legacy and write_new:
            # Per key: existed in either configuration.
            in_legacy, in_new = await _both(
                self._existing(self.legacy, wanted), self._existing(self.new, wanted)
            )
            await _both(self.legacy.delete_many(wanted), self.new.delete_many(wanted))
            return sum(1 for k in wanted if k in in_legacy or k in in_new)
        side = self.new if write_new else self.legacy
        return await side.delete_many(wanted)

    @staticmethod
    async def _existing(side: CacheHierarchy, keys: list[str]) -> frozenset[str]:
        return frozenset([k for k in keys if await side.exists(k)])

    async def clear(self) -> None:
        write_legacy, write_new = self._writes()
        if write_legacy and write_new:
            await _both(self.legacy.clear(), self.new.clear())
        elif write_new:
            await self.new.clear()
        else:
            await self.legacy.clear()

    # ------------------------------------------------------------------ introspection

    def _read_side(self) -> CacheHierarchy:
        return self.new if self.flags.mode in ("read_new", "new_only") else self.legacy

    def size(self) -> int:
        """Entries in the L1 of the configuration that answers reads."""
        return self._read_side().size()

    def status(self) -> dict[str, Any]:
        """Mode, percent, and counts of legacy reads, new reads, fallbacks,
        errors and mismatches (and the flags and their revision)."""
        return {
            "mode": self.flags.mode,
            "rollout_percent": self.flags.rollout_percent,
            "flags": self.flags.as_dict(),
            "fleet": self._fleet.describe() if self._fleet is not None else None,
            "legacy_reads": self.legacy_reads,
            "new_reads": self.new_reads,
            "fallbacks": self.fallbacks,
            "fallback_copies": self.fallback_copies,
            "errors": self.errors,
            "mismatches": self.mismatches,
            "shadow_reads": self.shadow_reads,
            "flag_changes": self.flag_changes,
        }

    def get_stats(self) -> dict[str, Any]:
        """The CacheHierarchy counters of the side that answers reads, plus
        ``migration`` (see :meth:`status`) and both sides' own stats."""
        stats = dict(self._read_side().get_stats())
        stats["migration"] = self.status()
        stats["legacy"] = self.legacy.get_stats()
        stats["new"] = self.new.get_stats()
        return stats

    def get_detailed_metrics(self) -> dict[str, Any]:
        """Legacy alias of :meth:`get_stats`."""
        return self.get_stats()

    async def health(self) -> dict[str, Any]:
        """The health of the side answering reads at the top level (same shape
        as CacheHierarchy.health), both sides under ``legacy`` and ``new``."""
        legacy, new = await asyncio.gather(self.legacy.health(), self.new.health())
        top = new if self._read_side() is self.new else legacy
        return {**top, "migration": {"mode": self.flags.mode}, "legacy": legacy, "new": new}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


_EXPORTED_NAME = {
    "legacy_reads": "legacy_hits",
    "new_reads": "new_hits",
    "fallbacks": "fallbacks",
    "errors": "errors",
    "mismatches": "mismatches",
}


async def _call(factory: Callable[[], Awaitable[Any]] | Callable[[], Any]) -> Any:
    produced = factory()
    if asyncio.iscoroutine(produced) or isinstance(produced, asyncio.Future):
        produced = await produced
    return produced


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Run both; if one raises (a caller mistake), the other still completes
    and the first error is raised."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results[0], results[1]
