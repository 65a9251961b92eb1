"""Batch reads and writes of whole entries (value, TTL) on one CacheHierarchy.

The public operations carry one TTL per ``set_many`` and never report that a
write failed (Redis trouble is absorbed). A warm-up needs per-entry TTLs in one
round trip per batch and needs to know whether a batch landed, so that its
checkpoint only moves past acknowledged writes. Like the migration backfill,
this module works one layer below the public API, and it is the only module of
the warm-up package that does: it reads the hierarchy's L2, codec and key
prefix, and after a write it announces the keys on the invalidation channel
and drops them from this process's L1, exactly as a ``set_many`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from resync_hierarchy.codec import CorruptValueError
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.resilience.guard import GuardedL2, L2Unavailable

__all__ = [
    "SKIP_EXISTING_VERSION",
    "BatchFailed",
    "BulkCache",
    "Prepared",
    "ReadEntry",
    "batch_deadline",
]

SKIP_EXISTING_VERSION: Final = 1
"""Write version of entries loaded with skip-existing: older than any value a
cache writes, so the version-conditional write never replaces a stored value
(and a later write by any cache replaces the loaded one)."""


def batch_deadline(timeout: float, entries: int) -> float:
    """Seconds one batch of ``entries`` may take: a pipelined batch is many
    commands, so it gets ``l2_timeout`` per 50 entries (at least one
    ``l2_timeout``, at most 30 s) instead of one command's deadline."""
    return max(timeout, min(30.0, timeout * entries / 50))


class BatchFailed(Exception):
    """Redis did not acknowledge a batch (down, slow, refusing)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"L2 unavailable ({kind})")
        self.kind = kind


@dataclass(slots=True)
class Prepared:
    """An entry validated and encoded for this cache, ready to send."""

    key: str
    full_key: bytes
    blob: bytes
    ttl_ms: int | None


@dataclass(frozen=True, slots=True)
class ReadEntry:
    """An entry read from L2: its value and remaining TTL in seconds (None: no expiry)."""

    key: str
    value: Any
    ttl: float | None


class BulkCache:
    """Whole-entry batch access to ``cache``'s L2 (which it must have)."""

    def __init__(
        self, cache: CacheHierarchy, *, role: str = "target", require_l2: bool = True
    ) -> None:
        l2 = cache._l2
        if l2 is None and require_l2:
            raise ConfigurationError(
                f"the {role} cache has no Redis ({cache.config.redacted_url}): warm-up and dump "
                "read and write Redis; pass --redis-url URL (or REDIS_URL)"
            )
        self.cache = cache
        self._l2_or_none: GuardedL2 | None = l2
        self._prefix = cache._prefix
        self.corrupt = 0
        self.expired = 0

    @property
    def _l2(self) -> GuardedL2:
        if self._l2_or_none is None:
            raise ConfigurationError("this cache has no Redis to read or write")
        return self._l2_or_none

    # -- writes ---------------------------------------------------------------

    def prepare(self, key: str, value: Any, ttl: float | None, *, skip_existing: bool) -> Prepared:
        """Validate and encode one entry. Raises the cache's own CacheError
        (InvalidKeyError, SerializationError, ValueTooLargeError) for a bad one."""
        cache = self.cache
        full = cache._full_key(key)
        clock = cache._clock
        expires_at = None if ttl is None else clock() + ttl
        version = SKIP_EXISTING_VERSION if skip_existing else cache.new_version()
        encoded = cache._codec.encode(value, expires_at=expires_at, version=version)
        return Prepared(key, full, encoded.blob, None if ttl is None else max(1, round(ttl * 1000)))

    async def write(self, batch: Sequence[Prepared], *, skip_existing: bool) -> int:
        """Write ``batch`` in one round trip; returns how many were written
        (with ``skip_existing``, keys already in L2 are not). Raises
        :class:`BatchFailed` if Redis did not acknowledge it."""
        self.cache._ensure_open()
        l2 = self._l2
        try:
            deadline = batch_deadline(l2.timeout, len(batch))
            if skip_existing:
                applied = await l2.call_within(
                    deadline,
                    l2.backend.write_if_newer,
                    [(p.full_key, p.blob, SKIP_EXISTING_VERSION, p.ttl_ms) for p in batch],
                )
                written = [p.key for p, done in zip(batch, applied, strict=True) if done]
            else:
                await l2.call_within(
                    deadline, l2.backend.set_many, [(p.full_key, p.blob, p.ttl_ms) for p in batch]
                )
                written = [p.key for p in batch]
        except L2Unavailable as exc:
            raise BatchFailed(exc.kind) from exc
        if written:
            cache = self.cache
            cache._evict_keys(written)  # this process's L1 must not keep an older copy
            if cache._invalidator is not None:
                cache._invalidator.announce(written)
        return len(written)

    # -- reads ----------------------------------------------------------------

    async def scan_page(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One SCAN step over the namespace: (next cursor, keys); 0 = done."""
        self.cache._ensure_open()
        l2 = self._l2
        try:
            cursor, fulls = await l2.call(l2.backend.scan_page, self._prefix, cursor, count)
        except L2Unavailable as exc:
            raise BatchFailed(exc.kind) from exc
        cut = len(self._prefix)
        return cursor, [f[cut:].decode("utf-8", "surrogateescape") for f in fulls]

    async def read(self, keys: Sequence[str]) -> list[ReadEntry]:
        """The live entries among ``keys`` with their remaining TTL, in one
        MGET. Missing, expired and unreadable keys are left out (the last two
        counted in :attr:`expired` and :attr:`corrupt`)."""
        if not keys:
            return []
        cache = self.cache
        cache._ensure_open()
        l2 = self._l2
        fulls = [self._prefix + k.encode("utf-8", "surrogateescape") for k in keys]
        try:
            blobs = await l2.call_within(
                batch_deadline(l2.timeout, len(fulls)), l2.backend.get_many, fulls
            )
        except L2Unavailable as exc:
            raise BatchFailed(exc.kind) from exc
        now = cache._clock()
        out: list[ReadEntry] = []
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None:
                continue
            try:
                envelope = cache._codec.decode(blob)
            except CorruptValueError:
                self.corrupt += 1
                continue
            ttl: float | None = None
            if envelope.expires_at is not None:
                ttl = round(envelope.expires_at - now, 3)
                if ttl <= 0:
                    self.expired += 1
                    continue
            out.append(ReadEntry(key, envelope.value, ttl))
        return out
