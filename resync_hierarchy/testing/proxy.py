"""A fault-injecting TCP proxy for chaos tests of a Redis client (no toxiproxy needed).

:class:`FaultProxy` listens on 127.0.0.1 and forwards every connection to an upstream
(a private ``redis-server``), with switchable faults::

    async with FaultProxy(upstream_port=server.port) as proxy:
        client = redis.asyncio.Redis.from_url(proxy.url)
        proxy.set_delay(0.05)   # +50 ms on every chunk, each direction
        proxy.blackhole()       # accept and read, never forward nor answer
        proxy.reset_new()       # new connections are reset at once
        proxy.cut_all()         # RST every live connection (new ones are fine)
        proxy.heal()            # plain forwarding again
        proxy.stats["commands"] # {"GET": 12, "SET": 3, ...} seen client -> server

Each connection has, per direction, a reader task (reads chunks, stamps each with
``arrival + delay``) and a writer task (writes them in order once their time has
come), so the delay is real latency and does not throttle throughput. Everything
is cancelled and every transport closed by :meth:`FaultProxy.stop`.

Traffic stays on the loopback interface: upstream and listening hosts must be
loopback addresses, and port 6379 (someone else's Redis) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import random
import socket
import struct
from collections import Counter
from collections.abc import Coroutine
from types import TracebackType
from typing import Final, Self, TypedDict, TypeVar

from resync_hierarchy.testing.redis_server import FORBIDDEN_PORTS, HOST

__all__ = ["FaultProxy", "ProxyStats", "RespCommandParser"]

_T = TypeVar("_T")

_CHUNK: Final = 64 * 1024
_QUEUE_CHUNKS: Final = 64  # per direction; the reader waits when it is full (backpressure)
_CLOSE_TIMEOUT: Final = 1.0  # graceful close, then abort
_LINGER_RST: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

# An item of a direction's queue: (due time on the loop clock, bytes), or None for EOF.
_Item = tuple[float, bytes] | None


# --------------------------------------------------------------------------- RESP parsing

_ARRAY, _BULK_HEADER, _BULK_BODY, _BROKEN = range(4)
_MAX_LINE: Final = 64 * 1024  # Redis' own inline/header limit
_MAX_NAME: Final = 64


class RespCommandParser:
    """Counts the commands in a client -> server RESP byte stream, fed in any chunks.

    Understands RESP arrays of bulk strings (``*N\\r\\n$len\\r\\n...``, what every
    client sends) and inline commands (``PING\\r\\n``). Only the command name is kept;
    argument bodies are skipped without buffering. Names are upper-cased and counted
    in :attr:`counts` (which may be shared between parsers). On a protocol error the
    parser stops counting for this stream and sets :attr:`broken`.
    """

    def __init__(self, counts: Counter[str] | None = None) -> None:
        self.counts: Counter[str] = Counter() if counts is None else counts
        self._state = _ARRAY
        self._line = bytearray()
        self._args_left = 0
        self._body_left = 0  # bytes of the current bulk still to skip, CRLF included
        self._want_name = False  # the next bulk is the command name
        self._name: bytearray | None = None
        self._name_len = 0

    @property
    def broken(self) -> bool:
        return self._state == _BROKEN

    def feed(self, data: bytes) -> bool:
        """Parse one more chunk; False once the stream is :attr:`broken`."""
        pos, end = 0, len(data)
        while pos < end and self._state != _BROKEN:
            if self._state == _BULK_BODY:
                take = min(self._body_left, end - pos)
                if self._name is not None and len(self._name) < self._name_len:
                    self._name += data[pos : pos + min(take, self._name_len - len(self._name))]
                pos += take
                self._body_left -= take
                if self._body_left == 0:
                    self._end_bulk()
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_LINE:
                    self._break()
                return not self.broken
            self._line += data[pos:nl]
            pos = nl + 1
            line = bytes(self._line).removesuffix(b"\r")
            self._line.clear()
            self._on_line(line)
        return not self.broken

    def _on_line(self, line: bytes) -> None:
        if self._state == _ARRAY:
            if not line:
                return  # Redis ignores empty inline lines
            if line[:1] != b"*":  # inline command: "PING", "SET k v"
                words = line.split()
                if words:
                    self._count(words[0])
                return
            n = _parse_int(line, b"*")
            if n is None:
                self._break()
                return
            if n > 0:
                self._args_left = n
                self._want_name = True
                self._state = _BULK_HEADER
            return
        # _BULK_HEADER
        length = _parse_int(line, b"$")
        if length is None or length < 0:
            self._break()
            return
        if self._want_name:
            self._want_name = False
            self._name = bytearray()
            self._name_len = min(length, _MAX_NAME)
        self._body_left = length + 2
        self._state = _BULK_BODY

    def _end_bulk(self) -> None:
        if self._name is not None:
            self._count(bytes(self._name))
            self._name = None
        self._args_left -= 1
        self._state = _BULK_HEADER if self._args_left > 0 else _ARRAY

    def _count(self, name: bytes) -> None:
        if name:
            self.counts[name.decode("ascii", "replace").upper()] += 1

    def _break(self) -> None:
        self._state = _BROKEN
        self._line.clear()
        self._name = None


def _parse_int(line: bytes, prefix: bytes) -> int | None:
    if not line.startswith(prefix):
        return None
    try:
        return int(line[len(prefix) :])
    except ValueError:
        return None


# --------------------------------------------------------------------------- the proxy


class ProxyStats(TypedDict):
    """A snapshot of :attr:`FaultProxy.stats`."""

    accepted: int  # connections accepted (all of them, also the rejected ones)
    live: int  # connections open right now
    rejected: int  # closed at once by reset_new()
    cut: int  # aborted by cut_all()
    upstream_errors: int  # connections closed because the upstream could not be reached
    bytes_to_upstream: int  # forwarded client -> server
    bytes_to_client: int  # forwarded server -> client
    bytes_dropped: int  # swallowed by blackhole(), either direction
    commands: dict[str, int]  # commands seen client -> server (forwarded or not)
    protocol_errors: int  # connections whose client stream could not be parsed as RESP


def _check_loopback(host: str, what: str, *, allow_name: bool) -> None:
    if allow_name and host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{what} {host!r} is not a loopback address: test traffic stays local")


def _abort(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    """Close at once; with ``rst`` make the kernel send a RST instead of a FIN."""
    if rst:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


async def _close_all(writers: list[asyncio.StreamWriter], tasks: list[asyncio.Task[None]]) -> None:
    """Close (flushing what is buffered), wait for ``tasks`` and the closes a little,
    then abort whatever is left: no transport survives this, even when cancelled."""
    for writer in writers:
        writer.close()  # synchronous: every transport is closing from here on
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        pass
    finally:
        for writer in writers:
            writer.transport.abort()  # no-op once closed


class _Link:
    """One proxied connection: its transports and pump tasks."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]

    def abort(self, *, rst: bool) -> None:
        for writer in self.writers():
            _abort(writer, rst=rst)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """An asyncio TCP proxy 127.0.0.1:port -> upstream with switchable faults.

    Modes combine: a delay stays in force under blackhole(); heal() clears them all.
    Mode changes apply at once to live connections too, except reset_new(), which
    only concerns connections accepted from then on.
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = HOST,
        *,
        host: str = HOST,
        port: int = 0,
        connect_timeout: float = 2.0,
    ) -> None:
        if upstream_port in FORBIDDEN_PORTS:
            raise ValueError(f"refusing to proxy to port {upstream_port}: it is not ours")
        _check_loopback(upstream_host, "upstream host", allow_name=True)
        _check_loopback(host, "listening host (an IP literal)", allow_name=False)
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.connect_timeout = connect_timeout
        self._requested_port = port
        self._port: int | None = None
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[object]] = set()  # every task we started, until done
        self._links: set[_Link] = set()
        self._random = random.Random()  # noqa: S311 - jitter, not crypto
        # fault modes
        self._delay = 0.0
        self._jitter = 0.0
        self._blackholed = False
        self._reset_new = False
        self._open = asyncio.Event()  # set while not blackholed
        self._open.set()
        # counters
        self._commands: Counter[str] = Counter()
        self._zero_counts()

    def _zero_counts(self) -> None:
        self._accepted = 0
        self._rejected = 0
        self._cut = 0
        self._upstream_errors = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._bytes_dropped = 0
        self._protocol_errors = 0
        self._commands.clear()

    # -- addresses ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy not started yet: no port")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/0"

    @property
    def is_running(self) -> bool:
        return self._server is not None

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self._port} -> {self.upstream_host}:{self.upstream_port}"
            f" delay={self._delay} jitter={self._jitter} blackholed={self._blackholed}"
            f" reset_new={self._reset_new} live={len(self._links)}>"
        )

    # -- fault modes -------------------------------------------------------------------

    @property
    def delay(self) -> float:
        return self._delay

    @property
    def jitter(self) -> float:
        return self._jitter

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def resetting_new(self) -> bool:
        return self._reset_new

    def set_delay(self, delay: float, jitter: float = 0.0) -> None:
        """Add ``delay`` (+ uniform ``0..jitter``) seconds to every chunk, each direction.

        Order is always kept (a chunk never overtakes an earlier one). Applies to
        chunks read from now on; 0 means none.
        """
        for name, value in (("delay", delay), ("jitter", jitter)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        self._delay = float(delay)
        self._jitter = float(jitter)

    def blackhole(self) -> None:
        """Accept and read, never forward nor answer: a hung network, live connections too.

        Bytes read meanwhile (and those still waiting out a delay) are dropped. A server
        closing its side is not passed on either; the client just hears nothing.
        """
        self._blackholed = True
        self._open.clear()

    def reset_new(self) -> None:
        """Connections accepted from now on are reset (RST) at once."""
        self._reset_new = True

    def cut_all(self) -> int:
        """Reset (RST) every live connection now, both sides; returns how many.

        New connections are forwarded as usual (unless another mode says otherwise).
        """
        links = list(self._links)
        for link in links:
            self._links.discard(link)
            link.abort(rst=True)
        self._cut += len(links)
        return len(links)

    def heal(self) -> None:
        """Plain forwarding again: no delay, no blackhole, no reset."""
        self._delay = 0.0
        self._jitter = 0.0
        self._blackholed = False
        self._reset_new = False
        self._open.set()

    # -- statistics --------------------------------------------------------------------

    @property
    def stats(self) -> ProxyStats:
        return ProxyStats(
            accepted=self._accepted,
            live=len(self._links),
            rejected=self._rejected,
            cut=self._cut,
            upstream_errors=self._upstream_errors,
            bytes_to_upstream=self._bytes_up,
            bytes_to_client=self._bytes_down,
            bytes_dropped=self._bytes_dropped,
            commands=dict(self._commands),
            protocol_errors=self._protocol_errors,
        )

    def reset_counts(self) -> None:
        """Zero every counter (``live`` is not a counter and stays)."""
        self._zero_counts()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> Self:
        """Listen on ``host:port`` and return self.

        Port 0 picks a free one (see :attr:`port`); started again after :meth:`stop`,
        the proxy comes back on the port it had, so clients keep their URL, and with
        the fault modes it had (call :meth:`heal` for plain forwarding).
        """
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already running")
        self._stopping = False
        port = self._requested_port or self._port or 0
        server = await asyncio.start_server(self._on_connect, self.host, port, limit=_CHUNK)
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Close the listener and every connection, cancel every task. Idempotent."""
        server, self._server = self._server, None
        self._stopping = True
        if server is not None:
            server.close()
        for link in list(self._links):
            self._links.discard(link)
            link.abort(rst=False)
        for _ in range(10):  # a cancelled handler may still be winding its pumps down
            tasks = list(self._tasks)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- connections -------------------------------------------------------------------

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Called synchronously from connection_made, so every connection is either
        # refused here or has its task registered before stop() can miss it.
        self._accepted += 1
        if self._stopping:
            writer.transport.abort()
            return
        if self._reset_new:
            self._rejected += 1
            _abort(writer, rst=True)
            return
        self._spawn(self._serve(reader, writer))

    def _spawn(self, coro: Coroutine[object, object, _T]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, link.upstream = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port, limit=_CHUNK
                    )
            except (OSError, TimeoutError):
                self._upstream_errors += 1
                if self._blackholed:  # a hung network would not tell: stay silent
                    await self._sink(reader)
                _abort(writer, rst=True)
                return
            parser = RespCommandParser(self._commands)
            up: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
            down: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
            link.tasks = [
                self._spawn(self._read_pump(reader, up, parser)),
                self._spawn(self._read_pump(up_reader, down, None)),
                self._spawn(self._write_pump(up, link.upstream, upstream=True)),
                self._spawn(self._write_pump(down, writer, upstream=False)),
            ]
            # Done when either writer is done (EOF passed on, a write failed) or cut.
            await asyncio.wait(link.tasks[2:], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            for task in link.tasks:
                task.cancel()
            await _close_all(link.writers(), link.tasks)

    async def _sink(self, reader: asyncio.StreamReader) -> None:
        """Read and drop until healed or the client goes away."""
        healed = self._spawn(self._open.wait())
        read: asyncio.Task[bytes] | None = None
        try:
            while not healed.done():
                read = self._spawn(reader.read(_CHUNK))
                await asyncio.wait({read, healed}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    return  # healed; the finally cancels the read
                if read.cancelled() or read.exception() is not None or not (data := read.result()):
                    return  # the client went away
                self._bytes_dropped += len(data)
        finally:
            pending = [t for t in (healed, read) if t is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _read_pump(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[_Item],
        parser: RespCommandParser | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        last_due = 0.0
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                data = b""
            if not data:
                await queue.put(None)
                return
            if parser is not None and not parser.broken and not parser.feed(data):
                self._protocol_errors += 1
            if self._blackholed:
                self._bytes_dropped += len(data)
                continue
            due = loop.time() + self._delay
            if self._jitter:
                due += self._random.uniform(0.0, self._jitter)
            last_due = max(due, last_due)  # never overtake an earlier chunk
            await queue.put((last_due, data))

    async def _write_pump(
        self, queue: asyncio.Queue[_Item], writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                if not upstream:
                    # The server closed: under blackhole the client must not notice.
                    await self._open.wait()
                return
            due, data = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._blackholed:
                self._bytes_dropped += len(data)
                continue
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return
            if upstream:
                self._bytes_up += len(data)
            else:
                self._bytes_down += len(data)
