"""A private, throw-away Redis Cluster for tests and benchmarks.

:class:`RedisClusterHarness` starts ``masters * (1 + replicas)`` private
``redis-server`` children (:class:`~resync_hierarchy.testing.redis_server.RedisServer`:
free 127.0.0.1 ports, a temp dir each, never port 6379, stopped by pid),
joins them with ``redis-cli --cluster create … --cluster-yes`` and waits until
every live node reports ``cluster_state:ok`` and agrees on one owner for each
of the 16384 slots.

>>> with RedisClusterHarness(masters=3) as cluster:
...     cluster.url          # 'redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3'

Fault injection: :meth:`kill_master` SIGKILLs one master; with replicas and a
short ``node_timeout_ms`` a replica is promoted, which :meth:`wait_ok` waits
for. Without replicas the cluster reports ``fail`` until the node returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self

from resync_hierarchy.testing.redis_server import (
    HOST,
    RedisReplyError,
    RedisServer,
    RedisServerError,
    RespValue,
    free_port,
    redis_cli_binary,
)

if TYPE_CHECKING:
    from resync_hierarchy.testing.chaos import ChaosTarget, ScenarioReport

__all__ = ["RedisClusterHarness", "scenario_cluster_failover"]

SLOTS = 16384
_CREATE_TIMEOUT = 60.0
_BUS_OFFSET = 10000  # the cluster bus listens on port + 10000
_START_ATTEMPTS = 10


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose bus port (+10000) is free too (so at most 55535)."""
    while True:
        port = free_port()
        if port + _BUS_OFFSET <= 65535 and _port_is_free(port + _BUS_OFFSET):
            return port


def _start_node(args: list[str]) -> RedisServer:
    for attempt in range(_START_ATTEMPTS):
        server = RedisServer(extra_args=args, port=_cluster_port())
        try:
            return server.start()
        except RedisServerError:
            # Another process took the port or its bus port meanwhile: pick again.
            with contextlib.suppress(Exception):
                server.stop()
            if attempt == _START_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _text(reply: RespValue) -> str:
    return reply.decode() if isinstance(reply, bytes) else ""


class RedisClusterHarness:
    """``masters`` masters, each with ``replicas`` replicas, on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 0, *, node_timeout_ms: int = 2000) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.masters_wanted = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.servers: list[RedisServer] = []

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every node as a seed."""
        seeds = ",".join(f"{HOST}:{s.port}" for s in self.servers)
        return f"redis+cluster://{seeds}"

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def start(self, timeout: float = _CREATE_TIMEOUT) -> Self:
        """Start the servers, create the cluster, wait for ``cluster_state:ok``."""
        cli = redis_cli_binary()
        if cli is None:
            raise RedisServerError("redis-cli not found on PATH (apt-get install redis-tools)")
        total = self.masters_wanted * (1 + self.replicas)
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica whose master died must take over however long it was cut off.
            "--cluster-replica-validity-factor", "0",
            # Reads of slots still served must go on while one shard is down.
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
        try:
            for _ in range(total):
                self.servers.append(_start_node(args))
            nodes = [f"{HOST}:{s.port}" for s in self.servers]
            create = [cli, "--cluster", "create", *nodes]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            res = subprocess.run(  # noqa: S603 - redis-cli on our own servers
                create,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            created = res.returncode == 0 and "[OK] All 16384 slots covered" in res.stdout
            if created:
                self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        if not created:
            self.stop()
            raise RedisServerError(
                f"redis-cli --cluster create failed (exit {res.returncode}):\n"
                f"{(res.stdout + res.stderr)[-2000:]}"
            )
        return self

    def stop(self) -> None:
        """Stop every node by pid and remove their directories. Idempotent."""
        for server in self.servers:
            server.stop()
        self.servers = []

    def __enter__(self) -> Self:
        if not self.servers:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------

    def live_servers(self) -> list[RedisServer]:
        return [s for s in self.servers if s.is_running()]

    def masters(self) -> list[RedisServer]:
        """Live nodes that currently call themselves master."""
        found = []
        for server in self.live_servers():
            try:
                role = server.command("ROLE", timeout=1.0)
            except (OSError, RedisReplyError):
                continue
            if isinstance(role, list) and role and role[0] == b"master":
                found.append(server)
        return found

    def is_ok(self) -> bool:
        """Every live node says ``cluster_state:ok`` and the live masters
        together own all 16384 slots."""
        live = self.live_servers()
        if not live:
            return False
        for server in live:
            try:
                info = server.command("CLUSTER", "INFO", timeout=1.0)
            except (OSError, RedisReplyError):
                return False
            if not isinstance(info, bytes) or b"cluster_state:ok" not in info:
                return False
        owned = 0
        live_ports = {s.port for s in live}
        try:
            nodes = live[0].command("CLUSTER", "NODES", timeout=1.0)
        except (OSError, RedisReplyError):
            return False
        for line in _text(nodes).splitlines():
            fields = line.split()
            if len(fields) < 8 or "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(re.split(r"[:@]", fields[1])[1])
            if port not in live_ports:
                continue
            for spec in fields[8:]:
                if spec.startswith("["):
                    continue  # a slot being migrated
                low, _, high = spec.partition("-")
                owned += int(high or low) - int(low) + 1
        return owned == SLOTS

    def wait_ok(self, timeout: float = 30.0) -> float:
        """Wait until :meth:`is_ok`; returns the seconds waited."""
        started = time.monotonic()
        while not self.is_ok():
            if time.monotonic() - started > timeout:
                raise RedisServerError(
                    f"cluster on ports {self.ports} not ok after {timeout:.0f}s:\n"
                    + "\n".join(s.log_tail(5) for s in self.live_servers())
                )
            time.sleep(0.05)
        return time.monotonic() - started

    # -- faults and housekeeping -------------------------------------------------------

    def master_for_slot(self, slot: int) -> RedisServer:
        """The live master that serves ``slot`` now."""
        for server in self.masters():
            slots = server.command("CLUSTER", "SLOTS", timeout=1.0)
            for entry in slots if isinstance(slots, list) else []:
                if not isinstance(entry, list) or len(entry) < 3:
                    continue
                low, high, owner = entry[0], entry[1], entry[2]
                if (
                    isinstance(low, int)
                    and isinstance(high, int)
                    and isinstance(owner, list)
                    and low <= slot <= high
                    and owner[1] == server.port
                ):
                    return server
        raise RedisServerError(f"no live master serves slot {slot}")

    def kill_master(self, slot: int = 0) -> RedisServer:
        """SIGKILL the master serving ``slot``; returns it (stopped)."""
        victim = self.master_for_slot(slot)
        victim.kill()
        return victim

    def migrate_slot(self, slot: int, to: RedisServer, *, finish: bool = True) -> RedisServer:
        """Move ``slot`` (and its keys) to the master ``to``, the way
        ``redis-cli --cluster reshard`` does: IMPORTING/MIGRATING, MIGRATE
        the keys, then SETSLOT NODE on every master. With ``finish=False`` it
        stops before the last step: the slot is half-moved, and clients get
        ASK for the keys already moved. Returns the previous owner."""
        source = self.master_for_slot(slot)
        if source.port == to.port:
            raise ValueError(f"slot {slot} is already served by port {to.port}")
        source_id = _text(source.command("CLUSTER", "MYID"))
        target_id = _text(to.command("CLUSTER", "MYID"))
        to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not isinstance(keys, list) or not keys:
                break
            batch = [k for k in keys if isinstance(k, bytes)]
            source.command("MIGRATE", HOST, to.port, "", 0, 5000, "KEYS", *batch, timeout=10.0)
        if finish:
            for server in self.masters():
                server.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return source

    def flush(self) -> None:
        """Drop every key and cached Lua script on every live master."""
        for server in self.masters():
            server.command("FLUSHALL", timeout=5.0)
            server.command("SCRIPT", "FLUSH", timeout=5.0)

    def count_keys(self) -> dict[int, int]:
        """Keys held by each live master, by port."""
        counts: dict[int, int] = {}
        for server in self.masters():
            size = server.command("DBSIZE", timeout=1.0)
            counts[server.port] = size if isinstance(size, int) else 0
        return counts


# --------------------------------------------------------------------------- chaos


async def scenario_cluster_failover(
    cluster: RedisClusterHarness, target: ChaosTarget, *, victim_slot: int | None = None
) -> ScenarioReport:
    """A master killed (SIGKILL) under load; its replica takes over.

    The load and the checks are those of the single-server chaos scenarios
    (:mod:`resync_hierarchy.testing.chaos`): no exception reaches a caller,
    every call returns within ``l2_timeout`` + 100 ms, the breaker is closed
    within ``breaker_reset_timeout`` + 1 s of the failover completing (the
    "recovery" phase starts when every slot has a live master again), and no
    acknowledged write is lost or replaced by an older value. The outage is
    lifted by the cluster itself, so a write that reached the old master
    just before the kill may be missing (not older) if it had not reached
    the replica. The breaker need not open: the other masters keep answering.

    ``victim_slot``: the slot whose master is killed; by default the slot of
    the namespace's invalidation channel, so the subscription must move too.
    """
    from resync_hierarchy.hierarchy.core import namespace_prefix
    from resync_hierarchy.l2.cluster import slot_of
    from resync_hierarchy.testing.chaos import ScenarioReport, _run_outage

    if not cluster.replicas:
        raise ValueError("a failover needs replicas: RedisClusterHarness(replicas=1)")
    if victim_slot is None:
        victim_slot = slot_of(b"resync:inv:" + namespace_prefix(target.namespace)[:-1])
    report = ScenarioReport(
        "cluster_failover",
        f"SIGKILL the master of slot {victim_slot} of a {cluster.masters_wanted}-master "
        "cluster with replicas, under load; its replica is promoted",
    )
    victims: list[int] = []

    async def kill() -> None:
        victim = await asyncio.to_thread(cluster.kill_master, victim_slot)
        victims.append(victim.port)

    async def failed_over() -> None:
        waited = await asyncio.to_thread(cluster.wait_ok, 30.0)
        report.measurements.extra["failover_wait_after_outage_s"] = round(waited, 3)

    started = time.monotonic()
    await _run_outage(
        report,
        target,
        inject=kill,
        lift=failed_over,
        label="master_killed",
        expect_open=False,
        data_lost_on_inject=True,
    )
    report.measurements.extra["killed_master_port"] = victims[0] if victims else None
    report.measurements.extra["scenario_s"] = round(time.monotonic() - started, 3)
    return report
