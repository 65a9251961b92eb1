"""The Redis backend. The only module of the package that imports ``redis``.

Retries belong to the layer above: redis-py's own retry is turned off
(``Retry(NoBackoff(), 0)``), so a failed command fails once, quickly, and the
guard decides what happens next. Socket timeouts equal ``l2_timeout``.

Topologies (selected by the URL):

- ``redis://`` / ``unix://``: one server.
- ``rediss://``: TLS; the server certificate is verified by default
  (``ssl_cert_reqs=required``, hostname checked). The certificate files named
  in the URL must exist when the backend is built, or it raises
  :class:`ConfigurationError` naming the file. A handshake that fails at run
  time (untrusted or expired certificate, client certificate refused) is an
  L2 failure of kind ``tls``: reported in stats, logs and ``health()``, it
  opens the circuit (no handshake storm) and is never retried.
- ``redis+sentinel://``: :class:`SentinelL2`. The master's address comes from
  the sentinels on every new connection, and every command goes to the master.
  A watcher subscribes to ``+switch-master`` on every sentinel. On a switch it
  drops every pooled connection (so nothing keeps writing to the old master)
  and ends the live invalidation subscriptions. The invalidator then treats L1
  as untrusted, subscribes again on the new master and empties L1 before
  trusting it: a failover can lose writes the old master acknowledged, and
  the invalidations published there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.connection import RedisSSLContext
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff

from resync_hierarchy._tasks import cancel_and_wait
from resync_hierarchy._url import ParsedURL, parse_bool, redact_url
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.l2.base import L2Error, glob_escape
from resync_hierarchy.observe.logging import get_logger

__all__ = [
    "WRITE_IF_NEWER_LUA",
    "RedisL2",
    "RedisSubscription",
    "SentinelL2",
    "translate_redis_error",
]

_log = get_logger("resync_hierarchy.l2")

SWITCH_MASTER_CHANNEL = b"+switch-master"

_TLS_HINT = (
    "the TLS handshake with Redis failed: check that ssl_ca_certs names the CA that signed "
    "the server's certificate, that the URL's host is in that certificate, and, if the server "
    "requires client certificates (tls-auth-clients yes), ssl_certfile and ssl_keyfile"
)
_NOPERM_HINT = (
    "the Redis ACL user may not run this command or touch this key or channel: grant it the "
    "namespace's key pattern (~<namespace>:*), the channel resync:inv:<namespace> and the "
    "commands listed in the README (Topologies); not retried, waiting will not help"
)

WRITE_IF_NEWER_LUA = """
-- KEYS[1]: the key. ARGV[1]: the write's version, 8 bytes big-endian.
-- ARGV[2]: the envelope to store, or '' to delete. ARGV[3]: TTL in ms, or ''.
-- Applies the write only if it is newer than the stored envelope (format
-- byte 1), whose version is bytes 11-18, big-endian, compared byte by byte
-- (string comparison in Lua depends on the locale). An equal version is the
-- same write, already there: not applied again, so replays and backfills are
-- idempotent. Returns 1 if applied, else 0.
local current = redis.call('GET', KEYS[1])
if current and #current >= 18 and string.byte(current, 1) == 1 then
  local newer = false
  for i = 1, 8 do
    local stored, mine = string.byte(current, 10 + i), string.byte(ARGV[1], i)
    if stored ~= mine then
      if stored > mine then return 0 end
      newer = true
      break
    end
  end
  if not newer then return 0 end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
elseif ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


def _is_tls_failure(exc: BaseException) -> bool:
    """A certificate or handshake problem somewhere in ``exc``'s chain (not a
    TLS session merely cut short, which is an ordinary connection loss)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if isinstance(current, ssl.SSLError) and not isinstance(
            current, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
        ):
            return True
        current = current.__cause__ or current.__context__
    text = str(exc)
    return "[SSL" in text or "CERTIFICATE_VERIFY_FAILED" in text


def translate_redis_error(exc: BaseException) -> L2Error:
    """Map a redis-py exception to an :class:`L2Error` with a stable ``kind``."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, rexc.TimeoutError):
        return L2Error("timeout", message)
    if isinstance(exc, rexc.BusyLoadingError):  # a ConnectionError subclass: test it first
        return L2Error("busy", message)
    if isinstance(exc, (rexc.ConnectionError, rexc.MaxConnectionsError, OSError)) and (
        _is_tls_failure(exc)
    ):
        return L2Error("tls", f"{message}; {_TLS_HINT}")
    if isinstance(exc, rexc.NoPermissionError):  # a ResponseError: before the generic ones
        return L2Error("noperm", f"NOPERM {message}; {_NOPERM_HINT}")
    if isinstance(exc, rexc.AuthenticationError):
        return L2Error("auth", f"{message}; check the user and password in the cache URL")
    if isinstance(exc, (rexc.ConnectionError, rexc.MaxConnectionsError)):
        return L2Error("connection", message)
    if isinstance(exc, rexc.ReadOnlyError):
        return L2Error("readonly", message)
    if isinstance(exc, rexc.OutOfMemoryError):  # redis-py 8 drops the "OOM" prefix
        return L2Error("oom", message)
    if isinstance(exc, rexc.ResponseError):
        text = str(exc)
        if text.startswith("OOM"):
            return L2Error("oom", message)
        if text.startswith("NOPERM"):
            return L2Error("noperm", f"{message}; {_NOPERM_HINT}")
        return L2Error("response", message)
    if isinstance(exc, OSError):
        return L2Error("connection", message)
    return L2Error("other", message)


def _tls_kwargs(parsed: ParsedURL) -> dict[str, Any]:
    """redis-py TLS arguments for a ``rediss`` URL: verification on unless the
    URL turns it off; every file named must exist and be readable now."""
    query = dict(parsed.query)
    kwargs: dict[str, Any] = {
        "ssl": True,
        "ssl_cert_reqs": query.get("ssl_cert_reqs", "required").lower(),
        "ssl_check_hostname": parse_bool(query.get("ssl_check_hostname", "true")) is not False,
    }
    if kwargs["ssl_cert_reqs"] != "required":
        kwargs["ssl_check_hostname"] = False  # Python refuses a hostname check without it
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name not in query:
            continue
        path = query[name]
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigurationError(
                f"{name}={path!r} in the cache URL is not a readable file; give the path of "
                "the PEM file (CA bundle, client certificate or its key)"
            )
        kwargs[name] = path
    return kwargs


class _SharedContextSSLConnection(aioredis.SSLConnection):
    """A TLS connection using the pool's one SSL context. redis-py builds a
    context per connection, loading the system CA store each time: 76 ms of
    blocked event loop per new connection here, so a pool refilling after an
    outage would stall every caller."""

    def __init__(self, *, shared_ssl_context: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ssl_context = shared_ssl_context


class _SentinelSharedContextSSLConnection(SentinelManagedConnection, _SharedContextSSLConnection):
    """The same, for connections whose address comes from the sentinels."""


def _shared_ssl_context(tls: dict[str, Any]) -> Any:
    """One context for a whole pool, built (and its files parsed) now: a file
    that is not a certificate or key is a ConfigurationError at construction."""
    context = RedisSSLContext(
        keyfile=tls.get("ssl_keyfile"),
        certfile=tls.get("ssl_certfile"),
        cert_reqs=tls["ssl_cert_reqs"],
        ca_certs=tls.get("ssl_ca_certs"),
        check_hostname=tls["ssl_check_hostname"],
    )
    try:
        context.get()
    except (ssl.SSLError, OSError, ValueError) as exc:
        files = ", ".join(
            f"{k}={tls[k]!r}" for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile") if k in tls
        )
        raise ConfigurationError(
            f"the TLS files of the cache URL ({files}) could not be loaded: {exc}; give PEM "
            "files: the CA bundle, the client certificate and its unencrypted key"
        ) from exc
    return context


def _pool_kwargs(common: dict[str, Any], connection_class: type[Any]) -> dict[str, Any]:
    """``common`` for a TLS pool whose connections share one SSL context."""
    kwargs = {k: v for k, v in common.items() if k != "ssl"}
    kwargs["connection_class"] = connection_class
    kwargs["shared_ssl_context"] = _shared_ssl_context(common)
    return kwargs


def _common_kwargs(parsed: ParsedURL, *, timeout: float, max_connections: int) -> dict[str, Any]:
    common: dict[str, Any] = {
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        # No socket_timeout: every command runs under GuardedL2's deadline,
        # which cancels it at l2_timeout (redis-py then drops the connection).
        # With a socket_timeout, redis-py wraps each command's write in
        # asyncio.wait_for, a task per command: about 10% of an L2 hit.
        "socket_timeout": None,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
        "decode_responses": False,
        "health_check_interval": 0,
    }
    query = dict(parsed.query)
    if "client_name" in query:
        common["client_name"] = query["client_name"]
    if parsed.tls:
        common.update(_tls_kwargs(parsed))
    return common


def _client_from_url(parsed: ParsedURL, url: str, *, timeout: float, max_connections: int) -> Any:
    common = _common_kwargs(parsed, timeout=timeout, max_connections=max_connections)
    if parsed.kind == "unix":
        return aioredis.Redis(unix_socket_path=parsed.path, **common)
    if parsed.kind != "redis":
        raise ConfigurationError(
            f"{redact_url(url)!r}: {parsed.kind} URLs are not supported by this release yet; "
            "use a redis://, rediss://, unix:// or redis+sentinel:// URL"
        )
    host, port = parsed.hosts[0]
    if parsed.tls:
        pool = aioredis.ConnectionPool(
            host=host, port=port, **_pool_kwargs(common, _SharedContextSSLConnection)
        )
        return aioredis.Redis.from_pool(pool)
    return aioredis.Redis(host=host, port=port, **common)


class _NewestMasterSentinel(Sentinel):
    """Asks every sentinel at once and trusts the master named with the
    highest configuration epoch. redis-py's own discovery takes the first
    sentinel that answers, and one that has not yet heard of a failover
    (sentinels gossip every 2 s) would send new connections to the old
    master, whose writes are lost when it is demoted. Answers are awaited
    until a majority of sentinels has answered, plus a short grace for the
    rest, so one hung sentinel does not delay every new connection."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        refusals: list[str] = []

        async def ask(node: Any) -> dict[str, Any] | None:
            try:
                state: dict[str, Any] = await node.sentinel_master(service_name)
            except rexc.ResponseError as exc:  # it answered: "No such master with that name"
                refusals.append(str(exc))
                return None
            except (rexc.RedisError, OSError):
                return None
            return state

        tasks = [asyncio.ensure_future(ask(node)) for node in self.sentinels]
        majority = len(tasks) // 2 + 1
        states: list[dict[str, Any]] = []
        try:
            pending: set[asyncio.Future[dict[str, Any] | None]] = set(tasks)
            answered = 0
            while pending and answered < majority:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    state = task.result()
                    if state is not None:
                        answered += 1
                        states.append(state)
            if pending:
                done, pending = await asyncio.wait(pending, timeout=_SENTINEL_GRACE)
                states.extend(state for task in done if (state := task.result()) is not None)
        finally:
            for task in tasks:
                task.cancel()
        best: dict[str, Any] | None = None
        for state in states:
            if self.check_master_state(state, service_name) and (
                best is None or int(state["config-epoch"]) > int(best["config-epoch"])
            ):
                best = state
        if best is None:
            said = f"; they said: {refusals[0]}" if refusals else ""
            raise MasterNotFoundError(
                f"no sentinel names a master for {service_name!r} that is up "
                f"({len(states) + len(refusals)} of {len(tasks)} sentinels answered{said})"
            )
        return _text(best["ip"]), int(best["port"])


_SENTINEL_GRACE = 0.02
"""Seconds the other sentinels get once a majority has answered."""


def _sentinel_from_url(parsed: ParsedURL, *, timeout: float) -> Any:
    """A redis-py :class:`Sentinel` on the URL's sentinels: the same
    timeouts, no retries, TLS if the scheme asks for it."""
    query = dict(parsed.query)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        "health_check_interval": 0,
        "username": query.get("sentinel_username"),
        "password": query.get("sentinel_password"),
    }
    if parsed.tls:
        sentinel_kwargs.update(_tls_kwargs(parsed))
    return _NewestMasterSentinel(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]


class RedisSubscription:
    """One channel subscription on a connection of its own.

    It never reconnects by itself: after any error the owner closes it and
    subscribes again, knowing that whatever was published in between is lost.
    ``last_activity`` (``time.monotonic()``) moves with every message and
    PONG, so a connection that went silent (a black-holed network) shows.

    Subclasses for other kinds of channel (sharded pub/sub) change the
    message types, the errors caught and their translation.
    """

    subscribed_type = "subscribe"
    message_type = "message"
    caught: tuple[type[BaseException], ...] = (rexc.RedisError, OSError)

    @staticmethod
    def translate(exc: BaseException) -> L2Error:
        return translate_redis_error(exc)

    def __init__(self, pubsub: Any, channel: bytes) -> None:
        self._pubsub = pubsub
        self.channel = channel
        self.last_activity = time.monotonic()

    async def confirm(self, within: float) -> None:
        """Wait up to ``within`` seconds for the server's SUBSCRIBE confirmation."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise L2Error("timeout", f"no {self.subscribed_type.upper()} confirmation")
            message = await self._read(left)
            if message is not None and message.get("type") == self.subscribed_type:
                return

    async def next_message(self, wait: float) -> bytes | None:
        """The next published payload, or None after ``wait`` seconds."""
        message = await self._read(wait)
        if message is None or message.get("type") != self.message_type:
            return None
        data: bytes = message["data"]
        return data

    async def _read(self, wait: float) -> dict[str, Any] | None:
        try:
            message: dict[str, Any] | None = await self._pubsub.get_message(
                ignore_subscribe_messages=False, timeout=wait
            )
        except self.caught as exc:
            raise self.translate(exc) from exc
        if message is not None:
            self.last_activity = time.monotonic()
        return message

    async def ping(self) -> None:
        """Ask for a PONG on this connection (it arrives as activity)."""
        try:
            await self._pubsub.ping()
        except self.caught as exc:
            raise self.translate(exc) from exc

    async def aclose(self) -> None:
        with contextlib.suppress(*self.caught):
            await self._pubsub.aclose()


class RedisL2:
    """L2 on one Redis server (redis-py asyncio, one pool per instance).

    Build it with :meth:`from_parsed_url`, or hand it any redis-py
    compatible asyncio client (fakeredis in tests and in the embedded bench).
    """

    def __init__(
        self, client: Any, *, description: str = "redis", subscribe_timeout: float = 2.0
    ) -> None:
        self._client = client
        self._description = description
        self._subscribe_timeout = subscribe_timeout
        self._write_if_newer = client.register_script(WRITE_IF_NEWER_LUA)

    @classmethod
    def from_parsed_url(
        cls, parsed: ParsedURL, url: str, *, timeout: float, max_connections: int
    ) -> RedisL2:
        """The backend for ``url``: :class:`SentinelL2` for a Sentinel URL,
        else one server. Raises ConfigurationError (missing TLS file, ...)."""
        # Two connections beyond the in-flight cap: the invalidation subscription
        # and the breaker's probe, which must never wait behind regular calls.
        if parsed.kind == "sentinel":
            return SentinelL2.from_sentinel_url(
                parsed, url, timeout=timeout, max_connections=max_connections + 2
            )
        client = _client_from_url(parsed, url, timeout=timeout, max_connections=max_connections + 2)
        return cls(client, description=redact_url(url), subscribe_timeout=timeout)

    @property
    def description(self) -> str:
        return self._description

    @property
    def client(self) -> Any:
        """The underlying redis-py client (for diagnostics and tests)."""
        return self._client

    async def get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = await self._client.get(key)
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        return value

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        try:
            values: list[bytes | None] = await self._client.mget(keys)
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        return values

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        try:
            await self._client.set(key, value, px=ttl_ms)
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc

    async def set_many(self, items: Sequence[tuple[bytes, bytes, int | None]]) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value, ttl_ms in items:
                    pipe.set(key, value, px=ttl_ms)
                await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc

    async def delete_many(self, keys: Sequence[bytes]) -> list[bool]:
        if len(keys) == 1:
            try:
                return [bool(await self._client.delete(keys[0]))]
            except (rexc.RedisError, OSError) as exc:
                raise translate_redis_error(exc) from exc
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(key)
                results = await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        return [bool(n) for n in results]

    async def exists(self, key: bytes) -> bool:
        try:
            return bool(await self._client.exists(key))
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc

    async def write_if_newer(
        self, items: Sequence[tuple[bytes, bytes | None, int, int | None]]
    ) -> list[bool]:
        """Apply each ``(key, envelope or None to delete, version, ttl_ms)``
        only where Redis holds no version of that key as new or newer; one
        round trip. True where applied."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, blob, version, ttl_ms in items:
                    await self._write_if_newer(
                        keys=[key],
                        args=[
                            version.to_bytes(8, "big"),
                            b"" if blob is None else blob,
                            b"" if ttl_ms is None else str(ttl_ms).encode(),
                        ],
                        client=pipe,
                    )
                results = await pipe.execute()
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        return [bool(r) for r in results]

    async def delete_if_value(self, key: bytes, value: bytes) -> bool:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                if await pipe.get(key) != value:
                    await pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(key)
                result = await pipe.execute()
        except rexc.WatchError:
            return False  # written meanwhile: the new value is not ours to delete
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        return bool(result and result[0])

    async def publish(self, channel: bytes, message: bytes) -> int:
        """PUBLISH; returns how many subscribers received it."""
        try:
            return int(await self._client.publish(channel, message))
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc

    async def subscribe(self, channel: bytes) -> RedisSubscription:
        """A confirmed subscription to ``channel`` on a dedicated connection."""
        pubsub = self._client.pubsub()
        subscription = RedisSubscription(pubsub, channel)
        try:
            await pubsub.subscribe(channel)
            await subscription.confirm(self._subscribe_timeout)
        except (rexc.RedisError, OSError) as exc:
            await subscription.aclose()
            raise translate_redis_error(exc) from exc
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def scan_page(
        self, prefix: bytes, cursor: int, count: int = 500
    ) -> tuple[int, list[bytes]]:
        """One SCAN step over keys starting with ``prefix``: (next cursor, keys).
        A next cursor of 0 means the scan is complete."""
        try:
            next_cursor, keys = await self._client.scan(
                cursor=cursor, match=glob_escape(prefix) + b"*", count=count
            )
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        return int(next_cursor), [k for k in keys if k.startswith(prefix)]

    async def scan_prefix(
        self, prefix: bytes, batch: int = 500
    ) -> AsyncGenerator[list[bytes], None]:
        pattern = glob_escape(prefix) + b"*"
        cursor: int = 0
        while True:
            try:
                cursor, keys = await self._client.scan(cursor=cursor, match=pattern, count=batch)
            except (rexc.RedisError, OSError) as exc:
                raise translate_redis_error(exc) from exc
            # MATCH is applied by the server; the explicit check guards against
            # a server (or emulator) with a looser matcher.
            found = [k for k in keys if k.startswith(prefix)]
            if found:
                yield found
            if cursor == 0:
                return

    async def clear_prefix(self, prefix: bytes) -> int:
        removed = 0
        async for keys in self.scan_prefix(prefix):
            try:
                removed += int(await self._client.unlink(*keys))
            except (rexc.RedisError, OSError) as exc:
                raise translate_redis_error(exc) from exc
        return removed

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc

    async def info(self) -> dict[str, Any]:
        try:
            raw: dict[str, Any] = await self._client.info()
        except rexc.ResponseError as exc:
            # An emulator without INFO, or an ACL user not allowed to run it:
            # the server answers, it just will not say more about itself.
            return {"unavailable": str(exc)}
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        wanted = (
            "redis_version",
            "uptime_in_seconds",
            "connected_clients",
            "used_memory",
            "maxmemory",
            "maxmemory_policy",
            "keyspace_hits",
            "keyspace_misses",
            "evicted_keys",
            "expired_keys",
        )
        return {name: raw[name] for name in wanted if name in raw}

    async def aclose(self) -> None:
        with contextlib.suppress(rexc.RedisError, OSError):  # a broken pool must not fail shutdown
            await self._client.aclose()


class SentinelSubscription(RedisSubscription):
    """A subscription on the current master that a failover ends: once
    :meth:`end` has run, the next read raises, so the owner subscribes again
    (on the new master) knowing that messages may have been lost."""

    def __init__(
        self, pubsub: Any, channel: bytes, live: set[SentinelSubscription] | None = None
    ) -> None:
        super().__init__(pubsub, channel)
        self.ended: str | None = None
        self._live = live  # the backend's set of live subscriptions

    async def aclose(self) -> None:
        if self._live is not None:
            self._live.discard(self)
        await super().aclose()

    async def next_message(self, wait: float) -> bytes | None:
        if self.ended is not None:
            raise L2Error("failover", self.ended)
        try:
            return await super().next_message(wait)
        except L2Error:
            if self.ended is not None:
                raise L2Error("failover", self.ended) from None
            raise

    async def end(self, reason: str) -> None:
        """Make this subscription fail now: a blocked read wakes with an error."""
        self.ended = reason
        connection = getattr(self._pubsub, "connection", None)
        if connection is not None:
            with contextlib.suppress(rexc.RedisError, OSError):
                await connection.disconnect()


class SentinelL2(RedisL2):
    """L2 on the master of a Sentinel-managed replication group.

    Every new connection asks the sentinels for the master's address
    (redis-py's ``SentinelConnectionPool``), and reads go to the master too:
    a replica may lag behind writes this process just made. Alongside, one
    watcher per sentinel subscribes to ``+switch-master`` and, every
    ``poll_interval`` of silence, asks that sentinel for the master's address
    and configuration epoch, which catches a switch announced while it was
    not subscribed. On a switch (a new address; from a poll, only with a
    newer epoch, so a lagging sentinel cannot switch back), it drops every
    pooled connection, in use or not, and ends the live subscriptions (see
    :class:`SentinelSubscription`).
    """

    def __init__(
        self,
        sentinel: Any,
        client: Any,
        service_name: str,
        *,
        description: str = "redis+sentinel",
        timeout: float = 0.5,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(client, description=description, subscribe_timeout=timeout)
        self._sentinel = sentinel
        self.service_name = service_name
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._subscriptions: set[SentinelSubscription] = set()
        self._epoch = -1
        self.master_address: tuple[str, int] | None = None
        self.switches = 0
        self.last_switch_at: float | None = None

    @classmethod
    def from_sentinel_url(
        cls, parsed: ParsedURL, url: str, *, timeout: float, max_connections: int
    ) -> SentinelL2:
        service_name = parsed.service_name or ""  # parse_url guarantees one
        common = _common_kwargs(parsed, timeout=timeout, max_connections=max_connections)
        sentinel = _sentinel_from_url(parsed, timeout=timeout)
        if parsed.tls:
            common = _pool_kwargs(common, _SentinelSharedContextSSLConnection)
        client = sentinel.master_for(service_name, **common)
        return cls(sentinel, client, service_name, description=redact_url(url), timeout=timeout)

    # -- the operations that start the watcher (the first L2 call of a cache is one
    #    of them: start() and health() ping, the invalidator subscribes) ---------

    def _watch(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_all(), name="resync-sentinel-watch"
            )

    async def ping(self) -> None:
        self._watch()
        await super().ping()

    async def get(self, key: bytes) -> bytes | None:
        self._watch()
        return await super().get(key)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self._watch()
        return await super().get_many(keys)

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        self._watch()
        await super().set(key, value, ttl_ms)

    async def set_many(self, items: Sequence[tuple[bytes, bytes, int | None]]) -> None:
        self._watch()
        await super().set_many(items)

    async def delete_many(self, keys: Sequence[bytes]) -> list[bool]:
        self._watch()
        return await super().delete_many(keys)

    async def publish(self, channel: bytes, message: bytes) -> int:
        self._watch()
        return await super().publish(channel, message)

    async def subscribe(self, channel: bytes) -> SentinelSubscription:
        self._watch()
        pubsub = self._client.pubsub()
        subscription = SentinelSubscription(pubsub, channel, self._subscriptions)
        try:
            await pubsub.subscribe(channel)
            await subscription.confirm(self._subscribe_timeout)
        except (rexc.RedisError, OSError) as exc:
            await subscription.aclose()
            raise translate_redis_error(exc) from exc
        except BaseException:
            await subscription.aclose()
            raise
        self._subscriptions.add(subscription)
        return subscription

    async def info(self) -> dict[str, Any]:
        facts = await super().info()
        if self.master_address is not None:
            facts["sentinel_master"] = f"{self.master_address[0]}:{self.master_address[1]}"
        facts["sentinel_switches"] = self.switches
        return facts

    # -- watching the sentinels --------------------------------------------------------

    async def _watch_all(self) -> None:
        await asyncio.gather(*(self._watch_one(node) for node in self._sentinel.sentinels))

    async def _watch_one(self, node: Any) -> None:
        backoff = 0.05
        while not self._closed:
            pubsub = node.pubsub()
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(SWITCH_MASTER_CHANNEL)
                await self._poll(node)
                backoff = 0.05
                while not self._closed:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._poll_interval
                    )
                    if message is None:
                        await self._poll(node)
                    elif message.get("type") == "message":
                        await self._on_switch_message(message["data"])
            except (rexc.RedisError, OSError, TimeoutError) as exc:
                _log.debug("sentinel_watch_error", error=f"{type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(rexc.RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _poll(self, node: Any) -> None:
        async with asyncio.timeout(self._timeout):
            state = await node.sentinel_master(self.service_name)
        epoch = int(state.get("config-epoch", 0))
        address = (_text(state["ip"]), int(state["port"]))
        if epoch > self._epoch:
            self._epoch = epoch
            await self._master_is(address, "poll")

    async def _on_switch_message(self, data: bytes) -> None:
        # "<name> <old-ip> <old-port> <new-ip> <new-port>"
        parts = _text(data).split()
        if len(parts) == 5 and parts[0] == self.service_name and parts[4].isdigit():
            await self._master_is((parts[3], int(parts[4])), "+switch-master")

    async def _master_is(self, address: tuple[str, int], source: str) -> None:
        old = self.master_address
        if old == address:
            return
        self.master_address = address
        if old is None:
            return
        self.switches += 1
        self.last_switch_at = time.monotonic()
        _log.warning(
            "sentinel_switch_master",
            service=self.service_name,
            old=f"{old[0]}:{old[1]}",
            new=f"{address[0]}:{address[1]}",
            source=source,
            backend=self.description,
        )
        reason = f"master switched from {old[0]}:{old[1]} to {address[0]}:{address[1]}"
        subscriptions, self._subscriptions = self._subscriptions, set()
        for subscription in subscriptions:
            await subscription.end(reason)
        with contextlib.suppress(rexc.RedisError, OSError):
            await self._client.connection_pool.disconnect()

    async def aclose(self) -> None:
        self._closed = True
        await cancel_and_wait(self._watcher)
        await super().aclose()
        with contextlib.suppress(rexc.RedisError, OSError):
            await self._sentinel.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
