"""Staging load through a MigrationManager, so the dashboard's migration panels have data.

Two namespaces on one Redis play *legacy* and *new*. The manager starts in the
mode given by the ``MIGRATION_*`` variables (the compose file sets read_new at
50%) and follows the fleet flag record, so ``resync-hierarchy migrate
rollback`` / ``rollout`` / ``shadow`` run against the staging Redis change what
this process does, as they would in production (see deploy/RUNBOOK.md).

Load: ``--rate`` operations per second: 90% get (filled with set on a miss),
10% set, over ``--keyspace`` application keys ``k:<n>``. One get in five reads
instead one of ``--legacy-batch`` keys ``l:<n>`` that only legacy receives: every
``--legacy-writes-every`` seconds they are all rewritten there (TTL twice that),
as by a service not yet migrated. In read_new mode they fall back to legacy
whenever new's copy has expired; in shadow reads they mismatch after each
rewrite.

Metrics: prometheus_client's default registry on ``--metrics-addr``:``--metrics-port``
(0: none).
``--operations N`` stops after N operations (0: run until stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from prometheus_client import start_http_server

from resync_hierarchy import CacheHierarchy, MigrationManager


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://redis:6379/0")
    parser.add_argument("--legacy-namespace", default="staging-legacy")
    parser.add_argument("--new-namespace", default="staging-new")
    parser.add_argument("--metrics-port", type=int, default=9110)
    parser.add_argument("--metrics-addr", default="127.0.0.1", help="0.0.0.0 in a container")
    parser.add_argument("--rate", type=float, default=200.0, help="operations per second")
    parser.add_argument("--keyspace", type=int, default=5000)
    parser.add_argument("--legacy-writes-every", type=float, default=60.0, metavar="S")
    parser.add_argument("--legacy-batch", type=int, default=200, help="legacy-only keys")
    parser.add_argument("--operations", type=int, default=0, help="stop after N (0: never)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.keyspace < 1 or args.legacy_batch < 1 or args.operations < 0:
        parser.error("--rate must be > 0, --keyspace and --legacy-batch >= 1, --operations >= 0")
    if args.legacy_writes_every <= 0:
        parser.error("--legacy-writes-every must be > 0 seconds")
    return args


async def write_legacy_only(legacy: CacheHierarchy, args: argparse.Namespace) -> None:
    """Rewrite every ``l:<n>`` key in legacy only (a writer not yet migrated)."""
    now = time.time()
    await legacy.set_many(
        {f"l:{n}": {"n": n, "at": now, "by": "legacy"} for n in range(args.legacy_batch)},
        ttl=2 * args.legacy_writes_every,
    )


def choose(rng: random.Random, args: argparse.Namespace) -> tuple[str, str]:
    """(operation, key)."""
    if rng.random() >= 0.9:
        return "set", f"k:{rng.randrange(args.keyspace)}"
    if rng.random() < 0.2:
        return "get", f"l:{rng.randrange(args.legacy_batch)}"
    return "get", f"k:{rng.randrange(args.keyspace)}"


async def run(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)  # noqa: S311 (load generation, not security)
    legacy = CacheHierarchy.from_url(args.redis_url, namespace=args.legacy_namespace)
    new = CacheHierarchy.from_url(args.redis_url, namespace=args.new_namespace)
    manager = MigrationManager(legacy=legacy, new=new)
    interval = 1.0 / args.rate
    done = 0
    async with manager:
        await write_legacy_only(legacy, args)
        next_legacy_batch = time.monotonic() + args.legacy_writes_every
        next_op = time.monotonic()
        while args.operations == 0 or done < args.operations:
            now = time.monotonic()
            if now >= next_legacy_batch:
                await write_legacy_only(legacy, args)
                next_legacy_batch = now + args.legacy_writes_every
            operation, key = choose(rng, args)
            if operation == "set" or await manager.get(key) is None:
                await manager.set(key, {"key": key, "at": time.time(), "by": "app"})
            done += 1
            next_op += interval
            delay = next_op - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return {"operations": done, **manager.status()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_addr)
    try:
        summary = asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    print(json.dumps(summary, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
