"""``warmup`` and ``dump``: fill a cache's Redis before traffic, and save a namespace.

    warmup FILE                      load a dump (JSON Lines or msgpack; - = stdin)
    warmup --from-url URL            copy another Redis / namespace (--from-namespace)
    warmup --hot-keys SNAPSHOT       with --from-url: copy the snapshot's keys;
                                     alone: report how many of them this Redis holds
    dump [--output FILE]             write the namespace (stdout by default)

warmup options: --batch, --concurrency (batches in flight), --rate (keys/s),
--skip-existing (never replace a value already in Redis), --dry-run (parse and
validate only), --resume STATE (checkpoint file: a rerun continues after the
last acknowledged batch; deleted when the load completes), --limit N,
--default-ttl S (for entries whose ttl is null; default: no expiry).

Exit status: 0 everything loaded (or dumped); 1 bad lines, failed batches, an
unreachable source or entries a JSON dump could not carry; 64 usage errors.
Progress goes to stderr (a bar on a terminal, a line every 10 s otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from resync_hierarchy.cli._common import build_cache, emit
from resync_hierarchy.config import HierarchyConfig
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.hierarchy.hot_keys import SnapshotError, read_snapshot
from resync_hierarchy.warmup import (
    BulkCache,
    CacheSource,
    DumpReport,
    FileSource,
    HotKeysSource,
    Source,
    WarmupReport,
    dump,
    warm_up,
)
from resync_hierarchy.warmup._bulk import BatchFailed

__all__ = ["add_dump_arguments", "add_warmup_arguments", "run_dump", "run_warmup"]

_PLAIN_PROGRESS_EVERY = 10.0


def _epilog(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_warmup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="dump file to load (- reads stdin)")
    parser.add_argument(
        "--format", choices=("auto", "jsonl", "msgpack"), default="auto", help="of FILE"
    )
    parser.add_argument("--from-url", metavar="URL", help="load from another Redis")
    parser.add_argument(
        "--from-namespace", metavar="NS", help="namespace to load from (default: --namespace)"
    )
    parser.add_argument("--hot-keys", metavar="SNAPSHOT", help="a hot-key snapshot file")
    parser.add_argument("--match", metavar="GLOB", help="--from-url: only keys matching GLOB")
    parser.add_argument("--batch", type=_positive_int, default=500, help="entries per round trip")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=4, help="batches in flight (default 4)"
    )
    parser.add_argument("--rate", type=_positive_float, help="at most this many keys per second")
    parser.add_argument(
        "--skip-existing", action="store_true", help="never replace a value already in Redis"
    )
    parser.add_argument("--dry-run", action="store_true", help="parse and validate; write nothing")
    parser.add_argument("--resume", metavar="STATE", help="checkpoint file (resumable runs)")
    parser.add_argument("--limit", type=_positive_int, help="stop after N records")
    parser.add_argument(
        "--default-ttl",
        type=_positive_float,
        metavar="S",
        help="TTL for entries whose ttl is null (default: no expiry)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    _epilog(parser)


def add_dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    parser.add_argument("--format", choices=("jsonl", "msgpack"), default="jsonl")
    parser.add_argument("--match", metavar="GLOB", help="only keys matching GLOB")
    parser.add_argument("--batch", type=_positive_int, default=500, help="keys per SCAN step")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    _epilog(parser)


class _Progress:
    """A bar on a terminal; otherwise a line every 10 s; always on stderr."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = self.started
        self.shown = False

    def show(self, done: int, extra: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        rate = done / max(now - self.started, 1e-9)
        text = f"{self.label}: {done:,} keys, {rate:,.0f}/s{extra}"
        if self.tty:
            sys.stderr.write(f"\r{text}\x1b[K")
            sys.stderr.flush()
            self.shown = True
        elif now - self.last >= _PLAIN_PROGRESS_EVERY:
            self.last = now
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _reader(url: str, namespace: str) -> CacheHierarchy:
    """A cache used only to read another Redis: no L1, no subscription."""
    config = HierarchyConfig.from_env(
        url=url, namespace=namespace, invalidation=False, l1_max_entries=0
    )
    return CacheHierarchy(config)


async def run_warmup(args: argparse.Namespace) -> int:
    sources = [n for n, v in (("FILE", args.file), ("--from-url", args.from_url)) if v]
    if args.hot_keys and args.file:
        raise ConfigurationError("give either FILE or --hot-keys SNAPSHOT, not both")
    if not args.hot_keys and len(sources) != 1:
        raise ConfigurationError(
            "warmup needs exactly one source: FILE (or - for stdin), --from-url URL, "
            f"or --hot-keys SNAPSHOT; got {', '.join(sources) or 'none'}"
        )
    if args.match and not args.from_url:
        raise ConfigurationError("--match applies to --from-url only")
    target = build_cache(args)
    origin: CacheHierarchy | None = None
    try:
        if args.hot_keys and not args.from_url:
            return await _check_hot_keys(args, target)
        source: Source
        if args.from_url:
            namespace = args.from_namespace or target.config.namespace
            origin = _reader(args.from_url, namespace)
            if (
                origin.config.parsed_url == target.config.parsed_url
                and namespace == target.config.namespace
            ):
                raise ConfigurationError(
                    "the source and the target are the same cache; give another "
                    "--from-url or --from-namespace"
                )
            bulk = BulkCache(origin, role="source")
            if args.hot_keys:
                source = HotKeysSource(
                    args.hot_keys, _snapshot_keys(args.hot_keys), bulk, batch=args.batch
                )
            else:
                source = CacheSource(bulk, batch=args.batch, match=args.match)
        else:
            source = FileSource(args.file, format=args.format)
        return await _load(args, target, source)
    finally:
        if origin is not None:
            await origin.shutdown()
        await target.shutdown()


def _snapshot_keys(path: str) -> list[str]:
    try:
        return read_snapshot(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the hot-key snapshot {path!r}: {exc}") from exc
    except SnapshotError as exc:
        raise ConfigurationError(str(exc)) from exc


async def _load(args: argparse.Namespace, target: CacheHierarchy, source: Source) -> int:
    bar = _Progress("warmup", enabled=not args.no_progress)

    def progress(report: WarmupReport) -> None:
        done = report.would_load if report.dry_run else report.loaded + report.skipped
        bad = f", {report.bad_lines:,} bad" if report.bad_lines else ""
        bar.show(done, f", {report.read:,} read{bad}")

    report = await warm_up(
        target,
        source,
        batch=args.batch,
        concurrency=args.concurrency,
        rate=args.rate,
        skip_existing=args.skip_existing,
        dry_run=args.dry_run,
        state_file=args.resume,
        limit=args.limit,
        default_ttl=args.default_ttl,
        progress=progress,
    )
    bar.end()
    emit(args, report.as_dict(), _describe(report, source.unit))
    healthy = not report.failed and not report.bad_lines
    return 0 if healthy and report.stopped in (None, "limit") else 1


def _describe(report: WarmupReport, unit: str) -> str:
    if report.completed:
        state = "completed"
    elif report.stopped == "limit":
        state = "stopped at --limit (run again with the same --resume to continue)"
    else:
        state = f"STOPPED ({report.stopped}; run again with --resume to continue)"
    lines = [f"warmup {'(dry run) ' if report.dry_run else ''}{state}"]
    if report.resumed_from:
        lines.append(f"resumed after {unit} {report.resumed_from.get('number', '?')}")
    if report.dry_run:
        lines.append(f"would load {report.would_load:,}, read {report.read:,}")
    else:
        lines.append(
            f"loaded {report.loaded:,}, skipped (already in Redis) {report.skipped:,}, "
            f"failed {report.failed:,}, read {report.read:,}"
            + (f", batches retried {report.retried:,}" if report.retried else "")
        )
    lines.append(f"bad {unit}s: {report.bad_lines:,}")
    lines.extend(f"  {text}" for text in report.bad)
    if report.bad_lines > len(report.bad):
        lines.append(f"  ... and {report.bad_lines - len(report.bad):,} more")
    lines.extend(report.errors)
    lines.append(f"{report.seconds:.2f} s, {report.keys_per_second:,.0f} keys/s")
    return "\n".join(lines)


async def _check_hot_keys(args: argparse.Namespace, target: CacheHierarchy) -> int:
    """A snapshot checked against this Redis: how many of its keys are there."""
    keys = _snapshot_keys(args.hot_keys)
    bulk = BulkCache(target)
    present = 0
    error = None
    try:
        for start in range(0, len(keys), args.batch):
            present += len(await bulk.read(keys[start : start + args.batch]))
    except BatchFailed as exc:
        error = str(exc)
    document: dict[str, Any] = {
        "snapshot": args.hot_keys,
        "hot_keys": len(keys),
        "present": present,
        "missing": len(keys) - present,
        "error": error,
    }
    text = (
        f"hot-key snapshot {args.hot_keys}: {len(keys):,} keys, {present:,} in Redis, "
        f"{len(keys) - present:,} missing"
        + (f"\nRedis stopped answering: {error}" if error else "")
        + "\n(a process configured with hot_keys_snapshot loads them into its L1 at start)"
    )
    emit(args, document, text)
    return 0 if error is None else 1


async def run_dump(args: argparse.Namespace) -> int:
    cache = build_cache(args)
    bar = _Progress("dump", enabled=not args.no_progress)
    try:
        if args.output:
            report = await _dump_to_file(cache, Path(args.output), args, bar)
        else:
            report = await dump(
                cache,
                sys.stdout.buffer,
                format=args.format,
                batch=args.batch,
                match=args.match,
                progress=lambda r: bar.show(r.written, ""),
            )
    finally:
        await cache.shutdown()
    bar.end()
    text = "\n".join(
        [
            f"dump {'completed' if report.completed else 'INCOMPLETE'}: {report.written:,} "
            f"entries written ({report.format})",
            f"not written: {report.unrepresentable:,} (JSON cannot carry the value), "
            f"{report.expired:,} expired, {report.corrupt:,} unreadable",
            *(f"  {text}" for text in report.examples),
            *report.errors,
            f"{report.seconds:.2f} s, {report.keys_per_second:,.0f} keys/s",
        ]
    )
    # Without --output, stdout carries the dump itself: the report goes to stderr.
    with contextlib.redirect_stdout(sys.stdout if args.output else sys.stderr):
        emit(args, report.as_dict(), text)
    return 0 if report.completed and not report.unrepresentable else 1


async def _dump_to_file(
    cache: CacheHierarchy, path: Path, args: argparse.Namespace, bar: _Progress
) -> DumpReport:
    """Write next to ``path`` and rename when complete: a failed dump never
    replaces the last good one."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    out: BinaryIO
    try:
        with os.fdopen(fd, "wb") as out:
            report = await dump(
                cache,
                out,
                format=args.format,
                batch=args.batch,
                match=args.match,
                progress=lambda r: bar.show(r.written, ""),
            )
            out.flush()
            os.fsync(out.fileno())
        if report.completed:
            os.replace(temp, path)
        else:
            os.unlink(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return report
