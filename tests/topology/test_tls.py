"""TLS (``rediss://``): verification on by default, a throw-away CA (trustme).

A trusted certificate connects; an untrusted server certificate, a missing
client certificate or a host the certificate does not name is an L2 failure
of kind ``tls``: callers never see it, stats, health and logs name it with
what to fix, it is not retried. Bad file paths fail at construction.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.redis_server import require_redis
from support.topology import Certs, make_certs

from resync_hierarchy import CacheHierarchy, ConfigurationError
from resync_hierarchy._url import parse_url, redact_url
from resync_hierarchy.testing.tls import TlsRedisServer

real = pytest.mark.redis


def _cache(url: str, **overrides: Any) -> CacheHierarchy:
    overrides.setdefault("namespace", "tls")
    overrides.setdefault("invalidation", False)
    overrides.setdefault("l2_timeout", 1.0)
    return CacheHierarchy.from_url(url, **overrides)


@real
async def test_trusted_certificate_connects(tls_setup: Any) -> None:
    certs: Certs = tls_setup.certs
    server: TlsRedisServer = tls_setup.server
    server.reset()
    # tls-auth-clients optional: with or without a client certificate.
    for url in (
        server.tls_url(certs.ca, certfile=certs.client_cert, keyfile=certs.client_key),
        server.tls_url(certs.ca),
        server.tls_url(certs.ca, host="localhost"),
    ):
        writer, reader = _cache(url), _cache(url, l1_max_entries=0)
        async with writer, reader:
            await writer.set("k", {"over": "tls"})
            assert await reader.get("k") == {"over": "tls"}
            assert reader.get_stats()["l2_hits"] == 1
            assert writer.get_stats()["l2_errors"] == 0
            assert (await writer.health())["status"] == "ok"
    # It really went over TLS to this server: the plain port sees the key.
    assert server.command("EXISTS", b"tls:k") == 1


@real
async def test_untrusted_server_certificate_is_refused_clearly(tls_setup: Any) -> None:
    certs: Certs = tls_setup.certs
    server: TlsRedisServer = tls_setup.server
    server.reset()
    url = server.tls_url(certs.other_ca, userinfo="app:tls-s3cret")
    cache = _cache(url, l2_retries=2)
    with capture_logs() as logs:
        async with cache:
            await cache.set("k", "v")  # never raises: kept for replay, served from L1
            assert await cache.get("k") == "v"
            health = await cache.health()
    stats = cache.get_stats()
    assert stats["l2_errors_by_kind"].get("tls", 0) >= 1
    assert stats["l2_retries"] == 0  # a handshake refused once is refused again
    assert health["status"] == "degraded"
    assert health["l2"]["error"] in ("tls", "circuit_open")
    assert "certificate verify failed" in health["l2"]["last_error"]
    assert "ssl_ca_certs" in health["l2"]["last_error"]  # what to fix
    errors = [e for e in logs if e["event"] == "l2_error" and e["kind"] == "tls"]
    assert errors and "ssl_ca_certs" in errors[0]["error"]
    assert "tls-s3cret" not in repr(logs) + repr(cache) + repr(health)
    assert server.command("EXISTS", b"tls:k") == 0


@pytest.fixture(scope="module")
def strict_tls() -> Iterator[tuple[TlsRedisServer, Certs]]:
    """A TLS server that requires client certificates and whose certificate
    names ``localhost`` only."""
    import trustme

    require_redis()
    directory = Path(tempfile.mkdtemp(prefix="resync-tls-strict-"))
    certs = make_certs(directory)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "strict-ca.pem"))
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(directory / "localhost.crt"))
    cert.private_key_pem.write_to_path(str(directory / "localhost.key"))
    # Clients are checked against certs.ca; the server's own certificate is
    # signed by strict-ca.pem.
    server = TlsRedisServer(
        directory / "localhost.crt", directory / "localhost.key", certs.ca, auth_clients="yes"
    ).start()
    try:
        yield server, certs
    finally:
        server.stop()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


@real
async def test_required_client_certificate_given_and_missing(
    strict_tls: tuple[TlsRedisServer, Certs],
) -> None:
    server, certs = strict_tls
    ca = certs.directory / "strict-ca.pem"
    good = server.tls_url(
        ca, certfile=certs.client_cert, keyfile=certs.client_key, host="localhost"
    )
    async with _cache(good) as cache:
        await cache.set("k", 1)
        assert cache.get_stats()["l2_errors"] == 0
        assert (await cache.health())["status"] == "ok"
    # The server refuses a missing or untrusted client certificate after the
    # TLS 1.3 handshake, with an alert the client reads on its first command.
    # On a loaded machine the server may close before that alert is read: the
    # client then sees a closed connection. Either way nothing is written.
    refused_by_server = (
        server.tls_url(ca, host="localhost"),
        server.tls_url(
            ca,
            certfile=certs.untrusted_client_cert,
            keyfile=certs.untrusted_client_key,
            host="localhost",
        ),
    )
    for url in refused_by_server:
        async with _cache(url) as cache:
            await cache.set("k", 2)
            stats = cache.get_stats()
            kinds = stats["l2_errors_by_kind"]
            assert kinds.get("tls", 0) + kinds.get("connection", 0) >= 1, (url, stats)
            if set(kinds) == {"tls"}:  # a tls refusal is never retried
                assert stats["l2_retries"] == 0
    # The certificate names localhost only: 127.0.0.1 fails the client's own
    # hostname check, deterministically a tls error, never retried.
    mismatched = server.tls_url(ca, certfile=certs.client_cert, keyfile=certs.client_key)
    async with _cache(mismatched) as cache:
        await cache.set("k", 2)
        stats = cache.get_stats()
        assert stats["l2_errors_by_kind"].get("tls", 0) >= 1, stats
        assert stats["l2_retries"] == 0
        assert "IP address mismatch" in cache._l2.last_error  # type: ignore[union-attr]
    assert server.command("GET", b"tls:k") is not None  # only the good client wrote


def test_tls_files_must_exist_and_load_at_construction(tmp_path: Path) -> None:
    ca = make_certs(tmp_path).ca
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"garbage\.pem.*could not be loaded"):
        _cache(f"rediss://127.0.0.1:6390/0?ssl_ca_certs={garbage}")
    with pytest.raises(ConfigurationError, match=r"ssl_certfile=.*missing\.crt.*not a readable"):
        _cache(f"rediss://127.0.0.1:6390/0?ssl_ca_certs={ca}&ssl_certfile={tmp_path}/missing.crt")
    with pytest.raises(ConfigurationError, match=r"ssl_ca_certs=.*nope\.pem"):
        _cache(f"rediss://127.0.0.1:6390/0?ssl_ca_certs={tmp_path}/nope.pem")
    _cache(f"rediss://127.0.0.1:6390/0?ssl_ca_certs={ca}")  # builds: no I/O yet


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:6390/0?ssl_ca_certs=/ca.pem", "use the rediss:// scheme"),
        ("rediss://h:6390/0?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'"),
        ("rediss://h:6390/0?ssl_check_hostname=perhaps", "not true or false"),
        ("rediss://h:6390/0?ssl_keyfile=/k.pem", "needs ssl_certfile"),
        ("rediss://h:6390/0?ssl_ca_certs=", "is empty"),
        ("rediss://h/0?ssl_ca_certs=/a&ssl_ca_certs=/b", "given twice"),
        ("redis://h:6390/0?sentinel_password=x", r"redis\+sentinel:// URLs only"),
    ],
)
def test_bad_tls_parameters(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_url(url)


def _connection_kwargs(url: str) -> dict[str, Any]:
    backend: Any = _cache(url)._l2.backend  # type: ignore[union-attr]
    kwargs: dict[str, Any] = backend.client.connection_pool.connection_kwargs
    return kwargs


def test_verification_is_on_by_default(tmp_path: Path) -> None:
    ca = make_certs(tmp_path).ca
    on = _connection_kwargs(f"rediss://h:6390/0?ssl_ca_certs={ca}")
    assert (on["ssl_cert_reqs"], on["ssl_check_hostname"]) == ("required", True)
    off = _connection_kwargs("rediss://h:6390/0?ssl_cert_reqs=none")
    assert (off["ssl_cert_reqs"], off["ssl_check_hostname"]) == ("none", False)


def test_redaction_of_tls_and_sentinel_urls() -> None:
    assert (
        redact_url("rediss://app:pw1@h:6380/0?ssl_ca_certs=/ca.pem")
        == "rediss://app:***@h:6380/0?ssl_ca_certs=/ca.pem"
    )
    url = "redis+sentinel://:pw2@s1:26379,s2:26380/mymaster/0?sentinel_password=pw3&client_name=a"
    assert redact_url(url) == (
        "redis+sentinel://:***@s1:26379,s2:26380/mymaster/0?sentinel_password=***&client_name=a"
    )
    cache = CacheHierarchy.from_url(url, namespace="r")
    assert "pw2" not in repr(cache) and "pw3" not in repr(cache)
    assert "pw3" not in repr(cache.config)
