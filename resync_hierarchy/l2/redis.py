"""The Redis backend. The only module of the package that imports ``redis``.

Retries belong to the layer above: redis-py's own retry is turned off
(``Retry(NoBackoff(), 0)``), so a failed command fails once, quickly, and the
guard decides what happens next. Socket timeouts equal ``l2_timeout``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resync_hierarchy._url import ParsedURL, redact_url
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.l2.base import L2Error, glob_escape

__all__ = ["WRITE_IF_NEWER_LUA", "RedisL2", "RedisSubscription", "translate_redis_error"]

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


def translate_redis_error(exc: BaseException) -> L2Error:
    """Map a redis-py exception to an :class:`L2Error` with a stable ``kind``."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, rexc.TimeoutError):
        return L2Error("timeout", message)
    if isinstance(exc, rexc.BusyLoadingError):  # a ConnectionError subclass: test it first
        return L2Error("busy", message)
    if isinstance(exc, (rexc.ConnectionError, rexc.MaxConnectionsError)):
        return L2Error("connection", message)
    if isinstance(exc, rexc.NoPermissionError):
        return L2Error("noperm", message)
    if isinstance(exc, rexc.ReadOnlyError):
        return L2Error("readonly", message)
    if isinstance(exc, rexc.OutOfMemoryError):  # redis-py 8 drops the "OOM" prefix
        return L2Error("oom", message)
    if isinstance(exc, rexc.ResponseError):
        text = str(exc)
        if text.startswith("OOM"):
            return L2Error("oom", message)
        if text.startswith("NOPERM"):
            return L2Error("noperm", message)
        return L2Error("response", message)
    if isinstance(exc, OSError):
        return L2Error("connection", message)
    return L2Error("other", message)


def _client_from_url(parsed: ParsedURL, url: str, *, timeout: float, max_connections: int) -> Any:
    common: dict[str, Any] = {
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
        "decode_responses": False,
        "health_check_interval": 0,
    }
    query = dict(parsed.query)
    if "client_name" in query:
        common["client_name"] = query["client_name"]
    if parsed.kind == "unix":
        return aioredis.Redis(unix_socket_path=parsed.path, **common)
    if parsed.kind != "redis":
        raise ConfigurationError(
            f"{redact_url(url)!r}: {parsed.kind} URLs are not supported by this release yet; "
            "use a redis://, rediss:// or unix:// URL"
        )
    host, port = parsed.hosts[0]
    if parsed.tls:
        common["ssl"] = True
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if name in query:
                common[name] = query[name]
        if "ssl_check_hostname" in query:
            common["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in (
                "1",
                "true",
                "yes",
            )
    return aioredis.Redis(host=host, port=port, **common)


class RedisSubscription:
    """One channel subscription on a connection of its own.

    It never reconnects by itself: after any error the owner closes it and
    subscribes again, knowing that whatever was published in between is lost.
    ``last_activity`` (``time.monotonic()``) moves with every message and
    PONG, so a connection that went silent (a black-holed network) shows.
    """

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
                raise L2Error("timeout", "no SUBSCRIBE confirmation")
            message = await self._read(left)
            if message is not None and message.get("type") == "subscribe":
                return

    async def next_message(self, wait: float) -> bytes | None:
        """The next published payload, or None after ``wait`` seconds."""
        message = await self._read(wait)
        if message is None or message.get("type") != "message":
            return None
        data: bytes = message["data"]
        return data

    async def _read(self, wait: float) -> dict[str, Any] | None:
        try:
            message: dict[str, Any] | None = await self._pubsub.get_message(
                ignore_subscribe_messages=False, timeout=wait
            )
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc
        if message is not None:
            self.last_activity = time.monotonic()
        return message

    async def ping(self) -> None:
        """Ask for a PONG on this connection (it arrives as activity)."""
        try:
            await self._pubsub.ping()
        except (rexc.RedisError, OSError) as exc:
            raise translate_redis_error(exc) from exc

    async def aclose(self) -> None:
        with contextlib.suppress(rexc.RedisError, OSError):
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
        # Two connections beyond the in-flight cap: the invalidation subscription
        # and the breaker's probe, which must never wait behind regular calls.
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
