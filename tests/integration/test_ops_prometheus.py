"""The dashboard and the alerts on a real Prometheus scraping real processes.

``promtool check rules`` proves the queries parse; it cannot see errors that
only evaluation finds (many-to-many matching, a label that makes two sides
disagree) or a panel that is empty because its query never matches. Here a
private Prometheus (Debian's ``prometheus``, on a free loopback port, data in
a temporary directory) scrapes, every second, the staging processes on a
private redis-server: ``resync-hierarchy bench --metrics-port``,
``resync-hierarchy serve-metrics`` and ``deploy/staging/migration_load.py``.
Then every panel of the dashboard must show data, no query may fail, and
every alert rule must evaluate without error.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.promql import substitute_grafana_variables
from support.promtool import require_prometheus
from support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "resync-cache.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
MIGRATION_LOAD = ROOT / "deploy" / "staging" / "migration_load.py"
DEADLINE_SECONDS = 60.0


@contextmanager
def processes(commands: list[tuple[list[str], dict[str, str] | None]]) -> Iterator[None]:
    """Run ``commands``; terminate each (by its handle) whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for command, env in commands:
            started.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        return json.load(response)


def panel_queries() -> list[tuple[str, list[str]]]:
    """(panel title, its queries with the variables set to match everything)."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    values = {"namespace": ".+", "instance": ".+"}
    return [
        (
            panel["title"],
            [substitute_grafana_variables(t["expr"], values) for t in panel["targets"]],
        )
        for panel in board["panels"]
        if panel["type"] != "row"
    ]


def evaluate(base: str, queries: list[tuple[str, list[str]]]) -> tuple[list[str], list[str]]:
    """(titles of panels without data, query errors)."""
    empty, errors = [], []
    for title, exprs in queries:
        series = 0
        for expr in exprs:
            try:
                series += len(api(base, "query", query=expr)["data"]["result"])
            except urllib.error.HTTPError as exc:
                errors.append(f"{title}: {exc.read().decode()[:300]}")
        if series == 0:
            empty.append(title)
    return empty, errors


@pytest.mark.slow
def test_every_panel_shows_data_and_every_rule_evaluates(redis_url: str, tmp_path: Path) -> None:
    prometheus = require_prometheus()
    bench_port, probe_port, migration_port, web_port = (free_port() for _ in range(4))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "resync-cache",
                "static_configs": [
                    {
                        "targets": [
                            f"127.0.0.1:{port}" for port in (bench_port, probe_port, migration_port)
                        ]
                    }
                ],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    python = shlex.quote(sys.executable)
    cli = f"{python} -m resync_hierarchy"
    commands: list[tuple[list[str], dict[str, str] | None]] = [
        (
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            None,
        ),
        (
            shlex.split(
                f"{cli} bench --redis-url {redis_url} --metrics-port {bench_port} --duration 60"
                " --warmup 0 --rate 300 --concurrency 20 --keyspace 5000 --l1-max-entries 200"
                " --no-progress"
            ),
            None,
        ),
        (
            shlex.split(
                f"{cli} serve-metrics --port {probe_port} --redis-url {redis_url}"
                " --namespace bench --interval 1 --duration 90"
            ),
            None,
        ),
        (
            shlex.split(
                f"{python} {shlex.quote(str(MIGRATION_LOAD))} --redis-url {redis_url}"
                f" --metrics-port {migration_port} --rate 200 --legacy-writes-every 2"
                " --legacy-batch 50"
            ),
            {"MIGRATION_USE_NEW_CACHE": "true", "MIGRATION_ROLLOUT_PERCENT": "50"},
        ),
    ]
    base = f"http://127.0.0.1:{web_port}"
    queries = panel_queries()
    with processes(commands):
        deadline = time.monotonic() + DEADLINE_SECONDS
        empty, errors = [title for title, _ in queries], ["Prometheus never answered"]
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                empty, errors = evaluate(base, queries)
            except OSError:  # not listening yet
                continue
            if errors or not empty:
                break
        rules = api(base, "rules")["data"]["groups"]
    assert not errors, errors
    assert not empty, f"panels without data after {DEADLINE_SECONDS:.0f} s: {empty}"
    health = {
        rule["name"]: (rule["health"], rule.get("lastError")) for g in rules for rule in g["rules"]
    }
    assert len(health) == 8
    assert all(state in (("ok", ""), ("ok", None)) for state in health.values()), health
