"""Parsing and validation of cache URLs.

Accepted forms::

    memory://                                    L1 only, no Redis
    redis://[user[:password]@]host[:port][/db]   plain TCP
    rediss://...                                 TLS (verification on by default)
    unix:///path/to/redis.sock[?db=N]            Unix socket
    redis+sentinel://host:port[,host:port…]/service_name[/db]
    redis+cluster://host:port[,host:port…]

Query parameters (``?ssl_ca_certs=/path&client_name=api``) are checked
against a documented allow-list and handed to redis-py:

- TLS (``rediss://``, ``rediss+sentinel://`` only): ``ssl_ca_certs`` (CA
  bundle that signs the server's certificate; the system store if absent),
  ``ssl_certfile`` and ``ssl_keyfile`` (a client certificate, for servers with
  ``tls-auth-clients yes``), ``ssl_cert_reqs`` (``required``, the default,
  ``optional`` or ``none``), ``ssl_check_hostname`` (``true``, the default).
- Sentinel: ``sentinel_username`` and ``sentinel_password`` authenticate to
  the sentinels; the URL's own ``user:password@`` authenticates to the master.
- Any: ``client_name``; ``db`` for ``unix://``.

Passwords never appear in ``repr`` or logs: use :func:`redact_url` (it also
masks ``sentinel_password``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from resync_hierarchy.errors import ConfigurationError

__all__ = [
    "ALLOWED_QUERY_PARAMS",
    "CERT_REQS",
    "TLS_QUERY_PARAMS",
    "ParsedURL",
    "parse_bool",
    "parse_url",
    "redact_url",
]

Kind = Literal["memory", "redis", "unix", "sentinel", "cluster"]

_SCHEMES: dict[str, Kind] = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "unix",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
}

ALLOWED_QUERY_PARAMS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "client_name",
        "db",
        "sentinel_username",
        "sentinel_password",
    }
)

TLS_QUERY_PARAMS = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
_SECRET_QUERY_PARAMS = frozenset({"sentinel_password"})
CERT_REQS = ("required", "optional", "none")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)$")


@dataclass(frozen=True)
class ParsedURL:
    """A validated cache URL. ``password`` is kept out of ``repr``."""

    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str | None = None
    service_name: str | None = None
    query: tuple[tuple[str, str], ...] = ()


def redact_url(url: str) -> str:
    """Return ``url`` with any password (in the user part, or a
    ``sentinel_password`` parameter) replaced by ``***`` (safe to log)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    netloc, query = parts.netloc, parts.query
    if password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    if query and any(name in query for name in _SECRET_QUERY_PARAMS):
        pieces = []
        for piece in query.split("&"):
            name, sep, _value = piece.partition("=")
            pieces.append(f"{name}=***" if sep and unquote(name) in _SECRET_QUERY_PARAMS else piece)
        query = "&".join(pieces)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_bool(text: str) -> bool | None:
    """``true``/``1``/``yes`` or ``false``/``0``/``no`` (any case); None otherwise."""
    return _BOOLEANS.get(text.strip().lower())


def _bad(url: str, what: str) -> ConfigurationError:
    return ConfigurationError(
        f"invalid cache URL {redact_url(url)!r}: {what}. Expected memory://, "
        "redis://host:port/db, rediss://…, unix:///path.sock, "
        "redis+sentinel://host:port[,host:port]/service[/db] or "
        "redis+cluster://host:port[,host:port]"
    )


def _parse_hosts(url: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hostpart = netloc.rpartition("@")[2]
    if not hostpart:
        raise _bad(url, "no host given")
    hosts: list[tuple[str, int]] = []
    for item in hostpart.split(","):
        host, port = item, default_port
        if item.startswith("["):
            close = item.find("]")
            if close < 0:
                raise _bad(url, f"unterminated IPv6 address in {item!r}")
            host, rest = item[: close + 1], item[close + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise _bad(url, f"unexpected {rest!r} after IPv6 address")
                port = _parse_port(url, rest[1:])
        elif ":" in item:
            host, _, port_text = item.rpartition(":")
            port = _parse_port(url, port_text)
        if not host or not _HOST_RE.match(host):
            raise _bad(url, f"invalid host {host!r}")
        hosts.append((host.strip("[]"), port))
    return tuple(hosts)


def _parse_port(url: str, text: str) -> int:
    if not text.isdigit():
        raise _bad(url, f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _bad(url, f"port {port} is outside 1-65535")
    return port


def _parse_db(url: str, text: str) -> int:
    if not text.isdigit():
        raise _bad(url, f"database {text!r} is not a non-negative integer")
    return int(text)


def _check_query(url: str, query: tuple[tuple[str, str], ...], *, tls: bool, kind: Kind) -> None:
    seen: set[str] = set()
    for name, value in query:
        if name in seen:
            raise _bad(url, f"query parameter {name!r} is given twice")
        seen.add(name)
        if name in TLS_QUERY_PARAMS and not tls:
            raise _bad(url, f"{name} is a TLS setting: use the rediss:// scheme for TLS")
        if name.startswith("sentinel_") and kind != "sentinel":
            raise _bad(url, f"{name} applies to redis+sentinel:// URLs only")
        if name == "ssl_cert_reqs" and value.lower() not in CERT_REQS:
            raise _bad(url, f"ssl_cert_reqs={value!r} (allowed: {', '.join(CERT_REQS)})")
        if name == "ssl_check_hostname" and parse_bool(value) is None:
            raise _bad(url, f"ssl_check_hostname={value!r} is not true or false")
        if name in {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"} and not value:
            raise _bad(url, f"{name} is empty: give the path of a PEM file")
    if "ssl_keyfile" in seen and "ssl_certfile" not in seen:
        raise _bad(url, "ssl_keyfile needs ssl_certfile (the client certificate) too")


def parse_url(url: str) -> ParsedURL:
    """Validate ``url`` and split it into its parts.

    Raises :class:`ConfigurationError` naming what is wrong (unknown scheme,
    bad port, bad database number, unknown query parameter, ...).
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(
            f"cache URL must be a non-empty str, got {url!r}; use 'memory://' for an L1-only cache"
        )
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise _bad(url, "missing '://'")
    kind = _SCHEMES.get(scheme.lower())
    if kind is None:
        raise _bad(url, f"unknown scheme {scheme!r}")
    if kind == "memory":
        if url.rstrip("/").lower() != "memory:":
            raise _bad(url, "memory:// takes no host, path or parameters")
        return ParsedURL(kind="memory", tls=False)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, str(exc)) from exc
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    for name, _value in query:
        if name not in ALLOWED_QUERY_PARAMS:
            allowed = ", ".join(sorted(ALLOWED_QUERY_PARAMS))
            raise _bad(url, f"unknown query parameter {name!r} (allowed: {allowed})")
    tls = scheme.lower().startswith("rediss")
    _check_query(url, query, tls=tls, kind=kind)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    qdb = dict(query).get("db")
    if kind == "unix":
        if not parts.path:
            raise _bad(url, "unix:// needs a socket path")
        db = _parse_db(url, qdb) if qdb is not None else 0
        return ParsedURL(
            kind="unix",
            tls=False,
            path=parts.path,
            db=db,
            username=username,
            password=password,
            query=query,
        )
    hosts = _parse_hosts(url, parts.netloc, 26379 if kind == "sentinel" else 6379)
    segments = [s for s in parts.path.split("/") if s]
    if kind == "sentinel":
        if not segments:
            raise _bad(url, "a Sentinel URL needs the master's service name as its path")
        if len(segments) > 2:
            raise _bad(url, "a Sentinel URL path is /service_name[/db]")
        db = _parse_db(url, segments[1]) if len(segments) == 2 else 0
        return ParsedURL(
            kind="sentinel",
            tls=tls,
            hosts=hosts,
            db=db,
            username=username,
            password=password,
            service_name=unquote(segments[0]),
            query=query,
        )
    if kind == "cluster":
        if segments and segments != ["0"]:
            raise _bad(url, "Redis Cluster has only database 0")
        return ParsedURL(
            kind="cluster", tls=tls, hosts=hosts, username=username, password=password, query=query
        )
    if len(hosts) != 1:
        raise _bad(url, "redis:// takes exactly one host (use redis+cluster:// for several)")
    if len(segments) > 1:
        raise _bad(url, "the path of a redis:// URL is the database number only")
    db = _parse_db(url, segments[0]) if segments else (_parse_db(url, qdb) if qdb else 0)
    return ParsedURL(
        kind="redis",
        tls=tls,
        hosts=hosts,
        db=db,
        username=username,
        password=password,
        query=query,
    )
