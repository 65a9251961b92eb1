"""FaultProxy: forwarding, command counting and each fault mode, against a real Redis.

redis-py clients here never retry (``Retry(NoBackoff(), 0)``) and use short socket
timeouts, so every fault shows up as exactly one error, quickly.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from support.redis_server import RedisServer, free_port

from resync_hierarchy.testing import FaultProxy
from resync_hierarchy.testing.proxy import RespCommandParser

TIMEOUT = 0.2  # socket timeout of the clients that are expected to hang
IO = 2.0  # bound on any raw read that is expected to succeed

MakeClient = Callable[..., aioredis.Redis]


@pytest.fixture
async def proxy(redis_server: RedisServer, redis_url: str) -> AsyncIterator[FaultProxy]:
    """A started proxy in front of the (flushed) session server."""
    async with FaultProxy(upstream_port=redis_server.port) as p:
        yield p


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """redis.asyncio clients without retries; all closed at teardown."""
    made: list[aioredis.Redis] = []

    def make(url: str, timeout: float = 1.0) -> aioredis.Redis:
        client = aioredis.Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


def resp(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(IO):
        return await asyncio.open_connection("127.0.0.1", port)


async def raw_close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


async def read_bulk(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(IO):
        header = await reader.readline()
        assert header.startswith(b"$"), header
        body = await reader.readexactly(int(header[1:]) + 2)
    return body[:-2]


# --------------------------------------------------------------------------- RESP parser


def test_parser_counts_commands_across_every_chunk_boundary() -> None:
    value = b"x\r\n*1\r\n$4\r\nPING\r\n" * 3  # looks like commands: must be skipped
    stream = b"".join(
        [
            resp("SET", "k", value),
            resp("get", "k"),
            b"PING\r\n",  # inline command
            b"\r\n",  # empty inline line: ignored
            resp("EvalSha", "abc", "0"),
            b"*0\r\n",  # empty array: no command
            resp("GET", ""),
            resp("MGET", *[f"k{i}" for i in range(20)]),
        ]
    )
    expected = {"SET": 1, "GET": 2, "PING": 1, "EVALSHA": 1, "MGET": 1}
    for size in (1, 2, 3, 5, 7, 11, len(stream)):
        parser = RespCommandParser()
        for i in range(0, len(stream), size):
            assert parser.feed(stream[i : i + size])
        assert dict(parser.counts) == expected, size
    for cut in range(len(stream) + 1):  # every two-chunk split
        parser = RespCommandParser()
        parser.feed(stream[:cut])
        parser.feed(stream[cut:])
        assert dict(parser.counts) == expected, cut


def test_parser_stops_counting_on_garbage() -> None:
    parser = RespCommandParser()
    assert parser.feed(resp("GET", "k"))
    assert not parser.feed(b"*2\r\n%oops\r\n")
    assert parser.broken
    assert not parser.feed(resp("GET", "k"))
    assert dict(parser.counts) == {"GET": 1}


def test_refuses_port_6379_and_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="6379"):
        FaultProxy(upstream_port=6379)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(upstream_port=free_port(), upstream_host="10.0.0.1")
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(upstream_port=free_port(), host="0.0.0.0")  # noqa: S104
    with pytest.raises(ValueError, match="delay"):
        FaultProxy(upstream_port=free_port()).set_delay(-1)


# --------------------------------------------------------------------------- forwarding


async def test_forwards_and_counts_commands(
    proxy: FaultProxy, redis_server: RedisServer, make_client: MakeClient
) -> None:
    assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    client = make_client(proxy.url)
    await client.ping()  # connect: redis-py's handshake (HELLO, CLIENT SETINFO) is counted too
    proxy.reset_counts()

    assert await client.set("k", "v") is True
    assert await client.get("k") == b"v"
    assert await client.get("absent") is None
    assert redis_server.command("GET", "k") == b"v"  # it really reached the server
    stats = proxy.stats
    assert stats["commands"] == {"SET": 1, "GET": 2}
    assert stats["accepted"] == 0  # reset_counts() zeroed it; no new connection since
    assert stats["live"] == 1
    assert stats["bytes_to_upstream"] > 0
    assert stats["bytes_to_client"] > 0
    assert stats["bytes_dropped"] == 0

    proxy.reset_counts()
    pipe = client.pipeline(transaction=False)
    for _ in range(50):
        pipe.incr("n")
    assert await pipe.execute() == list(range(1, 51))
    assert proxy.stats["commands"] == {"INCRBY": 50}  # redis-py sends incr() as INCRBY k 1


async def test_many_connections_and_large_values(
    proxy: FaultProxy, make_client: MakeClient
) -> None:
    clients = [make_client(proxy.url) for _ in range(5)]
    big = b"\r\n*3\r\n" + bytes(range(256)) * 4096  # 1 MiB, many chunks, RESP-like bytes
    await clients[0].set("big", big)
    results = await asyncio.gather(*(c.get("big") for c in clients))
    assert all(r == big for r in results)
    stats = proxy.stats
    assert stats["commands"]["SET"] == 1
    assert stats["commands"]["GET"] == 5
    assert stats["accepted"] == stats["live"] == 5
    assert stats["bytes_to_client"] > 5 * len(big)
    assert stats["protocol_errors"] == 0


# --------------------------------------------------------------------------- delay


async def test_delay_adds_latency_each_way(proxy: FaultProxy, make_client: MakeClient) -> None:
    client = make_client(proxy.url)
    await client.set("k", "v")
    delay = 0.1
    proxy.set_delay(delay)
    assert proxy.delay == delay
    started = time.monotonic()
    assert await client.get("k") == b"v"
    took = time.monotonic() - started
    assert took >= 2 * delay - 0.005  # request and reply are each held `delay`
    assert took < 2 * delay + 0.5

    proxy.heal()
    started = time.monotonic()
    assert await client.get("k") == b"v"
    assert time.monotonic() - started < delay


async def test_delay_with_jitter_keeps_order_without_throttling(proxy: FaultProxy) -> None:
    reader, writer = await raw_connect(proxy.port)
    try:
        delay, jitter, n = 0.05, 0.05, 30
        proxy.set_delay(delay, jitter=jitter)
        started = time.monotonic()
        for i in range(n):  # separate chunks, closer together than the jitter
            writer.write(resp("ECHO", str(i)))
            await writer.drain()
            await asyncio.sleep(0.002)
        replies = [await read_bulk(reader) for _ in range(n)]
        took = time.monotonic() - started
        assert replies == [str(i).encode() for i in range(n)]
        assert took >= 2 * delay - 0.005
        assert took < n * delay  # latency, not one delay after another
        assert proxy.stats["commands"] == {"ECHO": n}
    finally:
        await raw_close(writer)


# --------------------------------------------------------------------------- blackhole


async def test_blackhole_times_out_then_heal(proxy: FaultProxy, make_client: MakeClient) -> None:
    client = make_client(proxy.url, timeout=TIMEOUT)
    await client.set("k", "v")
    proxy.blackhole()
    assert proxy.blackholed

    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):  # silence, not a fast error
        await client.get("k")
    took = time.monotonic() - started
    assert TIMEOUT - 0.02 <= took < TIMEOUT + 0.5

    fresh = make_client(proxy.url, timeout=TIMEOUT)  # new connections hang as well
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        await fresh.get("k")
    assert time.monotonic() - started >= TIMEOUT - 0.02
    stats = proxy.stats
    assert stats["bytes_dropped"] > 0
    assert stats["commands"]["GET"] == 1  # seen, though never forwarded
    assert stats["commands"]["HELLO"] >= 1  # the fresh client hung in its handshake

    proxy.heal()
    assert await make_client(proxy.url).get("k") == b"v"
    assert await client.get("k") == b"v"  # redis-py dropped the hung connection, reconnects


async def test_blackhole_hides_a_server_side_close_until_healed(
    proxy: FaultProxy, redis_server: RedisServer
) -> None:
    reader, writer = await raw_connect(proxy.port)
    try:
        writer.write(resp("CLIENT", "SETNAME", "victim") + resp("CLIENT", "ID"))
        async with asyncio.timeout(IO):
            assert await reader.readline() == b"+OK\r\n"
            client_id = int((await reader.readline())[1:])
        proxy.blackhole()
        assert redis_server.command("CLIENT", "KILL", "ID", str(client_id)) == 1
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)  # no EOF: the client hears nothing
        proxy.heal()
        async with asyncio.timeout(IO):
            assert await reader.read(1) == b""  # now the close gets through
    finally:
        await raw_close(writer)


async def test_blackhole_with_upstream_down_is_silent_too() -> None:
    async with FaultProxy(upstream_port=free_port()) as p:  # nothing listens upstream
        reader, writer = await raw_connect(p.port)
        try:
            async with asyncio.timeout(IO):  # plain mode: closed at once
                with suppress(ConnectionResetError):
                    assert await reader.read(1) == b""
        finally:
            await raw_close(writer)
        assert p.stats["upstream_errors"] == 1

        p.blackhole()
        reader, writer = await raw_connect(p.port)
        try:
            writer.write(resp("PING"))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await reader.read(1)
            p.heal()
            async with asyncio.timeout(IO):
                with suppress(ConnectionResetError):
                    assert await reader.read(1) == b""
        finally:
            await raw_close(writer)


# --------------------------------------------------------------------------- reset / cut


async def test_reset_new_fails_fast_then_heal(proxy: FaultProxy, make_client: MakeClient) -> None:
    old = make_client(proxy.url)
    await old.set("k", "v")  # a connection made before reset_new() is not affected
    proxy.reset_new()

    client = make_client(proxy.url)
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.get("k")
    assert time.monotonic() - started < 0.5
    assert await old.get("k") == b"v"

    reader, writer = await raw_connect(proxy.port)  # a RST, not a polite FIN
    try:
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(IO):
                await reader.read(1)
    finally:
        await raw_close(writer)
    assert proxy.stats["rejected"] == 2

    proxy.heal()
    assert await client.get("k") == b"v"


async def test_cut_all_drops_live_connections_only(
    proxy: FaultProxy, make_client: MakeClient
) -> None:
    client = make_client(proxy.url)
    await client.set("k", "v")
    reader, writer = await raw_connect(proxy.port)
    try:
        writer.write(resp("PING"))
        async with asyncio.timeout(IO):
            assert await reader.readline() == b"+PONG\r\n"

        assert proxy.cut_all() == 2
        stats = proxy.stats
        assert stats["cut"] == 2
        assert stats["live"] == 0

        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get("k")
        assert time.monotonic() - started < 0.5
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(IO):
                await reader.read(1)
    finally:
        await raw_close(writer)

    assert await client.get("k") == b"v"  # the next command gets a new connection
    assert await make_client(proxy.url).get("k") == b"v"
    assert proxy.stats["live"] == 2


# --------------------------------------------------------------------------- stop


async def test_stop_closes_everything(redis_server: RedisServer, make_client: MakeClient) -> None:
    tasks_before = asyncio.all_tasks()
    p = FaultProxy(upstream_port=redis_server.port)
    await p.start()
    port = p.port
    client = make_client(p.url)
    assert await client.ping() is True
    reader, writer = await raw_connect(port)
    try:
        p.set_delay(0.5)  # a chunk is waiting out its delay while we stop
        writer.write(resp("PING"))
        await writer.drain()
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await p.stop()
        assert time.monotonic() - started < 0.5
        async with asyncio.timeout(IO):
            with suppress(ConnectionResetError):
                assert await reader.read(1) == b""
    finally:
        await raw_close(writer)
    await p.stop()  # idempotent
    assert not p.is_running
    assert p.stats["live"] == 0
    assert asyncio.all_tasks() - tasks_before == {asyncio.current_task()} - tasks_before

    with socket.socket() as s:
        s.settimeout(IO)
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))
    with pytest.raises(redis.exceptions.ConnectionError):
        await client.ping()

    await p.start()  # a restart comes back on the same port, modes unchanged
    try:
        assert p.delay == 0.5
        p.heal()
        assert p.port == port
        assert await client.ping() is True
    finally:
        await p.stop()
