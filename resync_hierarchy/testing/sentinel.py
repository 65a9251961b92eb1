"""A private Sentinel deployment for tests: one master, one replica and three
sentinels, each a ``redis-server`` child process on a free 127.0.0.1 port.

Sentinels run as ``redis-server CONF --sentinel`` (Debian ships no
``redis-sentinel`` binary here), with short timeouts so that a failover takes
about a second (``down-after-milliseconds 1000``, ``failover-timeout 3000``).
Every process is a :class:`~resync_hierarchy.testing.redis_server.RedisServer`:
stopped by pid, in a temporary directory removed afterwards.

>>> with SentinelDeployment() as d:
...     url = d.url()                      # redis+sentinel://127.0.0.1:P1,.../mymaster/0
...     d.kill_master()                    # SIGKILL; the sentinels promote the replica
...     d.wait_for_new_master(old)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from resync_hierarchy.testing.redis_server import (
    HOST,
    RedisReplyError,
    RedisServer,
    RedisServerError,
    send_command,
)

__all__ = ["SentinelDeployment", "SentinelError"]

SERVICE = "mymaster"
READY_TIMEOUT = 20.0


class SentinelError(RedisServerError):
    """The deployment did not reach the expected state in time."""


class SentinelDeployment:
    """Master + replica + three sentinels on loopback (see the module docstring)."""

    def __init__(
        self,
        *,
        service: str = SERVICE,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        server_args: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.server_args = server_args
        self.servers: list[RedisServer] = []  # the master first, then the replica
        self.sentinels: list[RedisServer] = []
        self._dir: Path | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> Self:
        """Start every process and wait until each sentinel knows the replica
        and the two other sentinels (a failover needs both)."""
        try:
            self._dir = Path(tempfile.mkdtemp(prefix="resync-sentinel-"))
            master = RedisServer(extra_args=self.server_args).start()
            self.servers.append(master)
            replica = RedisServer(
                extra_args=(*self.server_args, "--replicaof", HOST, str(master.port))
            ).start()
            self.servers.append(replica)
            for index in range(3):
                conf = self._dir / f"sentinel-{index}.conf"
                conf.write_text(
                    f"sentinel monitor {self.service} {HOST} {master.port} 2\n"
                    f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.service} 1\n"
                )
                self.sentinels.append(RedisServer(extra_args=("--sentinel",), config_file=conf))
                self.sentinels[-1].start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (by pid) and remove the temporary files. Idempotent."""
        for server in (*self.sentinels, *self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.sentinels.clear()
        self.servers.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- facts -----------------------------------------------------------------------

    def url(self, db: int = 0, *, query: str = "") -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/service/db``."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{db}" + (f"?{query}" if query else "")

    def sentinel_command(self, *args: str | int, timeout: float = 2.0) -> object:
        """Send a command to the first sentinel that answers."""
        last: Exception | None = None
        for sentinel in self.sentinels:
            if not sentinel.is_running():
                continue
            try:
                return send_command(sentinel.port, *args, timeout=timeout)
            except (OSError, RedisReplyError) as exc:
                last = exc
        raise SentinelError(f"no sentinel answered {args!r}: {last}")

    def master_address(self) -> tuple[str, int]:
        """The master as the sentinels name it now."""
        reply = self.sentinel_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        if not isinstance(reply, list) or len(reply) != 2:
            raise SentinelError(f"unexpected reply naming the master: {reply!r}")
        host, port = reply
        if not isinstance(host, bytes) or not isinstance(port, bytes):
            raise SentinelError(f"unexpected reply naming the master: {reply!r}")
        return host.decode(), int(port)

    def server_at(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise SentinelError(f"no server of this deployment on port {port}")

    @property
    def master(self) -> RedisServer:
        """The server the sentinels name as master."""
        return self.server_at(self.master_address()[1])

    def _sentinel_facts(self, sentinel: RedisServer) -> dict[str, str]:
        reply = send_command(sentinel.port, "SENTINEL", "MASTER", self.service, timeout=1.0)
        if not isinstance(reply, list):
            return {}
        items = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
        return dict(zip(items[::2], items[1::2], strict=False))

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every live sentinel sees an up master, its live replicas and
        the other live sentinels."""
        deadline = time.monotonic() + timeout
        live_sentinels = [s for s in self.sentinels if s.is_running()]
        replicas = sum(1 for s in self.servers if s.is_running()) - 1
        facts: dict[str, str] = {}
        while True:
            try:
                ready = True
                for sentinel in live_sentinels:
                    facts = self._sentinel_facts(sentinel)
                    if (
                        facts.get("flags") != "master"
                        or int(facts.get("num-slaves", "0")) < replicas
                        or int(facts.get("num-other-sentinels", "0")) < len(live_sentinels) - 1
                    ):
                        ready = False
                        break
                if ready and self._replicas_linked():
                    return
            except (OSError, RedisReplyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise SentinelError(f"sentinel deployment not ready within {timeout}s: {facts}")
            time.sleep(0.05)

    def _replicas_linked(self) -> bool:
        master_port = self.master_address()[1]
        for server in self.servers:
            if server.port == master_port or not server.is_running():
                continue
            info = server.command("INFO", "replication")
            if not isinstance(info, bytes) or b"master_link_status:up" not in info:
                return False
        return True

    # -- failures ----------------------------------------------------------------------

    def failover(self) -> tuple[str, int]:
        """``SENTINEL FAILOVER``: the sentinels promote the replica without
        waiting for the master to fail. Returns the master it replaces."""
        old = self.master_address()
        self.sentinel_command("SENTINEL", "FAILOVER", self.service)
        return old

    def kill_master(self) -> tuple[str, int]:
        """SIGKILL the current master. Returns its address."""
        old = self.master_address()
        self.server_at(old[1]).kill()
        return old

    def wait_for_new_master(self, old: tuple[str, int], timeout: float = 15.0) -> tuple[str, int]:
        """Until the sentinels name a master other than ``old`` that answers
        as a master; returns its address."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(SentinelError, OSError, RedisReplyError):
                address = self.master_address()
                if address != old:
                    info = send_command(address[1], "INFO", "replication", timeout=1.0)
                    if isinstance(info, bytes) and b"role:master" in info:
                        return address
            if time.monotonic() > deadline:
                raise SentinelError(f"no new master named within {timeout}s (old {old})")
            time.sleep(0.01)

    def flush(self) -> None:
        """Empty the master (the replica follows) and reset its statistics."""
        master = self.master
        for cmd in (("FLUSHALL",), ("SCRIPT", "FLUSH"), ("CONFIG", "RESETSTAT")):
            master.command(*cmd)
