"""Private, throw-away ``redis-server`` processes for tests and benchmarks.

Every server started here is a child process of the test run (``daemonize no``),
listens on a free port of 127.0.0.1 only, keeps no data on disk and is stopped by
pid: by the fixture finalizers, by an :mod:`atexit` hook as a backstop and, on
Linux, by ``PR_SET_PDEATHSIG`` if the test process dies without running either.

Nothing in this module ever talks to a server it did not start itself: readiness
is confirmed by checking that the ``process_id`` reported by ``INFO server`` is the
pid of our own child, so a port collision can never make us use someone else's
Redis. Port 6379 is refused outright.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "INSTALL_HINT",
    "SKIP_REASON",
    "RedisReplyError",
    "RedisServer",
    "RedisServerError",
    "free_port",
    "redis_cli_binary",
    "redis_required_by_env",
    "redis_server_binary",
    "redis_server_version",
    "require_redis_reason",
    "send_command",
]

HOST = "127.0.0.1"
#: Ports we refuse to start on (or talk to): 6379 belongs to someone else.
FORBIDDEN_PORTS = frozenset({6379})

INSTALL_HINT = "apt-get install redis-server"
SKIP_REASON = (
    f"redis-server not found on PATH; install it ({INSTALL_HINT}) to run the real-Redis tests"
)
_TRUE_VALUES = frozenset({"1", "true", "yes", "on"})

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CLI_TIMEOUT = 10.0
_START_ATTEMPTS = 5

RespValue = bytes | int | None | list["RespValue"]


class RedisServerError(RuntimeError):
    """The private redis-server could not be started, stopped or talked to."""


class RedisReplyError(Exception):
    """The server answered a command with an error reply (``-ERR ...``)."""


# --------------------------------------------------------------------------- discovery


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def redis_cli_binary() -> str | None:
    """Path of ``redis-cli`` on PATH, or None."""
    return shutil.which("redis-cli")


@functools.cache
def _binary_version(path: str) -> str | None:
    try:
        out = subprocess.run(  # noqa: S603 - our own redis-server binary, fixed arguments
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # "Redis server v=7.0.15 sha=..." / "redis-cli 7.0.15"
    m = re.search(r"(?:v=|redis-cli )(\d+(?:\.\d+)*)", out)
    return m.group(1) if m else None


def redis_server_version() -> str | None:
    """Version of the ``redis-server`` on PATH (e.g. ``"7.0.15"``), or None."""
    path = redis_server_binary()
    return _binary_version(path) if path else None


def _major(version: str | None) -> int:
    if not version:
        return 0
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


def redis_required_by_env() -> bool:
    """True when CI (``CI=true``/``1``) or ``RESYNC_REQUIRE_REDIS=1`` demands real Redis."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE_VALUES
        for var in ("CI", "RESYNC_REQUIRE_REDIS")
    )


def require_redis_reason() -> str | None:
    """None if the real-Redis tests can run here, otherwise why not."""
    if redis_server_binary() is None:
        return SKIP_REASON
    if redis_cli_binary() is None:
        return (
            "redis-cli not found on PATH; install it (apt-get install redis-tools) "
            "to run the real-Redis tests"
        )
    return None


# --------------------------------------------------------------------------- tiny RESP client


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0, read it, close)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f: Callable[[int], bytes], readline: Callable[[], bytes]) -> RespValue:
    line = readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed by the server")
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_reply(f, readline) for _ in range(n)]
    raise ConnectionError(f"unexpected RESP reply {line!r}")


def send_command(
    port: int, *args: str | bytes | int, host: str = HOST, timeout: float = 2.0
) -> RespValue:
    """Send one command over a fresh connection and return the parsed RESP2 reply.

    Raises OSError (incl. ``TimeoutError``/``ConnectionRefusedError``) on transport
    problems and :class:`RedisReplyError` on an error reply.
    """
    if port in FORBIDDEN_PORTS:
        raise ValueError(f"refusing to talk to port {port}: it is not one of our servers")
    if host != HOST:
        raise ValueError(f"refusing to talk to {host}: test traffic stays on {HOST}")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as f:
            return _read_reply(f.read, f.readline)


# --------------------------------------------------------------------------- process backstops

_LIVE: set[RedisServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _kill_all_at_exit() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.kill()
        with contextlib.suppress(Exception):
            server._cleanup_dir()


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """On Linux, make the child get SIGKILL when the test process dies.

    Only safe when spawning from the main thread: PDEATHSIG fires when the
    *thread* that forked exits, and a worker thread may exit long before the run.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent:  # parent already gone before prctl took effect
            os._exit(1)

    return preexec


# --------------------------------------------------------------------------- the server


class RedisServer:
    """One private ``redis-server`` child process on a free 127.0.0.1 port.

    >>> with RedisServer() as srv:
    ...     srv.cli("SET", "k", "v")
    """

    host = HOST

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """``config_file``: a redis.conf read first; the port, bind address,
        data directory and persistence settings given here still win."""
        if port is not None and port in FORBIDDEN_PORTS:
            raise ValueError(f"port {port} is reserved for a server that is not ours")
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.config_file = None if config_file is None else os.fspath(config_file)
        self._port: int | None = port
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_pid: int | None = None
        self._dir: Path | None = None
        self._paused = False

    # -- properties ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("server not started yet: no port chosen")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """Pid of the current (or, once stopped, the last) redis-server process."""
        if self._last_pid is None:
            raise RedisServerError("server never started: no pid")
        return self._last_pid

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise RedisServerError("server not started yet: no directory")
        return self._dir

    @property
    def logfile(self) -> Path:
        return self.directory / "redis.log"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RedisServer {HOST}:{self._port} pid={self._last_pid} {state}>"

    # -- lifecycle -------------------------------------------------------------------

    def is_running(self) -> bool:
        """True while the child process exists (a paused server counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start the server and wait until it answers PING; returns self."""
        if self.is_running():
            raise RedisServerError(f"{self!r} is already running")
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerError(SKIP_REASON)
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="resync-redis-"))
        attempts = 1 if self._fixed_port else _START_ATTEMPTS
        try:
            for attempt in range(1, attempts + 1):
                if not self._fixed_port:
                    self._port = free_port()
                try:
                    self._spawn_and_wait(binary, timeout)
                except _PortInUseError:
                    if attempt == attempts:
                        raise
                    continue
                self._fixed_port = True  # restart() must come back on the same port
                return self
        except BaseException:
            self.kill()
            self._cleanup_dir()
            raise
        raise AssertionError("unreachable")

    def _command_line(self, binary: str) -> list[str]:
        d = self.directory
        args = [
            binary,
            *([self.config_file] if self.config_file is not None else []),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(d),
            "--daemonize", "no",
            "--logfile", str(d / "redis.log"),
        ]  # fmt: skip
        if _major(_binary_version(binary)) >= 7:
            args += ["--enable-debug-command", "local"]
        return [*args, *self.extra_args]

    def _spawn_and_wait(self, binary: str, timeout: float) -> None:
        d = self.directory
        offsets = {name: _size(d / name) for name in ("redis.log", "stdio.log")}
        with open(d / "stdio.log", "ab") as stdio:
            proc = subprocess.Popen(  # noqa: S603 - redis-server from PATH, our arguments
                self._command_line(binary),
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                cwd=d,
                preexec_fn=_pdeathsig_preexec(),  # noqa: PLW1509 - main-thread only, see there
            )
        self._proc = proc
        self._last_pid = proc.pid
        self._paused = False
        with _LIVE_LOCK:
            _LIVE.add(self)

        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                self._reap()
                log = self._new_log(offsets)
                if "Address already in use" in log and not self._fixed_port:
                    raise _PortInUseError(f"port {self._port} was taken; retrying")
                raise RedisServerError(
                    f"redis-server on port {self._port} exited with code {proc.returncode} "
                    f"during startup:\n{_tail(log)}"
                )
            if self._answers_as_ours(proc.pid):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{timeout:.0f}s:\n{_tail(self._new_log(offsets))}"
                )
            time.sleep(0.01)

    def _answers_as_ours(self, pid: int) -> bool:
        try:
            if send_command(self.port, "PING", timeout=0.5) != b"PONG":
                return False
            info = send_command(self.port, "INFO", "server", timeout=0.5)
        except (OSError, RedisReplyError):
            return False
        m = re.search(rb"process_id:(\d+)", info if isinstance(info, bytes) else b"")
        # Someone else's server on this port answers with a different pid: keep
        # waiting, our child will die with "Address already in use".
        return m is not None and int(m.group(1)) == pid

    def _new_log(self, offsets: dict[str, int]) -> str:
        parts = []
        for name, offset in offsets.items():
            path = self.directory / name
            with contextlib.suppress(OSError), open(path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace").strip()
                if text:
                    parts.append(f"--- {name} ---\n{text}")
        return "\n".join(parts) or "(no log output)"

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server log (for assertion messages)."""
        return _tail(self._new_log({"redis.log": 0, "stdio.log": 0}), lines)

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=STOP_TIMEOUT)
            if self._proc.poll() is not None:
                self._proc = None
                self._paused = False
                with _LIVE_LOCK:
                    _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL the server and wait for it (no-op if it is not running)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; removes the temp dir. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                if self._paused:  # a stopped process never handles SIGTERM
                    proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.kill()
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._dir is not None and not self.is_running():
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing is answered."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause` (harmless if not paused)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise RedisServerError(f"{self!r} is not running")
        self._proc.send_signal(sig)

    def restart(self, timeout: float = START_TIMEOUT) -> Self:
        """SIGKILL, then start again on the SAME port (empty: nothing is persisted)."""
        self.kill()
        return self.start(timeout=timeout)

    # -- talking to it -------------------------------------------------------------

    def command(self, *args: str | bytes | int, timeout: float = 2.0) -> RespValue:
        """Send one command to THIS server over a fresh raw connection."""
        return send_command(self.port, *args, timeout=timeout)

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers PING within ``timeout``."""
        try:
            return self.command("PING", timeout=timeout) == b"PONG"
        except (OSError, RedisReplyError):
            return False

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """Run ``redis-cli -h 127.0.0.1 -p PORT args...`` and return its output.

        Error replies raise :class:`RedisServerError` (redis-cli ``-e``, Redis 7+).
        """
        cli = redis_cli_binary()
        if cli is None:
            raise RedisServerError("redis-cli not found on PATH")
        argv = [cli, "-h", HOST, "-p", str(self.port)]
        if _major(_binary_version(cli)) >= 7:
            argv.append("-e")
        try:
            res = subprocess.run(  # noqa: S603 - redis-cli against our own server
                [*argv, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(
                f"redis-cli {' '.join(args)} timed out after {timeout}s on {self!r}"
            ) from exc
        if res.returncode != 0:
            raise RedisServerError(
                f"redis-cli {' '.join(args)} failed (exit {res.returncode}): "
                f"{(res.stdout + res.stderr).strip()}"
            )
        return res.stdout.removesuffix("\n")

    def reset(self, timeout: float = 5.0) -> None:
        """Bring a shared server back to a clean state between tests.

        Resumes a paused process, restarts a dead one (same port), lifts
        ``CLIENT PAUSE``, drops all keys and cached Lua scripts and resets
        ``INFO commandstats``. Config changes (CONFIG SET) are NOT undone.
        """
        if not self.is_running():
            self.restart()
        self.resume()
        for cmd in (
            ("CLIENT", "UNPAUSE"),
            ("FLUSHALL",),
            ("SCRIPT", "FLUSH"),
            ("CONFIG", "RESETSTAT"),
        ):
            self.command(*cmd, timeout=timeout)

    # -- context manager -----------------------------------------------------------

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _PortInUseError(RedisServerError):
    pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
