"""``migrate``: drive a migration fleet-wide from one terminal.

``--redis-url`` and ``--namespace`` name the NEW configuration: its Redis
holds the flag record every running MigrationManager follows (applied within
a second: pushed by pub/sub, polled as a safety net).

    migrate status              the record and the mode it means
    migrate legacy              legacy only (no dual write)
    migrate shadow [--sample P] dual write, read legacy, compare P % of reads with new
    migrate rollout PERCENT     dual write, PERCENT % of keys read new (fallback to legacy)
    migrate rollback            back to reading legacy (dual write stays on)
    migrate finish              new only: legacy is neither read nor written
    migrate backfill            copy legacy into new (resumable, never overwrites newer)
    migrate verify [--sample N] compare N legacy keys with new

``backfill`` and ``verify`` read the legacy configuration from
``--legacy-url`` (default: the same Redis) and ``--legacy-namespace``.
"""

from __future__ import annotations

import argparse
import sys
import time

from resync_hierarchy.cli._common import emit, resolve_url
from resync_hierarchy.config import HierarchyConfig
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.migration.backfill import backfill, verify
from resync_hierarchy.migration.flags import MigrationFlags, parse_percent
from resync_hierarchy.migration.fleet import FlagRecord

__all__ = ["add_arguments", "run"]

ACTIONS = ("status", "legacy", "shadow", "rollout", "rollback", "finish", "backfill", "verify")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do (see below)")
    parser.add_argument("percent", nargs="?", help="for rollout: 0-100")
    parser.add_argument("--sample", type=float, default=None, help="shadow: percent of reads "
                        "compared (default 10); verify: keys compared (default 1000)")  # fmt: skip
    parser.add_argument("--legacy-url", default=None, help="legacy Redis (default: --redis-url)")
    parser.add_argument("--legacy-namespace", default=None, help="legacy namespace")
    parser.add_argument("--batch", type=int, default=500, help="backfill: keys per SCAN batch")
    parser.add_argument("--rate", type=float, default=None, help="backfill: max keys per second")
    parser.add_argument("--restart", action="store_true", help="backfill: ignore the checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="backfill: no progress bar")
    parser.epilog = __doc__.split("\n\n", 2)[2] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _cache(url: str | None, namespace: str | None, role: str) -> CacheHierarchy:
    if not url:
        raise ConfigurationError(
            f"migrate needs the {role} configuration's Redis: pass --redis-url URL (or REDIS_URL)"
        )
    if not namespace:
        raise ConfigurationError(f"migrate needs the {role} configuration's --namespace")
    return CacheHierarchy(HierarchyConfig.from_env(url=url, namespace=namespace))


async def run(args: argparse.Namespace) -> int:
    new = _cache(resolve_url(args), args.namespace, "new")
    try:
        if args.action in ("backfill", "verify"):
            legacy = _cache(args.legacy_url or resolve_url(args), args.legacy_namespace, "legacy")
            try:
                return await _copying(args, legacy, new)
            finally:
                await legacy.shutdown()
        return await _flags(args, new)
    finally:
        await new.shutdown()


async def _flags(args: argparse.Namespace, new: CacheHierarchy) -> int:
    record = FlagRecord(new)
    current = await record.read()
    flags, revision = current if current is not None else (MigrationFlags.from_env(), 0)
    if args.action == "status":
        document = {"revision": revision, "record": current is not None, **flags.as_dict()}
        source = "fleet record" if current else "no record yet (managers use their environment)"
        emit(args, document, _describe(flags, f"revision {revision}, {source}"))
        return 0
    action = args.action
    if action == "rollout":
        if args.percent is None:
            raise ConfigurationError("migrate rollout needs a PERCENT (0-100)")
        percent = parse_percent("PERCENT", args.percent)
        changed = flags.replace(
            use_new_cache=True, rollout_percent=percent, dual_write=True, finished=False
        )
    elif action == "rollback":
        changed = flags.replace(use_new_cache=False, finished=False)
    elif action == "finish":
        changed = flags.replace(finished=True, use_new_cache=True, rollout_percent=100)
    elif action == "shadow":
        sample = parse_percent("--sample", 10 if args.sample is None else args.sample)
        changed = flags.replace(
            use_new_cache=False, dual_write=True, shadow_read_percent=sample, finished=False
        )
    else:  # legacy
        changed = flags.replace(use_new_cache=False, dual_write=False, finished=False)
    written_at = time.time()
    new_revision = await record.write(changed)
    document = {
        "revision": new_revision,
        "previous_mode": flags.mode,
        "written_at": written_at,
        **changed.as_dict(),
    }
    emit(args, document, _describe(changed, f"revision {new_revision} written (was {flags.mode})"))
    return 0


def _describe(flags: MigrationFlags, headline: str) -> str:
    reads = {
        "legacy_only": "legacy",
        "dual_write": "legacy"
        + (
            f" (comparing {flags.shadow_read_percent:g}% with new)"
            if flags.shadow_read_percent
            else ""
        ),
        "read_new": f"new for {flags.rollout_percent:g}% of keys, falling back to legacy",
        "new_only": "new only",
    }[flags.mode]
    writes = {"legacy_only": "legacy", "new_only": "new"}.get(flags.mode, "legacy and new")
    return "\n".join(
        [
            headline,
            f"mode:    {flags.mode}",
            f"reads:   {reads}",
            f"writes:  {writes}",
            f"metrics: {'on' if flags.enable_metrics else 'off'}",
        ]
    )


async def _copying(args: argparse.Namespace, legacy: CacheHierarchy, new: CacheHierarchy) -> int:
    if args.action == "verify":
        sample = 1000 if args.sample is None else int(args.sample)
        result = await verify(legacy, new, sample=sample)
        doc = result.as_dict()
        lines = [
            f"sampled {result.sampled} keys: {result.matching} match, "
            f"{result.missing_in_new} missing in new, {result.mismatched} different",
            f"mismatch rate: {result.mismatch_rate:.3%}",
            *(f"  {e['key']!r}: {e['problem']}" for e in result.examples),
        ]
        emit(args, doc, "\n".join(lines))
        return 0 if result.mismatch_rate == 0 else 1
    show = not args.no_progress and not args.json and sys.stderr.isatty()
    started = time.monotonic()

    def progress(scanned: int, copied: int) -> None:
        if show:
            rate = scanned / max(time.monotonic() - started, 1e-9)
            sys.stderr.write(f"\rbackfill: {scanned:,} scanned, {copied:,} copied, {rate:,.0f}/s")
            sys.stderr.flush()

    report = await backfill(
        legacy, new, batch=args.batch, rate=args.rate, restart=args.restart, progress=progress
    )
    if show:
        sys.stderr.write("\n")
    doc = report.as_dict()
    lines = [
        f"backfill {'completed' if report.completed else 'INTERRUPTED (run again to resume)'}"
        + (f", resumed from cursor {report.resumed_from}" if report.resumed_from else ""),
        f"scanned {report.scanned:,}, copied {report.copied:,}, "
        f"newer in new {report.skipped_newer:,}, expired {report.skipped_expired:,}, "
        f"corrupt {report.skipped_corrupt:,}, failed {report.failed:,}",
        f"{report.seconds:.2f} s, {report.keys_per_second:,.0f} keys/s",
        *report.errors,
    ]
    emit(args, doc, "\n".join(lines))
    return 0 if report.completed else 2
