"""Backfill (copy legacy into new) and verify (compare a sample of both).

Backfill walks the legacy namespace with SCAN in batches. It reads each batch
with one MGET, decodes the envelopes with legacy's codec, and writes them
into new with their original write version and remaining TTL through the
version-conditional Lua write. A value that new already holds in a newer
version (a dual write, a later fallback copy) is never overwritten. That is
also what makes a backfill idempotent: run it twice and the second run copies
nothing new. After every batch the SCAN cursor is saved in new's Redis under
``#resync:backfill:<legacy ns>:<new ns>``, so an interrupted backfill resumes
where it stopped (``restart=True`` starts over). The checkpoint is deleted
when the scan completes. ``rate`` caps keys per second.

SCAN guarantees that every key present for the whole scan is returned at
least once; keys written during it may or may not be. Dual writes cover
those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from resync_hierarchy.codec import CorruptValueError
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.resilience.guard import GuardedL2, L2Unavailable

__all__ = ["BackfillReport", "VerifyReport", "backfill", "checkpoint_key", "verify"]

_log = get_logger("resync_hierarchy.migration")

Progress = Callable[[int, int], None]  # (keys scanned so far, keys copied so far)


def checkpoint_key(legacy: CacheHierarchy, new: CacheHierarchy) -> bytes:
    ns = quote(legacy.config.namespace, safe="") + ":" + quote(new.config.namespace, safe="")
    return b"#resync:backfill:" + ns.encode("ascii")


def _l2_of(cache: CacheHierarchy, role: str) -> GuardedL2:
    if cache._l2 is None:
        raise ConfigurationError(
            f"the {role} configuration has no Redis (memory://): backfill and verify read and "
            "write Redis; give it a redis:// URL"
        )
    return cache._l2


@dataclass
class BackfillReport:
    scanned: int = 0
    copied: int = 0
    skipped_newer: int = 0
    skipped_expired: int = 0
    skipped_corrupt: int = 0
    failed: int = 0
    resumed_from: int = 0
    completed: bool = False
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def keys_per_second(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keys_per_second": round(self.keys_per_second, 1)}


async def backfill(
    legacy: CacheHierarchy,
    new: CacheHierarchy,
    *,
    batch: int = 500,
    rate: float | None = None,
    restart: bool = False,
    progress: Progress | None = None,
    progress_every: float = 5.0,
) -> BackfillReport:
    """Copy every legacy key into new unless new holds a newer version.

    Logs ``backfill_progress`` at most every ``progress_every`` seconds (and
    ``backfill_finished`` at the end); ``progress`` is called after each batch."""
    if batch < 1:
        raise ConfigurationError(f"batch must be >= 1, got {batch}")
    if rate is not None and not rate > 0:
        raise ConfigurationError(f"rate must be > 0 keys per second, got {rate}")
    source, target = _l2_of(legacy, "legacy"), _l2_of(new, "new")
    report = BackfillReport()
    started = time.monotonic()
    last_logged = started
    checkpoint = checkpoint_key(legacy, new)
    cursor = 0
    if not restart:
        saved = await target.call(target.backend.get, checkpoint)
        if saved:
            cursor = int(saved)
            report.resumed_from = cursor
    prefix = legacy._prefix
    prefix_length = len(prefix)
    new_prefix = new._prefix
    while True:
        try:
            cursor, keys = await source.call(source.backend.scan_page, prefix, cursor, batch)
            blobs = await source.call(source.backend.get_many, keys) if keys else []
        except L2Unavailable as exc:
            report.errors.append(f"legacy unavailable: {exc.kind}")
            break
        now = legacy._clock()
        items: list[tuple[bytes, bytes | None, int, int | None]] = []
        for full, blob in zip(keys, blobs, strict=True):
            report.scanned += 1
            if blob is None:
                continue
            try:
                envelope = legacy._codec.decode(blob)
            except CorruptValueError:
                report.skipped_corrupt += 1
                continue
            ttl_ms: int | None = None
            if envelope.expires_at is not None:
                left = envelope.expires_at - now
                if left <= 0:
                    report.skipped_expired += 1
                    continue
                ttl_ms = max(1, round(left * 1000))
            encoded = new._codec.encode(
                envelope.value, expires_at=envelope.expires_at, version=envelope.version
            )
            items.append(
                (new_prefix + full[prefix_length:], encoded.blob, envelope.version, ttl_ms)
            )
        if items:
            try:
                applied = await target.call(target.backend.write_if_newer, items)
            except L2Unavailable as exc:
                report.failed += len(items)
                report.errors.append(f"new unavailable: {exc.kind}")
                break
            copied = sum(applied)
            report.copied += copied
            if new._invalidator is not None and copied:
                new._invalidator.announce(
                    item[0][len(new_prefix) :].decode("utf-8", "surrogateescape")
                    for item, done in zip(items, applied, strict=True)
                    if done
                )
            report.skipped_newer += len(applied) - copied
        if cursor == 0:
            report.completed = True
            await target.call(target.backend.delete_many, [checkpoint])
            break
        await target.call(target.backend.set, checkpoint, str(cursor).encode(), None)
        if progress is not None:
            progress(report.scanned, report.copied)
        if time.monotonic() - last_logged >= progress_every:
            last_logged = time.monotonic()
            _log.info(
                "backfill_progress",
                scanned=report.scanned,
                copied=report.copied,
                skipped_newer=report.skipped_newer,
                seconds=round(last_logged - started, 3),
                keys_per_second=round(report.scanned / max(last_logged - started, 1e-9), 1),
            )
        if rate is not None:
            ahead = report.scanned / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress(report.scanned, report.copied)
    _log.info("backfill_finished", **{k: v for k, v in report.as_dict().items() if k != "errors"})
    return report


@dataclass
class VerifyReport:
    sampled: int = 0
    matching: int = 0
    missing_in_new: int = 0
    mismatched: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mismatch_rate(self) -> float:
        return (self.missing_in_new + self.mismatched) / self.sampled if self.sampled else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mismatch_rate": round(self.mismatch_rate, 6)}


async def verify(
    legacy: CacheHierarchy, new: CacheHierarchy, *, sample: int = 1000, max_examples: int = 5
) -> VerifyReport:
    """Compare up to ``sample`` legacy keys with new; report the mismatch rate."""
    if sample < 1:
        raise ConfigurationError(f"sample must be >= 1, got {sample}")
    report = VerifyReport()
    keys: list[str] = []
    async for page in legacy.iter_keys():
        keys.extend(page[: sample - len(keys)])
        if len(keys) >= sample:
            break
    for key in keys:
        old = await legacy.get_entry(key)
        if old is None:
            continue  # expired or deleted since the scan
        report.sampled += 1
        current = await new.get_entry(key)
        if current is None:
            report.missing_in_new += 1
            problem = "missing in new"
        elif current[0] != old[0]:
            report.mismatched += 1
            problem = "different value"
        else:
            report.matching += 1
            continue
        if len(report.examples) < max_examples:
            report.examples.append(
                {
                    "key": key,
                    "problem": problem,
                    "legacy": repr(old[0])[:200],
                    "new": None if current is None else repr(current[0])[:200],
                }
            )
    return report
