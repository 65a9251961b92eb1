"""The CacheHierarchy contract (API.md), on fakeredis and on a real redis-server."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import time
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from support.backends import Backend

from resync_hierarchy import (
    CacheClosedError,
    CacheError,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    ValueTooLargeError,
)
from resync_hierarchy.testing import FakeClock

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**64 - 1,
    3.25,
    float("inf"),
    "",
    "héllo ✓",
    b"\x00\xffbytes",
    [1, "two", [3.0, None]],
    {"nested": {"list": [1, 2], "bytes": b"x"}, "empty": {}},
    dt.datetime(2024, 3, 31, 2, 30, 15, 123456),
    dt.datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Paris"), fold=1),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
async def test_round_trip_through_l1_and_l2(backend: Backend, value: Any) -> None:
    writer = backend.cache()
    reader = backend.cache()  # another "process": its L1 is empty, it reads L2
    await writer.set("k", value)
    for got in (await writer.get("k", "absent"), await reader.get("k", "absent")):
        assert got == value
        assert type(got) is type(value)
        if isinstance(value, dt.datetime):
            assert got.tzinfo == value.tzinfo or got.utcoffset() == value.utcoffset()
            assert got.fold == value.fold
    assert reader.get_stats()["l2_hits"] == 1
    assert writer.get_stats()["l1_hits"] == 1


async def test_tuple_comes_back_as_list_from_every_tier(backend: Backend) -> None:
    cache = backend.cache()
    await cache.set("t", (1, (2, 3)))
    assert await cache.get("t") == [1, [2, 3]]
    assert await backend.cache().get("t") == [1, [2, 3]]


async def test_none_is_a_value_not_a_miss(backend: Backend) -> None:
    cache = backend.cache()
    await cache.set("n", None)
    assert await cache.get("n", "default") is None
    assert await cache.exists("n")
    assert await backend.cache().get("n", "default") is None


async def test_miss_returns_default_and_counts(backend: Backend) -> None:
    cache = backend.cache()
    assert await cache.get("nope") is None
    assert await cache.get("nope", 42) == 42
    stats = cache.get_stats()
    assert stats["misses"] == 2
    assert stats["l1_hits"] == stats["l2_hits"] == 0


async def test_l2_hit_is_promoted_into_l1(backend: Backend) -> None:
    await backend.cache().set("p", "v")
    reader = backend.cache()
    assert await reader.get("p") == "v"
    assert reader.size() == 1
    assert await reader.get("p") == "v"
    stats = reader.get_stats()
    assert (stats["l2_hits"], stats["l1_hits"], stats["promotions"]) == (1, 1, 1)


async def test_promotion_keeps_the_remaining_ttl(backend: Backend) -> None:
    clock = FakeClock()
    await backend.cache(clock=clock).set("ttl", "v", ttl=100)
    clock.advance(60)
    reader = backend.cache(clock=clock)
    assert await reader.get("ttl") == "v"  # promoted with 40 s left
    clock.advance(39)
    assert await reader.get("ttl") == "v"
    clock.advance(2)  # 101 s after the write: expired in L1 and by the envelope
    assert await reader.get("ttl", "gone") == "gone"


async def test_expired_envelope_is_a_miss_even_if_l2_still_holds_it(backend: Backend) -> None:
    clock = FakeClock()
    cache = backend.cache(clock=clock, l1_max_entries=0)
    await cache.set("e", "v", ttl=5)
    clock.advance(5)
    assert await cache.get("e", "gone") == "gone"


async def test_l2_expires_for_real(backend: Backend) -> None:
    cache = backend.cache(l1_max_entries=0)
    raw = backend.raw()
    written = time.monotonic()
    await cache.set("short", "v", ttl=0.2)
    value = await cache.get("short")
    if time.monotonic() - written < 0.2:  # a loaded machine may take longer than the TTL
        assert value == "v"
    await asyncio.sleep(0.3)
    assert await cache.get("short", "gone") == "gone"
    assert await raw.exists(b"test:short") == 0


async def test_default_ttl_and_l1_ttl_cap(backend: Backend) -> None:
    clock = FakeClock()
    cache = backend.cache(clock=clock, default_ttl=30, l1_ttl=10)
    await cache.set("d", "v")
    raw = backend.raw()
    pttl = await raw.pttl(b"test:d")
    assert 29_000 < pttl <= 30_000
    clock.advance(11)  # past l1_ttl: L1 drops it, L2 still has it
    assert await cache.get("d") == "v"
    assert cache.get_stats()["l2_hits"] == 1


async def test_set_without_expiry_when_default_ttl_is_none(backend: Backend) -> None:
    cache = backend.cache(default_ttl=None)
    await cache.set("forever", 1)
    assert await backend.raw().pttl(b"test:forever") == -1


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "10", True])
async def test_bad_ttl_raises_and_changes_nothing(backend: Backend, ttl: Any) -> None:
    cache = backend.cache()
    await cache.set("k", "old")
    with pytest.raises(InvalidTTLError, match="ttl"):
        await cache.set("k", "new", ttl=ttl)
    assert await cache.get("k") == "old"
    assert await backend.cache().get("k") == "old"


async def test_delete_reports_existence_in_either_tier(backend: Backend) -> None:
    a, b = backend.cache(), backend.cache()
    await a.set("x", 1)
    assert await b.delete("x") is True  # only in L2 for b
    assert await a.get("x") == 1  # a's L1 still holds it: no invalidation in this release
    assert await a.delete("x") is True  # only in a's L1 now
    assert await a.delete("x") is False
    assert await b.get("x") is None
    assert a.get_stats()["deletes"] == 2


async def test_exists(backend: Backend) -> None:
    a, b = backend.cache(), backend.cache()
    assert not await a.exists("k")
    await a.set("k", 0)
    assert await a.exists("k")
    assert await b.exists("k")  # from L2


async def test_get_many_uses_one_l2_round_trip_for_l1_misses(backend: Backend) -> None:
    writer = backend.cache()
    await writer.set_many({f"k{i}": i for i in range(10)})
    reader = backend.cache()
    assert await reader.get("k0") == 0  # now in reader's L1
    calls: list[int] = []
    assert reader._l2 is not None
    backend_get_many = reader._l2.backend.get_many

    async def counting(keys: Any) -> Any:
        calls.append(len(keys))
        return await backend_get_many(keys)

    reader._l2.backend.get_many = counting  # type: ignore[method-assign]
    got = await reader.get_many([f"k{i}" for i in range(12)] + ["k1"])
    assert got == {f"k{i}": i for i in range(10)}
    assert calls == [11]  # k1..k9 and the two absent keys, once each, in one call
    stats = reader.get_stats()
    assert stats["misses"] == 2


async def test_set_many_and_delete_many(backend: Backend) -> None:
    a = backend.cache()
    await a.set_many({"a": 1, "b": [2], "c": None}, ttl=60)
    b = backend.cache()
    assert await b.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": [2], "c": None}
    assert await b.delete_many(["a", "b", "zz"]) == 2
    assert await backend.cache().get_many(["a", "b", "c"]) == {"c": None}
    assert await a.delete_many([]) == 0
    await a.set_many({})


async def test_set_many_checks_everything_before_writing(backend: Backend) -> None:
    cache = backend.cache()
    with pytest.raises(SerializationError):
        await cache.set_many({"good": 1, "bad": {1, 2}})
    with pytest.raises(InvalidKeyError):
        await cache.set_many({"good": 1, "": 2})
    assert await cache.get_many(["good", "bad"]) == {}
    assert await backend.cache().get("good") is None


async def test_get_or_set_runs_the_factory_once_under_1000_callers(backend: Backend) -> None:
    cache = backend.cache()
    calls = 0

    async def factory() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"answer": 42}

    results = await asyncio.gather(*(cache.get_or_set("q", factory, ttl=60) for _ in range(1000)))
    assert calls == 1
    assert all(r == {"answer": 42} for r in results)
    assert await backend.cache().get("q") == {"answer": 42}  # stored in L2 too
    assert await cache.get_or_set("q", factory) == {"answer": 42}
    assert calls == 1


async def test_get_or_set_failure_reaches_every_waiter_and_caches_nothing(
    backend: Backend,
) -> None:
    cache = backend.cache()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise RuntimeError("backend down")

    results = await asyncio.gather(
        *(cache.get_or_set("f", failing) for _ in range(50)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "backend down" for r in results)
    assert not await cache.exists("f")

    async def working() -> str:
        return "ok"

    assert await cache.get_or_set("f", working) == "ok"


async def test_get_or_set_finds_l2_value_without_calling_factory(backend: Backend) -> None:
    await backend.cache().set("shared", "from-l2")
    cache = backend.cache()

    def factory() -> str:
        raise AssertionError("factory must not run on an L2 hit")

    assert await cache.get_or_set("shared", factory) == "from-l2"
    assert cache.get_stats()["l2_hits"] == 1


async def test_get_or_set_accepts_a_sync_factory_and_returns_stored_form(
    backend: Backend,
) -> None:
    cache = backend.cache()
    assert await cache.get_or_set("sync", lambda: (1, 2)) == [1, 2]


async def test_get_or_set_cancelled_caller_does_not_cancel_the_load(backend: Backend) -> None:
    cache = backend.cache()
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "done"

    first = asyncio.create_task(cache.get_or_set("c", slow))
    await started.wait()
    second = asyncio.create_task(cache.get_or_set("c", slow))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == "done"
    assert first.cancelled()
    assert await cache.get("c") == "done"


async def test_clear_removes_this_namespace_only(backend: Backend) -> None:
    raw = backend.raw()
    await raw.set(b"unrelated", b"keep")
    await raw.set(b"test", b"keep")
    await raw.set(b"test2:x", b"keep")
    victims = {ns: backend.cache(namespace=ns) for ns in ("test", "te*", "t?st", "[t]est", "test:")}
    for ns, cache in victims.items():
        await cache.set("k", ns)
        await cache.set("*", ns)
    await victims["te*"].clear()
    assert await victims["te*"].get("k") is None
    assert victims["te*"].size() == 0
    assert await backend.cache(namespace="te*").get("*") is None
    for ns in ("test", "t?st", "[t]est", "test:"):
        assert await backend.cache(namespace=ns).get("k") == ns
        assert await backend.cache(namespace=ns).get("*") == ns
    assert await raw.get(b"unrelated") == b"keep"
    assert await raw.get(b"test") == b"keep"
    assert await raw.get(b"test2:x") == b"keep"


async def test_namespaces_never_collide(backend: Backend) -> None:
    a = backend.cache(namespace="a:b")
    b = backend.cache(namespace="a")
    await a.set("c", "from a:b")
    await b.set("b:c", "from a")
    assert await backend.cache(namespace="a:b").get("c") == "from a:b"
    assert await backend.cache(namespace="a").get("b:c") == "from a"
    assert await backend.cache(namespace="a").get("c") is None


HOSTILE_KEYS = [
    "*",
    "?",
    "[abc]",
    "a*b?c[d]\\e",
    "line\r\nbreak",
    "nul\x00byte",
    "ünïcødé ✓ 漢字 🎉",
    " leading and trailing ",
    "x" * 1024,
    "é" * 512,  # 1024 bytes of UTF-8
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
async def test_hostile_keys_round_trip_exactly_and_stay_in_namespace(
    backend: Backend, key: str
) -> None:
    cache = backend.cache(namespace="hostile")
    other = backend.cache(namespace="other")
    await other.set("k", "untouched")
    await cache.set(key, {"key": key})
    assert await backend.cache(namespace="hostile").get(key) == {"key": key}
    keys = [k async for page in cache.iter_keys() for k in page]
    assert keys == [key]
    await cache.clear()
    assert await backend.cache(namespace="hostile").get(key) is None
    assert await backend.cache(namespace="other").get("k") == "untouched"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"bytes", "must be str"),
        (42, "must be str"),
        (None, "must be str"),
        ("", "must not be empty"),
        ("x" * 1025, "over max_key_bytes=1024"),
        ("é" * 513, "over max_key_bytes=1024"),
        ("lone\ud800surrogate", "UTF-8"),
    ],
)
async def test_bad_keys_raise_clear_errors_and_change_nothing(
    backend: Backend, key: Any, message: str
) -> None:
    cache = backend.cache()
    await cache.set("k", "v")
    for call in (
        lambda: cache.get(key),
        lambda: cache.set(key, 1),
        lambda: cache.delete(key),
        lambda: cache.exists(key),
        lambda: cache.get_many(["k", key]),
        lambda: cache.set_many({"k": "changed", key: 1}),
        lambda: cache.delete_many(["k", key]),
        lambda: cache.get_or_set(key, lambda: 1),
    ):
        with pytest.raises(InvalidKeyError, match=message):
            await call()
    assert await cache.get("k") == "v"
    assert await backend.cache().get("k") == "v"


@pytest.mark.parametrize("value", [{1, 2}, object(), lambda: 1, 2**70, {1: "int key"}])
async def test_unserializable_values_raise_and_change_nothing(backend: Backend, value: Any) -> None:
    cache = backend.cache()
    await cache.set("k", "old")
    with pytest.raises(SerializationError):
        await cache.set("k", value)
    assert await cache.get("k") == "old"
    assert await backend.cache().get("k") == "old"


async def test_value_over_max_value_bytes_raises_and_changes_nothing(backend: Backend) -> None:
    cache = backend.cache(max_value_bytes=1000)
    await cache.set("k", "old")
    await cache.set("k", "x" * 900)
    with pytest.raises(ValueTooLargeError, match="max_value_bytes"):
        await cache.set("k", "x" * 1000)
    assert await cache.get("k") == "x" * 900
    assert issubclass(ValueTooLargeError, CacheError)


class _Exploit:
    ran = False

    def __reduce__(self) -> Any:
        return (_mark_exploited, ())


def _mark_exploited() -> None:
    _Exploit.ran = True


PLANTED: dict[str, bytes] = {
    "pickle": pickle.dumps(_Exploit()),
    "unknown_ext": b"\x01\x00" + bytes(16) + msgpack.packb(msgpack.ExtType(42, b"boom")),
    "garbage": b"\xde\xad\xbe\xef" * 8,
    "json": b'{"value": 1}',
    "truncated": b"\x01\x00\x00",
    "future_format": b"\x7f" + bytes(17) + msgpack.packb("from a newer version"),
}


@pytest.mark.parametrize("kind", list(PLANTED))
async def test_planted_foreign_values_are_counted_misses_and_deleted(
    backend: Backend, kind: str
) -> None:
    raw = backend.raw()
    await raw.set(b"test:planted", PLANTED[kind])
    cache = backend.cache()
    assert await cache.get("planted", "miss") == "miss"
    assert not _Exploit.ran
    assert cache.get_stats()["corrupt_values"] == 1
    assert cache.size() == 0
    for _ in range(100):  # the delete runs in the background
        if not await raw.exists(b"test:planted"):
            break
        await asyncio.sleep(0.01)
    assert not await raw.exists(b"test:planted")
    assert await cache.get_many(["planted"]) == {}


async def test_corrupt_value_replaced_meanwhile_is_not_deleted(backend: Backend) -> None:
    cache = backend.cache()
    assert cache._l2 is not None
    raw = backend.raw()
    await raw.set(b"test:r", b"garbage")
    assert not await cache._l2.backend.delete_if_value(b"test:r", b"other")
    assert await raw.get(b"test:r") == b"garbage"
    assert await cache._l2.backend.delete_if_value(b"test:r", b"garbage")


async def test_signed_values_refuse_foreign_and_unsigned_writers(backend: Backend) -> None:
    signed = backend.cache(signing_key="k" * 32)
    await signed.set("s", "trusted")
    assert await backend.cache(signing_key="k" * 32).get("s") == "trusted"
    assert await backend.cache(signing_key="z" * 32).get("s", "refused") == "refused"
    await backend.cache().set("u", "unsigned")
    reader = backend.cache(signing_key="k" * 32)
    assert await reader.get("u", "refused") == "refused"
    assert reader.get_stats()["corrupt_values"] == 1


async def test_stats_and_size(backend: Backend) -> None:
    cache = backend.cache()
    await cache.set("a", 1)
    await cache.get("a")
    await cache.get("b")
    await cache.delete("a")
    stats = cache.get_stats()
    for name in (
        "l1_hits",
        "l2_hits",
        "misses",
        "sets",
        "deletes",
        "l1_entries",
        "l1_bytes",
        "l2_errors",
        "circuit_state",
    ):
        assert name in stats
    assert (stats["sets"], stats["deletes"], stats["l1_hits"], stats["misses"]) == (1, 1, 1, 1)
    assert stats["circuit_state"] == "closed"
    assert cache.get_detailed_metrics()["sets"] == 1
    assert cache.size() == 0


async def test_health_ok(backend: Backend) -> None:
    cache = backend.cache()
    report = await cache.health()
    assert report["status"] == "ok"
    assert report["l2"]["status"] == "ok"
    assert report["l2"]["ping_ms"] >= 0
    assert report["l1"]["enabled"] is True
    assert report["l1"]["status"] == "ok"
    assert report["l2"]["circuit_state"] == "closed"
    assert report["l2"]["recovery_pending"] == 0
    assert 0 <= report["l1"]["fill_ratio"] <= 1


async def test_l1_off_serves_everything_from_l2(backend: Backend) -> None:
    cache = backend.cache(l1_max_entries=0)
    await cache.set("k", "v")
    assert await cache.get("k") == "v"
    assert cache.size() == 0
    assert cache.get_stats()["l2_hits"] == 1


async def test_lifecycle_and_legacy_alias(backend: Backend) -> None:
    cache = backend.cache()
    async with cache as entered:
        assert entered is cache
        await cache.set("k", 1)
    await cache.stop()  # idempotent legacy alias
    with pytest.raises(CacheClosedError, match="shut down"):
        await cache.set("k", 2)
    assert (await cache.health())["status"] == "down"


async def test_keys_iterate_in_batches(backend: Backend) -> None:
    cache = backend.cache()
    await cache.set_many({f"key-{i}": i for i in range(30)})
    await backend.cache(namespace="elsewhere").set("key-x", 0)
    pages = [page async for page in cache.iter_keys(batch=7)]
    assert sorted(k for page in pages for k in page) == sorted(f"key-{i}" for i in range(30))
    summary = await cache.l2_summary()
    assert summary["status"] == "ok"
    assert summary["namespace_keys"] == 30
