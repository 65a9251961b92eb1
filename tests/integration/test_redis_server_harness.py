"""Tests of the private redis-server harness itself (tests/support/redis_server.py)."""

from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import redis_server as rs
from support.redis_server import RedisReplyError, RedisServer, RedisServerError

from resync_hierarchy.testing import redis_server as impl

_SENTINEL_KEY = "harness:flush-check"


def _raw_ping(port: int, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_session_server_answers_ping_on_private_port(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.host == "127.0.0.1"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert _raw_ping(redis_server.port, timeout=2).startswith(b"+PONG")
    info = redis_server.command("INFO", "server")
    assert isinstance(info, bytes)
    assert f"process_id:{redis_server.pid}".encode() in info


def test_redis_marker_is_added_automatically(
    request: pytest.FixtureRequest, redis_url: str
) -> None:
    assert request.node.get_closest_marker("redis") is not None


def test_redis_url_1_writes_a_key(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        client.set(_SENTINEL_KEY, "x")
        assert client.dbsize() == 1
    finally:
        client.close()


def test_redis_url_2_starts_empty(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        assert client.get(_SENTINEL_KEY) is None
        assert client.dbsize() == 0
    finally:
        client.close()


def test_reset_flushes_keys_scripts_stats_and_pause(
    redis_server: RedisServer, redis_url: str
) -> None:
    redis_server.cli("SET", "a", "1")
    redis_server.command("SCRIPT", "LOAD", "return 1")
    redis_server.command("CLIENT", "PAUSE", "60000", "WRITE")
    redis_server.pause()

    redis_server.reset()  # what the redis_url fixture does before every test

    assert redis_server.cli("DBSIZE") == "0"
    sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"  # sha1("return 1")
    assert redis_server.command("SCRIPT", "EXISTS", sha) == [0]
    assert "cmdstat_set" not in redis_server.cli("INFO", "commandstats")
    assert redis_server.cli("SET", "b", "2") == "OK"  # writes not paused anymore


def test_cli_config_get_and_errors(redis_server: RedisServer) -> None:
    assert redis_server.cli("CONFIG", "GET", "maxmemory").splitlines() == ["maxmemory", "0"]
    assert redis_server.cli("CONFIG", "GET", "save").splitlines()[0] == "save"
    with pytest.raises(RedisServerError, match="unknown command"):
        redis_server.cli("NO-SUCH-COMMAND")
    with pytest.raises(RedisReplyError, match="unknown command"):
        redis_server.command("NO-SUCH-COMMAND")


def test_kill_then_restart_same_port_empty(fresh_redis: RedisServer) -> None:
    port, old_pid = fresh_redis.port, fresh_redis.pid
    fresh_redis.cli("SET", "k", "v")

    fresh_redis.kill()
    assert not fresh_redis.is_running()
    assert not _pid_exists(old_pid)
    with pytest.raises(ConnectionRefusedError):
        _raw_ping(port, timeout=1)
    # redis-py 8 retries ConnectionError 10x with backoff by default (~3.5 s): disable.
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        client.close()

    fresh_redis.restart()
    assert fresh_redis.is_running()
    assert fresh_redis.port == port
    assert fresh_redis.pid != old_pid
    assert _raw_ping(port, timeout=2).startswith(b"+PONG")
    assert fresh_redis.cli("DBSIZE") == "0"


def test_pause_times_out_and_resume_recovers(fresh_redis: RedisServer) -> None:
    fresh_redis.pause()
    assert fresh_redis.is_running()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _raw_ping(fresh_redis.port, timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert not fresh_redis.ping(timeout=0.2)

    fresh_redis.resume()
    assert _raw_ping(fresh_redis.port, timeout=2).startswith(b"+PONG")


def test_debug_command_is_enabled(fresh_redis: RedisServer) -> None:
    if impl._major(impl.redis_server_version()) < 7:
        pytest.skip("--enable-debug-command needs Redis 7")
    assert fresh_redis.cli("DEBUG", "SLEEP", "0") == "OK"


@pytest.mark.redis
def test_stop_removes_process_and_dir_and_is_idempotent() -> None:
    rs.require_redis()
    server = RedisServer(extra_args=["--maxmemory", "10mb"])
    with server:
        pid, directory = server.pid, server.directory
        assert _pid_exists(pid)
        assert server.cli("CONFIG", "GET", "maxmemory").splitlines()[1] == str(10 * 1024 * 1024)
    assert not server.is_running()
    assert not _pid_exists(pid)
    assert not directory.exists()
    server.stop()  # idempotent
    server.kill()


@pytest.mark.redis
def test_stop_works_on_a_paused_server() -> None:
    rs.require_redis()
    server = RedisServer().start()
    try:
        pid = server.pid
        server.pause()
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        assert not _pid_exists(pid)
    finally:
        server.kill()
        server.stop()


def test_fixed_port_collision_fails_instead_of_using_other_server(
    redis_server: RedisServer,
) -> None:
    intruder = RedisServer(port=redis_server.port)
    with pytest.raises(RedisServerError, match="exited"):
        intruder.start(timeout=5)
    assert not intruder.is_running()
    assert redis_server.ping()


def test_auto_port_collision_is_retried(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([redis_server.port])
    real_free_port = impl.free_port
    monkeypatch.setattr(impl, "free_port", lambda: next(ports, None) or real_free_port())
    server = RedisServer()
    try:
        server.start()
        assert server.port != redis_server.port
        assert server.ping()
    finally:
        server.stop()


def test_port_6379_is_refused() -> None:
    with pytest.raises(ValueError, match="6379"):
        RedisServer(port=6379)
    with pytest.raises(ValueError, match="6379"):
        rs.send_command(6379, "PING")


@pytest.mark.parametrize(
    ("env", "outcome"),
    [
        ({}, "skip"),
        ({"CI": "false"}, "skip"),
        ({"CI": "true"}, "fail"),
        ({"CI": "1"}, "fail"),
        ({"RESYNC_REQUIRE_REDIS": "1"}, "fail"),
    ],
)
def test_missing_redis_policy(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], outcome: str
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("RESYNC_REQUIRE_REDIS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(impl, "redis_server_binary", lambda: None)

    assert rs.require_redis_reason() == rs.SKIP_REASON
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected) as excinfo:
        rs.require_redis()
    assert "apt-get install redis-server" in str(excinfo.value)


def test_l2_url_parametrization(request: pytest.FixtureRequest, l2_url: str) -> None:
    marked = request.node.get_closest_marker("redis") is not None
    if request.node.callspec.id == "fakeredis":
        assert l2_url == "fakeredis"
        assert not marked
    else:
        assert l2_url.startswith("redis://127.0.0.1:")
        assert ":6379/" not in l2_url
        assert marked
        port = urlsplit(l2_url).port
        assert port is not None
        assert rs.send_command(port, "DBSIZE") == 0
