"""Dump: write every live entry of a namespace as warm-up records.

The namespace is walked with SCAN (never KEYS, so Redis is never blocked)
``batch`` keys at a time, each batch read with one MGET; every entry is
written with its remaining TTL (null: no expiry). Keys written during the
dump may or may not be included.

JSON Lines carries JSON values only. An entry whose value JSON cannot carry
without loss (bytes, a datetime, NaN or Infinity, a dict with non-str keys)
is not written: it is counted in ``unrepresentable`` and the first ones are
listed with the reason, and ``--format msgpack`` dumps them faithfully.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from resync_hierarchy.codec.stream import pack_record
from resync_hierarchy.errors import ConfigurationError, SerializationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.warmup._bulk import BatchFailed, BulkCache
from resync_hierarchy.warmup.records import format_json_line, json_problem

__all__ = ["DumpReport", "dump"]

_log = get_logger("resync_hierarchy.warmup")


@dataclass
class DumpReport:
    format: str = "jsonl"
    written: int = 0
    unrepresentable: int = 0
    examples: list[str] = field(default_factory=list)
    """The first entries not written, with the reason."""
    expired: int = 0
    corrupt: int = 0
    scanned: int = 0
    completed: bool = False
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def keys_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "written": self.written,
            "unrepresentable": self.unrepresentable,
            "examples": list(self.examples),
            "expired": self.expired,
            "corrupt": self.corrupt,
            "scanned": self.scanned,
            "completed": self.completed,
            "errors": list(self.errors),
            "duration_seconds": round(self.seconds, 3),
            "keys_per_second": round(self.keys_per_second, 1),
        }


async def dump(
    cache: CacheHierarchy,
    out: BinaryIO,
    *,
    format: Literal["jsonl", "msgpack"] = "jsonl",
    batch: int = 500,
    match: str | None = None,
    max_listed: int = 20,
    progress: Callable[[DumpReport], None] | None = None,
) -> DumpReport:
    """Write ``cache``'s namespace to ``out`` (binary); see the module docstring.
    ``match`` keeps only keys matching that glob (``fnmatch`` rules, case
    sensitive). Never raises for Redis trouble: the report says where it stopped."""
    if format not in ("jsonl", "msgpack"):
        raise ConfigurationError(f"dump format must be jsonl or msgpack, got {format!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"batch must be an int >= 1, got {batch!r}")
    bulk = BulkCache(cache, role="dumped")
    report = DumpReport(format=format)
    started = time.monotonic()

    def refuse(key: str, reason: str) -> None:
        report.unrepresentable += 1
        if len(report.examples) < max_listed:
            report.examples.append(f"{key!r:.80}: {reason}")

    cursor = 0
    try:
        while True:
            cursor, keys = await bulk.scan_page(cursor, batch)
            report.scanned += len(keys)
            if match is not None:
                keys = [k for k in keys if fnmatch.fnmatchcase(k, match)]
            chunks: list[bytes] = []
            for entry in await bulk.read(keys):
                try:
                    entry.key.encode("utf-8")
                except UnicodeEncodeError:
                    refuse(entry.key, "the key is not valid UTF-8 (written by another program?)")
                    continue
                if format == "jsonl":
                    problem = json_problem(entry.value)
                    if problem is not None:
                        refuse(entry.key, f"JSON cannot carry {problem}; use --format msgpack")
                        continue
                    line = format_json_line(entry.key, entry.value, entry.ttl)
                    chunks.append(line.encode("utf-8") + b"\n")
                else:
                    record = {"key": entry.key, "value": entry.value, "ttl": entry.ttl}
                    try:
                        chunks.append(pack_record(record))
                    except SerializationError as exc:
                        refuse(entry.key, str(exc))
                        continue
                report.written += 1
            if chunks:
                out.write(b"".join(chunks))
            if progress is not None:
                progress(report)
            if cursor == 0:
                report.completed = True
                break
    except BatchFailed as exc:
        report.errors.append(f"Redis stopped answering after {report.written} entries: {exc}")
    out.flush()
    report.expired = bulk.expired
    report.corrupt = bulk.corrupt
    report.seconds = time.monotonic() - started
    _log.info(
        "dump_finished",
        namespace=cache.config.namespace,
        **{k: v for k, v in report.as_dict().items() if k not in ("examples", "errors")},
    )
    return report
