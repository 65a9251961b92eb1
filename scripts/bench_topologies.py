"""L2-hit latency over plain TCP, TLS and Sentinel, measured in one run.

Starts its own servers on free loopback ports (a redis-server with a plain
and a TLS port, certificates from a throw-away trustme CA; a master, a
replica and three sentinels) and times ``get`` on a cache with L1 off, so
every call is an L2 hit. Prints medians and p99 per topology and the ratio
of each median to the plain one.

    .venv/bin/python scripts/bench_topologies.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.topology import make_certs

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.testing.sentinel import SentinelDeployment
from resync_hierarchy.testing.tls import TlsRedisServer


async def _time_gets(url: str, calls: int) -> list[float]:
    cache = CacheHierarchy.from_url(url, namespace="bench", l1_max_entries=0, invalidation=False)
    async with cache:
        await cache.set("k", {"payload": "x" * 100})
        for _ in range(200):  # warm the connection
            await cache.get("k")
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            await cache.get("k")
            samples.append(time.perf_counter() - started)
        if cache.get_stats()["l2_errors"]:
            raise SystemExit(f"L2 errors during the run on {url}: the figures are not valid")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="resync-bench-topo-"))
    certs = make_certs(directory)
    server = TlsRedisServer(certs.server_cert, certs.server_key, certs.ca).start()
    deployment = SentinelDeployment().start()
    try:
        urls = {
            "plain": server.url,
            "tls": server.tls_url(certs.ca),
            "sentinel": deployment.url(),
        }
        results: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(3):  # interleaved rounds: drift hits every topology alike
            for name, url in urls.items():
                results[name] += asyncio.run(_time_gets(url, args.calls // 3))
        base = statistics.median(results["plain"])
        print(f"L2-hit get, L1 off, {args.calls} calls each (interleaved in 3 rounds)")
        for name, samples in results.items():
            samples.sort()
            median = statistics.median(samples)
            p99 = samples[int(len(samples) * 0.99)]
            print(
                f"  {name:9s} median {median * 1e6:7.1f} us  p99 {p99 * 1e6:7.1f} us  "
                f"x{median / base:.2f} of plain"
            )
    finally:
        deployment.stop()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
