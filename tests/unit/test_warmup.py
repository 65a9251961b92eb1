"""Warm-up pieces without a redis-server: records, the msgpack stream, file
sources, the rate limiter's schedule, the hot-key snapshot, the loader on an
in-process L2 (fakeredis)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from resync_hierarchy import CacheHierarchy, HierarchyConfig
from resync_hierarchy.cli import main
from resync_hierarchy.codec.stream import (
    StreamError,
    looks_like_msgpack_record,
    pack_record,
    read_records,
)
from resync_hierarchy.errors import ConfigurationError, SerializationError
from resync_hierarchy.hierarchy import hot_keys
from resync_hierarchy.hierarchy.hot_keys import (
    SnapshotError,
    most_used_keys,
    read_snapshot,
    write_snapshot,
)
from resync_hierarchy.l1 import L1Store
from resync_hierarchy.l2.redis import RedisL2
from resync_hierarchy.warmup import (
    BadRecord,
    BulkCache,
    FileSource,
    Record,
    TokenBucket,
    warm_up,
)
from resync_hierarchy.warmup.records import (
    format_json_line,
    json_problem,
    parse_json_line,
)


def fake_cache(namespace: str = "t", server: Any = None, **config: Any) -> CacheHierarchy:
    l2 = RedisL2(
        fakeredis.FakeAsyncRedis(server=server or fakeredis.FakeServer()), description="fakeredis"
    )
    config.setdefault("invalidation", False)
    return CacheHierarchy(HierarchyConfig(namespace=namespace, **config), l2=l2)


@pytest.fixture
async def cache() -> AsyncIterator[CacheHierarchy]:
    c = fake_cache()
    yield c
    await c.shutdown()


# ---------------------------------------------------------------- records


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{bad", "invalid JSON"),
        (b"[1]", "expected an object"),
        (b'{"value": 1}', 'no "key"'),
        (b'{"key": 5, "value": 1}', '"key" must be a non-empty string'),
        (b'{"key": "", "value": 1}', '"key" must be a non-empty string'),
        (b'{"key": "k"}', 'no "value"'),
        (b'{"key": "k", "value": 1, "ttl": "10"}', '"ttl" must be a number'),
        (b'{"key": "k", "value": 1, "ttl": true}', '"ttl" must be a number'),
        (b'{"key": "k", "value": 1, "ttl": 0}', '"ttl" must be > 0'),
        (b'{"key": "k", "value": 1, "ttl": 1e999}', '"ttl" must be > 0'),
        (b'{"key": "k", "value": Infinity}', "invalid JSON"),
        (b'{"key": "\xff", "value": 1}', "not UTF-8"),
    ],
)
def test_bad_lines_say_why(line: bytes, reason: str) -> None:
    item = parse_json_line(line, 7, {"offset": 1})
    assert isinstance(item, BadRecord)
    assert item.number == 7
    assert reason in item.reason
    assert item.describe().startswith("line 7")


def test_good_line_blank_line_and_extra_fields() -> None:
    assert parse_json_line(b"   \n", 1, {}) is None
    item = parse_json_line(b'{"key": "k", "value": {"a": [1]}, "ttl": 5, "x": 1}', 3, {"o": 1})
    assert item == Record("k", {"a": [1]}, 5.0, 3, {"o": 1})


def test_json_problem_and_format() -> None:
    assert json_problem({"a": [1, 2.5, None, True, "s", (1, 2)]}) is None
    assert json_problem(b"x") == "bytes"
    assert json_problem([{"d": datetime(2020, 1, 1)}]) == "a datetime"
    assert json_problem(float("nan")) is not None
    assert json_problem({b"k": 1}) == "a dict key of type bytes"
    assert json_problem({1}) == "a set"
    line = format_json_line("ключ", {"v": 1}, None)
    assert json.loads(line) == {"key": "ключ", "value": {"v": 1}, "ttl": None}


# ---------------------------------------------------------------- msgpack stream


def test_msgpack_stream_round_trip_and_offsets() -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    records = [{"key": "a", "value": b"\x00", "ttl": 1.5}, {"key": "b", "value": when, "ttl": None}]
    data = b"".join(pack_record(r) for r in records)
    assert looks_like_msgpack_record(data[0]) and not looks_like_msgpack_record(ord("{"))
    out = list(read_records(io.BytesIO(data)))
    assert [obj for obj, _ in out] == records
    assert out[-1][1] == len(data)
    with pytest.raises(SerializationError):
        pack_record({"key": "x", "value": {1, 2}})


def test_msgpack_stream_unknown_ext_is_an_error_not_an_object() -> None:
    data = pack_record({"key": "a", "value": 1}) + b"\x81\xa1k\xd4\x05\x00"  # ext type 5
    reader = read_records(io.BytesIO(data))
    assert next(reader)[0] == {"key": "a", "value": 1}
    with pytest.raises(StreamError, match="unreadable record"):
        next(reader)


# ---------------------------------------------------------------- file source


async def collect(source: FileSource, resume: dict[str, Any] | None = None) -> list[Any]:
    return [item async for chunk in source.records(resume) for item in chunk]


async def test_file_source_detects_format_and_resumes_at_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "value": i}) + "\n" for i in range(5)))
    items = await collect(FileSource(str(path)))
    assert [i.key for i in items] == ["k0", "k1", "k2", "k3", "k4"]
    resumed = await collect(FileSource(str(path)), items[1].position)
    assert [(i.key, i.number) for i in resumed] == [("k2", 3), ("k3", 4), ("k4", 5)]
    mp = tmp_path / "d.bin"
    mp.write_bytes(b"".join(pack_record({"key": f"m{i}", "value": i}) for i in range(3)))
    items = await collect(FileSource(str(mp)))
    assert [i.key for i in items] == ["m0", "m1", "m2"]
    resumed = await collect(FileSource(str(mp)), items[0].position)
    assert [i.key for i in resumed] == ["m1", "m2"]


class _Pipe(io.RawIOBase):
    """A non-seekable byte stream, like stdin from a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 7))  # small reads, as a pipe gives
        buffer[: len(chunk)] = chunk
        return len(chunk)


async def test_stdin_source_resumes_by_reading_past_the_offset() -> None:
    data = "".join(json.dumps({"key": f"k{i}", "value": i}) + "\n" for i in range(4)).encode()
    first = await collect(FileSource("-", stdin=io.BufferedReader(_Pipe(data))))
    resumed = await collect(
        FileSource("-", stdin=io.BufferedReader(_Pipe(data))), first[1].position
    )
    assert [i.key for i in resumed] == ["k2", "k3"]
    assert FileSource("-").identity() == {"kind": "file", "path": "-"}


def test_file_source_refuses_a_missing_file_and_a_bad_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        FileSource(str(tmp_path / "nope"))
    with pytest.raises(ConfigurationError, match="format"):
        FileSource("-", format="xml")  # type: ignore[arg-type]


# ---------------------------------------------------------------- rate limit


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_token_bucket_never_exceeds_its_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, burst=50, clock=t.clock, sleep=t.sleep)
    taken = 0
    for _ in range(20):
        await bucket.acquire(50)
        taken += 50
        # everything taken by now fits in burst + rate x elapsed
        assert taken <= 50 + 100 * t.now + 1e-9
    assert t.now == pytest.approx((1000 - 50) / 100)
    t.now += 10  # idle: the bucket refills to its burst, not beyond
    before = t.now
    await bucket.acquire(50)
    await bucket.acquire(50)
    assert t.now - before == pytest.approx(0.5)
    with pytest.raises(ConfigurationError):
        TokenBucket(0, burst=1)
    with pytest.raises(ConfigurationError):
        TokenBucket(1, burst=0)


async def test_loader_rate_limit_schedule(cache: CacheHierarchy, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "value": i}) + "\n" for i in range(1000)))
    t = FakeTime()
    report = await warm_up(
        cache, FileSource(str(path)), batch=100, rate=200, clock=t.clock, sleep=t.sleep
    )
    assert report.loaded == 1000
    # 1000 keys at 200/s with one batch of burst: 4.5 s of enforced waiting
    assert sum(t.slept) == pytest.approx((1000 - 100) / 200)
    assert len(t.slept) == 9


# ---------------------------------------------------------------- loader on fakeredis


async def test_loader_on_fakeredis_counts_and_validates(
    cache: CacheHierarchy, tmp_path: Path
) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"key": f"k{i}", "value": i, "ttl": 30}) for i in range(10)]
    lines.insert(4, json.dumps({"key": "x" * 2000, "value": 1}))  # over max_key_bytes
    path.write_text("\n".join(lines) + "\n")
    seen: list[int] = []
    report = await warm_up(
        cache, FileSource(str(path)), batch=3, progress=lambda r: seen.append(r.loaded)
    )
    assert (report.loaded, report.bad_lines, report.read) == (10, 1, 11)
    assert "line 5" in report.bad[0] and "max_key_bytes" in report.bad[0]
    assert seen[-1] == 10
    doc = report.as_dict()
    assert doc["keys_per_second"] > 0 and doc["completed"] is True
    assert await cache.get("k9") == 9


async def test_loader_refuses_bad_arguments(cache: CacheHierarchy, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("")
    source = FileSource(str(path))
    bad_arguments: list[dict[str, Any]] = [
        {"batch": 0},
        {"concurrency": 0},
        {"limit": -1},
        {"default_ttl": 0},
        {"batch_attempts": 0},
    ]
    for kwargs in bad_arguments:
        with pytest.raises(ConfigurationError):
            await warm_up(cache, source, **kwargs)
    state = tmp_path / "state.json"
    state.write_text("not json")
    with pytest.raises(ConfigurationError, match="not a warm-up state file"):
        await warm_up(cache, source, state_file=state)
    state.write_text('{"format": "something else"}')
    with pytest.raises(ConfigurationError, match="not a warm-up state file"):
        await warm_up(cache, source, state_file=state)


async def test_memory_cache_is_refused_except_for_a_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"key": "k", "value": 1}) + "\n")
    memory = CacheHierarchy.from_url("memory://")
    try:
        with pytest.raises(ConfigurationError, match="has no Redis"):
            await warm_up(memory, FileSource(str(path)))
        report = await warm_up(memory, FileSource(str(path)), dry_run=True)
        assert report.would_load == 1
        with pytest.raises(ConfigurationError, match="has no Redis"):
            BulkCache(memory)
    finally:
        await memory.shutdown()


# ---------------------------------------------------------------- hot-key snapshot


def test_most_used_keys_follow_the_eviction_policy() -> None:
    store = L1Store(max_entries=100, max_bytes=1 << 20, shards=1)
    for i in range(20):
        store.set(f"k{i}", i, expires_at=None, size=10)
    for _ in range(3):
        for key in ("k3", "k7"):
            store.get(key)
    top = most_used_keys(store, 4)
    assert len(top) == 4
    assert {"k3", "k7"} <= set(top)
    assert len(most_used_keys(store, 1000)) == 20
    empty = L1Store(max_entries=10, max_bytes=1 << 20, shards=4)
    assert most_used_keys(empty, 5) == []


def test_snapshot_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "hot.json"
    write_snapshot(path, "ns", ["a", "b", "a"])
    assert read_snapshot(path) == ["a", "b"]
    assert read_snapshot(path, namespace="ns") == ["a", "b"]
    with pytest.raises(SnapshotError, match="namespace"):
        read_snapshot(path, namespace="other")
    for content in (
        "nope",
        "{}",
        '{"format": "resync-hot-keys", "version": 99}',
        '{"format": "resync-hot-keys", "version": 1, "keys": [1]}',
    ):
        path.write_text(content)
        with pytest.raises(SnapshotError):
            read_snapshot(path)
    assert [p.name for p in tmp_path.iterdir()] == ["hot.json"]  # no temporary left


async def test_snapshot_write_failure_never_fails_shutdown(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "hot.json"
    cache = fake_cache(hot_keys_snapshot=str(target))
    await cache.set("k", 1)
    await cache.shutdown()  # logged, not raised
    assert not target.exists()
    assert hot_keys.save(cache) == 0


async def test_preload_reports_why_nothing_was_loaded(tmp_path: Path) -> None:
    memory = CacheHierarchy.from_url("memory://", hot_keys_snapshot=str(tmp_path / "h.json"))
    try:
        assert (await hot_keys.preload(memory))["reason"] == "not configured"
    finally:
        await memory.shutdown()
    cache = fake_cache(hot_keys_snapshot=str(tmp_path / "absent.json"))
    try:
        await cache.start()
        assert (await hot_keys.preload(cache))["reason"] == "no snapshot"
    finally:
        await cache.shutdown()


async def test_snapshot_and_preload_on_fakeredis(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    snapshot = str(tmp_path / "hot.json")
    first = fake_cache(server=server, hot_keys_snapshot=snapshot, hot_keys_max=3, l1_shards=1)
    await first.set_many({f"k{i}": i for i in range(10)}, ttl=60)
    for _ in range(2):
        await first.get("k4")
    await first.shutdown()
    assert "k4" in read_snapshot(snapshot)
    second = fake_cache(server=server, hot_keys_snapshot=snapshot, hot_keys_max=3)
    try:
        await second.start()
        assert second.size() == 3
    finally:
        await second.shutdown()


def test_config_validates_snapshot_fields() -> None:
    with pytest.raises(ConfigurationError, match="hot_keys_snapshot"):
        HierarchyConfig(hot_keys_snapshot="")
    with pytest.raises(ConfigurationError, match="hot_keys_snapshot"):
        HierarchyConfig(hot_keys_snapshot=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="hot_keys_max"):
        HierarchyConfig(hot_keys_max=0)
    config = HierarchyConfig.from_env(
        {"RESYNC_CACHE_HOT_KEYS_SNAPSHOT": "/tmp/h.json", "RESYNC_CACHE_HOT_KEYS_MAX": "50"}
    )
    assert (config.hot_keys_snapshot, config.hot_keys_max) == ("/tmp/h.json", 50)


# ---------------------------------------------------------------- CLI without Redis


def test_cli_dry_run_without_redis_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"key": "k", "value": 1}) + "\nbroken\n")
    assert main(["warmup", str(path), "--dry-run", "--no-progress"]) == 1  # a bad line
    out = capsys.readouterr().out
    assert "would load 1" in out and "line 2: invalid JSON" in out
    assert main(["warmup", str(path)]) == 64  # no Redis to load into
    assert "has no Redis" in capsys.readouterr().err
    assert main(["warmup", str(path), "--hot-keys", "x.json"]) == 64
    assert main(["warmup", "--match", "a*", str(path)]) == 64
    assert main(["dump"]) == 64
    with pytest.raises(SystemExit):
        main(["warmup", str(path), "--batch", "0"])
    with pytest.raises(SystemExit):
        main(["warmup", str(path), "--rate", "-1"])
    with pytest.raises(SystemExit):
        main(["warmup", str(path), "--rate", "fast"])


async def test_checkpoint_of_a_changed_file_is_refused(
    cache: CacheHierarchy, tmp_path: Path
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"key": f"k{i}", "value": i}) + "\n" for i in range(10)))
    state = tmp_path / "state.json"
    report = await warm_up(cache, FileSource(str(path)), batch=2, limit=4, state_file=state)
    assert report.stopped == "limit" and state.exists()
    path.write_text(json.dumps({"key": "other", "value": 0}) + "\n")  # a new dump, same name
    with pytest.raises(ConfigurationError, match="changed since"):
        await warm_up(cache, FileSource(str(path)), state_file=state)
