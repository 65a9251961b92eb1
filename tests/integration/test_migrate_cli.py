"""``resync-hierarchy migrate``: flags, backfill and verify against a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from resync_hierarchy import CacheHierarchy
from resync_hierarchy.cli import EXIT_USAGE, main
from resync_hierarchy.migration import FlagRecord
from resync_hierarchy.migration.backfill import backfill, checkpoint_key, verify
from resync_hierarchy.resilience.guard import L2Unavailable


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("REDIS_URL", "MIGRATION_USE_NEW_CACHE", "MIGRATION_ROLLOUT_PERCENT"):
        monkeypatch.delenv(name, raising=False)
    yield
    structlog.reset_defaults()


def migrate(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, Any]:
    code = main(["migrate", *args, "--redis-url", url, "--namespace", "new", "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def cache(url: str, namespace: str) -> CacheHierarchy:
    return CacheHierarchy.from_url(url, namespace=namespace, invalidation=False)


def test_each_flag_command_writes_the_next_revision(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = migrate(capsys, redis_url, "status")
    assert (code, doc["record"], doc["revision"]) == (0, False, 0)
    steps = [
        (("legacy",), "legacy_only"),
        (("shadow", "--sample", "5"), "dual_write"),
        (("rollout", "10"), "read_new"),
        (("rollout", "25"), "read_new"),
        (("rollback",), "dual_write"),
        (("rollout", "100"), "read_new"),
        (("finish",), "new_only"),
    ]
    for revision, (args, mode) in enumerate(steps, start=1):
        code, doc = migrate(capsys, redis_url, *args)
        assert (code, doc["revision"], doc["mode"]) == (0, revision, mode)
    code, doc = migrate(capsys, redis_url, "status")
    assert (doc["record"], doc["revision"], doc["mode"], doc["finished"]) == (
        True, len(steps), "new_only", True,
    )  # fmt: skip

    async def read_record() -> Any:
        async with cache(redis_url, "new") as new:
            return await FlagRecord(new).read()

    found = asyncio.run(read_record())
    assert found is not None
    assert found[0].mode == "new_only"


@pytest.mark.parametrize("percent", ["150", "-1", "maybe", "10x"])
def test_invalid_percent_is_refused_and_nothing_is_written(
    redis_url: str, capsys: pytest.CaptureFixture[str], percent: str
) -> None:
    assert migrate(capsys, redis_url, "rollout", "25")[0] == 0
    code = main(["migrate", "rollout", percent, "--redis-url", redis_url, "--namespace", "new"])
    captured = capsys.readouterr()
    assert code == EXIT_USAGE
    assert "PERCENT" in captured.err
    _, doc = migrate(capsys, redis_url, "status")
    assert (doc["revision"], doc["rollout_percent"]) == (1, 25.0)


def test_migrate_needs_a_redis_and_a_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "status"]) == EXIT_USAGE
    assert "--redis-url" in capsys.readouterr().err
    assert main(["migrate", "status", "--redis-url", "redis://127.0.0.1:1/0"]) == EXIT_USAGE
    assert "--namespace" in capsys.readouterr().err


async def test_backfill_copies_never_overwrites_newer_and_is_idempotent(redis_url: str) -> None:
    async with cache(redis_url, "old") as legacy, cache(redis_url, "new") as new:
        await legacy.set_many({f"k{i}": f"old-{i}" for i in range(250)}, ttl=600)
        await legacy.set("short", "x", ttl=0.001)
        await asyncio.sleep(0.02)  # expired (in Redis and by its envelope) before the backfill
        await new.set("k7", "newer in new")  # written after the legacy value
        report = await backfill(legacy, new, batch=40)
        assert report.completed
        assert report.copied == 249
        assert report.skipped_newer == 1
        reader = cache(redis_url, "new")
        assert await reader.get("k7") == "newer in new"
        assert await reader.get("k8") == "old-8"
        ttl = await new._l2.backend.client.pttl(b"new:k8")  # type: ignore[union-attr]
        assert 590_000 < ttl <= 600_000  # the remaining TTL was carried over
        again = await backfill(legacy, new, batch=40)
        assert (again.copied, again.skipped_newer) == (0, 250)
        result = await verify(legacy, new, sample=1000)
        assert result.sampled == 250
        assert result.mismatched == 1  # k7, on purpose
        assert result.examples[0]["key"] == "k7"
        await reader.shutdown()


async def test_backfill_resumes_from_its_checkpoint(redis_url: str) -> None:
    async with cache(redis_url, "old") as legacy, cache(redis_url, "new") as new:
        await legacy.set_many({f"k{i}": i for i in range(300)}, ttl=600)
        assert new._l2 is not None
        real_write = new._l2.backend.write_if_newer
        batches = 0

        async def failing_after_two(items: Any) -> Any:
            nonlocal batches
            batches += 1
            if batches > 2:
                raise L2Unavailable("connection", "injected")
            return await real_write(items)

        new._l2.backend.write_if_newer = failing_after_two  # type: ignore[method-assign]
        first = await backfill(legacy, new, batch=50)
        assert not first.completed
        assert first.copied > 0
        assert await new._l2.backend.get(checkpoint_key(legacy, new)) is not None
        new._l2.backend.write_if_newer = real_write  # type: ignore[method-assign]
        second = await backfill(legacy, new, batch=50)
        assert second.completed
        assert second.resumed_from > 0
        assert first.copied + second.copied + second.skipped_newer >= 300
        assert await new._l2.backend.get(checkpoint_key(legacy, new)) is None
        assert (await verify(legacy, new, sample=1000)).mismatch_rate == 0


def test_backfill_and_verify_from_the_cli(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    async def seed() -> None:
        async with cache(redis_url, "old") as legacy:
            await legacy.set_many({f"k{i}": i for i in range(120)}, ttl=600)

    asyncio.run(seed())
    code, doc = migrate(capsys, redis_url, "backfill", "--legacy-namespace", "old", "--batch", "50")
    assert (code, doc["completed"], doc["copied"]) == (0, True, 120)
    code, doc = migrate(capsys, redis_url, "verify", "--legacy-namespace", "old", "--sample", "50")
    assert (code, doc["sampled"], doc["mismatch_rate"]) == (0, 50, 0.0)


async def test_the_whole_rehearsal_from_the_cli_with_a_running_manager(redis_url: str) -> None:
    """legacy only -> shadow -> backfill/verify -> 10 -> 25 -> 50 -> 100 ->
    rollback -> forward again -> finish, each step applied by a running
    manager within a second, every read correct throughout."""
    import time

    from prometheus_client import CollectorRegistry

    from resync_hierarchy import MigrationFlags, MigrationManager

    async with cache(redis_url, "old") as seed:
        await seed.set_many({f"k{i}": i for i in range(200)}, ttl=600)
    mm = MigrationManager(
        CacheHierarchy.from_url(redis_url, namespace="old"),
        CacheHierarchy.from_url(redis_url, namespace="new"),
        flags=MigrationFlags(dual_write=False),
        registry=CollectorRegistry(),
    )

    def cli(*args: str) -> int:
        argv = ["migrate", *args, "--redis-url", redis_url, "--namespace", "new", "--json"]
        return main(argv)

    async with mm:
        steps: list[tuple[tuple[str, ...], str, float]] = [
            (("legacy",), "legacy_only", 100.0),
            (("shadow", "--sample", "20"), "dual_write", 100.0),
            (("backfill", "--legacy-namespace", "old"), "dual_write", 100.0),
            (("verify", "--legacy-namespace", "old"), "dual_write", 100.0),
            (("rollout", "10"), "read_new", 10.0),
            (("rollout", "25"), "read_new", 25.0),
            (("rollout", "50"), "read_new", 50.0),
            (("rollout", "100"), "read_new", 100.0),
            (("rollback",), "dual_write", 100.0),
            (("rollout", "100"), "read_new", 100.0),
            (("finish",), "new_only", 100.0),
        ]
        for args, mode, percent in steps:
            assert await asyncio.to_thread(cli, *args) == 0, args
            deadline = time.monotonic() + 1.0
            while (mm.flags.mode, mm.flags.rollout_percent) != (mode, percent):
                assert time.monotonic() < deadline, f"{args}: not applied within 1 s"
                await asyncio.sleep(0.01)
            values = [await mm.get(f"k{i}") for i in range(200)]
            assert values == list(range(200)), args
            await mm.set(f"written-at-{args[0]}", args)
        status = mm.status()
        assert status["new_reads"] > 0
        assert status["legacy_reads"] > 0
        assert status["errors"] == status["mismatches"] == 0
    async with cache(redis_url, "old") as legacy, cache(redis_url, "new") as new:
        assert await new.get("written-at-rollout") == ["rollout", "100"]
        assert await legacy.get("written-at-rollback") == ["rollback"]  # dual write
        assert await legacy.get("written-at-finish") is None  # new only after finish
        assert await new.get("written-at-finish") == ["finish"]
