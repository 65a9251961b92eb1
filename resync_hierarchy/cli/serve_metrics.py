"""``serve-metrics``: a Prometheus endpoint for a cache, for processes without one.

It opens the cache that ``--redis-url``/``--namespace`` name, serves
``/metrics`` on ``--addr:--port`` and calls ``health()`` every
``--interval`` seconds, so ``resync_cache_l2_up``, ``resync_cache_circuit_state``
and ``resync_cache_l2_ping_seconds`` follow the Redis it watches: an external
probe of one namespace's Redis. It runs until interrupted (SIGINT/SIGTERM) or
for ``--duration`` seconds.

An application that has its own ``/metrics`` needs none of this: the cache
registers with prometheus_client's default registry (README → Metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from resync_hierarchy.cli._common import build_cache
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.observe.metrics import serve_http

__all__ = ["add_arguments", "run"]

_log = get_logger("resync_hierarchy.cli.serve_metrics")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, metavar="N", help="port to listen on")
    parser.add_argument(
        "--addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between health probes of the cache (default 5)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: run until interrupted)",
    )


async def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port must be 1-65535, got {args.port}")
    if not args.interval > 0:
        raise ConfigurationError(f"--interval must be > 0 seconds, got {args.interval}")
    if args.duration is not None and not args.duration > 0:
        raise ConfigurationError(f"--duration must be > 0 seconds, got {args.duration}")
    cache = build_cache(args)
    try:
        serve_http(args.port, addr=args.addr)
    except OSError as exc:
        await cache.shutdown()
        raise ConfigurationError(
            f"cannot listen on {args.addr}:{args.port}: {exc.strerror or exc}; choose a free --port"
        ) from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            loop.add_signal_handler(signum, stop.set)
    print(
        f"serve-metrics: http://{args.addr}:{args.port}/metrics for namespace "
        f"{cache.config.namespace!r}",
        file=sys.stderr,
        flush=True,
    )
    async with cache:
        deadline = None if args.duration is None else loop.time() + args.duration
        while not stop.is_set():
            report = await cache.health()
            _log.debug("health_probe", status=report.get("status"))
            wait = args.interval
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    return 0
