"""deploy/ against the package: alerts, dashboard, staging compose file, runbook.

* Every metric name in deploy/prometheus/alerts.yml and in the Grafana
  dashboard is one the package exports: a fresh registry is filled by
  exercising hierarchies on a private redis-server (hits in both tiers,
  misses, writes, deletes, evictions, L2 errors on a closed port, a
  MigrationManager with fallbacks), and its sample names are compared with
  the names the PromQL reads (tests/support/promql.py).
* promtool (Debian's ``prometheus``): the rules check and their unit tests
  pass, every dashboard query is valid PromQL (wrapped as recording rules
  with Grafana's variables substituted), the exposition passes
  ``promtool check metrics``, and prometheus.yml is a valid configuration.
* The number of series does not grow with the number of keys used.
* Static checks of the dashboard, the compose file and the runbook.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.promql import Selector, selectors, substitute_grafana_variables
from support.promtool import promtool, require_promtool
from support.redis_server import free_port

from resync_hierarchy import CacheHierarchy, MigrationFlags, MigrationManager

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "resync-cache.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards"
COMPOSE = DEPLOY / "docker-compose.staging.yml"
RUNBOOK = DEPLOY / "RUNBOOK.md"
STAGING = DEPLOY / "staging"

JOB = "resync-cache"
SEVERITIES = ("P0", "P1", "P2")
# The panels the operations issue asks for: (words the title must contain, ...).
REQUIRED_PANELS = (
    "hit ratio per tier",
    "latency percentiles",
    "throughput",
    "errors",
    "circuit state",
    "legacy vs new share",
    "fallbacks",
)
# What the alerts must cover, by priority.
REQUIRED_ALERTS = {
    "ResyncCacheL2Down": "P0",
    "ResyncCacheCircuitOpen": "P0",
    "ResyncCacheGetLatencyHigh": "P1",
    "ResyncCacheHitRatioDrop": "P1",
    "ResyncCacheMigrationFallbacks": "P2",
    "ResyncCacheMigrationMismatches": "P2",
    "ResyncCacheRecoveryQueueGrowing": "P2",
    "ResyncCacheEvictionSpike": "P2",
}
# Values for the dashboard's template variables when its queries are checked.
VARIABLE_VALUES = {"namespace": "ops", "instance": ".+", "job": JOB}


# ------------------------------------------------------------------ loading


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Panels, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [
        (f"panel {panel['id']} ({panel['title']}) target {target['refId']}", target["expr"])
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def variable_selectors() -> list[tuple[str, str]]:
    """(variable, series selector) of every ``label_values(selector, label)`` variable."""
    selectors = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", text)
        assert match, f"variable {variable['name']}: only label_values(selector, label) is used"
        selectors.append((variable["name"], match.group(1)))
    return selectors


def deploy_selectors() -> list[tuple[str, Selector]]:
    """(where, selector) of every series selector in the alerts and the dashboard."""
    found = [
        (f"alert {rule['alert']}", selector)
        for rule in alert_rules()
        for selector in selectors(rule["expr"])
    ]
    found += [
        (f"dashboard {where}", selector)
        for where, expr in dashboard_queries()
        for selector in selectors(substitute_grafana_variables(expr, VARIABLE_VALUES))
    ]
    found += [
        (f"dashboard variable {variable}", selector)
        for variable, text in variable_selectors()
        for selector in selectors(substitute_grafana_variables(text, VARIABLE_VALUES))
    ]
    return found


def names_used_by_deploy() -> dict[str, set[str]]:
    """Metric name -> where it is used (alert names, dashboard panels)."""
    used: dict[str, set[str]] = {}
    for where, selector in deploy_selectors():
        assert selector.name is not None, f"{where}: a selector without a metric name"
        used.setdefault(selector.name, set()).add(where)
    return used


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# ------------------------------------------------------------------ exercising the package


@asynccontextmanager
async def exercised_registry(redis_url: str) -> AsyncIterator[CollectorRegistry]:
    """A fresh registry after every kind of event; the caches stay open meanwhile."""
    registry = CollectorRegistry()
    async with AsyncExitStack() as stack:

        async def open_cache(url: str, namespace: str, **overrides: Any) -> CacheHierarchy:
            cache = CacheHierarchy.from_url(
                url, namespace=namespace, registry=registry, **overrides
            )
            await stack.enter_async_context(cache)
            return cache

        writer = await open_cache(redis_url, "ops", l1_max_entries=16)
        reader = await open_cache(redis_url, "ops", l1_max_entries=16)
        await writer.set("a", {"v": 1})
        assert await writer.get("a") == {"v": 1}  # L1 hit
        assert await reader.get("a") == {"v": 1}  # L2 hit
        assert await writer.get("nothing") is None  # miss
        assert await writer.get_or_set("loaded", lambda: 2) == 2  # loader run
        await writer.set_many({f"m{n}": n for n in range(40)})  # capacity evictions
        assert len(await writer.get_many(["m1", "m39", "nothing"])) == 2
        assert await writer.delete("a") is True
        assert await writer.delete_many(["m1", "m2"]) == 2
        assert (await writer.health())["status"] == "ok"  # PING time

        memory = await open_cache("memory://", "ops-memory")
        await memory.set("k", 1)
        assert await memory.get("k") == 1
        assert await memory.get("nothing") is None
        await memory.delete("k")

        # Nothing listens on this port: connection errors, queued writes, an open circuit.
        dead = await open_cache(
            f"redis://127.0.0.1:{free_port()}/0",
            "ops-dead",
            l2_timeout=0.2,
            l2_retries=0,
            breaker_failure_threshold=2,
            breaker_reset_timeout=60.0,
            invalidation=False,
        )
        for n in range(3):
            await dead.set(f"d{n}", n)
            assert await dead.get(f"unknown{n}") is None
        await dead.delete("d0")

        legacy = await open_cache(redis_url, "ops-legacy")
        new = await open_cache(redis_url, "ops-new")
        manager = MigrationManager(
            legacy=legacy,
            new=new,
            flags=MigrationFlags(use_new_cache=True, rollout_percent=100),
            registry=registry,
        )
        await stack.enter_async_context(manager)
        await legacy.set("old", "from legacy")
        assert await manager.get("old") == "from legacy"  # fallback to legacy
        await manager.set("both", 1)
        assert await manager.get("both") == 1
        yield registry


def sample_names(registry: CollectorRegistry) -> set[str]:
    return {sample.name for family in registry.collect() for sample in family.samples}


def series(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in registry.collect()
        for sample in family.samples
    }


# ------------------------------------------------------------------ metric names


async def test_every_metric_name_in_alerts_and_dashboard_is_exported(redis_url: str) -> None:
    used = names_used_by_deploy()
    assert len(used) >= 20, sorted(used)  # the extractor found the queries
    async with exercised_registry(redis_url) as registry:
        exported = sample_names(registry)
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, f"not exported by the package: {unknown}"


# Labels Prometheus adds (job, instance) and the dashboard's variables.
TARGET_LABELS = frozenset({"job", "instance", "namespace"})


async def test_every_label_value_in_alerts_and_dashboard_is_exported(redis_url: str) -> None:
    """A typo in a label (reason="capcity") would leave a panel empty forever."""
    async with exercised_registry(redis_url) as registry:
        values: dict[tuple[str, str], set[str]] = {}
        for family in registry.collect():
            for sample in family.samples:
                for label, value in sample.labels.items():
                    values.setdefault((sample.name, label), set()).add(value)
    problems = []
    checked = 0
    for where, selector in deploy_selectors():
        for label, operator, value in selector.matchers:
            if label in TARGET_LABELS:
                continue
            checked += 1
            exported = values.get((str(selector.name), label))
            if exported is None:
                problems.append(f"{where}: {selector.name} has no label {label}")
            elif operator in ("=", "!=") and value not in exported:
                problems.append(f"{where}: {selector.name}{{{label}={value!r}}} never exported")
            elif operator in ("=~", "!~"):
                alternatives = value.split("|") if re.fullmatch(r"[\w|]+", value) else [value]
                for alternative in alternatives:
                    if not any(re.fullmatch(alternative, v) for v in exported):
                        problems.append(f"{where}: {label}=~{alternative!r} matches nothing")
    assert checked > 20
    assert not problems, "\n".join(problems)


async def test_exposition_passes_promtool_check_metrics(redis_url: str) -> None:
    require_promtool()
    async with exercised_registry(redis_url) as registry:
        exposition = generate_latest(registry).decode()
    assert "resync_cache_requests_total{" in exposition
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


async def test_series_do_not_grow_with_the_number_of_keys(redis_url: str) -> None:
    """12,000 distinct keys (batches and single calls): not one new series."""
    async with exercised_registry(redis_url) as registry:
        before = series(registry)
        cache = CacheHierarchy.from_url(
            redis_url, namespace="ops", registry=registry, l1_max_entries=1000
        )
        async with cache:
            for start in range(0, 10_000, 500):
                keys = [f"distinct:{n}" for n in range(start, start + 500)]
                await cache.set_many({key: key for key in keys})
                assert len(await cache.get_many(keys)) == 500
                assert await cache.get_many([f"absent:{key}" for key in keys]) == {}
            # And one key at a time, through get / set / delete.
            keys = [f"distinct:{n}" for n in range(10_000, 11_000)]
            await asyncio.gather(*(cache.set(key, key) for key in keys))
            await asyncio.gather(*(cache.get(key) for key in keys))
            await asyncio.gather(*(cache.get(f"absent:{key}") for key in keys))
            await asyncio.gather(*(cache.delete(key) for key in keys[:100]))
            after = series(registry)
    assert len(before) > 50
    assert after == before, {"new": sorted(after - before), "gone": sorted(before - after)}
    assert not [labels for _, labels in after if any("distinct:" in v for _, v in labels)]


# ------------------------------------------------------------------ promtool


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": substitute_grafana_variables(expr, VARIABLE_VALUES),
        }
        for index, (_, expr) in enumerate(dashboard_queries())
    ]
    rules += [
        {"record": f"dashboard:variable_{name}", "expr": f"count({selector})"}
        for name, selector in (
            (name, substitute_grafana_variables(selector, VARIABLE_VALUES))
            for name, selector in variable_selectors()
        )
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_catches_a_broken_query(tmp_path: Path) -> None:
    """The query check above can fail: an unbalanced query is refused."""
    path = tmp_path / "broken.yml"
    rules = [{"record": "broken:query", "expr": "sum(rate(resync_cache_requests_total[1m])"}]
    path.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": rules}]}))
    assert promtool("check", "rules", path).returncode != 0


# ------------------------------------------------------------------ alerts, statically


def test_alerts_cover_each_priority_with_severity_duration_and_runbook() -> None:
    rules = alert_rules()
    assert {rule["alert"]: rule["labels"]["severity"] for rule in rules} == REQUIRED_ALERTS
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        url = annotations["runbook_url"]
        assert url.startswith("https://") and "/deploy/RUNBOOK.md#" in url, url
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no RUNBOOK.md heading {url}"
    p0_for = {rule["for"] for rule in rules if rule["labels"]["severity"] == "P0"}
    assert p0_for == {"1m"}


def test_alert_unit_tests_fire_every_alert_and_hold_back_each_priority() -> None:
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    fired: set[str] = set()
    held_back: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case["alert_rule_test"]:
            name = check["alertname"]
            assert name in severity, f"alerts_test.yml tests an unknown alert {name}"
            (fired if check["exp_alerts"] else held_back).add(name)
    assert fired == set(severity), f"never shown firing: {set(severity) - fired}"
    assert {severity[name] for name in held_back} == set(SEVERITIES)


# ------------------------------------------------------------------ dashboard, statically


def test_dashboard_has_the_required_panels_once_each_with_unique_ids() -> None:
    panels = list(all_panels(dashboard()["panels"]))
    titles = [panel["title"].lower() for panel in panels]
    for required in REQUIRED_PANELS:
        assert any(required in title for title in titles), f"no panel titled {required!r}"
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        assert panel.get("description"), f"{panel['title']}: say how to read it"


def test_dashboard_datasources_match_the_provisioning_file() -> None:
    provisioned = {
        source["uid"]: source["type"]
        for path in sorted(DATASOURCES.glob("*.yml"))
        for source in load_yaml(path)["datasources"]
    }
    assert provisioned, "no datasource provisioned"
    board = dashboard()
    references = [
        panel["datasource"] for panel in all_panels(board["panels"]) if "datasource" in panel
    ]
    references += [
        target["datasource"]
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    references += [variable["datasource"] for variable in board["templating"]["list"]]
    assert len(references) > 20
    for reference in references:
        assert provisioned.get(reference["uid"]) == reference["type"] == "prometheus", reference


def test_dashboard_has_a_namespace_variable_used_by_the_cache_panels() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert "namespace" in variables
    assert variables["namespace"]["includeAll"] and variables["namespace"]["multi"]
    for where, expr in dashboard_queries():
        if "resync_cache_migration_" not in expr:
            assert 'namespace=~"$namespace"' in expr, where
    assert board["uid"] and board["title"]


def test_dashboard_provider_loads_the_mounted_dashboards() -> None:
    compose = load_yaml(COMPOSE)
    mounts = dict(
        reversed(volume.split(":")[:2])
        for volume in compose["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    (provider,) = load_yaml(DASHBOARD_PROVIDERS / "resync.yml")["providers"]
    mounted = mounts[provider["options"]["path"]]
    assert (DEPLOY / mounted / DASHBOARD.name).is_file()


# ------------------------------------------------------------------ staging compose file


def bind_mounts(service: dict[str, Any]) -> list[str]:
    """Host paths of a service's bind mounts (short and long syntax)."""
    paths = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                paths.append(source)
        elif volume.get("type") == "bind":
            paths.append(volume["source"])
    return paths


def test_compose_file_parses_and_every_mounted_file_exists() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"redis", "app", "prometheus", "grafana"} <= set(services)
    mounted = [path for service in services.values() for path in bind_mounts(service)]
    assert len(mounted) >= 6
    for path in mounted:
        assert not Path(path).is_absolute(), f"{path}: mount files of the repository only"
        assert (DEPLOY / path).exists(), f"{path} is mounted but does not exist"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith("."):
                assert volume.split(":", 1)[0] in compose["volumes"], (name, volume)
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: bind {port} to 127.0.0.1"


def test_compose_images_build_from_files_that_exist() -> None:
    services = load_yaml(COMPOSE)["services"]
    built = {name: service["build"] for name, service in services.items() if "build" in service}
    assert "app" in built
    for build in built.values():
        context = (DEPLOY / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert context == ROOT and dockerfile.is_file()
        for line in dockerfile.read_text(encoding="utf-8").splitlines():
            if line.startswith("COPY "):
                *sources, _ = shlex.split(line)[1:]
                for source in sources:
                    assert (context / source).exists(), f"{dockerfile.name}: {line}"
                    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
                    assert f"!{source.rstrip('/')}" in ignore.read_text(), (
                        f"{source} is copied but excluded by {ignore.name}"
                    )


def test_prometheus_scrapes_every_metrics_port_of_the_compose_file() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    services = load_yaml(COMPOSE)["services"]
    exposed = {
        f"{name}:{port}" for name, service in services.items() for port in service.get("expose", [])
    }
    assert targets == exposed
    for target in targets:
        name, port = target.split(":")
        service = services[name]
        command = (
            " ".join(service.get("command", [])) + " " + json.dumps(service.get("environment"))
        )
        assert port in command, f"{name} does not serve metrics on {port}"
        assert "0.0.0.0" in command, f"{name}: listen on 0.0.0.0 for Prometheus"  # noqa: S104
    prometheus = services["prometheus"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    assert config["rule_files"] == ["alerts.yml"]


def test_staging_commands_exist_in_the_cli() -> None:
    """The options the compose file and the bench loop pass are ones the CLI accepts."""
    loop = (STAGING / "bench-loop.sh").read_text(encoding="utf-8")
    bench_options = set(re.findall(r"(--[a-z][a-z-]+)", loop.split("resync-hierarchy bench", 1)[1]))
    assert "--metrics-port" in bench_options
    exporter = load_yaml(COMPOSE)["services"]["exporter"]["command"]
    assert exporter[:2] == ["resync-hierarchy", "serve-metrics"]
    for subcommand, options in (
        ("bench", bench_options),
        ("serve-metrics", {arg for arg in exporter if arg.startswith("--")}),
    ):
        help_text = subprocess.run(
            [sys.executable, "-m", "resync_hierarchy", subcommand, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert help_text.returncode == 0, help_text.stderr
        missing = {option for option in options if option not in help_text.stdout}
        assert not missing, f"resync-hierarchy {subcommand} does not accept {missing}"
    result = subprocess.run(["sh", "-n", str(STAGING / "bench-loop.sh")], check=False)
    assert result.returncode == 0


def test_staging_migration_load_runs_against_redis(redis_url: str) -> None:
    """deploy/staging/migration_load.py, bounded: fallbacks happen and it exits 0."""
    result = subprocess.run(
        [
            sys.executable,
            str(STAGING / "migration_load.py"),
            "--redis-url",
            redis_url,
            "--metrics-port",
            "0",
            "--operations",
            "600",
            "--rate",
            "100000",
            "--legacy-batch",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={"MIGRATION_USE_NEW_CACHE": "true", "MIGRATION_ROLLOUT_PERCENT": "100"},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["operations"] == 600
    assert summary["mode"] == "read_new"
    assert summary["fallbacks"] > 0 and summary["new_reads"] > 0


def test_serve_metrics_exports_what_the_p0_alerts_read(redis_url: str) -> None:
    """The staging exporter's command, on a private Redis: l2_up and the circuit state."""
    port = free_port()
    command = [sys.executable, "-m", "resync_hierarchy", "serve-metrics", "--port", str(port)]
    command += ["--redis-url", redis_url, "--namespace", "bench", "--interval", "0.2"]
    command += ["--duration", "30"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        text = scrape_when_probed(f"http://127.0.0.1:{port}/metrics", process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("resync_cache_l2_up", (("namespace", "bench"),))] == 1
    closed = ("resync_cache_circuit_state", (("namespace", "bench"), ("state", "closed")))
    assert samples[closed] == 1
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def scrape_when_probed(url: str, process: subprocess.Popen[bytes]) -> str:
    """The exposition at ``url`` once it carries the L2 health, within 20 s."""
    text = ""
    for _ in range(200):
        if process.poll() is not None:
            assert process.stderr is not None
            raise AssertionError(f"serve-metrics exited early: {process.stderr.read()!r}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                text = response.read().decode()
        except OSError:
            text = ""
        if 'resync_cache_l2_up{namespace="bench"} 1.0' in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"no L2 health at {url} within 20 s:\n{text[:2000]}")


# ------------------------------------------------------------------ runbook


@pytest.mark.parametrize(
    "section",
    ["rollback", "circuit-open", "redis-failover", "flushing-a-namespace", "reading-the-dashboard"],
)
def test_runbook_has_the_operations_sections(section: str) -> None:
    assert section in github_anchors(RUNBOOK.read_text(encoding="utf-8"))


def test_runbook_never_suggests_flushall_on_a_shared_redis() -> None:
    text = RUNBOOK.read_text(encoding="utf-8")
    commands = [line for line in text.splitlines() if re.search(r"\bFLUSH(ALL|DB)\b", line)]
    assert all(re.search(r"never|not|don't", line, re.IGNORECASE) for line in commands), commands
    assert "migrate rollback" in text
    assert "UNLINK" in text
