"""A private ``redis-server`` that speaks TLS, for tests.

The certificates are the caller's (the tests make a throw-away CA with
``trustme``). The server listens with TLS on ``tls_port`` and, for the test
suite's own administration (readiness, FLUSHALL between tests), in plain text
on ``port``; both on 127.0.0.1 only. It is a
:class:`~resync_hierarchy.testing.redis_server.RedisServer`, stopped by pid.

>>> server = TlsRedisServer(cert_file, key_file, ca_file, auth_clients="optional").start()
>>> server.tls_url(ca_file)   # rediss://127.0.0.1:P/0?ssl_ca_certs=...
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import quote

from resync_hierarchy.testing.redis_server import HOST, RedisServer, free_port

__all__ = ["TlsRedisServer"]

AuthClients = Literal["no", "optional", "yes"]


class TlsRedisServer(RedisServer):
    """``redis-server --tls-port``; ``auth_clients``: whether clients must
    present a certificate signed by ``ca_file`` (``tls-auth-clients``)."""

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
        *,
        auth_clients: AuthClients = "no",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.tls_port = free_port()
        tls_args = (
            "--tls-port", str(self.tls_port),
            "--tls-cert-file", os.fspath(cert_file),
            "--tls-key-file", os.fspath(key_file),
            "--tls-ca-cert-file", os.fspath(ca_file),
            "--tls-auth-clients", auth_clients,
        )  # fmt: skip
        super().__init__(extra_args=(*tls_args, *extra_args))
        self.auth_clients = auth_clients

    def tls_url(
        self,
        ca_file: str | os.PathLike[str] | None = None,
        *,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        host: str = HOST,
        db: int = 0,
        userinfo: str = "",
        extra: dict[str, str] | None = None,
    ) -> str:
        """A ``rediss://`` URL of the TLS port with the given files."""
        params: dict[str, str] = {}
        if ca_file is not None:
            params["ssl_ca_certs"] = os.fspath(ca_file)
        if certfile is not None:
            params["ssl_certfile"] = os.fspath(certfile)
        if keyfile is not None:
            params["ssl_keyfile"] = os.fspath(keyfile)
        params.update(extra or {})
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params.items())
        at = f"{userinfo}@" if userinfo else ""
        return f"rediss://{at}{host}:{self.tls_port}/{db}" + (f"?{query}" if query else "")
