"""Warm-up and dump against real redis-servers: every source, bad lines,
resumed runs, skip-existing, dry run, TTLs, the hot-key snapshot, the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from support.redis_server import RedisServer, free_port

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.cli import main
from resync_hierarchy.codec.stream import pack_record
from resync_hierarchy.hierarchy.hot_keys import read_snapshot, write_snapshot
from resync_hierarchy.warmup import (
    BulkCache,
    CacheSource,
    FileSource,
    HotKeysSource,
    dump,
    warm_up,
)
from resync_hierarchy.warmup._bulk import BatchFailed, Prepared


@pytest.fixture
async def target(redis_url: str) -> AsyncIterator[CacheHierarchy]:
    cache = CacheHierarchy.from_url(redis_url, namespace="warm")
    yield cache
    await cache.shutdown()


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def entries(n: int, ttl: float | None = 600.0) -> list[str]:
    return [json.dumps({"key": f"k{i}", "value": {"n": i}, "ttl": ttl}) for i in range(n)]


def ttl_ms(url: str, full_key: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.pttl(full_key))
    finally:
        client.close()


def count_keys(url: str, namespace: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{namespace}:*"))
    finally:
        client.close()


# ---------------------------------------------------------------- (a) a dump file


async def test_file_loads_with_per_entry_ttl(
    target: CacheHierarchy, redis_url: str, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"key": "short", "value": "s", "ttl": 30}),
        json.dumps({"key": "long", "value": [1, 2, {"x": None}], "ttl": 3000}),
        json.dumps({"key": "forever", "value": 3.5, "ttl": None}),
        json.dumps({"key": "no-ttl-field", "value": True}),
    ]
    report = await warm_up(target, FileSource(str(write_jsonl(tmp_path / "d.jsonl", lines))))
    assert (report.loaded, report.failed, report.bad_lines, report.completed) == (4, 0, 0, True)
    assert await target.get("long") == [1, 2, {"x": None}]
    assert await target.get("forever") == 3.5
    assert 25_000 < ttl_ms(redis_url, "warm:short") <= 30_000
    assert 2_990_000 < ttl_ms(redis_url, "warm:long") <= 3_000_000
    assert ttl_ms(redis_url, "warm:forever") == -1  # null: no expiry
    assert ttl_ms(redis_url, "warm:no-ttl-field") == -1


async def test_default_ttl_applies_to_null_ttls_only(
    target: CacheHierarchy, redis_url: str, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"key": "a", "value": 1, "ttl": None}),
        json.dumps({"key": "b", "value": 2, "ttl": 50}),
    ]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    await warm_up(target, FileSource(str(path)), default_ttl=100)
    assert 95_000 < ttl_ms(redis_url, "warm:a") <= 100_000
    assert 45_000 < ttl_ms(redis_url, "warm:b") <= 50_000


async def test_bad_lines_are_reported_with_line_numbers_and_skipped(
    target: CacheHierarchy, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"key": "good1", "value": 1, "ttl": 60}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"value": 1}),
        "",
        json.dumps({"key": 7, "value": 1}),
        json.dumps({"key": "bad-ttl", "value": 1, "ttl": -5}),
        json.dumps({"key": "good2", "value": "x" * 10, "ttl": 60}),
        json.dumps({"key": "huge", "value": "x" * 2_000_000, "ttl": 60}),
        '{"key": "nan", "value": NaN}',
        json.dumps({"key": "good3", "value": None, "ttl": 60}),
    ]
    report = await warm_up(target, FileSource(str(write_jsonl(tmp_path / "d.jsonl", lines))))
    assert report.loaded == 3
    assert report.bad_lines == 7
    assert report.completed and not report.ok
    numbers = [text.split(":")[0].split(" (")[0] for text in report.bad]
    assert numbers == ["line 2", "line 3", "line 4", "line 6", "line 7", "line 9", "line 10"]
    assert "invalid JSON" in report.bad[0]
    assert "max_value_bytes" in report.bad[5] and "'huge'" in report.bad[5]
    assert await target.get_many(["good1", "good2", "good3", "huge"]) == {
        "good1": 1,
        "good2": "x" * 10,
        "good3": None,
    }


async def test_bad_line_listing_is_bounded_but_all_are_counted(
    target: CacheHierarchy, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ["garbage"] * 30 + entries(5))
    report = await warm_up(target, FileSource(str(path)), max_listed=4)
    assert (report.bad_lines, len(report.bad), report.loaded) == (30, 4, 5)


async def test_resume_after_limit_loads_the_rest_without_reloading(
    target: CacheHierarchy, redis_url: str, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", entries(100))
    state = tmp_path / "state.json"
    first = await warm_up(target, FileSource(str(path)), batch=10, limit=35, state_file=state)
    assert (first.loaded, first.stopped, first.completed) == (35, "limit", False)
    saved = json.loads(state.read_text())
    assert saved["position"]["number"] == 35
    # Prove the second run does not rewrite what the first loaded: change one
    # of those keys in Redis; the resumed run must leave it alone.
    await target.set("k3", "changed meanwhile", ttl=600)
    second = await warm_up(target, FileSource(str(path)), batch=10, state_file=state)
    assert second.resumed_from is not None and second.resumed_from["number"] == 35
    assert (second.loaded, second.read, second.completed) == (65, 65, True)
    assert not state.exists()  # deleted once complete
    assert await target.get("k3") == "changed meanwhile"
    assert await target.get("k99") == {"n": 99}
    assert count_keys(redis_url, "warm") == 100


async def test_failed_batch_stops_the_load_and_resume_continues_from_the_checkpoint(
    target: CacheHierarchy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", entries(50))
    state = tmp_path / "state.json"
    real_write = BulkCache.write
    calls = 0
    slept: list[float] = []

    async def no_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def write_until_down(
        self: BulkCache, batch: list[Prepared], *, skip_existing: bool
    ) -> int:
        nonlocal calls
        calls += 1
        if calls >= 3:  # from the third batch on, Redis "is gone"
            raise BatchFailed("connection")
        return await real_write(self, batch, skip_existing=skip_existing)

    monkeypatch.setattr(BulkCache, "write", write_until_down)
    first = await warm_up(
        target, FileSource(str(path)), batch=10, concurrency=1, state_file=state, sleep=no_sleep
    )
    assert (first.loaded, first.failed, first.stopped, first.retried) == (20, 10, "failed", 2)
    assert slept == [0.25, 0.5]  # backoff between the three attempts
    assert "after 3 attempt(s)" in first.errors[0] and "connection" in first.errors[0]
    assert json.loads(state.read_text())["position"]["number"] == 20
    monkeypatch.setattr(BulkCache, "write", real_write)
    second = await warm_up(target, FileSource(str(path)), batch=10, state_file=state)
    assert (second.loaded, second.read, second.completed) == (30, 30, True)
    assert len(await target.get_many([f"k{i}" for i in range(50)])) == 50


async def test_a_transient_failure_is_retried_and_the_load_completes(
    target: CacheHierarchy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", entries(30))
    real_write = BulkCache.write
    calls = 0

    async def flaky(self: BulkCache, batch: list[Prepared], *, skip_existing: bool) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise BatchFailed("timeout")
        return await real_write(self, batch, skip_existing=skip_existing)

    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(BulkCache, "write", flaky)
    report = await warm_up(target, FileSource(str(path)), batch=10, sleep=no_sleep)
    assert (report.loaded, report.failed, report.retried, report.ok) == (30, 0, 1, True)


async def test_a_refusal_that_would_repeat_is_not_retried(
    target: CacheHierarchy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", entries(5))

    async def oom(self: BulkCache, batch: list[Prepared], *, skip_existing: bool) -> int:
        raise BatchFailed("oom")

    monkeypatch.setattr(BulkCache, "write", oom)
    report = await warm_up(target, FileSource(str(path)))
    assert (report.failed, report.retried, report.stopped) == (5, 0, "failed")


async def test_state_file_of_another_source_is_refused(
    target: CacheHierarchy, tmp_path: Path
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", entries(20))
    b = write_jsonl(tmp_path / "b.jsonl", entries(20))
    state = tmp_path / "state.json"
    await warm_up(target, FileSource(str(a)), batch=5, limit=5, state_file=state)
    with pytest.raises(Exception, match="belongs to another source"):
        await warm_up(target, FileSource(str(b)), state_file=state)


async def test_skip_existing_never_replaces_a_stored_value(
    target: CacheHierarchy, tmp_path: Path
) -> None:
    await target.set("k1", "live value", ttl=600)
    path = write_jsonl(tmp_path / "d.jsonl", entries(5))
    report = await warm_up(target, FileSource(str(path)), skip_existing=True)
    assert (report.loaded, report.skipped) == (4, 1)
    assert await target.get("k1") == "live value"
    assert await target.get("k2") == {"n": 2}
    again = await warm_up(target, FileSource(str(path)), skip_existing=True)
    assert (again.loaded, again.skipped) == (0, 5)
    # A loaded value is older than any write: a normal set replaces it.
    await target.set("k2", "newer", ttl=600)
    assert await target.get("k2") == "newer"


async def test_dry_run_writes_nothing(
    target: CacheHierarchy, redis_url: str, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*entries(30), "oops"])
    state = tmp_path / "state.json"
    report = await warm_up(target, FileSource(str(path)), dry_run=True, state_file=state)
    assert (report.would_load, report.loaded, report.bad_lines) == (30, 0, 1)
    assert count_keys(redis_url, "warm") == 0
    assert not state.exists()


async def test_concurrent_batches_load_everything(
    target: CacheHierarchy, redis_url: str, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", entries(2_000))
    report = await warm_up(target, FileSource(str(path)), batch=50, concurrency=8)
    assert (report.loaded, report.completed) == (2_000, True)
    assert count_keys(redis_url, "warm") == 2_000


async def test_warm_up_evicts_stale_l1_copies_here_and_in_other_processes(
    redis_url: str, tmp_path: Path
) -> None:
    reader = CacheHierarchy.from_url(redis_url, namespace="warm")
    loader = CacheHierarchy.from_url(redis_url, namespace="warm")
    try:
        await reader.start()
        await reader.set("k1", "old", ttl=600)
        assert await reader.get("k1") == "old"  # in reader's L1
        path = write_jsonl(tmp_path / "d.jsonl", entries(3))
        await loader.start()
        await warm_up(loader, FileSource(str(path)))
        for _ in range(200):
            if await reader.get("k1") == {"n": 1}:
                break
            await asyncio.sleep(0.01)
        assert await reader.get("k1") == {"n": 1}
    finally:
        await reader.shutdown()
        await loader.shutdown()


async def test_msgpack_file_with_bytes_and_datetime(target: CacheHierarchy, tmp_path: Path) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    path = tmp_path / "d.msgpack"
    path.write_bytes(
        pack_record({"key": "b", "value": b"\x00\xff", "ttl": 60.0})
        + pack_record({"key": "d", "value": {"at": when}, "ttl": None})
        + pack_record({"nokey": 1})
        + pack_record({"key": "after-bad", "value": 1, "ttl": 5.5})
    )
    report = await warm_up(target, FileSource(str(path)))  # format detected
    assert (report.loaded, report.bad_lines) == (3, 1)
    assert report.bad == ['record 3: no "key" field']
    assert await target.get("b") == b"\x00\xff"
    assert await target.get("d") == {"at": when}


async def test_truncated_msgpack_keeps_what_came_before(
    target: CacheHierarchy, tmp_path: Path
) -> None:
    path = tmp_path / "d.msgpack"
    whole = pack_record({"key": "a", "value": 1, "ttl": None})
    path.write_bytes(whole + pack_record({"key": "b", "value": "x" * 50, "ttl": None})[:-10])
    report = await warm_up(target, FileSource(str(path), format="msgpack"))
    assert (report.loaded, report.bad_lines) == (1, 1)
    assert "truncated" in report.bad[0] and report.bad[0].startswith("record 2")
    assert await target.get("a") == 1


# ---------------------------------------------------------------- (b) another Redis / namespace


async def test_from_another_redis_with_remaining_ttl_and_resume(
    target: CacheHierarchy, redis_url: str, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    origin = CacheHierarchy.from_url(
        fresh_redis.url, namespace="warm", invalidation=False, default_ttl=None
    )
    try:
        await origin.set_many({f"k{i}": i for i in range(300)}, ttl=500)
        await origin.set_many({"nottl": "x"}, ttl=None)
        state = tmp_path / "state.json"
        source = CacheSource(BulkCache(origin, role="source"), batch=50)
        first = await warm_up(target, source, batch=40, limit=120, state_file=state)
        assert first.loaded == 120 and first.stopped == "limit"
        second = await warm_up(target, source, batch=40, state_file=state)
        assert second.completed
        # A SCAN resume repeats at most the page it stopped in: nothing is lost.
        assert first.loaded + second.loaded >= 301
        assert count_keys(redis_url, "warm") == 301
        assert await target.get("k299") == 299
        assert 490_000 < ttl_ms(redis_url, "warm:k7") <= 500_000
        assert ttl_ms(redis_url, "warm:nottl") == -1
    finally:
        await origin.shutdown()


async def test_from_another_namespace_with_match(target: CacheHierarchy, redis_url: str) -> None:
    origin = CacheHierarchy.from_url(redis_url, namespace="old", invalidation=False)
    try:
        await origin.set_many({"user:1": "a", "user:2": "b", "item:1": "c"}, ttl=100)
        report = await warm_up(target, CacheSource(BulkCache(origin), batch=10, match="user:*"))
        assert report.loaded == 2
        assert await target.get_many(["user:1", "user:2", "item:1"]) == {
            "user:1": "a",
            "user:2": "b",
        }
    finally:
        await origin.shutdown()


async def test_unreachable_source_is_reported_not_raised(target: CacheHierarchy) -> None:
    dead = CacheHierarchy.from_url(
        f"redis://127.0.0.1:{free_port()}/0", namespace="x", l2_timeout=0.2, l2_retries=0
    )
    try:
        report = await warm_up(target, CacheSource(BulkCache(dead)))
        assert report.stopped == "source unavailable" and not report.completed
        assert report.errors
    finally:
        await dead.shutdown()


# ---------------------------------------------------------------- (c) hot-key snapshot


async def test_hierarchy_writes_hot_keys_at_shutdown_and_fills_l1_at_start(
    redis_url: str, tmp_path: Path
) -> None:
    snapshot = tmp_path / "hot.json"
    options: dict[str, Any] = {
        "namespace": "warm",
        "hot_keys_snapshot": str(snapshot),
        "hot_keys_max": 5,
        "l1_shards": 1,
        "l1_max_entries": 100,
    }
    first = CacheHierarchy.from_url(redis_url, **options)
    await first.start()
    await first.set_many({f"k{i}": i for i in range(50)}, ttl=600)
    for _ in range(3):
        for key in ("k10", "k20", "k30"):
            assert await first.get(key) is not None
    await first.shutdown()
    keys = read_snapshot(snapshot, namespace="warm")
    assert len(keys) == 5
    assert {"k10", "k20", "k30"} <= set(keys)  # the keys read most are kept

    second = CacheHierarchy.from_url(redis_url, **options)
    try:
        await second.start()
        assert second.size() == 5  # filled from L2 before any request
        stats = second.get_stats()
        assert await second.get("k20") == 20
        assert second.get_stats()["l1_hits"] == stats["l1_hits"] + 1
    finally:
        await second.shutdown()


async def test_snapshot_of_another_namespace_or_garbage_never_fails_start(
    redis_url: str, tmp_path: Path
) -> None:
    snapshot = tmp_path / "hot.json"
    write_snapshot(snapshot, "other", ["k1"])
    cache = CacheHierarchy.from_url(redis_url, namespace="warm", hot_keys_snapshot=str(snapshot))
    await cache.start()  # the foreign snapshot is ignored; L1 trusted once subscribed
    await cache.set("k1", 1)
    await cache.shutdown()  # L1 holds k1: the snapshot is rewritten for "warm"
    assert read_snapshot(snapshot, namespace="warm") == ["k1"]
    snapshot.write_text("{ not json")
    again = CacheHierarchy.from_url(redis_url, namespace="warm", hot_keys_snapshot=str(snapshot))
    try:
        await again.start()
        assert again.size() == 0
    finally:
        await again.shutdown()  # empty L1: the (bad) file is left as it was
    assert snapshot.read_text() == "{ not json"


async def test_hot_keys_source_copies_the_snapshot_keys_from_another_redis(
    target: CacheHierarchy, fresh_redis: RedisServer, tmp_path: Path
) -> None:
    origin = CacheHierarchy.from_url(fresh_redis.url, namespace="warm", invalidation=False)
    try:
        await origin.set_many({f"k{i}": i for i in range(20)}, ttl=300)
        snapshot = tmp_path / "hot.json"
        write_snapshot(snapshot, "warm", ["k1", "k2", "gone"])
        source = HotKeysSource(str(snapshot), read_snapshot(snapshot), BulkCache(origin))
        report = await warm_up(target, source)
        assert report.loaded == 2
        assert await target.get_many(["k1", "k2", "k3"]) == {"k1": 1, "k2": 2}
    finally:
        await origin.shutdown()


# ---------------------------------------------------------------- dump


async def test_dump_then_warm_up_into_another_namespace_keeps_ttls(
    redis_url: str, tmp_path: Path
) -> None:
    source = CacheHierarchy.from_url(redis_url, namespace="src", default_ttl=None)
    copy = CacheHierarchy.from_url(redis_url, namespace="copy")
    try:
        await source.set_many({f"a{i}": {"i": i, "s": "v" * i} for i in range(120)}, ttl=1000)
        await source.set("eternal", [1, "two"], ttl=None)
        out = io.BytesIO()
        report = await dump(source, out, batch=25)
        assert (report.written, report.completed, report.unrepresentable) == (121, True, 0)
        path = tmp_path / "dump.jsonl"
        path.write_bytes(out.getvalue())
        first = json.loads(path.read_text().splitlines()[0])
        assert set(first) == {"key", "value", "ttl"}
        loaded = await warm_up(copy, FileSource(str(path)))
        assert loaded.loaded == 121
        assert await copy.get("a77") == {"i": 77, "s": "v" * 77}
        assert await copy.get("eternal") == [1, "two"]
        assert 995_000 < ttl_ms(redis_url, "copy:a5") <= 1_000_000
        assert ttl_ms(redis_url, "copy:eternal") == -1
    finally:
        await source.shutdown()
        await copy.shutdown()


async def test_json_dump_refuses_what_json_cannot_carry_and_msgpack_keeps_it(
    redis_url: str, tmp_path: Path
) -> None:
    source = CacheHierarchy.from_url(redis_url, namespace="src")
    copy = CacheHierarchy.from_url(redis_url, namespace="copy")
    when = datetime(2025, 5, 6, 7, 8, 9, tzinfo=UTC)
    try:
        await source.set_many({"plain": "p", "raw": b"\x01\x02", "when": when}, ttl=100)
        out = io.BytesIO()
        report = await dump(source, out)
        assert (report.written, report.unrepresentable) == (1, 2)
        assert any("bytes" in text and "msgpack" in text for text in report.examples)
        out = io.BytesIO()
        report = await dump(source, out, format="msgpack")
        assert (report.written, report.unrepresentable) == (3, 0)
        path = tmp_path / "dump.msgpack"
        path.write_bytes(out.getvalue())
        await warm_up(copy, FileSource(str(path)))
        assert await copy.get_many(["plain", "raw", "when"]) == {
            "plain": "p",
            "raw": b"\x01\x02",
            "when": when,
        }
    finally:
        await source.shutdown()
        await copy.shutdown()


# ---------------------------------------------------------------- the CLI


def test_cli_dump_and_warmup_round_trip(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        cache = CacheHierarchy.from_url(redis_url, namespace="cli-src")
        await cache.set_many({f"c{i}": i for i in range(40)}, ttl=900)
        await cache.shutdown()

    asyncio.run(seed())
    out = tmp_path / "dump.jsonl"
    code = main(["dump", "--redis-url", redis_url, "--namespace", "cli-src", "-o", str(out),
                 "--json", "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["written"] == 40
    assert len(out.read_text().splitlines()) == 40
    argv = ["warmup", str(out), "--redis-url", redis_url, "--namespace", "cli-dst", "--json"]
    code = main([*argv, "--dry-run"])
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["would_load"], doc["loaded"]) == (0, 40, 0)
    code = main(argv)
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["loaded"], doc["completed"]) == (0, 40, True)
    assert {
        "loaded",
        "skipped",
        "failed",
        "bad_lines",
        "duration_seconds",
        "keys_per_second",
    } <= set(doc)
    assert 890_000 < ttl_ms(redis_url, "cli-dst:c3") <= 900_000


def test_cli_bad_lines_exit_1_with_line_numbers(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*entries(3), "nope", json.dumps({"key": ""})])
    code = main(["warmup", str(path), "--redis-url", redis_url, "--namespace", "x"])
    out = capsys.readouterr().out
    assert code == 1
    assert "loaded 3" in out and "bad lines: 2" in out
    assert "line 4: invalid JSON" in out and "line 5:" in out


def test_cli_from_url_and_hot_keys(
    redis_url: str, fresh_redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def seed() -> None:
        cache = CacheHierarchy.from_url(fresh_redis.url, namespace="ns", invalidation=False)
        await cache.set_many({f"h{i}": i for i in range(10)}, ttl=300)
        await cache.shutdown()

    asyncio.run(seed())
    common = ["--redis-url", redis_url, "--namespace", "ns", "--json", "--no-progress"]
    snapshot = tmp_path / "hot.json"
    write_snapshot(snapshot, "ns", ["h1", "h2", "h3"])
    code = main(["warmup", "--hot-keys", str(snapshot), *common])  # check only
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["present"], doc["missing"]) == (0, 0, 3)
    code = main(["warmup", "--hot-keys", str(snapshot), "--from-url", fresh_redis.url, *common])
    assert (code, json.loads(capsys.readouterr().out)["loaded"]) == (0, 3)
    code = main(["warmup", "--from-url", fresh_redis.url, "--skip-existing", *common])
    doc = json.loads(capsys.readouterr().out)
    assert (code, doc["loaded"], doc["skipped"]) == (0, 7, 3)
    code = main(["warmup", "--hot-keys", str(snapshot), *common])
    assert json.loads(capsys.readouterr().out)["present"] == 3


def test_cli_usage_errors_exit_64(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warmup", "--redis-url", redis_url]) == 64
    assert "exactly one source" in capsys.readouterr().err
    assert main(["warmup", "/does/not/exist.jsonl", "--redis-url", redis_url]) == 64
    assert main(["warmup", "--from-url", redis_url, "--redis-url", redis_url]) == 64
    assert "same cache" in capsys.readouterr().err


def test_installed_entry_point_dump_to_stdout_and_warmup_from_stdin(
    redis_url: str, tmp_path: Path
) -> None:
    exe = shutil.which("resync-hierarchy", path=os.path.dirname(sys.executable))
    assert exe is not None, "the resync-hierarchy entry point is not installed in this venv"

    async def seed() -> None:
        cache = CacheHierarchy.from_url(redis_url, namespace="proc-src")
        await cache.set_many({f"p{i}": {"v": i} for i in range(25)}, ttl=600)
        await cache.shutdown()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_CACHE_")}
    dumped = subprocess.run(
        [exe, "dump", "--redis-url", redis_url, "--namespace", "proc-src", "--json"],
        capture_output=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr
    assert len(dumped.stdout.splitlines()) == 25  # stdout is the dump itself
    assert '"written": 25' in dumped.stderr.decode()  # the report went to stderr
    loaded = subprocess.run(
        [exe, "warmup", "-", "--redis-url", redis_url, "--namespace", "proc-dst", "--json"],
        input=dumped.stdout, capture_output=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["loaded"] == 25
    assert count_keys(redis_url, "proc-dst") == 25


def test_job_script_dumps_rotates_and_warms_up_resumably(redis_url: str, tmp_path: Path) -> None:
    exe = shutil.which("resync-hierarchy", path=os.path.dirname(sys.executable))
    assert exe is not None
    script = Path(__file__).resolve().parents[2] / "scripts" / "warmup_job.sh"

    async def seed() -> None:
        cache = CacheHierarchy.from_url(redis_url, namespace="job/src")
        await cache.set_many({f"j{i}": i for i in range(30)}, ttl=600)
        await cache.shutdown()

    asyncio.run(seed())
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESYNC_CACHE_")}
    env.update(
        REDIS_URL=redis_url,
        NAMESPACE="job/src",
        DUMP_DIR=str(tmp_path / "dumps"),
        KEEP="2",
        RESYNC_HIERARCHY=exe,
    )

    def job(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(script), *args], env={**env, **extra}, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    for _ in range(3):
        done = job("dump")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["written"] == 30
    names = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert len([n for n in names if n != "job_src-latest.jsonl"]) == 2  # KEEP=2
    assert "job_src-latest.jsonl" in names
    loaded = job("warmup", NAMESPACE="job/dst", WARMUP_FILE=str(tmp_path / "dumps" /
                 "job_src-latest.jsonl"))  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert (json.loads(loaded.stdout)["loaded"], count_keys(redis_url, "job%2Fdst")) == (30, 30)
    again = job("warmup", NAMESPACE="job/dst", WARMUP_FILE=str(tmp_path / "dumps" /
                "job_src-latest.jsonl"))  # fmt: skip
    assert json.loads(again.stdout)["skipped"] == 30  # SKIP_EXISTING=1 by default
    assert job("bogus").returncode == 64


def test_cli_text_report_limit_resume_and_bad_snapshot(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", entries(12))
    state = tmp_path / "state.json"
    argv = ["warmup", str(path), "--redis-url", redis_url, "--namespace", "t", "--batch", "5",
            "--resume", str(state)]  # fmt: skip
    assert main([*argv, "--limit", "5"]) == 0
    assert "stopped at --limit" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resumed after line 5" in out and "loaded 7" in out and "completed" in out
    bad = tmp_path / "hot.json"
    bad.write_text("[]")
    assert main(["warmup", "--hot-keys", str(bad), "--redis-url", redis_url]) == 64
    assert "not a hot-key snapshot" in capsys.readouterr().err
    missing = str(tmp_path / "none.json")
    assert main(["warmup", "--hot-keys", missing, "--redis-url", redis_url]) == 64


def test_cli_dump_to_a_dead_redis_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESYNC_CACHE_L2_TIMEOUT", "0.2")
    monkeypatch.setenv("RESYNC_CACHE_L2_RETRIES", "0")
    monkeypatch.setenv("RESYNC_CACHE_INVALIDATION", "false")
    out = tmp_path / "dump.jsonl"
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["dump", "--redis-url", dead, "-o", str(out)]) == 1
    assert "INCOMPLETE" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def test_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from resync_hierarchy.cli.warmup_cmds import _Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = _Progress("warmup", enabled=True)
    bar.show(1500, ", 1,600 read")
    bar.end()
    err = capsys.readouterr().err
    assert err.startswith("\rwarmup: 1,500 keys") and err.endswith("\n")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    plain = _Progress("dump", enabled=True)
    plain.last -= 11  # as if 11 s had passed since the last line
    plain.show(10, "")
    plain.end()
    assert capsys.readouterr().err.startswith("dump: 10 keys")
