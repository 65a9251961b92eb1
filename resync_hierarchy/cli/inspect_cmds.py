"""``health`` and ``stats``: look at a cache without changing it."""

from __future__ import annotations

import argparse
from typing import Any

from resync_hierarchy.cli._common import build_cache, emit

__all__ = ["add_health_arguments", "add_stats_arguments", "health", "stats"]

HEALTH_EXIT = {"ok": 0, "degraded": 1, "down": 2}


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Exit status: 0 ok, 1 degraded (L2 down, L1 serving), 2 down."


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Counts the namespace's keys with SCAN: a full pass over the database."


async def health(args: argparse.Namespace) -> int:
    cache = build_cache(args)
    try:
        report = await cache.health()
    finally:
        await cache.shutdown()
    emit(args, report, _health_text(report))
    return HEALTH_EXIT.get(str(report.get("status")), 2)


def _health_text(report: dict[str, Any]) -> str:
    l1, l2 = report.get("l1", {}), report.get("l2", {})
    lines = [f"status: {report.get('status')}"]
    if l1.get("enabled"):
        lines.append(
            f"l1: on, {l1.get('entries', 0)}/{l1.get('max_entries', 0)} entries, "
            f"{l1.get('bytes', 0)}/{l1.get('max_bytes', 0)} bytes"
        )
    else:
        lines.append("l1: off")
    if l2.get("status") == "disabled":
        lines.append("l2: none (memory://: give --redis-url or REDIS_URL to check a Redis)")
    elif l2.get("status") == "ok":
        lines.append(f"l2: ok, {l2.get('backend')}, ping {l2.get('ping_ms')} ms")
    else:
        lines.append(f"l2: {l2.get('status')}, {l2.get('backend')}: {l2.get('last_error')}")
    return "\n".join(lines)


async def stats(args: argparse.Namespace) -> int:
    cache = build_cache(args)
    try:
        summary = await cache.l2_summary()
        local = cache.get_stats()
    finally:
        await cache.shutdown()
    document = {"namespace": local["namespace"], "l2": summary, "process": local}
    emit(args, document, _stats_text(document))
    return 0 if summary.get("status") in ("ok", "disabled") else 2


def _stats_text(document: dict[str, Any]) -> str:
    l2 = document["l2"]
    lines = [f"namespace: {document['namespace']}"]
    if l2.get("status") == "disabled":
        lines.append("l2: none (memory://); give --redis-url or REDIS_URL")
    elif l2.get("status") == "down":
        lines.append(f"l2: down ({l2.get('error')}), {l2.get('backend')}")
    else:
        lines.append(f"l2: {l2.get('backend')}")
        lines.append(f"keys in namespace: {l2.get('namespace_keys')}")
        for name, value in l2.get("server", {}).items():
            lines.append(f"  {name}: {value}")
    return "\n".join(lines)
