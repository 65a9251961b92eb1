"""Warm-up and dump: fill a cache's Redis before it takes traffic, and save one.

Layered above the hierarchy (like migration): the CLI's ``warmup`` and
``dump`` subcommands and the ops scripts use this package.

* :func:`warm_up` loads records from a :class:`FileSource` (JSON Lines or
  msgpack dump), a :class:`CacheSource` (another Redis or namespace) or a
  :class:`HotKeysSource` (a hot-key snapshot's keys, values from another
  cache) into a cache, with a concurrency limit, a rate limit, skip-existing,
  dry run and a resumable checkpoint; it returns a :class:`WarmupReport`.
* :func:`dump` writes a namespace as such a file; it returns a :class:`DumpReport`.

The in-process hot-key path (a hierarchy with ``hot_keys_snapshot`` set)
lives in :mod:`resync_hierarchy.hierarchy.hot_keys`.
"""

from __future__ import annotations

from resync_hierarchy.warmup._bulk import BulkCache
from resync_hierarchy.warmup.dump import DumpReport, dump
from resync_hierarchy.warmup.loader import TokenBucket, WarmupReport, warm_up
from resync_hierarchy.warmup.records import BadRecord, Record
from resync_hierarchy.warmup.sources import CacheSource, FileSource, HotKeysSource, Source

__all__ = [
    "BadRecord",
    "BulkCache",
    "CacheSource",
    "DumpReport",
    "FileSource",
    "HotKeysSource",
    "Record",
    "Source",
    "TokenBucket",
    "WarmupReport",
    "dump",
    "warm_up",
]
