"""``resync-hierarchy bench``: the load scenario (resync_hierarchy/cli/bench.py)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import sys
from collections import Counter
from typing import Any, Literal

import pytest

from resync_hierarchy.cli import bench
from resync_hierarchy.cli.bench import (
    EMBEDDED_DESCRIPTION,
    BenchOptions,
    ZipfSampler,
    build_document,
    format_text,
    options_from_args,
    percentile,
    run,
    run_load,
)
from resync_hierarchy.errors import BackendUnavailableError, ConfigurationError

# ---------------------------------------------------------------------------- fakes


class FakeCache:
    """A cache-like object: every operation takes ``service`` seconds; optional failures."""

    def __init__(self, service: float = 0.0, *, fail_every: int = 0) -> None:
        self.service = service
        self.fail_every = fail_every
        self.calls = 0
        self.data: dict[str, Any] = {}
        self.cleared = 0

    async def _work(self) -> None:
        self.calls += 1
        if self.service > 0:
            await asyncio.sleep(self.service)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError(f"boom {self.calls}")

    async def get_or_set(self, key: str, factory: Any, ttl: float | None = None) -> Any:
        await self._work()
        if key not in self.data:
            self.data[key] = await factory()
        return self.data[key]

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        await self._work()
        self.data[key] = value

    def get_stats(self) -> dict[str, Any]:
        return {"l1_hits": 0, "l2_hits": 0, "misses": 0}

    # what run() needs besides the load itself
    async def __aenter__(self) -> FakeCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "l1": {}, "l2": {"status": "ok"}}

    async def clear(self) -> None:
        self.cleared += 1


class StuckOnceCache(FakeCache):
    """The first call never returns (until cancelled); every other call is instant."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = asyncio.Event()

    async def _work(self) -> None:
        self.calls += 1
        if self.calls == 1:
            await self.stuck.wait()


def namespace_args(**overrides: Any) -> argparse.Namespace:
    """Arguments as the lead's parser gives them: defaults from add_arguments + common ones."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    args.redis_url = None
    args.namespace = None
    args.json = False
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


SMALL: dict[str, Any] = {"warmup": 0.0, "keyspace": 200, "concurrency": 20, "rate": 400.0}

# ---------------------------------------------------------------------------- Zipf


def test_zipf_top_rank_is_drawn_far_more_often_than_the_median_rank() -> None:
    n = 1000
    sampler = ZipfSampler(n, 0.99, seed=7)
    rng = random.Random(1)
    ranks = Counter(sampler.rank(rng) for _ in range(50_000))
    assert min(ranks) >= 1
    assert max(ranks) <= n
    # rank 1 has weight 1, rank 500 about 1/470 of it
    assert ranks[1] > 50 * max(ranks[n // 2], 1)
    assert ranks[1] > ranks[2] > ranks[10] > ranks[100]


def test_zipf_keys_are_within_the_keyspace_and_the_hottest_key_is_rank_one() -> None:
    n = 500
    sampler = ZipfSampler(n, 0.99, seed=3)
    rng = random.Random(2)
    keys = Counter(sampler.key(rng) for _ in range(20_000))
    assert set(keys) <= {f"k:{i}" for i in range(n)}
    assert keys.most_common(1)[0][0] == sampler.key_of(1)
    # ranks are permuted: the hottest key is not simply k:0 for every seed
    hottest = {ZipfSampler(n, 0.99, seed=seed).key_of(1) for seed in range(10)}
    assert len(hottest) > 1


def test_zipf_is_reproducible_with_a_seed() -> None:
    def draws(seed: int, rng_seed: int) -> list[str]:
        sampler = ZipfSampler(10_000, 0.99, seed=seed)
        rng = random.Random(rng_seed)
        return [sampler.key(rng) for _ in range(2_000)]

    assert draws(5, 9) == draws(5, 9)
    assert draws(5, 9) != draws(6, 9)
    assert draws(5, 9) != draws(5, 10)


def test_zipf_s_zero_is_uniform_and_a_keyspace_of_one_works() -> None:
    sampler = ZipfSampler(10, 0.0, seed=1)
    rng = random.Random(0)
    ranks = Counter(sampler.rank(rng) for _ in range(20_000))
    assert set(ranks) == set(range(1, 11))
    assert max(ranks.values()) < 1.25 * min(ranks.values())
    one = ZipfSampler(1, 0.99, seed=1)
    assert {one.key(rng) for _ in range(100)} == {"k:0"}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) == 0.0


# ---------------------------------------------------------------------------- embedded run


async def test_short_embedded_run_counts_add_up_and_passes() -> None:
    options = BenchOptions(duration=1.0, backend_delay_ms=1.0, **SMALL)
    cache, backend, embedded = bench.build_cache(None, "bench-unit", options)
    assert embedded
    assert backend == EMBEDDED_DESCRIPTION
    async with cache:
        result = await run_load(cache, options)
        doc = build_document(result, options, backend=backend, embedded=embedded)

    assert result.errors == 0
    assert result.reads + result.writes == result.requests == doc["requests"]
    assert doc["requests"] == len(result.latencies) > 0
    assert doc["requests"] + doc["unsent"] == result.scheduled == 400
    assert 0.8 * 0.9 < doc["reads"] / doc["requests"] < 1.0  # about 90 % reads
    ratios = [doc[k] for k in ("l1_hit_ratio", "l2_hit_ratio", "miss_ratio", "coalesced_ratio")]
    assert all(0.0 <= r <= 1.0 for r in ratios)
    # every read is an L1 hit, an L2 hit, a miss (one load) or joined a load in flight
    assert sum(ratios) == pytest.approx(1.0, abs=1e-4)
    assert doc["misses"] > 0  # the namespace started empty
    assert doc["l1_hits"] > 0  # a small Zipf keyspace: hot keys come back
    lat = doc["latency_ms"]
    assert 0.0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert set(doc["sla"]) == {
        "mean_lt_10ms",
        "p95_lt_50ms",
        "error_rate_lt_0.1pct",
        "l2_error_rate_lt_0.1pct",
    }
    assert all(isinstance(check["pass"], bool) for check in doc["sla"].values())
    assert doc["sla"]["error_rate_lt_0.1pct"]["pass"] is True
    assert doc["starved_tasks"] == 0
    assert doc["passed"] == all(check["pass"] for check in doc["sla"].values())
    assert json.loads(json.dumps(doc)) == doc
    text = format_text(doc)
    assert text.splitlines()[0] == f"backend: {EMBEDDED_DESCRIPTION}"
    assert "verdict:" in text


async def test_run_json_prints_exactly_one_json_document(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = namespace_args(json=True, duration=0.6, **SMALL)
    code = await run(args)
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # the whole of stdout is one document
    assert isinstance(doc, dict)
    assert doc["backend"] == EMBEDDED_DESCRIPTION
    assert doc["embedded"] is True
    assert doc["config"]["namespace"] == "bench"
    assert doc["config"]["l1_max_entries"] == 20  # 10 % of the keyspace
    for key in (
        "mode", "requests", "errors", "error_types", "duration_s", "throughput_rps",
        "target_rps", "latency_ms", "l1_hit_ratio", "l2_hit_ratio", "miss_ratio",
        "starved_tasks", "sla", "passed",
    ):  # fmt: skip
        assert key in doc
    assert doc["errors"] == 0
    assert code == (0 if doc["passed"] else 1)
    assert "\r" not in captured.err  # no progress bar with --json


async def test_run_text_says_it_runs_embedded(capsys: pytest.CaptureFixture[str]) -> None:
    args = namespace_args(duration=0.5, namespace="bench-text", l1_off=True, **SMALL)
    code = await run(args)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"backend: {EMBEDDED_DESCRIPTION}"
    assert "no --redis-url" in out
    assert "SLA" in out
    assert "L1 0.0%" in out  # --l1-off
    assert (
        out.strip().splitlines()[-1].startswith("verdict: PASS" if code == 0 else "verdict: FAIL")
    )


# ---------------------------------------------------------------------- no coordinated omission


async def test_open_loop_latency_counts_from_the_scheduled_start() -> None:
    service = 0.010
    # 2 workers of 10 ms each serve about 200 req/s; the target is 1,000 req/s.
    options = BenchOptions(
        duration=1.0, concurrency=2, rate=1000.0, warmup=0.0, read_share=1.0, keyspace=50
    )
    result = await run_load(FakeCache(service), options)
    doc = build_document(result, options, backend="fake", embedded=False)
    # each call takes ~10 ms, but requests waited for their turn: the queueing shows
    assert doc["service_ms"]["p50"] == pytest.approx(service * 1000, rel=0.6)
    assert doc["latency_ms"]["p99"] > 20 * service * 1000
    assert doc["latency_ms"]["p50"] > 10 * service * 1000
    assert doc["achieved_share"] < 0.5
    assert doc["unsent"] > 0
    assert any("could not keep up" in warning for warning in doc["warnings"])
    assert "could not keep up" in format_text(doc)
    assert doc["passed"] is False


async def test_closed_loop_latency_is_the_service_time() -> None:
    service = 0.010
    options = BenchOptions(duration=1.0, concurrency=2, mode="closed", warmup=0.0, keyspace=50)
    result = await run_load(FakeCache(service), options)
    doc = build_document(result, options, backend="fake", embedded=False)
    assert doc["latency_ms"]["p99"] < 5 * service * 1000
    assert doc["target_rps"] is None
    assert 100 < doc["throughput_rps"] < 2 / service * 1.1


# ---------------------------------------------------------------------------- errors


async def test_errors_are_counted_not_raised_and_fail_the_sla() -> None:
    options = BenchOptions(duration=0.5, **SMALL)
    result = await run_load(FakeCache(fail_every=3), options)
    doc = build_document(result, options, backend="fake", embedded=False)
    assert doc["errors"] > 0
    assert doc["errors"] == pytest.approx(doc["requests"] / 3, abs=2)
    assert doc["error_types"] == {"RuntimeError": doc["errors"]}
    assert doc["error_samples"]
    assert all(sample.startswith("RuntimeError: boom") for sample in doc["error_samples"])
    assert doc["sla"]["error_rate_lt_0.1pct"]["pass"] is False
    assert doc["passed"] is False
    assert "RuntimeError" in format_text(doc)


async def test_run_exits_1_when_a_check_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeCache(fail_every=2)
    monkeypatch.setattr(bench, "build_cache", lambda url, ns, options: (fake, "fake", False))
    code = await run(namespace_args(json=True, duration=0.5, **SMALL))
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["passed"] is False
    assert doc["errors"] > 0
    assert fake.cleared == 2  # before and after the run


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_a_stuck_request_is_bounded_by_the_drain_and_its_task_is_starved(
    mode: Literal["open", "closed"],
) -> None:
    options = BenchOptions(
        duration=1.0, concurrency=3, mode=mode, rate=300.0, warmup=0.0, drain=0.2
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run_load(StuckOnceCache(), options)
    assert loop.time() - started < 1.8
    assert result.cancelled_at_drain == 1
    assert result.errors == 1
    assert result.error_types == Counter({"CancelledError": 1})
    assert result.starved_tasks == 1  # the stuck worker; the other two kept completing
    assert result.requests > 100


async def test_progress_bar_is_drawn_on_the_stream() -> None:
    stream = io.StringIO()
    options = BenchOptions(duration=0.6, **SMALL)
    await run_load(FakeCache(), options, progress=stream)
    text = stream.getvalue()
    assert "\r" in text
    assert "req/s" in text
    assert text.endswith("\r\033[K")  # the line is wiped at the end


# ---------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("concurrency", 0, "concurrency"),
        ("concurrency", 5000, "concurrency"),
        ("read_share", 1.5, "read-share"),
        ("read_share", -0.1, "read-share"),
        ("duration", 0.0, "duration"),
        ("rate", -5.0, "rate"),
        ("keyspace", 0, "keyspace"),
        ("value_size", 0, "value-size"),
        ("backend_delay_ms", float("nan"), "backend-delay-ms"),
        ("mode", "sideways", "mode"),
    ],
)
def test_bad_options_raise_a_clear_configuration_error(
    field: str, value: Any, fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        BenchOptions(**{field: value})
    with pytest.raises(ConfigurationError, match=fragment):
        options_from_args(namespace_args(**{field: value}))


async def test_run_rejects_bad_options_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cache(*args: Any) -> Any:
        raise AssertionError("no cache may be built for bad options")

    monkeypatch.setattr(bench, "build_cache", no_cache)
    with pytest.raises(ConfigurationError, match=r"concurrency must be between 1 and 2000"):
        await run(namespace_args(concurrency=5000))


def test_parser_defaults_are_the_option_defaults() -> None:
    assert options_from_args(namespace_args()) == BenchOptions()
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--duration", "3", "--concurrency", "64", "--mode", "closed", "--l1-off", "--no-clear"]
    )
    options = options_from_args(args)
    assert (options.duration, options.concurrency, options.mode) == (3.0, 64, "closed")
    assert options.effective_l1_max_entries == 0
    assert options.clear is False
    assert BenchOptions(keyspace=100_000).effective_l1_max_entries == 10_000
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "sideways"])


def test_embedded_backend_needs_fakeredis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)
    with pytest.raises(BackendUnavailableError, match=r"resync-hierarchy\[embedded\]"):
        bench.build_cache(None, "bench", BenchOptions())


# ---------------------------------------------------------------------------- real Redis


# RedisL2 passes retry_on_timeout=False, which redis-py 6+ deprecates (not the bench's doing).
async def test_real_redis_run_leaves_nothing_behind(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(b"other:keep", b"1")
        code = await run(
            namespace_args(json=True, redis_url=redis_url, namespace="bench-real", duration=0.5)
        )
        doc = json.loads(capsys.readouterr().out)
        assert doc["embedded"] is False
        assert doc["backend"].startswith("redis://")
        assert doc["errors"] == 0
        assert doc["requests"] > 0
        assert code == (0 if doc["passed"] else 1)
        assert [k async for k in client.scan_iter(match=b"bench-real:*")] == []
        assert await client.get(b"other:keep") == b"1"
    finally:
        await client.aclose()


async def test_dead_l2_fails_the_verdict_although_callers_see_no_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from resync_hierarchy.testing.redis_server import free_port

    args = namespace_args(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", duration=0.5, json=True, **SMALL
    )
    code = await bench.run(args)
    out = capsys.readouterr().out
    try:
        doc = json.loads(out)
    except ValueError:
        raise AssertionError(f"stdout is not one JSON document: {out[:300]!r}") from None
    assert doc["errors"] == 0
    assert doc["l2_errors"] > 0
    assert doc["sla"]["l2_error_rate_lt_0.1pct"]["pass"] is False
    assert doc["passed"] is False
    assert code == 1
