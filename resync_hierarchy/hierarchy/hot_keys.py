"""The hot-key snapshot: a restarted process fills its L1 before it takes traffic.

With ``hot_keys_snapshot`` set to a file path, a CacheHierarchy

* at ``shutdown()`` writes its most used L1 keys (up to ``hot_keys_max``,
  in the order the L1 eviction policy would keep them) to that file: JSON,
  written to a temporary file in the same directory and renamed over the old
  one, so a reader never sees half a snapshot::

      {"format": "resync-hot-keys", "version": 1, "namespace": "llm",
       "written_at": 1700000000.0, "keys": ["most used first", ...]}

  Only keys: the values live in L2. An empty L1 writes nothing, so the
  previous snapshot is kept. The policy orders keys per lock stripe: the
  snapshot takes every stripe's first key, then every stripe's second, and
  so on (see :func:`most_used_keys`).
* at ``start()`` reads that file, if it is there, and fetches those keys from
  L2 into L1 (``get_many`` in batches of 500, their remaining TTL kept), for at
  most ``max(1 s, 4 x l2_timeout)`` in all.

Neither step ever fails ``start()`` or ``shutdown()``: a missing, unreadable
or foreign snapshot (another namespace, another format) is logged and
ignored, and so is a snapshot file that cannot be written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from resync_hierarchy.errors import CacheError
from resync_hierarchy.l1 import L1Store
from resync_hierarchy.observe.logging import get_logger

if TYPE_CHECKING:
    from resync_hierarchy.hierarchy.core import CacheHierarchy

__all__ = [
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "SnapshotError",
    "most_used_keys",
    "preload",
    "read_snapshot",
    "save",
    "write_snapshot",
]

SNAPSHOT_FORMAT: Final = "resync-hot-keys"
SNAPSHOT_VERSION: Final = 1
_PRELOAD_BATCH: Final = 500

_log = get_logger("resync_hierarchy.hierarchy")


class SnapshotError(ValueError):
    """The snapshot file is not a hot-key snapshot this version can read."""


def most_used_keys(l1: L1Store, limit: int) -> list[str]:
    """Up to ``limit`` keys of ``l1``, those its eviction policy would keep
    longest first (the reverse of the policy's victim order: the most
    recently used under LRU, the protected segment first under W-TinyLFU).

    The policy runs per lock stripe, so the order is per stripe; stripes are
    interleaved (every stripe's first key, then every stripe's second, ...).
    Takes each stripe's lock briefly; a key may have expired meanwhile (the
    preload then simply does not find it in L2).
    """
    per_stripe: list[list[str]] = []
    for stripe in l1._stripes:
        with stripe.lock:
            keep_longest_first = list(stripe.policy.ordered_keys())
        keep_longest_first.reverse()
        per_stripe.append(keep_longest_first)
    out: list[str] = []
    deepest = max((len(keys) for keys in per_stripe), default=0)
    for rank in range(deepest):
        for keys in per_stripe:
            if rank < len(keys):
                out.append(keys[rank])
                if len(out) >= limit:
                    return out
    return out


def write_snapshot(path: str | os.PathLike[str], namespace: str, keys: list[str]) -> None:
    """Write a snapshot atomically (temporary file, fsync, rename). Raises OSError."""
    target = Path(path)
    document = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "namespace": namespace,
        "written_at": time.time(),
        "keys": keys,
    }
    data = json.dumps(document, ensure_ascii=False).encode("utf-8")
    directory = target.parent if str(target.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def read_snapshot(path: str | os.PathLike[str], *, namespace: str | None = None) -> list[str]:
    """The keys of a snapshot file. Raises OSError if it cannot be read and
    :class:`SnapshotError` if it is not a snapshot (or, with ``namespace``,
    one of another namespace)."""
    raw = Path(path).read_bytes()
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise SnapshotError(f"{os.fspath(path)} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{os.fspath(path)} is not a hot-key snapshot (no format marker)")
    if document.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"{os.fspath(path)} is hot-key snapshot version {document.get('version')!r}; "
            f"this release reads version {SNAPSHOT_VERSION}"
        )
    if namespace is not None and document.get("namespace") != namespace:
        raise SnapshotError(
            f"{os.fspath(path)} is a snapshot of namespace {document.get('namespace')!r}, "
            f"not {namespace!r}"
        )
    keys = document.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise SnapshotError(f"{os.fspath(path)}: 'keys' must be a list of non-empty strings")
    return list(dict.fromkeys(keys))


def save(cache: CacheHierarchy) -> int:
    """At shutdown: write the cache's hot keys to its snapshot path. Never
    raises; returns how many keys were written (0 when nothing was)."""
    path = cache.config.hot_keys_snapshot
    l1 = cache._l1
    if path is None or l1 is None:
        return 0
    try:
        keys = most_used_keys(l1, cache.config.hot_keys_max)
        if not keys:  # an empty L1 (never used, or just emptied) keeps the older snapshot
            _log.info("hot_keys_snapshot_kept", namespace=cache.config.namespace)
            return 0
        write_snapshot(path, cache.config.namespace, keys)
    except Exception as exc:  # shutdown must complete whatever the disk says
        _log.warning(
            "hot_keys_snapshot_not_written",
            namespace=cache.config.namespace,
            error=f"{type(exc).__name__}: {exc}",
        )
        return 0
    _log.info("hot_keys_snapshot_written", namespace=cache.config.namespace, keys=len(keys))
    return len(keys)


async def preload(cache: CacheHierarchy) -> dict[str, Any]:
    """At start: fetch the snapshot's keys from L2 into L1. Never raises;
    returns ``{"keys": in the snapshot, "loaded": found in L2}`` (or a
    ``reason`` why nothing was loaded)."""
    path = cache.config.hot_keys_snapshot
    namespace = cache.config.namespace
    if path is None or cache._l1 is None or cache._l2 is None:
        return {"keys": 0, "loaded": 0, "reason": "not configured"}
    try:
        keys = read_snapshot(path, namespace=namespace)[: cache.config.hot_keys_max]
    except FileNotFoundError:
        _log.info("hot_keys_snapshot_absent", namespace=namespace)
        return {"keys": 0, "loaded": 0, "reason": "no snapshot"}
    except (OSError, SnapshotError) as exc:
        _log.warning("hot_keys_snapshot_unreadable", namespace=namespace, error=str(exc))
        return {"keys": 0, "loaded": 0, "reason": "unreadable"}
    loaded = 0
    budget = max(1.0, 4 * cache.config.l2_timeout)
    started = time.monotonic()
    try:
        async with asyncio.timeout(budget):
            for start in range(0, len(keys), _PRELOAD_BATCH):
                try:
                    found = await cache.get_many(keys[start : start + _PRELOAD_BATCH])
                except CacheError:  # a key this config refuses (e.g. max_key_bytes)
                    continue
                loaded += len(found)
    except TimeoutError:
        _log.warning(
            "hot_keys_preload_timed_out", namespace=namespace, loaded=loaded, budget=budget
        )
    _log.info(
        "hot_keys_preloaded",
        namespace=namespace,
        keys=len(keys),
        loaded=loaded,
        seconds=round(time.monotonic() - started, 3),
    )
    return {"keys": len(keys), "loaded": loaded}
