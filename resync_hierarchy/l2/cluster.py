"""The Redis Cluster backend (``redis+cluster://host:port[,host:port…]``).

Same bytes, same semantics as :class:`~resync_hierarchy.l2.redis.RedisL2`
(envelope, write-if-newer Lua, error kinds), on
``redis.asyncio.cluster.RedisCluster``. Differences a reader must know:

Key layout, chosen by ``cluster_multikey`` (HierarchyConfig):

``"split"`` (default)
    Keys are stored as they come (``<ns>:<key>``), so a namespace spreads
    over every shard. A multi-key call is grouped by hash slot: one MGET (or
    SET/DEL/EVALSHA) per slot, queued in one cluster pipeline that sends each
    node its batch concurrently, then merged back into the caller's order.
``"hashtag"``
    The namespace becomes a hash tag: ``<ns>:<key>`` is stored as
    ``{<ns>}:<key>``. Redis hashes only the FIRST ``{…}``, so a ``{…}`` inside
    the caller's key cannot move it, and the namespace is percent-encoded
    (never contains ``{``, ``}`` or ``:``). Every key of a namespace is on one
    slot, hence one node: a multi-key call is a single command on a single
    connection, but that namespace is not sharded at all (its memory and
    traffic sit on one master). Switching strategy is a cold start: keys
    written under the other layout are not seen (they expire by TTL).

The backend maps keys on the way in and back on the way out (SCAN), so the
hierarchy above sees ``<ns>:<key>`` in both layouts.

Errors: redis-py follows MOVED and ASK itself (its redirect loop is not a
retry of failures). Its retry of connection errors is off
(``Retry(NoBackoff(), 0)``): a node that is down fails the call at once with
kind ``connection`` and the guard retries and breaks as for one server; the
client re-reads the slot map on the next call. ``CLUSTERDOWN``, uncovered
slots and exhausted redirects are ``connection`` too; ``TRYAGAIN`` (a slot
being migrated) is ``busy``.

Invalidation uses sharded pub/sub (SPUBLISH/SSUBSCRIBE): the channel lives on
the master of its slot, so messages are not broadcast over the cluster bus. A
subscription is one connection to that master; when the slot moves or the
master fails, it reports an error and the owner subscribes again (on the new
owner, after re-reading the slot map).

``clear_prefix`` and SCAN visit every master in turn; a scan cursor encodes
(node index, node cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from resync_hierarchy._url import ParsedURL, redact_url
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.l2.base import L2Error, glob_escape
from resync_hierarchy.l2.redis import WRITE_IF_NEWER_LUA, RedisSubscription, translate_redis_error

__all__ = [
    "MULTIKEY_STRATEGIES",
    "ClusterL2",
    "ClusterSubscription",
    "hashtag_key",
    "slot_of",
    "translate_cluster_error",
    "untag_key",
]

MULTIKEY_STRATEGIES = ("split", "hashtag")

DELETE_IF_VALUE_LUA = """
-- KEYS[1]: the key. ARGV[1]: the value it must still hold. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

GET_LOCAL_KEYS_LUA = """#!lua flags=no-writes,allow-cross-slot-keys
-- ARGV: keys, all served by this node (of any of its slots). Returns their
-- values in order (nil where absent). Keys are passed as ARGV, not KEYS, so
-- the node accepts keys of several slots; it refuses a key it does not serve.
local values = {}
for i, key in ipairs(ARGV) do
  values[i] = redis.call('GET', key)
end
return values
"""

_CURSOR_NODES = 1024  # scan cursor = node cursor * _CURSOR_NODES + node index

# AttributeError: on CLUSTERDOWN redis-py closes every connection of the
# client, including those other tasks are sending on; their command then fails
# on a writer that is gone ('NoneType' object has no attribute 'writelines').
_REDIS_ERRORS = (rexc.RedisError, rexc.RedisClusterException, OSError, AttributeError)


def slot_of(key: bytes) -> int:
    """The hash slot (0-16383) of a stored key: CRC16 of its first ``{…}``
    hash tag if it has a non-empty one, else of the whole key."""
    return key_slot(key)


def hashtag_key(key: bytes) -> bytes:
    """``<ns>:<rest>`` as ``{<ns>}:<rest>`` (the "hashtag" layout).

    A key without ``:`` is left alone. The mapping is one-to-one: every
    mapped key starts with ``{`` and has ``}:`` right before its first ``:``.
    """
    head, sep, rest = key.partition(b":")
    if not sep:
        return key
    return b"{" + head + b"}:" + rest


def untag_key(stored: bytes) -> bytes:
    """The inverse of :func:`hashtag_key`."""
    head, sep, rest = stored.partition(b":")
    if sep and len(head) >= 2 and head[:1] == b"{" and head[-1:] == b"}":
        return head[1:-1] + b":" + rest
    return stored


def translate_cluster_error(exc: BaseException) -> L2Error:
    """Map a redis-py cluster exception to an :class:`L2Error` kind."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, rexc.TryAgainError):
        return L2Error("busy", message)
    if isinstance(exc, (rexc.ClusterDownError, rexc.SlotNotCoveredError, rexc.ClusterError)):
        return L2Error("connection", message)
    if isinstance(exc, rexc.ClusterCrossSlotError):
        return L2Error("response", message)
    if isinstance(exc, AttributeError):
        return L2Error("connection", f"connection closed under the command: {message}")
    if isinstance(exc, rexc.RedisClusterException):
        # The client found no node for a command (no slot map yet, or none reachable).
        return L2Error("connection", message)
    return translate_redis_error(exc)


def _node_kwargs(parsed: ParsedURL, *, timeout: float) -> dict[str, Any]:
    """Connection settings shared by the cluster client and subscriptions."""
    kwargs: dict[str, Any] = {
        "username": parsed.username,
        "password": parsed.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": False,
        "health_check_interval": 0,
    }
    query = dict(parsed.query)
    if "client_name" in query:
        kwargs["client_name"] = query["client_name"]
    if parsed.tls:
        kwargs["ssl"] = True
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if name in query:
                kwargs[name] = query[name]
        if "ssl_check_hostname" in query:
            kwargs["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in (
                "1",
                "true",
                "yes",
            )
    return kwargs


class _Script:
    """A Lua script run with EVALSHA, loaded on every master when missing
    (a promoted replica or a restarted node has an empty script cache)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _is_noscript(result: object) -> bool:
    return isinstance(result, rexc.NoScriptError) or (
        isinstance(result, rexc.ResponseError) and str(result).startswith("NOSCRIPT")
    )


class ClusterSubscription(RedisSubscription):
    """A sharded-channel subscription on a connection to the channel's master.

    Never reconnects by itself (see :class:`~resync_hierarchy.l2.base.Subscription`):
    a server-side SUNSUBSCRIBE (the slot moved) is reported as an error, so
    the owner subscribes again where the slot lives now.
    """

    subscribed_type = "ssubscribe"
    message_type = "smessage"
    caught = _REDIS_ERRORS

    @staticmethod
    def translate(exc: BaseException) -> L2Error:
        return translate_cluster_error(exc)

    def __init__(self, client: Any, channel: bytes) -> None:
        super().__init__(client.pubsub(), channel)
        self._client = client

    async def start(self, within: float) -> None:
        """SSUBSCRIBE and wait up to ``within`` seconds for the confirmation."""
        try:
            await self._pubsub.ssubscribe(self.channel)
        except self.caught as exc:
            raise self.translate(exc) from exc
        await self.confirm(within)

    async def _read(self, wait: float) -> dict[str, Any] | None:
        message = await super()._read(wait)
        if message is not None and message.get("type") == "sunsubscribe":
            raise L2Error("connection", "the channel's slot moved to another node")
        return message

    async def aclose(self) -> None:
        await super().aclose()
        with contextlib.suppress(*self.caught):
            await self._client.aclose()


class ClusterL2:
    """L2 on a Redis Cluster (redis-py asyncio ``RedisCluster``).

    Build it with :meth:`from_parsed_url`. ``multikey`` is ``"split"`` or
    ``"hashtag"`` (see the module docstring for the trade-off).
    """

    def __init__(
        self,
        client: RedisCluster,
        *,
        multikey: str = "split",
        description: str = "redis-cluster",
        subscribe_timeout: float = 2.0,
        node_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if multikey not in MULTIKEY_STRATEGIES:
            raise ConfigurationError(
                f"cluster_multikey must be 'split' or 'hashtag', got {multikey!r}"
            )
        # Any: redis-py's cluster stubs type keys and replies as str; we move bytes.
        self._client: Any = client
        self.multikey = multikey
        self._tagged = multikey == "hashtag"
        self._description = description
        self._subscribe_timeout = subscribe_timeout
        self._node_kwargs = dict(node_kwargs or {})
        self._write_if_newer = _Script(WRITE_IF_NEWER_LUA)
        self._delete_if_value = _Script(DELETE_IF_VALUE_LUA)
        self._get_local = _Script(GET_LOCAL_KEYS_LUA)
        self.node_scripts = True
        """False: ``get_many`` over several slots always uses per-slot MGETs in
        a cluster pipeline (set automatically when a server lacks script flags)."""
        self._subscribed_before = False
        # redis-py 8.1 swaps the seed nodes for the discovered ones at the first
        # slot-map refresh without closing the seeds' connections: keep them to
        # close at aclose().
        self._seed_nodes = list(client.nodes_manager.startup_nodes.values())

    @classmethod
    def from_parsed_url(
        cls,
        parsed: ParsedURL,
        url: str,
        *,
        timeout: float,
        max_connections: int,
        multikey: str = "split",
    ) -> ClusterL2:
        if parsed.kind != "cluster":
            raise ConfigurationError(f"{redact_url(url)!r} is not a redis+cluster:// URL")
        kwargs = _node_kwargs(parsed, timeout=timeout)
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
            # Connection errors fail at once; the guard owns retries and the
            # deadline. MOVED/ASK are still followed (not governed by this).
            retry=Retry(NoBackoff(), 0),
            # Slots of healthy masters keep being served while one shard is down.
            require_full_coverage=False,
            # Two connections per node beyond the in-flight cap: the breaker's
            # probe and the invalidation subscription never wait behind calls.
            max_connections=max_connections + 2,
            **kwargs,
        )
        return cls(
            client,
            multikey=multikey,
            description=redact_url(url),
            subscribe_timeout=timeout,
            node_kwargs=kwargs,
        )

    @property
    def description(self) -> str:
        return self._description

    @property
    def client(self) -> Any:
        """The underlying redis-py cluster client (for diagnostics and tests)."""
        return self._client

    # -- key layout ------------------------------------------------------------------

    def storage_key(self, key: bytes) -> bytes:
        """Where ``key`` (``<ns>:<key>``) is stored on the cluster."""
        return hashtag_key(key) if self._tagged else key

    def logical_key(self, stored: bytes) -> bytes:
        """The inverse of :meth:`storage_key`."""
        return untag_key(stored) if self._tagged else stored

    def _by_slot(self, stored: Sequence[bytes]) -> dict[int, list[int]]:
        """Indexes of ``stored`` grouped by hash slot, in first-seen order."""
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(stored):
            groups.setdefault(slot_of(key), []).append(index)
        return groups

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = await self._client.get(self.storage_key(key))
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        return value

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values in the order of ``keys``. One slot: one MGET. Several
        (``split``): one read-only script per master holding them (Redis 7
        ``allow-cross-slot-keys``), the masters asked concurrently; if a node
        refuses (a slot moved meanwhile, Redis 6), per-slot MGETs in a cluster
        pipeline, which follows redirects."""
        if not keys:
            return []
        stored = [self.storage_key(k) for k in keys]
        groups = self._by_slot(stored)
        try:
            if len(groups) == 1:
                values: list[bytes | None] = await self._client.mget(stored)
                return values
            if self.node_scripts:
                found = await self._get_by_node(stored, groups)
                if found is not None:
                    return found
            async with self._client.pipeline() as pipe:
                for indexes in groups.values():
                    pipe.execute_command("MGET", *(stored[i] for i in indexes))
                replies = await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        out: list[bytes | None] = [None] * len(keys)
        for indexes, reply in zip(groups.values(), replies, strict=True):
            for index, value in zip(indexes, reply, strict=True):
                out[index] = value
        return out

    async def _get_by_node(
        self, stored: list[bytes], groups: dict[int, list[int]]
    ) -> list[bytes | None] | None:
        """GET every key with one script call per master, or None when a
        node refused it (the caller falls back to per-slot commands)."""
        await self._client.initialize()
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for slot, indexes in groups.items():
            node = self._client.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, (node, []))[1].extend(indexes)
        batches = list(by_node.values())
        script = self._get_local
        for attempt in range(2):
            replies = await asyncio.gather(
                *(
                    self._client.execute_command(
                        "EVALSHA", script.sha, 0, *(stored[i] for i in indexes), target_nodes=node
                    )
                    for node, indexes in batches
                ),
                return_exceptions=True,
            )
            failures = [r for r in replies if isinstance(r, BaseException)]
            if not failures:
                out: list[bytes | None] = [None] * len(stored)
                for (_, indexes), reply in zip(batches, replies, strict=True):
                    for index, value in zip(indexes, cast(list[Any], reply), strict=True):
                        out[index] = value
                return out
            if attempt == 0 and all(_is_noscript(r) for r in failures):
                await self._load_script(script)
                continue
            for failure in failures:
                if not isinstance(failure, rexc.ResponseError):
                    raise failure  # connection trouble: the guard's business
                if "flag" in str(failure).lower() or "shebang" in str(failure).lower():
                    self.node_scripts = False  # a server without script flags (Redis < 7)
            # A key no longer on that node (resharding, failover): this call goes
            # per slot, whose MOVED replies update the slot map.
            return None
        return None

    async def exists(self, key: bytes) -> bool:
        try:
            return bool(await self._client.exists(self.storage_key(key)))
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc

    # -- writes ----------------------------------------------------------------------

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        try:
            await self._client.set(self.storage_key(key), value, px=ttl_ms)
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc

    async def set_many(self, items: Sequence[tuple[bytes, bytes, int | None]]) -> None:
        if not items:
            return
        try:
            async with self._client.pipeline() as pipe:
                for key, value, ttl_ms in items:
                    pipe.set(self.storage_key(key), value, px=ttl_ms)
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc

    async def delete_many(self, keys: Sequence[bytes]) -> list[bool]:
        if not keys:
            return []
        try:
            if len(keys) == 1:
                return [bool(await self._client.delete(self.storage_key(keys[0])))]
            async with self._client.pipeline() as pipe:
                for key in keys:
                    pipe.delete(self.storage_key(key))
                results = await pipe.execute()
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        return [bool(n) for n in results]

    async def write_if_newer(
        self, items: Sequence[tuple[bytes, bytes | None, int, int | None]]
    ) -> list[bool]:
        """As :meth:`RedisL2.write_if_newer`: one EVALSHA per key (each script
        touches one key, hence one slot), sent as per-node pipelines."""
        calls = [
            (
                [self.storage_key(key)],
                [
                    version.to_bytes(8, "big"),
                    b"" if blob is None else blob,
                    b"" if ttl_ms is None else str(ttl_ms).encode(),
                ],
            )
            for key, blob, version, ttl_ms in items
        ]
        results = await self._run_script(self._write_if_newer, calls)
        return [bool(r) for r in results]

    async def delete_if_value(self, key: bytes, value: bytes) -> bool:
        results = await self._run_script(
            self._delete_if_value, [([self.storage_key(key)], [value])]
        )
        return bool(results[0])

    async def _run_script(
        self, script: _Script, calls: Sequence[tuple[list[bytes], list[bytes]]]
    ) -> list[Any]:
        """EVALSHA every call; where a node lacks the script, load it on every
        master and run those calls again (a call that hit NOSCRIPT did not run)."""
        if not calls:
            return []
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            try:
                async with self._client.pipeline() as pipe:
                    for index in todo:
                        keys, args = calls[index]
                        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    replies = await pipe.execute(raise_on_error=False)
            except _REDIS_ERRORS as exc:
                raise translate_cluster_error(exc) from exc
            missing = []
            for index, reply in zip(todo, replies, strict=True):
                if _is_noscript(reply) and attempt == 0:
                    missing.append(index)
                elif isinstance(reply, BaseException):
                    raise translate_cluster_error(reply) from reply
                else:
                    results[index] = reply
            if not missing:
                return results
            await self._load_script(script)
            todo = missing
        raise AssertionError("unreachable")  # pragma: no cover

    async def _load_script(self, script: _Script) -> None:
        try:
            await self._client.initialize()
            await asyncio.gather(
                *(
                    self._client.execute_command("SCRIPT LOAD", script.source, target_nodes=node)
                    for node in self._client.get_primaries()
                )
            )
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc

    # -- pub/sub ---------------------------------------------------------------------

    async def publish(self, channel: bytes, message: bytes) -> int:
        """SPUBLISH on the channel's shard; returns how many subscribers got it."""
        try:
            return int(await self._client.spublish(channel, message))
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc

    async def subscribe(self, channel: bytes) -> ClusterSubscription:
        """A confirmed SSUBSCRIBE to ``channel`` on a connection to its master."""
        try:
            await self._client.initialize()
            if self._subscribed_before:
                # A subscription ended: the slot may have moved or its master
                # failed over. Re-read the slot map before choosing the node.
                await self._client.nodes_manager.initialize()
            node = self._client.get_node_from_key(channel)
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        if node is None:
            raise L2Error("connection", "no master serves the invalidation channel's slot")
        self._subscribed_before = True
        client = aioredis.Redis(
            host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **self._node_kwargs
        )
        subscription = ClusterSubscription(client, channel)
        try:
            await subscription.start(self._subscribe_timeout)
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    # -- scans -----------------------------------------------------------------------

    async def _masters(self) -> list[ClusterNode]:
        try:
            await self._client.initialize()
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        return sorted(self._client.get_primaries(), key=lambda node: node.name)

    async def _scan_node(
        self, node: ClusterNode, cursor: int, pattern: bytes, count: int
    ) -> tuple[int, list[bytes]]:
        try:
            reply = await self._client.execute_command(
                "SCAN", cursor, "MATCH", pattern, "COUNT", count, target_nodes=node
            )
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        next_cursor, keys = reply
        if isinstance(next_cursor, dict):  # redis-py keys the cursor by node name
            next_cursor = next(iter(next_cursor.values()), 0)
        return int(next_cursor), list(keys)

    async def scan_page(
        self, prefix: bytes, cursor: int, count: int = 500
    ) -> tuple[int, list[bytes]]:
        """One SCAN step over every master in turn: (next cursor, keys
        starting with ``prefix``); a next cursor of 0 means done. The cursor
        is only valid while the set of masters stays the same."""
        masters = await self._masters()
        index, node_cursor = cursor % _CURSOR_NODES, cursor // _CURSOR_NODES
        if index >= len(masters):
            return 0, []
        stored_prefix = self.storage_key(prefix)
        next_node_cursor, found = await self._scan_node(
            masters[index], node_cursor, glob_escape(stored_prefix) + b"*", count
        )
        keys = [self.logical_key(k) for k in found if k.startswith(stored_prefix)]
        if next_node_cursor != 0:
            return next_node_cursor * _CURSOR_NODES + index, keys
        if index + 1 < len(masters):
            return index + 1, keys
        return 0, keys

    async def scan_prefix(
        self, prefix: bytes, batch: int = 500
    ) -> AsyncGenerator[list[bytes], None]:
        cursor = 0
        while True:
            cursor, keys = await self.scan_page(prefix, cursor, batch)
            if keys:
                yield keys
            if cursor == 0:
                return

    async def clear_prefix(self, prefix: bytes) -> int:
        """Remove every key starting with ``prefix`` on every master."""
        removed = 0
        async for keys in self.scan_prefix(prefix):
            stored = [self.storage_key(k) for k in keys]
            try:
                async with self._client.pipeline() as pipe:
                    for indexes in self._by_slot(stored).values():
                        pipe.execute_command("UNLINK", *(stored[i] for i in indexes))
                    counts = await pipe.execute()
            except _REDIS_ERRORS as exc:
                raise translate_cluster_error(exc) from exc
            removed += sum(int(n) for n in counts)
        return removed

    # -- operations ------------------------------------------------------------------

    async def ping(self) -> None:
        """PING every master: the breaker's probe must see a shard that is down."""
        masters = await self._masters()
        try:
            await asyncio.gather(
                *(self._client.execute_command("PING", target_nodes=node) for node in masters)
            )
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc

    async def info(self) -> dict[str, Any]:
        """Cluster facts: state, masters, and per-master memory and hit counters."""
        masters = await self._masters()
        try:
            state = await self._client.execute_command(
                "CLUSTER INFO", target_nodes=self._client.get_random_node()
            )
            raws = await asyncio.gather(
                *(self._client.execute_command("INFO", target_nodes=node) for node in masters),
                return_exceptions=True,
            )
        except _REDIS_ERRORS as exc:
            raise translate_cluster_error(exc) from exc
        if isinstance(state, dict) and "cluster_state" not in state:
            state = next(iter(state.values()), {})
        wanted = ("redis_version", "used_memory", "maxmemory_policy", "keyspace_hits")
        nodes: dict[str, Any] = {}
        for node, raw in zip(masters, raws, strict=True):
            if isinstance(raw, BaseException):
                nodes[node.name] = {"error": f"{type(raw).__name__}: {raw}"}
                continue
            facts = raw[node.name] if isinstance(raw, dict) and node.name in raw else raw
            nodes[node.name] = {name: facts[name] for name in wanted if name in facts}
        summary: dict[str, Any] = {
            "cluster_state": state.get("cluster_state") if isinstance(state, dict) else None,
            "cluster_known_nodes": state.get("cluster_known_nodes")
            if isinstance(state, dict)
            else None,
            "masters": len(masters),
            "multikey": self.multikey,
            "nodes": nodes,
        }
        healthy = [n for n in nodes.values() if "error" not in n]
        if healthy:
            summary["redis_version"] = healthy[0].get("redis_version")
            summary["used_memory"] = sum(int(n.get("used_memory", 0)) for n in healthy)
        return summary

    async def aclose(self) -> None:
        # RedisCluster.aclose() does nothing while a slot-map refresh is pending
        # (after any connection error): close every node's connections ourselves.
        manager = self._client.nodes_manager
        for close in (self._client.aclose, manager.aclose, lambda: manager.aclose("startup_nodes")):
            with contextlib.suppress(*_REDIS_ERRORS):
                await close()
        for node in self._seed_nodes:
            with contextlib.suppress(*_REDIS_ERRORS):
                await node.disconnect()
