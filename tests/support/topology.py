"""TLS, ACL and Sentinel set-ups shared by every test of the session.

The contract suite (tests/contract) and the topology tests (tests/topology)
both use them; fixtures of two conftests would start each twice, so both take
them from here: started at first use, stopped by pid when the last fixture
that acquired one is finalized (and by the harness's atexit backstop).

- TLS: a throw-away CA made with ``trustme`` (a server certificate for
  127.0.0.1 and localhost, a client certificate, and a second CA nobody
  trusts), and a redis-server with TLS that asks for client certificates
  optionally (``tls-auth-clients optional``).
- ACL: a plain redis-server on which :func:`acl_user_for` creates, per
  namespace, a user allowed only that namespace's keys, its invalidation
  channel and the commands the cache sends (:data:`ACL_COMMANDS`).
- Sentinel: master + replica + three sentinels (:class:`SentinelDeployment`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resync_hierarchy.hierarchy.core import namespace_prefix
from resync_hierarchy.testing.redis_server import HOST, RedisServer
from resync_hierarchy.testing.sentinel import SentinelDeployment
from resync_hierarchy.testing.tls import TlsRedisServer
from support.redis_server import require_redis

__all__ = [
    "ACL_COMMANDS",
    "Certs",
    "acl_user_for",
    "acquire",
    "make_certs",
    "release",
]

ACL_COMMANDS = (
    # reads and writes
    "+get", "+mget", "+set", "+del", "+unlink", "+exists",
    # version-conditional writes (a Lua script: EVALSHA, loaded on demand)
    "+evalsha", "+script|load", "+script|exists",
    # delete-if-unchanged (optimistic transaction)
    "+watch", "+unwatch", "+multi", "+exec",
    # clear() and iter_keys()
    "+scan",
    # invalidation
    "+publish", "+subscribe", "+unsubscribe",
    # health, the breaker's probe, database selection
    "+ping", "+select",
)  # fmt: skip
"""What the cache sends, and nothing more: no INFO (``l2_summary`` then
reports the server's facts as unavailable), no FLUSHDB, no KEYS, no CONFIG."""


@dataclass(frozen=True)
class Certs:
    """PEM files of a throw-away CA (``trustme``) in a temporary directory."""

    directory: Path
    ca: Path  # the CA that signed the server's and the client's certificates
    other_ca: Path  # a CA that signed nothing here: trusting it fails verification
    server_cert: Path  # for 127.0.0.1 and localhost
    server_key: Path
    client_cert: Path
    client_key: Path
    untrusted_client_cert: Path  # signed by other_ca
    untrusted_client_key: Path


def make_certs(directory: Path) -> Certs:
    import trustme  # a dev dependency: imported only where certificates are made

    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@resync.test")
    stranger = other.issue_cert("stranger@resync.test")
    certs = Certs(
        directory=directory,
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        untrusted_client_cert=directory / "stranger.crt",
        untrusted_client_key=directory / "stranger.key",
    )
    ca.cert_pem.write_to_path(str(certs.ca))
    other.cert_pem.write_to_path(str(certs.other_ca))
    server.cert_chain_pems[0].write_to_path(str(certs.server_cert))
    server.private_key_pem.write_to_path(str(certs.server_key))
    client.cert_chain_pems[0].write_to_path(str(certs.client_cert))
    client.private_key_pem.write_to_path(str(certs.client_key))
    stranger.cert_chain_pems[0].write_to_path(str(certs.untrusted_client_cert))
    stranger.private_key_pem.write_to_path(str(certs.untrusted_client_key))
    return certs


def acl_user_for(server: RedisServer, namespace: str) -> tuple[str, str]:
    """Create (or refresh) the ACL user of ``namespace`` on ``server``:
    its keys (``~<prefix>*``), its invalidation channel, :data:`ACL_COMMANDS`.
    Returns ``(user, password)``."""
    prefix = namespace_prefix(namespace).decode()
    tag = hashlib.blake2b(namespace.encode(), digest_size=6).hexdigest()
    user, password = f"ns-{tag}", f"pw-{tag}-secret"
    server.command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}",
        f"~{prefix}*", f"&resync:inv:{prefix[:-1]}", *ACL_COMMANDS,
    )  # fmt: skip
    return user, password


def acl_url(server: RedisServer, namespace: str) -> str:
    user, password = acl_user_for(server, namespace)
    return f"redis://{user}:{password}@{HOST}:{server.port}/0"


# --------------------------------------------------------------------------- shared set-ups


class _Tls:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="resync-tls-"))
        self.certs = make_certs(self.directory)
        self.server = TlsRedisServer(
            self.certs.server_cert, self.certs.server_key, self.certs.ca, auth_clients="optional"
        ).start()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class _Acl:
    def __init__(self) -> None:
        self.server = RedisServer().start()

    def stop(self) -> None:
        self.server.stop()


class _Sentinel:
    def __init__(self) -> None:
        self.deployment = SentinelDeployment().start()

    def stop(self) -> None:
        self.deployment.stop()


_FACTORIES: dict[str, Callable[[], Any]] = {"tls": _Tls, "acl": _Acl, "sentinel": _Sentinel}
_lock = threading.Lock()
_shared: dict[str, Any] = {}
_users: dict[str, int] = {}


def acquire(name: str) -> Any:
    """The session's ``tls`` / ``acl`` / ``sentinel`` set-up, started if needed."""
    require_redis()
    with _lock:
        if name not in _shared:
            _shared[name] = _FACTORIES[name]()
        _users[name] = _users.get(name, 0) + 1
        return _shared[name]


def release(name: str) -> None:
    with _lock:
        _users[name] = _users.get(name, 0) - 1
        if _users[name] <= 0 and name in _shared:
            _shared.pop(name).stop()
            _users.pop(name, None)
