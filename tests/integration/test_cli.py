"""The command line, in process (main(argv)) and as ``python -m resync_hierarchy``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from support.redis_server import RedisServer, free_port

from resync_hierarchy.cli import EXIT_USAGE, main


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_health_ok_on_real_redis(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(["health", "--redis-url", redis_url, "--json"], capsys)
    assert code == 0
    assert doc["status"] == "ok"
    code = main(["--redis-url", redis_url, "health"])  # options before the subcommand too
    assert code == 0
    assert "status: ok" in capsys.readouterr().out


def test_health_degraded_exits_1_and_down_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("RESYNC_CACHE_L2_TIMEOUT", "0.2")
    code, doc = run_json(["health", "--redis-url", dead, "--json"], capsys)
    assert (code, doc["status"]) == (1, "degraded")
    monkeypatch.setenv("RESYNC_CACHE_L1_MAX_ENTRIES", "0")
    monkeypatch.setenv("REDIS_URL", dead)
    assert main(["health"]) == 2
    out = capsys.readouterr().out
    assert "status: down" in out


def test_health_without_redis_reports_l1_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health"]) == 0
    assert "memory://" in capsys.readouterr().out


def test_stats_counts_the_namespace_keys(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("other:x", b"1")
        bench_argv = ["bench", "--redis-url", redis_url, "--namespace", "ns", "--json",
                      "--duration", "0.3", "--warmup", "0", "--rate", "300",
                      "--concurrency", "10", "--keyspace", "50", "--no-clear"]  # fmt: skip
        assert main(bench_argv) == 0
        capsys.readouterr()
        expected = sum(1 for _ in client.scan_iter(match="ns:*"))
        assert expected > 0
        code, doc = run_json(
            ["stats", "--redis-url", redis_url, "--namespace", "ns", "--json"], capsys
        )
        assert code == 0
        l2 = doc["l2"]
        assert isinstance(l2, dict)
        assert l2["namespace_keys"] == expected
        assert "redis_version" in l2["server"]
        assert main(["stats", "--redis-url", redis_url, "--namespace", "ns"]) == 0
        text = capsys.readouterr().out
        assert f"keys in namespace: {expected}" in text
    finally:
        client.close()


def test_stats_on_a_dead_redis_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["stats", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"])
    assert code == 2
    assert "down" in capsys.readouterr().out
    assert main(["stats"]) == 0
    assert "memory://" in capsys.readouterr().out


def test_bad_url_is_a_usage_error_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--redis-url", "redis://app:hunter2@host:99999"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "outside 1-65535" in err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_python_dash_m_runs_the_cli(fresh_redis: RedisServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "resync_hierarchy", "health", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"REDIS_URL": fresh_redis.url, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "ok"
    version = subprocess.run(
        [sys.executable, "-m", "resync_hierarchy", "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert version.stdout.startswith("resync-hierarchy ")
