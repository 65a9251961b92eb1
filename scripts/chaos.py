#!/usr/bin/env python3
"""Chaos rehearsal: the chaos scenarios of the test suite, run by an operator.

    python scripts/chaos.py                      # every scenario, each on its own redis-server
    python scripts/chaos.py --only a,e,g         # some of them ("f" = f1 and f2)
    python scripts/chaos.py --redis-url URL      # non-destructive ones (e, g) in front of URL
    python scripts/chaos.py --json               # one JSON document instead of the table

Without ``--redis-url`` every scenario gets a private ``redis-server`` on a free
loopback port (killed, paused, restarted and reconfigured at will, then stopped).
With ``--redis-url`` only the scenarios that need no control over the server
run: a fault proxy on 127.0.0.1 sits in front of the given Redis, whose address
must be a loopback one, and every key lives in a namespace of its own
(``chaos-<random>``), cleared at the end. The report says what held; the exit
status is 0 if every scenario that ran passed, 1 otherwise, 64 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
from typing import Any

import structlog

from resync_hierarchy import CacheHierarchy
from resync_hierarchy._url import redact_url
from resync_hierarchy.testing.chaos import (
    SCENARIOS,
    ChaosTarget,
    ScenarioReport,
    ScenarioSpec,
    run_scenario,
)
from resync_hierarchy.testing.redis_server import RedisServer, require_redis_reason

EXIT_USAGE = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Rehearse Redis failures against the cache and report what held.",
        epilog="Scenarios: "
        + ", ".join(
            f"{s.key}={s.name}{'' if s.destructive else ' (non-destructive)'}" for s in SCENARIOS
        ),
    )
    parser.add_argument(
        "--redis-url",
        help="an existing Redis (loopback address) for the non-destructive scenarios; "
        "default: a private redis-server per scenario",
    )
    parser.add_argument("--only", help="comma-separated scenario letters, e.g. a,b,f")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--verbose", action="store_true", help="show the library's log events on stderr"
    )
    return parser.parse_args(argv)


def select(only: str | None) -> list[ScenarioSpec]:
    if not only:
        return list(SCENARIOS)
    wanted = {part.strip().lower() for part in only.split(",") if part.strip()}
    known = {s.key for s in SCENARIOS} | {s.group for s in SCENARIOS}
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(
            f"chaos.py: unknown scenario(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return [s for s in SCENARIOS if s.key in wanted or s.group in wanted]


def quiet_logs(verbose: bool) -> None:
    """The library logs every breaker transition; a rehearsal report wants only errors."""
    level = logging.DEBUG if verbose else logging.ERROR
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


async def run_own_servers(specs: list[ScenarioSpec]) -> list[ScenarioReport]:
    reports = []
    for spec in specs:
        server = RedisServer()
        try:
            await asyncio.to_thread(server.start)
            target = ChaosTarget.for_server(server) if spec.destructive else ChaosTarget(server.url)
            reports.append(await run_scenario(spec, target))
        finally:
            await asyncio.to_thread(server.stop)
    return reports


async def run_against_url(url: str, specs: list[ScenarioSpec]) -> list[ScenarioReport]:
    namespace = f"chaos-{secrets.token_hex(4)}"
    target = ChaosTarget(url, namespace=namespace)
    reports = []
    try:
        for spec in specs:
            reports.append(await run_scenario(spec, target))
    finally:
        # Everything the scenarios wrote is in this namespace; nothing else is touched.
        async with CacheHierarchy.from_url(
            url, namespace=namespace, l1_max_entries=0, l2_timeout=5.0
        ) as cleaner:
            await cleaner.clear()
    return reports


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _row(report: ScenarioReport) -> list[str]:
    m = report.measurements
    recovery = m.recovery_seconds
    return [
        report.name,
        "PASS" if report.passed else "FAIL",
        str(m.calls),
        str(m.exceptions),
        _ms(m.max_call_seconds),
        _ms(m.p99_call_seconds),
        str(m.circuit_opens),
        "-" if recovery is None else f"{recovery:.2f}",
        f"{m.writes_during_outage}/{m.outage_writes_verified}",
        f"{report.seconds:.1f}",
    ]


def print_table(reports: list[ScenarioReport], skipped: list[ScenarioSpec], where: str) -> None:
    header = [
        "scenario",
        "result",
        "calls",
        "exc",
        "max ms",
        "p99 ms",
        "opens",
        "closed s",
        "outage w/ok",
        "secs",
    ]
    rows = [header] + [_row(r) for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"Chaos rehearsal against {where}")
    print()
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print(
        "exc: exceptions that reached callers; max/p99 ms: call durations; opens: breaker "
        "openings; closed s: Redis back -> circuit closed (worst episode); outage w/ok: "
        "writes acknowledged during the outage / keys whose last such write was found in Redis"
    )
    for report in reports:
        m = report.measurements
        figures = []
        if m.l1_get_p99_healthy_us is not None and m.l1_get_p99_outage_us is not None:
            figures.append(
                f"get of L1-resident keys p99 {m.l1_get_p99_healthy_us:.1f} us healthy, "
                f"{m.l1_get_p99_outage_us:.1f} us during the outage"
            )
        if m.recovery_by_episode:
            figures.append(
                "closed after "
                + ", ".join(
                    f"{k}: {'never' if v is None else f'{v:.3f}s'}"
                    for k, v in m.recovery_by_episode.items()
                )
            )
        if figures:
            print(f"  {report.name}: " + "; ".join(figures))
        for check in report.failed_checks():
            known = f" [{check.pattern}]" if check.pattern else ""
            print(f"  {report.name} FAILED {check.name}{known}: {check.detail[:400]}")
    for spec in skipped:
        print(f"  {spec.name}: skipped (destructive: needs a redis-server of its own)")
    print()
    passed = sum(r.passed for r in reports)
    print(f"{passed} of {len(reports)} scenarios passed")


async def main_async(args: argparse.Namespace) -> int:
    specs = select(args.only)
    skipped: list[ScenarioSpec] = []
    if args.redis_url:
        skipped = [s for s in specs if s.destructive]
        specs = [s for s in specs if not s.destructive]
        if not specs:
            print(
                "chaos.py: with --redis-url only the non-destructive scenarios run "
                f"({', '.join(s.key for s in SCENARIOS if not s.destructive)})",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:  # the proxy refuses non-loopback addresses and port 6379 up front
            ChaosTarget(args.redis_url).proxy()
        except ValueError as exc:
            print(f"chaos.py: --redis-url: {exc}", file=sys.stderr)
            return EXIT_USAGE
        where = redact_url(args.redis_url)
        reports = await run_against_url(args.redis_url, specs)
    else:
        reason = require_redis_reason()
        if reason is not None:
            print(f"chaos.py: {reason}", file=sys.stderr)
            return EXIT_USAGE
        where = "a private redis-server per scenario"
        reports = await run_own_servers(specs)
    passed = all(r.passed for r in reports)
    if args.json:
        document: dict[str, Any] = {
            "passed": passed,
            "redis": where,
            "scenarios": [r.to_dict() for r in reports],
            "skipped": [s.name for s in skipped],
        }
        print(json.dumps(document, indent=2, default=str))
    else:
        print_table(reports, skipped, where)
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs(args.verbose)
    try:
        return asyncio.run(main_async(args))
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
