"""The ``resync-hierarchy`` command line.

Subcommands: ``bench`` (the load scenario), ``health`` (a probe: exit 0 ok,
1 degraded, 2 down), ``stats``, ``migrate``, ``warmup`` (load a dump, another
Redis or namespace, or a hot-key snapshot's keys), ``dump`` (write a
namespace as a warm-up file) and ``serve-metrics`` (a Prometheus endpoint).
``--json`` makes any of them print one JSON document; ``--redis-url`` (or
``$REDIS_URL``) and ``--namespace`` select the cache. Caller mistakes (a bad
URL, a bad option) print one line on stderr and exit with status 64.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from resync_hierarchy import __version__
from resync_hierarchy.cli import bench, inspect_cmds, migrate, serve_metrics, warmup_cmds
from resync_hierarchy.cli._common import add_common_arguments
from resync_hierarchy.errors import CacheError
from resync_hierarchy.observe.logging import configure_cli_logging

__all__ = ["build_parser", "main"]

EXIT_USAGE = 64

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resync-hierarchy",
        description="Two-tier cache (in-process L1 + Redis L2): load test, probe and inspect.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_arguments(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = [
        (
            "bench",
            "run the load scenario (embedded in-process L2 unless --redis-url is given)",
            bench.add_arguments,
            bench.run,
        ),
        (
            "health",
            "check the cache; exit 0 ok, 1 degraded, 2 down",
            inspect_cmds.add_health_arguments,
            inspect_cmds.health,
        ),
        (
            "serve-metrics",
            "serve /metrics (Prometheus) for the cache, probing its health every few seconds",
            serve_metrics.add_arguments,
            serve_metrics.run,
        ),
        (
            "migrate",
            "drive a migration fleet-wide: status, legacy, shadow, rollout, rollback, finish, "
            "backfill, verify",
            migrate.add_arguments,
            migrate.run,
        ),
        (
            "stats",
            "show the namespace's size in L2 and the server's counters",
            inspect_cmds.add_stats_arguments,
            inspect_cmds.stats,
        ),
        (
            "warmup",
            "fill the cache's Redis from a dump file, another Redis or namespace, or a "
            "hot-key snapshot (resumable, rate-limited)",
            warmup_cmds.add_warmup_arguments,
            warmup_cmds.run_warmup,
        ),
        (
            "dump",
            "write the namespace as a warm-up file (JSON Lines or msgpack)",
            warmup_cmds.add_dump_arguments,
            warmup_cmds.run_dump,
        ),
    ]
    for name, help_text, add_arguments, handler in commands:
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_common_arguments(command)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cli_logging(json=True if args.json else None)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except CacheError as exc:
        print(f"resync-hierarchy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"resync-hierarchy {args.command}: interrupted", file=sys.stderr)
        return 130
