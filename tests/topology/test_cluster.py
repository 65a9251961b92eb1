"""Redis Cluster specifics: key layouts, multi-key calls across slots, clear()
over every master, sharded-pub/sub invalidation, Lua scripts on a node that
lost them, error kinds, and a shard that is down (no replicas).

The behaviour suite itself runs on the cluster from tests/contract (backends
``cluster`` and ``cluster-hashtag``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.exceptions as rexc
from support.redis_server import require_redis

from resync_hierarchy import CacheHierarchy, ConfigurationError, HierarchyConfig
from resync_hierarchy._url import parse_url
from resync_hierarchy.hierarchy.core import namespace_prefix
from resync_hierarchy.l2.base import L2Error
from resync_hierarchy.l2.cluster import (
    ClusterL2,
    _Script,
    hashtag_key,
    slot_of,
    translate_cluster_error,
    untag_key,
)
from resync_hierarchy.testing.cluster import RedisClusterHarness

STRATEGIES = ["split", "hashtag"]


def _backend(cache: CacheHierarchy) -> ClusterL2:
    assert cache._l2 is not None
    backend = cache._l2.backend
    assert isinstance(backend, ClusterL2)
    return backend


# --------------------------------------------------------------------------- no server


@pytest.mark.parametrize(
    ("key", "stored"),
    [
        (b"ns:k", b"{ns}:k"),
        (b"ns:{user1}:k", b"{ns}:{user1}:k"),
        (b"ns:a:b", b"{ns}:a:b"),
        (b"%7B%7D:x", b"{%7B%7D}:x"),
        (b"nocolon", b"nocolon"),
    ],
)
def test_hashtag_layout_round_trips(key: bytes, stored: bytes) -> None:
    assert hashtag_key(key) == stored
    assert untag_key(stored) == key


def test_a_tag_in_the_callers_key_cannot_move_it() -> None:
    prefix = namespace_prefix("llm")
    slots = {slot_of(hashtag_key(prefix + k)) for k in (b"a", b"{other}", b"}{x}", b"{")}
    assert slots == {slot_of(b"{llm}")}


def test_namespaces_with_tag_characters_stay_apart() -> None:
    # Percent-encoding keeps { } : out of the tag, so these are four tags.
    tags = {hashtag_key(namespace_prefix(ns) + b"k") for ns in ("a}", "{a", "a:b", "a")}
    assert len(tags) == 4


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (rexc.ClusterDownError("CLUSTERDOWN The cluster is down"), "connection"),
        (rexc.MasterDownError("MASTERDOWN"), "connection"),
        (rexc.SlotNotCoveredError("slot 5 not covered"), "connection"),
        (rexc.ClusterError("TTL exhausted."), "connection"),
        (rexc.TryAgainError("TRYAGAIN"), "busy"),
        (rexc.ClusterCrossSlotError("CROSSSLOT"), "response"),
        (rexc.RedisClusterException("No targets were found"), "connection"),
        (rexc.ConnectionError("refused"), "connection"),
        (rexc.TimeoutError("slow"), "timeout"),
        (rexc.ResponseError("OOM command not allowed"), "oom"),
        (AttributeError("'NoneType' object has no attribute 'writelines'"), "connection"),
    ],
)
def test_cluster_errors_get_kinds_the_guard_understands(exc: Exception, kind: str) -> None:
    error = translate_cluster_error(exc)
    assert isinstance(error, L2Error)
    assert error.kind == kind
    assert type(exc).__name__ in str(error)


def test_cluster_multikey_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="cluster_multikey must be 'split' or 'hashtag'"):
        HierarchyConfig(url="redis+cluster://127.0.0.1:7000", cluster_multikey="slots")
    config = HierarchyConfig.from_env(
        {
            "RESYNC_CACHE_URL": "redis+cluster://127.0.0.1:7000",
            "RESYNC_CACHE_CLUSTER_MULTIKEY": "hashtag",
        }
    )
    assert config.cluster_multikey == "hashtag"
    assert HierarchyConfig().cluster_multikey == "split"


def test_cluster_url_selects_the_cluster_backend_without_connecting() -> None:
    cache = CacheHierarchy.from_url(
        "redis+cluster://user:secret@127.0.0.1:7000,127.0.0.1:7001", cluster_multikey="hashtag"
    )
    backend = _backend(cache)
    assert backend.multikey == "hashtag"
    assert "secret" not in backend.description
    assert "127.0.0.1:7001" in backend.description


def test_tls_and_client_name_reach_every_node_connection() -> None:
    url = (
        "rediss+cluster://127.0.0.1:7000?ssl_cert_reqs=none&ssl_check_hostname=false"
        "&client_name=api"
    )
    backend = ClusterL2.from_parsed_url(parse_url(url), url, timeout=0.3, max_connections=8)
    kwargs = backend.client.nodes_manager.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "none"
    assert kwargs["ssl_check_hostname"] is False
    assert kwargs["client_name"] == "api"
    assert kwargs["socket_timeout"] == 0.3


def test_cluster_backend_refuses_what_it_cannot_serve() -> None:
    url = "redis://127.0.0.1:7000/0"
    with pytest.raises(ConfigurationError, match="not a redis\\+cluster:// URL"):
        ClusterL2.from_parsed_url(parse_url(url), url, timeout=0.3, max_connections=8)
    cluster_url = "redis+cluster://127.0.0.1:7000"
    with pytest.raises(ConfigurationError, match="'split' or 'hashtag'"):
        ClusterL2.from_parsed_url(
            parse_url(cluster_url), cluster_url, timeout=0.3, max_connections=8, multikey="x"
        )
    with pytest.raises(ValueError, match="at least 3 masters"):
        RedisClusterHarness(masters=2)
    with pytest.raises(ValueError, match="replicas"):
        RedisClusterHarness(replicas=-1)


# --------------------------------------------------------------------------- on the cluster


@pytest.mark.redis
@pytest.mark.parametrize("multikey", STRATEGIES)
async def test_layout_on_the_servers(cluster: RedisClusterHarness, multikey: str) -> None:
    cache = CacheHierarchy.from_url(
        cluster.url, namespace="lay", cluster_multikey=multikey, invalidation=False
    )
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(300)})
        counts = cluster.count_keys()
        assert sum(counts.values()) == 300
        raw = _backend(cache).client
        if multikey == "split":
            assert all(n > 0 for n in counts.values()), counts  # sharded over every master
            assert await raw.exists(b"lay:k1") == 1
        else:
            assert sorted(counts.values()) == [0, 0, 300], counts  # one slot, one master
            assert await raw.exists(b"{lay}:k1") == 1
            assert await raw.exists(b"lay:k1") == 0


@pytest.mark.redis
@pytest.mark.parametrize("multikey", STRATEGIES)
async def test_multi_key_calls_across_slots_keep_the_callers_order(
    cluster: RedisClusterHarness, multikey: str
) -> None:
    writer = CacheHierarchy.from_url(
        cluster.url, namespace="mk", cluster_multikey=multikey, invalidation=False
    )
    reader = CacheHierarchy.from_url(
        cluster.url,
        namespace="mk",
        cluster_multikey=multikey,
        invalidation=False,
        l1_max_entries=0,
    )
    async with writer, reader:
        values = {f"key-{i}": {"i": i} for i in range(150)}
        await writer.set_many(values)
        wanted = [f"key-{i}" for i in range(160)][::-1]  # 10 misses, reversed order
        assert await reader.get_many(wanted) == values
        backend = _backend(reader)
        stored = await backend.get_many([b"mk:key-3", b"mk:absent", b"mk:key-140", b"mk:key-3"])
        assert stored[1] is None
        assert stored[0] == stored[3] is not None and stored[2] is not None
        assert await reader.delete_many([f"key-{i}" for i in range(0, 160, 2)]) == 75
        assert len(await reader.get_many(list(values))) == 75
        assert reader.get_stats()["l2_errors"] == 0


@pytest.mark.redis
@pytest.mark.parametrize(
    ("refusal", "keeps_node_scripts"),
    [
        ("ERR Script attempted to access a non local key in a cluster node", True),
        ("ERR Unexpected flag in script shebang", False),
        (None, False),  # turned off: per-slot MGETs only
    ],
)
async def test_get_many_falls_back_to_per_slot_commands(
    cluster: RedisClusterHarness, refusal: str | None, keeps_node_scripts: bool
) -> None:
    cache = CacheHierarchy.from_url(cluster.url, namespace="fb", invalidation=False)
    async with cache:
        values = {f"k{i}": i for i in range(40)}
        await cache.set_many(values)
        backend = _backend(cache)
        if refusal is None:
            backend.node_scripts = False
        else:
            backend._get_local = _Script(
                "#!lua flags=no-writes,allow-cross-slot-keys\n"
                f"return redis.error_reply('{refusal}')"
            )
        reader = [f"fb:k{i}".encode() for i in range(45)]
        got = await backend.get_many(reader)
        assert [g is not None for g in got] == [True] * 40 + [False] * 5
        assert backend.node_scripts is keeps_node_scripts


@pytest.mark.redis
@pytest.mark.parametrize("multikey", STRATEGIES)
async def test_clear_scans_every_master_and_keeps_other_namespaces(
    cluster: RedisClusterHarness, multikey: str
) -> None:
    victim = CacheHierarchy.from_url(
        cluster.url, namespace="victim", cluster_multikey=multikey, invalidation=False
    )
    # "split" spreads the victim over every master; with "hashtag" it sits on
    # one, so the bystanders of the other masters show clear() left them alone.
    bystanders = [
        CacheHierarchy.from_url(
            cluster.url, namespace=ns, cluster_multikey=multikey, invalidation=False
        )
        for ns in ("victim2", "vic", "other", "x", "y", "z")
    ]
    async with victim:
        await victim.set_many({f"k{i}": i for i in range(400)})
        for other in bystanders:
            async with other:
                await other.set_many({f"k{i}": i for i in range(20)})
        if multikey == "split":
            assert len([n for n in cluster.count_keys().values() if n >= 100]) == 3
        await victim.clear()
        assert await victim.get_many([f"k{i}" for i in range(400)]) == {}
        assert [page async for page in victim.iter_keys()] == []
        assert sum(cluster.count_keys().values()) == 6 * 20
    for ns in ("victim2", "vic", "other", "x", "y", "z"):
        reader = CacheHierarchy.from_url(
            cluster.url, namespace=ns, cluster_multikey=multikey, invalidation=False
        )
        async with reader:
            assert len(await reader.get_many([f"k{i}" for i in range(20)])) == 20


@pytest.mark.redis
async def test_scan_pages_walk_every_master(cluster: RedisClusterHarness) -> None:
    cache = CacheHierarchy.from_url(cluster.url, namespace="scan", invalidation=False)
    async with cache:
        await cache.set_many({f"k{i}": i for i in range(500)})
        backend = _backend(cache)
        seen: list[bytes] = []
        cursor, pages = 0, 0
        while True:
            cursor, keys = await backend.scan_page(b"scan:", cursor, 50)
            seen.extend(keys)
            pages += 1
            if cursor == 0:
                break
        assert sorted(seen) == sorted(f"scan:k{i}".encode() for i in range(500))
        assert pages >= 3
        assert await backend.scan_page(b"scan:", 99, 50) == (0, [])  # past the last master


@pytest.mark.redis
@pytest.mark.parametrize("multikey", STRATEGIES)
async def test_invalidation_reaches_other_processes_over_sharded_pubsub(
    cluster: RedisClusterHarness, multikey: str
) -> None:
    a = CacheHierarchy.from_url(cluster.url, namespace="inv", cluster_multikey=multikey)
    b = CacheHierarchy.from_url(cluster.url, namespace="inv", cluster_multikey=multikey)
    async with a, b:
        await a.set("k", "v1")
        assert await b.get("k") == "v1"  # now in b's L1
        await a.set("k", "v2")
        for _ in range(200):
            if await b.get("k") == "v2":
                break
            await asyncio.sleep(0.01)
        assert await b.get("k") == "v2"
        assert b.get_stats()["invalidation"]["received_keys"] >= 1


@pytest.mark.redis
async def test_ask_and_moved_during_a_slot_migration_are_followed(
    cluster: RedisClusterHarness,
) -> None:
    cache = CacheHierarchy.from_url(
        cluster.url, namespace="mv", invalidation=False, l1_max_entries=0
    )
    async with cache:
        values = {f"k{i}": i for i in range(60)}
        await cache.set_many(values)  # the client has learnt the slot map
        slot = slot_of(b"mv:k0")
        owner = cluster.master_for_slot(slot)
        target = next(s for s in cluster.masters() if s.port != owner.port)

        cluster.migrate_slot(slot, target, finish=False)  # keys moved, slot not yet: ASK
        assert await cache.get("k0") == 0
        assert await cache.get_many(list(values)) == values
        await cache.set("k0", "during")
        assert await cache.get("k0") == "during"

        cluster.migrate_slot(slot, target)  # done: the old owner answers MOVED
        assert cluster.master_for_slot(slot).port == target.port
        assert await cache.get("k0") == "during"
        assert await cache.get_many(list(values)) == {**values, "k0": "during"}
        await cache.set_many({"k0": "after", "k1": "after"})
        assert await cache.delete_many(["k0", "k2"]) == 2
        assert await cache.get_many(["k0", "k1", "k2"]) == {"k1": "after"}
        assert cache.get_stats()["l2_errors"] == 0


def _envelope(version: int) -> bytes:
    """Enough of an envelope for the Lua check: format byte 1, version at bytes 11-18."""
    return b"\x01" + b"\x00" * 9 + version.to_bytes(8, "big") + b"payload"


@pytest.mark.redis
async def test_scripts_missing_on_a_node_are_loaded_again(cluster: RedisClusterHarness) -> None:
    cache = CacheHierarchy.from_url(cluster.url, namespace="lua", invalidation=False)
    async with cache:
        backend = _backend(cache)
        assert await backend.write_if_newer([(b"lua:a", _envelope(5), 5, None)]) == [True]
        for server in cluster.masters():
            server.command("SCRIPT", "FLUSH")
        items = [(f"lua:k{i}".encode(), _envelope(7), 7, 60_000) for i in range(30)]
        assert await backend.write_if_newer(items) == [True] * 30
        assert await backend.write_if_newer(items) == [False] * 30  # same version: not again
        older = [(key, _envelope(6), 6, None) for key, _, _, _ in items]
        assert await backend.write_if_newer(older) == [False] * 30
        for server in cluster.masters():
            server.command("SCRIPT", "FLUSH")
        assert not await backend.delete_if_value(b"lua:k1", _envelope(6))
        assert await backend.delete_if_value(b"lua:k1", _envelope(7))
        assert not await backend.exists(b"lua:k1")
        assert await backend.exists(b"lua:k2")


@pytest.mark.redis
async def test_info_health_and_ping_cover_every_master(cluster: RedisClusterHarness) -> None:
    cache = CacheHierarchy.from_url(cluster.url, namespace="ops", invalidation=False)
    async with cache:
        backend = _backend(cache)
        info = await backend.info()
        assert info["cluster_state"] == "ok"
        assert info["masters"] == 3
        assert set(info["nodes"]) == {f"127.0.0.1:{s.port}" for s in cluster.masters()}
        assert (await cache.health())["status"] == "ok"
        await backend.ping()


# --------------------------------------------------------------------------- a shard down


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterHarness]:
    """A cluster of this test's own (it gets a master killed)."""
    require_redis()
    cluster = RedisClusterHarness(masters=3, node_timeout_ms=1000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.redis
@pytest.mark.slow
async def test_a_dead_master_without_replica_fails_only_its_slots(
    own_cluster: RedisClusterHarness,
) -> None:
    cache = CacheHierarchy.from_url(
        own_cluster.url,
        namespace="down",
        invalidation=False,
        l1_max_entries=0,
        l2_timeout=0.3,
        breaker_failure_threshold=1_000,  # watch every call, not the breaker
    )
    async with cache:
        keys = [f"k{i}" for i in range(60)]
        await cache.set_many(dict.fromkeys(keys, 1))
        backend = _backend(cache)
        victim = own_cluster.kill_master(slot_of(b"down:k0"))
        victim_slots = own_cluster_slots_of(own_cluster, victim.port)
        on_victim = [k for k in keys if slot_of(f"down:{k}".encode()) in victim_slots]
        healthy = [k for k in keys if k not in on_victim]
        assert on_victim and healthy
        # The client learns that the node is gone from the first failed call.
        assert await cache.get(on_victim[0], "fallback") == "fallback"
        for key in healthy[:10]:
            assert await cache.get(key) == 1
        with pytest.raises(L2Error) as failed:
            await backend.get(f"down:{on_victim[0]}".encode())
        assert failed.value.kind == "connection"
        # A multi-key call touching the dead shard fails as a whole; the
        # hierarchy answers without it (misses), never raising.
        assert await cache.get_many(on_victim[:3]) == {}
        assert cache.get_stats()["l2_errors"] >= 2


def own_cluster_slots_of(cluster: RedisClusterHarness, port: int) -> set[int]:
    """Slots owned by the node on ``port`` (as the survivors still see it)."""
    nodes = cluster.live_servers()[0].command("CLUSTER", "NODES")
    assert isinstance(nodes, bytes)
    slots: set[int] = set()
    for line in nodes.decode().splitlines():
        fields = line.split()
        if f":{port}@" not in fields[1]:
            continue
        for spec in fields[8:]:
            low, _, high = spec.partition("-")
            slots.update(range(int(low), int(high or low) + 1))
    return slots
