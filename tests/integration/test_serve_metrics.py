"""Metrics exposure from the command line: ``serve-metrics`` and ``bench --metrics-port``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.redis_server import RedisServer, free_port

from resync_hierarchy.cli import EXIT_USAGE, main

CLI = [sys.executable, "-m", "resync_hierarchy"]


def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        body: bytes = response.read()
    return body.decode()


def scrape_until(port: int, wanted: list[str], process: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            text = scrape(port)
        except OSError:
            time.sleep(0.1)
            continue
        if all(w in text for w in wanted):
            return text
        time.sleep(0.1)
    raise AssertionError(f"never saw {wanted} at :{port}; last scrape:\n{text[:2000]}")


def start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def test_serve_metrics_probes_the_cache_and_follows_an_outage(
    fresh_redis: RedisServer,
) -> None:
    port = free_port()
    process = start(
        [
            "serve-metrics",
            "--port",
            str(port),
            "--interval",
            "0.1",
            "--duration",
            "60",
            "--redis-url",
            fresh_redis.url,
            "--namespace",
            "probe",
        ]
    )
    try:
        text = scrape_until(
            port,
            ['resync_cache_l2_up{namespace="probe"} 1.0', "resync_cache_l2_ping_seconds"],
            process,
        )
        assert 'resync_cache_circuit_state{namespace="probe",state="closed"} 1.0' in text
        fresh_redis.kill()
        scrape_until(port, ['resync_cache_l2_up{namespace="probe"} 0.0'], process)
        fresh_redis.start()
        scrape_until(port, ['resync_cache_l2_up{namespace="probe"} 1.0'], process)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err


def test_bench_serves_its_metrics_while_it_runs() -> None:
    port = free_port()
    process = start(
        ["bench", "--duration", "8", "--no-progress", "--metrics-port", str(port), "--json"]
    )
    try:
        deadline = time.monotonic() + 30
        hits = 0.0
        while hits == 0 and time.monotonic() < deadline:
            text = scrape_until(port, ["resync_cache_requests_total"], process)
            hits = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('resync_cache_requests_total{namespace="bench",operation="get"')
                and 'result="hit"' in line
            )
            time.sleep(0.2)
        assert hits > 0
        assert "resync_cache_operation_duration_seconds_bucket" in text
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_serve_metrics_refuses_a_bad_or_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-metrics", "--port", "70000"]) == EXIT_USAGE
    assert "--port must be 1-65535" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert main(["serve-metrics", "--port", str(taken), "--duration", "1"]) == EXIT_USAGE
    assert "choose a free --port" in capsys.readouterr().err
    assert main(["serve-metrics", "--port", "1", "--interval", "0"]) == EXIT_USAGE


def test_serve_metrics_on_memory_runs_for_its_duration() -> None:
    port = free_port()
    started = time.monotonic()
    assert (
        main(["serve-metrics", "--port", str(port), "--duration", "0.3", "--interval", "0.1"]) == 0
    )
    assert time.monotonic() - started < 10


async def test_start_metrics_server_exposes_an_applications_caches() -> None:
    from prometheus_client import CollectorRegistry

    from resync_hierarchy import CacheHierarchy, start_metrics_server

    registry = CollectorRegistry()
    port = free_port()
    start_metrics_server(port, registry=registry)
    async with CacheHierarchy.from_url("memory://", namespace="app", registry=registry) as cache:
        await cache.set("k", 1)
        await cache.get("k")
        text = scrape(port)
    assert (
        'resync_cache_requests_total{namespace="app",operation="get",result="hit",tier="l1"} 1.0'
        in text
    )
    with pytest.raises(OSError):
        start_metrics_server(port, registry=registry)  # taken: the caller hears of it
