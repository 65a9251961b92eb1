#!/usr/bin/env python3
"""Cross-process L1 invalidation: Redis pub/sub vs RESP3 client tracking (BCAST).

    python scripts/measure_invalidation.py          # table
    python scripts/measure_invalidation.py --json   # one JSON document

Process A writes ``ns:<tag>:<i>``; process B holds every key in a dict (its
"L1") and pops it when told to. A and B are separate OS processes (spawned),
talking to one private redis-server started here (never the one on 6379).

Mechanisms (how B learns about A's write):
  pubsub             A: SET, then PUBLISH resync:inv:ns msgpack([key]);
                     B: a SUBSCRIBE connection (redis-py PubSub, RESP3 default)
  pubsub-coalesced   A: SET, then the key joins a list published once per
                     event-loop tick (one PUBLISH per tick, all its keys)
  tracking-push      A: SET only; B: one RESP3 connection with
                     CLIENT TRACKING ON BCAST PREFIX ns:, invalidations read as
                     RESP3 pushes (needs redis-py's private parser hook)
  tracking-redirect  A: SET only; B: a RESP2 PubSub on __redis__:invalidate
                     plus a second connection with CLIENT TRACKING ON
                     REDIRECT <pubsub id> BCAST PREFIX ns:

Clock: time.clock_gettime_ns(CLOCK_MONOTONIC), which is system-wide on Linux,
so A's and B's timestamps can be compared. Delays:
  after write   B's eviction minus the moment A's SET reply came back. With
                tracking it can be negative: Redis queues the invalidation
                before it replies to the writer.
  from issue    B's eviction minus the moment A started the SET (never < 0).

Phases, all in one run on one server:
  sequential   2,000 writes, one at a time, ~1 ms apart (unloaded delay)
  burst        10,000 writes from 200 concurrent tasks, as fast as possible
  throughput   20,000 SETs from 100 tasks, with and without each mechanism's
               extra work, in interleaved rounds; ratio against SET-only
               measured in the same round; Redis CPU per write from INFO cpu
  facts        pool behaviour, CLIENT KILL and reconnect, FLUSHDB and expiry

A, B and Redis share this machine's CPUs: burst and throughput numbers are
CPU-contended and are comparable with each other, not with production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from multiprocessing.connection import Connection as Pipe
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped]
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection as RedisConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from resync_hierarchy.testing.redis_server import RedisServer, redis_server_version

HOST = "127.0.0.1"
PREFIX = "ns:"
CHANNEL = "resync:inv:ns"
TRACKING_CHANNEL = "__redis__:invalidate"
VALUE = b"v" * 64
POLL_S = 0.1  # B's read timeout between checks for a stop request

MECHANISMS: tuple[str, ...] = ("pubsub", "pubsub-coalesced", "tracking-push", "tracking-redirect")
#: How A writes for each mechanism (tracking needs nothing extra from A).
WRITER_MODE: dict[str, str] = {
    "pubsub": "pubsub",
    "pubsub-coalesced": "pubsub-coalesced",
    "tracking-push": "set-only",
    "tracking-redirect": "set-only",
}
#: Throughput variants: (name, A's write mode, B's listener or None).
VARIANTS: tuple[tuple[str, str, str | None], ...] = (
    ("set-only", "set-only", None),
    ("pubsub", "pubsub", "pubsub"),
    ("pubsub-pipelined", "pubsub-pipelined", "pubsub"),
    ("pubsub-coalesced", "pubsub-coalesced", "pubsub"),
    ("tracking-push", "set-only", "tracking-push"),
    ("tracking-redirect", "set-only", "tracking-redirect"),
)


def now_ns() -> int:
    """System-wide monotonic clock (comparable across processes on Linux)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def key_names(tag: str, n: int) -> list[bytes]:
    return [f"{PREFIX}{tag}:{i}".encode() for i in range(n)]


def make_client(port: int, **kwargs: Any) -> aioredis.Redis:
    """A client with no retries (a failure shows up instead of being hidden)."""
    if port == 6379:
        raise ValueError("port 6379 is not ours")
    options: dict[str, Any] = {
        "host": HOST,
        "port": port,
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
    }
    options.update(kwargs)
    return aioredis.Redis(**options)


# =============================================================================== process A


class Writer:
    """A's write path for one mode."""

    def __init__(self, client: aioredis.Redis, mode: str) -> None:
        self.client = client
        self.mode = mode
        self.messages = 0
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[Any]] = set()

    async def write(self, key: bytes) -> int:
        """Write ``key``; return the clock reading when the SET's reply arrived."""
        if self.mode == "pubsub-pipelined":
            pipe = self.client.pipeline(transaction=False)
            pipe.set(key, VALUE)
            pipe.publish(CHANNEL, msgpack.packb([key]))
            await pipe.execute()
            self.messages += 1
            return now_ns()
        await self.client.set(key, VALUE)
        done = now_ns()
        if self.mode == "pubsub":
            await self.client.publish(CHANNEL, msgpack.packb([key]))
            self.messages += 1
        elif self.mode == "pubsub-coalesced":
            self._pending.append(key)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return done

    def _flush(self) -> None:
        keys, self._pending = self._pending, []
        self._flush_scheduled = False
        task: asyncio.Task[Any] = asyncio.ensure_future(
            self.client.publish(CHANNEL, msgpack.packb(keys))
        )
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        self.messages += 1

    async def drain(self) -> None:
        for _ in range(1000):
            if not self._flushes:
                return
            await asyncio.gather(*list(self._flushes))


async def handle_write(cmd: dict[str, Any], _pipe: Pipe) -> dict[str, Any]:
    n: int = cmd["n"]
    concurrency: int = cmd["concurrency"]
    pause_s: float = cmd["pause_s"]
    client = make_client(cmd["port"], max_connections=concurrency + 32)
    try:
        # Open every connection first (plus spares for the coalesced PUBLISH
        # tasks) so the measured part does no connecting: under load a new
        # connection's handshake waits behind every busy task, tens of ms.
        await asyncio.gather(*(client.ping() for _ in range(concurrency + 16)))
        writer = Writer(client, cmd["mode"])
        keys = key_names(cmd["tag"], n)
        starts = [0] * n
        dones = [0] * n
        indices = iter(range(n))

        async def worker() -> None:
            for i in indices:
                starts[i] = now_ns()
                dones[i] = await writer.write(keys[i])
                if pause_s:
                    await asyncio.sleep(pause_s)

        t0 = now_ns()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await writer.drain()
        elapsed = now_ns() - t0
    finally:
        await client.aclose()
    return {"starts": starts, "dones": dones, "elapsed_ns": elapsed, "messages": writer.messages}


# =============================================================================== process B


class L1Sink:
    """B's L1: a dict of every key A will write; eviction records the time."""

    def __init__(self, tag: str, n: int) -> None:
        self.l1: dict[bytes, int] = {k: i for i, k in enumerate(key_names(tag, n))}
        self.evicted = [0] * n
        self.remaining = n
        self.messages = 0
        self.flush_all = 0

    def evict(self, keys: Iterable[bytes] | None) -> None:
        self.messages += 1
        if keys is None:  # tracking: FLUSHDB/FLUSHALL, or the server dropped state
            self.flush_all += 1
            return
        for key in keys:
            i = self.l1.pop(key, None)
            if i is not None:
                self.evicted[i] = now_ns()
                self.remaining -= 1


class Source(Protocol):
    async def poll(self, wait_s: float) -> bool: ...
    async def aclose(self) -> None: ...


class PubSubSource:
    """pubsub / pubsub-coalesced: msgpack list of keys on CHANNEL."""

    def __init__(self, port: int, sink: L1Sink) -> None:
        self.sink = sink
        self.client = make_client(port)
        self.ps: PubSub = self.client.pubsub()

    async def open(self) -> None:
        await self.ps.subscribe(CHANNEL)
        await confirm_subscribed(self.ps)

    async def poll(self, wait_s: float) -> bool:
        msg = await self.ps.get_message(ignore_subscribe_messages=True, timeout=wait_s)
        if msg is None:
            return False
        if msg["type"] == "message":
            self.sink.evict(msgpack.unpackb(msg["data"]))
        return True

    async def aclose(self) -> None:
        await self.ps.aclose()
        await self.client.aclose()


class TrackingPushSource:
    """tracking-push: RESP3 ``invalidate`` pushes on the tracking connection itself.

    redis-py 8.1 asyncio has no public API for these: the parser routes an
    ``invalidate`` push to ``invalidation_push_handler_func`` (set through the
    private ``_parser``) and silently drops it when none is set; nothing reads
    the socket unless someone calls ``read_response(push_request=True)``.
    """

    def __init__(self, port: int, sink: L1Sink) -> None:
        self.sink = sink
        self.conn = RedisConnection(
            host=HOST, port=port, protocol=3, retry=Retry(NoBackoff(), 0), socket_timeout=5.0
        )

    async def open(self) -> None:
        await self.conn.connect()
        await self.conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", PREFIX)
        reply = await self.conn.read_response()
        if reply not in (b"OK", "OK"):
            raise RuntimeError(f"CLIENT TRACKING answered {reply!r}")
        self.conn._parser.set_invalidation_push_handler(self._on_invalidate)  # type: ignore[attr-defined]

    async def _on_invalidate(self, push: list[Any]) -> bool:
        self.sink.evict(push[1])
        return True

    async def poll(self, wait_s: float) -> bool:
        got = await self.conn.read_response(push_request=True, timeout=wait_s)
        return got is not None

    async def aclose(self) -> None:
        await self.conn.disconnect()


class TrackingRedirectSource:
    """tracking-redirect: RESP2 PubSub on __redis__:invalidate + REDIRECT."""

    def __init__(self, port: int, sink: L1Sink) -> None:
        self.sink = sink
        self.name = f"inv-redirect-{os.getpid()}"
        self.sub = make_client(port, protocol=2, client_name=self.name)
        self.ps: PubSub = self.sub.pubsub()
        self.tracker = make_client(port, protocol=2, single_connection_client=True)

    async def open(self) -> None:
        await self.ps.subscribe(TRACKING_CHANNEL)
        await confirm_subscribed(self.ps)
        sub_id = await client_id_by_name(self.tracker, self.name)
        await self.tracker.client_tracking_on(clientid=sub_id, bcast=True, prefix=[PREFIX])

    async def poll(self, wait_s: float) -> bool:
        msg = await self.ps.get_message(ignore_subscribe_messages=True, timeout=wait_s)
        if msg is None:
            return False
        if msg["type"] == "message":
            self.sink.evict(msg["data"])
        return True

    async def aclose(self) -> None:
        await self.tracker.aclose()
        await self.ps.aclose()
        await self.sub.aclose()


async def confirm_subscribed(ps: PubSub) -> None:
    """Wait for the SUBSCRIBE confirmation: after it, no PUBLISH can be missed."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        msg = await ps.get_message(timeout=0.5)
        if msg is not None and msg["type"] == "subscribe":
            return
    raise RuntimeError("no SUBSCRIBE confirmation within 5 s")


async def client_id_by_name(client: aioredis.Redis, name: str) -> int:
    for entry in await client.client_list():
        if entry.get("name") == name:
            return int(entry["id"])
    raise RuntimeError(f"no client named {name!r}")


SOURCES: dict[
    str, Callable[[int, L1Sink], PubSubSource | TrackingPushSource | TrackingRedirectSource]
]
SOURCES = {
    "pubsub": PubSubSource,
    "tracking-push": TrackingPushSource,
    "tracking-redirect": TrackingRedirectSource,
}


async def handle_listen(cmd: dict[str, Any], pipe: Pipe) -> dict[str, Any]:
    sink = L1Sink(cmd["tag"], cmd["n"])
    source = SOURCES[cmd["listener"]](cmd["port"], sink)
    stopped = False
    try:
        await source.open()
        pipe.send({"ready": True})
        deadline = now_ns() + int(cmd["deadline_s"] * 1e9)
        while sink.remaining and now_ns() < deadline:
            if not await source.poll(POLL_S) and pipe.poll():
                pipe.recv()  # the orchestrator's "stop": A is done, give up on the rest
                stopped = True
                break
    finally:
        await source.aclose()
    return {
        "evicted": sink.evicted,
        "messages": sink.messages,
        "remaining": sink.remaining,
        "flush_all": sink.flush_all,
        "stopped": stopped,
    }


# =============================================================================== workers

Handler = Callable[[dict[str, Any], Pipe], Coroutine[Any, Any, dict[str, Any]]]
HANDLERS: dict[str, Handler] = {"write": handle_write, "listen": handle_listen}


def worker_main(pipe: Pipe) -> None:
    """Entry point of processes A and B: one asyncio.run per command."""
    for _ in range(10_000):
        cmd: dict[str, Any] = pipe.recv()
        op = cmd["op"]
        if op == "exit":
            return
        if op == "stop":  # a late stop for a listen that already finished
            continue
        try:
            result: dict[str, Any] = asyncio.run(HANDLERS[op](cmd, pipe))
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        pipe.send(result)


class Worker:
    def __init__(self, ctx: Any, name: str) -> None:
        self.name = name
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()

    def send(self, msg: dict[str, Any]) -> None:
        self.pipe.send(msg)

    def recv(self, timeout: float) -> dict[str, Any]:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"process {self.name} said nothing for {timeout} s")
        msg: dict[str, Any] = self.pipe.recv()
        if "error" in msg:
            raise RuntimeError(f"process {self.name}: {msg['error']}")
        return msg

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send({"op": "exit"})
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)
        self.pipe.close()


# =============================================================================== phases


def run_phase(
    a: Worker,
    b: Worker,
    port: int,
    *,
    mode: str,
    listener: str | None,
    tag: str,
    n: int,
    concurrency: int,
    pause_s: float,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """B starts listening (if any), then A writes; returns (A's, B's) results."""
    if listener is not None:
        b.send(
            {"op": "listen", "listener": listener, "tag": tag, "n": n, "port": port,
             "deadline_s": 60.0}
        )  # fmt: skip
        b.recv(15)  # ready: subscribed / tracking on
    a.send(
        {"op": "write", "mode": mode, "tag": tag, "n": n, "port": port,
         "concurrency": concurrency, "pause_s": pause_s}
    )  # fmt: skip
    written = a.recv(120)
    if listener is None:
        return written, None
    try:
        heard = b.recv(5)
    except TimeoutError:
        b.send({"op": "stop"})
        heard = b.recv(10)
    return written, heard


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    if not v:  # nothing delivered: null in JSON, "-" in the table
        return {"p50": None, "p99": None, "max": None, "min": None}
    return {
        "p50": round(percentile(v, 0.50), 1),
        "p99": round(percentile(v, 0.99), 1),
        "max": round(v[-1], 1),
        "min": round(v[0], 1),
    }


def analyse(written: dict[str, Any], heard: dict[str, Any]) -> dict[str, Any]:
    after: list[float] = []
    issue: list[float] = []
    for start, done, evicted in zip(
        written["starts"], written["dones"], heard["evicted"], strict=True
    ):
        if evicted:
            after.append((evicted - done) / 1000)
            issue.append((evicted - start) / 1000)
    n = len(written["starts"])
    delivered = len(after)
    evictions = [e for e in heard["evicted"] if e]
    span_ns = (max(evictions) - min(written["starts"])) if evictions else 0
    return {
        "writes": n,
        "delivered": delivered,
        "lost": n - delivered,
        "messages": heard["messages"],
        "keys_per_message": round(delivered / heard["messages"], 2) if heard["messages"] else 0,
        "delay_after_write_us": summarize(after),
        "delay_from_issue_us": summarize(issue),
        "evicted_before_write_returned_pct": (
            round(100 * sum(1 for d in after if d < 0) / delivered, 1) if delivered else 0.0
        ),
        "delivered_per_s": round(delivered / (span_ns / 1e9)) if span_ns else 0,
        "writes_per_s": round(n / (written["elapsed_ns"] / 1e9)),
    }


def redis_cpu_s(server: RedisServer) -> float:
    info = server.command("INFO", "cpu")
    text = info.decode() if isinstance(info, bytes) else ""
    total = 0.0
    for field in ("used_cpu_sys", "used_cpu_user"):
        m = re.search(rf"^{field}:([0-9.]+)", text, re.MULTILINE)
        if m:
            total += float(m.group(1))
    return total


def delivery_phase(
    a: Worker, b: Worker, port: int, *, label: str, n: int, concurrency: int, pause_s: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mech in MECHANISMS:
        listener = "pubsub" if mech.startswith("pubsub") else mech
        written, heard = run_phase(
            a, b, port, mode=WRITER_MODE[mech], listener=listener,
            tag=f"{label}-{mech}", n=n, concurrency=concurrency, pause_s=pause_s,
        )  # fmt: skip
        if heard is None:
            raise AssertionError("listener expected")
        out[mech] = analyse(written, heard)
    return out


def throughput_phase(
    a: Worker, b: Worker, server: RedisServer, *, n: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    raw: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in VARIANTS}
    for rnd in range(rounds):
        order = VARIANTS if rnd % 2 == 0 else tuple(reversed(VARIANTS))
        for name, mode, listener in order:
            cpu0 = redis_cpu_s(server)
            written, heard = run_phase(
                a, b, server.port, mode=mode, listener=listener, tag=f"tp{rnd}-{name}",
                n=n, concurrency=concurrency, pause_s=0.0,
            )  # fmt: skip
            cpu = redis_cpu_s(server) - cpu0
            delivered = n if heard is None else n - heard["remaining"]
            raw[name].append({
                "writes_per_s": n / (written["elapsed_ns"] / 1e9),
                "redis_cpu_us_per_write": cpu * 1e6 / n,
                "delivered": delivered,
                "messages": written["messages"] if heard is None else heard["messages"],
            })  # fmt: skip
    out: dict[str, Any] = {}
    base = raw["set-only"]
    for name, runs in raw.items():
        ratios = [r["writes_per_s"] / b_["writes_per_s"] for r, b_ in zip(runs, base, strict=True)]
        out[name] = {
            "writes_per_s": round(statistics.median(r["writes_per_s"] for r in runs)),
            "ratio_vs_set_only": round(statistics.median(ratios), 3),
            "ratio_per_round": [round(x, 3) for x in ratios],
            "redis_cpu_us_per_write": round(
                statistics.median(r["redis_cpu_us_per_write"] for r in runs), 2
            ),
            "invalidations_delivered": min(int(r["delivered"]) for r in runs),
            "messages": int(statistics.median(r["messages"] for r in runs)),
        }
    return out


# =============================================================================== facts


def _flags(info: Any) -> list[str]:
    """``flags`` of a CLIENT TRACKINGINFO reply (RESP3 map or RESP2 flat list)."""
    if isinstance(info, list):
        info = dict(zip(info[::2], info[1::2], strict=False))
    if not isinstance(info, dict):
        return []
    flags = info.get(b"flags", info.get("flags")) or []
    return [f.decode() if isinstance(f, bytes) else str(f) for f in flags]


async def _collect(ps: PubSub, seconds: float) -> list[dict[str, Any]]:
    """Every pub/sub message (subscribe confirmations too) for ``seconds``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg = await ps.get_message(timeout=0.05)
        except redis.RedisError as exc:
            out.append({"type": "error", "data": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(0.05)
            continue
        if msg is not None:
            out.append(msg)
    return out


async def _push_conn(port: int, name: str) -> tuple[RedisConnection, list[Any]]:
    """A RESP3 connection with BCAST tracking and a push handler appending to a list."""
    pushes: list[Any] = []

    async def on_invalidate(push: list[Any]) -> bool:
        pushes.append(push[1])
        return True

    conn = RedisConnection(
        host=HOST, port=port, protocol=3, client_name=name, retry=Retry(NoBackoff(), 0)
    )
    await conn.connect()
    await conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", PREFIX)
    await conn.read_response()
    conn._parser.set_invalidation_push_handler(on_invalidate)  # type: ignore[attr-defined]
    return conn, pushes


async def _read_pushes(conn: RedisConnection, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await conn.read_response(push_request=True, timeout=0.05)


async def fact_default_protocol(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    probe = make_client(port, client_name="fact-default")
    try:
        await probe.ping()
        resp = next(c["resp"] for c in await ctl.client_list() if c["name"] == "fact-default")
    finally:
        await probe.aclose()
    return {"redis_py_default_resp": int(resp)}


async def fact_pool(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    """CLIENT TRACKING through a pooled client lands on one arbitrary connection."""
    pooled = make_client(port, protocol=3, client_name="fact-pool")
    try:
        await pooled.client_tracking_on(bcast=True, prefix=[PREFIX])
        await asyncio.gather(*(pooled.get(f"{PREFIX}fact:pool:{i}") for i in range(8)))
        await ctl.set(f"{PREFIX}fact:pool:0", b"x")  # an invalidation for the tracking conn
        await asyncio.sleep(0.05)
        await asyncio.gather(*(pooled.get(f"{PREFIX}fact:pool:{i}") for i in range(8)))
        clients = [c for c in await ctl.client_list() if c["name"] == "fact-pool"]
    finally:
        await pooled.aclose()
    return {
        "pool_connections": len(clients),
        "pool_connections_tracking": sum(1 for c in clients if "t" in c["flags"]),
        "public_api_to_receive_invalidations": False,
    }


async def fact_push_kill(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    """Dedicated push connection killed: the read fails; a reconnect has no tracking."""
    conn, pushes = await _push_conn(port, "fact-push")
    try:
        cid = await client_id_by_name(ctl, "fact-push")
        await ctl.client_kill_filter(_id=str(cid))
        t0 = time.monotonic()
        try:
            await conn.read_response(push_request=True, timeout=2.0)
            read_error = "none"
        except redis.RedisError as exc:
            read_error = type(exc).__name__
        noticed_ms = (time.monotonic() - t0) * 1000
        await conn.disconnect()
        await conn.connect()  # what any reconnect does
        await conn.send_command("CLIENT", "TRACKINGINFO")
        flags = _flags(await conn.read_response())
        await ctl.set(f"{PREFIX}fact:push:after", b"x")
        await _read_pushes(conn, 0.3)
    finally:
        await conn.disconnect()
    return {
        "read_after_kill_raises": read_error,
        "kill_noticed_ms": round(noticed_ms, 1),
        "tracking_flags_after_reconnect": flags,
        "invalidations_after_reconnect": len(pushes),
    }


async def fact_client_kill(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    """redis-py's own auto-reconnect (default retry) silently drops tracking."""
    client = aioredis.Redis(
        host=HOST, port=port, protocol=3, single_connection_client=True, client_name="fact-rc"
    )
    try:
        await client.client_tracking_on(bcast=True, prefix=[PREFIX])
        before_id = await client.client_id()
        await ctl.client_kill_filter(_id=str(before_id))
        info = await client.execute_command("CLIENT", "TRACKINGINFO")  # reconnects silently
        after_id = await client.client_id()
    finally:
        await client.aclose()
    return {
        "auto_reconnected": after_id != before_id,
        "tracking_flags_after_auto_reconnect": _flags(info),
    }


async def fact_pubsub_kill(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    """PubSub killed: redis-py reconnects and resubscribes; the gap's messages are gone."""
    sub = make_client(port, client_name="fact-sub")
    ps = sub.pubsub()
    try:
        await ps.subscribe("fact:chan")
        await confirm_subscribed(ps)
        await ctl.client_kill_filter(_id=str(await client_id_by_name(ctl, "fact-sub")))
        gap_receivers = await ctl.publish("fact:chan", b"gap")
        first = await _collect(ps, 0.5)  # drives the reconnect
        after_receivers = await ctl.publish("fact:chan", b"after")
        second = await _collect(ps, 0.3)
    finally:
        await ps.aclose()
        await sub.aclose()
    data = [m["data"] for m in first + second if m["type"] == "message"]
    return {
        "publish_receivers_during_gap": gap_receivers,
        "resubscribed_automatically": any(m["type"] == "subscribe" for m in first),
        "errors_seen_by_reader": [m["data"] for m in first if m["type"] == "error"],
        "gap_message_received": b"gap" in data,
        "publish_receivers_after": after_receivers,
        "after_message_received": b"after" in data,
    }


async def fact_redirect(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    """REDIRECT: RESP3 target gets nothing via PubSub; a resubscribed target breaks it."""
    out: dict[str, Any] = {}
    # (1) redis-py's default (RESP3) PubSub as the redirect target.
    sub3 = make_client(port, client_name="fact-redir3")
    ps3 = sub3.pubsub()
    trk3 = make_client(port, single_connection_client=True)
    try:
        await ps3.subscribe(TRACKING_CHANNEL)
        await confirm_subscribed(ps3)
        await trk3.client_tracking_on(
            clientid=await client_id_by_name(ctl, "fact-redir3"), bcast=True, prefix=[PREFIX]
        )
        await ctl.set(f"{PREFIX}fact:redir3", b"x")
        got = [m for m in await _collect(ps3, 0.3) if m["type"] == "message"]
        out["resp3_pubsub_target_receives"] = len(got)
    finally:
        await trk3.aclose()
        await ps3.aclose()
        await sub3.aclose()
    # (2) RESP2 target killed: PubSub comes back with a new client id.
    sub2 = make_client(port, protocol=2, client_name="fact-redir2")
    ps2 = sub2.pubsub()
    trk2 = make_client(port, protocol=2, single_connection_client=True)
    try:
        await ps2.subscribe(TRACKING_CHANNEL)
        await confirm_subscribed(ps2)
        old_id = await client_id_by_name(ctl, "fact-redir2")
        await trk2.client_tracking_on(clientid=old_id, bcast=True, prefix=[PREFIX])
        await ctl.set(f"{PREFIX}fact:redir2:a", b"x")
        before = [m for m in await _collect(ps2, 0.3) if m["type"] == "message"]
        await ctl.client_kill_filter(_id=str(old_id))
        await _collect(ps2, 0.5)  # reconnect + resubscribe
        new_id = await client_id_by_name(ctl, "fact-redir2")
        await ctl.set(f"{PREFIX}fact:redir2:b", b"x")
        after = [m for m in await _collect(ps2, 0.3) if m["type"] == "message"]
        flags = _flags(await trk2.execute_command("CLIENT", "TRACKINGINFO"))
    finally:
        await trk2.aclose()
        await ps2.aclose()
        await sub2.aclose()
    out |= {
        "resp2_target_receives_before_kill": len(before),
        "target_id_changed_on_resubscribe": new_id != old_id,
        "resp2_target_receives_after_kill": len(after),
        "tracker_flags_after_target_kill": flags,
    }
    return out


async def fact_server_side_events(port: int, ctl: aioredis.Redis) -> dict[str, Any]:
    """Tracking also reports writes that bypass the library: expiry, DEL, FLUSHDB."""
    conn, pushes = await _push_conn(port, "fact-events")
    try:
        await ctl.set(f"{PREFIX}fact:exp", b"x", px=50)
        await _read_pushes(conn, 0.6)  # active expiry runs 10 times a second
        expired = any(p and f"{PREFIX}fact:exp".encode() in p for p in pushes)
        await ctl.execute_command("FLUSHDB")  # our private server only
        await _read_pushes(conn, 0.2)
        flush_null = any(p is None for p in pushes)
    finally:
        await conn.disconnect()
    return {"tracking_invalidates_on_expiry": expired, "tracking_flushdb_sends_null": flush_null}


async def operational_facts(port: int) -> dict[str, Any]:
    ctl = make_client(port, protocol=2, single_connection_client=True)
    facts: dict[str, Any] = {}
    try:
        checks: dict[str, Callable[[int, aioredis.Redis], Awaitable[dict[str, Any]]]] = {
            "default_protocol": fact_default_protocol,
            "tracking_via_pool": fact_pool,
            "tracking_push_conn_killed": fact_push_kill,
            "tracking_client_auto_reconnect": fact_client_kill,
            "pubsub_conn_killed": fact_pubsub_kill,
            "tracking_redirect": fact_redirect,
            "tracking_server_events": fact_server_side_events,
        }
        for name, check in checks.items():
            try:
                facts[name] = await asyncio.wait_for(check(port, ctl), 15)
            except Exception as exc:
                facts[name] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await ctl.aclose()
    facts["cluster"] = {
        "source": "redis-py source and Redis docs; not measured in this run",
        "pubsub": "SPUBLISH/SSUBSCRIBE work in redis-py's asyncio RedisCluster (field notes); "
        "one channel per namespace lives on one shard; plain PUBLISH is broadcast to "
        "every node over the cluster bus",
        "tracking": "per node: a tracking connection only hears about keys stored on the node it "
        "is connected to, so B needs one tracking connection per master, re-enabled on "
        "every reconnect, failover and slot migration; asyncio RedisCluster has no "
        "support for it (sync RedisCluster only routes CLIENT TRACKING to all nodes)",
    }
    return facts


# =============================================================================== output


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def print_table(doc: dict[str, Any]) -> None:
    env = doc["environment"]
    seq, burst, tp = doc["sequential"], doc["burst"], doc["throughput"]
    print(
        f"redis-server {env['redis_server']} (private, 127.0.0.1:{env['port']}), "
        f"redis-py {env['redis_py']}, Python {env['python']}, {env['cpus']} CPUs; "
        f"A and B are separate processes; runtime {env['runtime_s']} s"
    )
    print()
    print(
        f"Invalidation delay in µs after A's SET returned (sequential: {env['seq_writes']} "
        f"writes ~1 ms apart; burst: {env['burst_writes']} writes, "
        f"{env['burst_concurrency']} tasks)"
    )
    head = (
        f"{'mechanism':<18} {'p50':>6} {'p99':>6} {'max':>7} {'issue p50':>9} "
        f"{'<0 %':>5} {'lost':>4} | {'burst deliv/s':>13} {'p99':>7} {'max':>7} "
        f"{'issue p99':>9} {'keys/msg':>8} {'A w/s':>7} {'lost':>4} | {'write ratio':>11}"
    )
    print(head)
    print("-" * len(head))
    for mech in MECHANISMS:
        s, b = seq[mech], burst[mech]
        sd, bd = s["delay_after_write_us"], b["delay_after_write_us"]
        ratio = tp[mech if mech in tp else "set-only"]["ratio_vs_set_only"]
        print(
            f"{mech:<18} {_fmt(sd['p50']):>6} {_fmt(sd['p99']):>6} {_fmt(sd['max']):>7} "
            f"{_fmt(s['delay_from_issue_us']['p50']):>9} "
            f"{s['evicted_before_write_returned_pct']:>5.1f} {s['lost']:>4} | "
            f"{b['delivered_per_s']:>13,} {_fmt(bd['p99']):>7} {_fmt(bd['max']):>7} "
            f"{_fmt(b['delay_from_issue_us']['p99']):>9} "
            f"{b['keys_per_message']:>8} {b['writes_per_s']:>7,} {b['lost']:>4} | {ratio:>11.3f}"
        )
    print()
    print(
        f"Write throughput: {env['throughput_writes']} writes, "
        f"{env['throughput_concurrency']} tasks, median of {env['rounds']} interleaved rounds"
    )
    head = (
        f"{'variant':<18} {'writes/s':>9} {'ratio':>6} {'per round':>16} "
        f"{'redis CPU µs/write':>18} {'PUBLISHes':>9} {'delivered':>9}"
    )
    print(head)
    print("-" * len(head))
    for name, row in tp.items():
        rounds = ",".join(f"{x:.2f}" for x in row["ratio_per_round"])
        print(
            f"{name:<18} {row['writes_per_s']:>9,} {row['ratio_vs_set_only']:>6.3f} "
            f"{rounds:>16} {row['redis_cpu_us_per_write']:>18.2f} "
            f"{row['messages'] if name.startswith('pubsub') else 0:>9,} "
            f"{row['invalidations_delivered']:>9,}"
        )
    print()
    print("Operational facts (checked in this run unless noted):")
    for name, value in doc["facts"].items():
        if isinstance(value, dict):
            body = ", ".join(f"{k}={v}" for k, v in value.items())
        else:
            body = str(value)
        print(f"  {name}: {body}")


# =============================================================================== main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seq-writes", type=int, default=2000)
    parser.add_argument("--burst-writes", type=int, default=10_000)
    parser.add_argument("--burst-concurrency", type=int, default=200)
    parser.add_argument("--throughput-writes", type=int, default=20_000)
    parser.add_argument("--throughput-concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (interleaved)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    ctx = mp.get_context("spawn")
    with RedisServer() as server:
        a = Worker(ctx, "A-writer")
        b = Worker(ctx, "B-listener")
        try:
            seq = delivery_phase(
                a, b, server.port, label="seq", n=args.seq_writes, concurrency=1, pause_s=0.001
            )
            burst = delivery_phase(
                a, b, server.port, label="burst", n=args.burst_writes,
                concurrency=args.burst_concurrency, pause_s=0.0,
            )  # fmt: skip
            tp = throughput_phase(
                a, b, server, n=args.throughput_writes,
                concurrency=args.throughput_concurrency, rounds=args.rounds,
            )  # fmt: skip
        finally:
            a.close()
            b.close()
        facts = asyncio.run(operational_facts(server.port))
        port = server.port
    doc: dict[str, Any] = {
        "environment": {
            "redis_server": redis_server_version(),
            "redis_py": redis.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "port": port,
            "clock": "CLOCK_MONOTONIC (system-wide)",
            "seq_writes": args.seq_writes,
            "burst_writes": args.burst_writes,
            "burst_concurrency": args.burst_concurrency,
            "throughput_writes": args.throughput_writes,
            "throughput_concurrency": args.throughput_concurrency,
            "rounds": args.rounds,
            "runtime_s": round(time.monotonic() - started, 1),
        },
        "sequential": seq,
        "burst": burst,
        "throughput": tp,
        "facts": facts,
    }
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
