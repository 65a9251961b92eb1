"""HierarchyConfig and URL validation: bad input fails early, with a clear message."""

from __future__ import annotations

from typing import Any

import pytest

from resync_hierarchy import CacheHierarchy, ConfigurationError, HierarchyConfig
from resync_hierarchy._url import parse_url, redact_url


def test_defaults_are_valid_and_documented() -> None:
    config = HierarchyConfig()
    assert config.url == "memory://"
    assert config.default_ttl == 300.0
    assert config.l1_shards == 16
    assert config.l1_enabled


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("l1_shards", 3, "power of two"),
        ("l1_shards", 0, ">= 1"),
        ("l1_shards", 2048, "at most 1024"),
        ("default_ttl", -1, "> 0"),
        ("default_ttl", 0, "> 0"),
        ("default_ttl", float("nan"), "positive number"),
        ("l1_ttl", "10", "positive number"),
        ("l1_max_entries", -1, ">= 0"),
        ("l1_max_entries", 1.5, "must be an int"),
        ("l1_max_entries", True, "must be an int"),
        ("l1_max_bytes", 0, "l1_max_bytes must be > 0 while L1 is on"),
        ("l2_timeout", 0, "> 0"),
        ("l2_max_connections", 0, ">= 1"),
        ("max_key_bytes", 0, ">= 1"),
        ("max_value_bytes", 10, ">= 64"),
        ("namespace", "", "1-256 characters"),
        ("namespace", 5, "must be a str"),
        ("signing_key", "short", "at least 16"),
        ("l1_sweep_interval", -1, ">= 0"),
    ],
)
def test_bad_fields_raise_configuration_error(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HierarchyConfig(**{field: value})


def test_l1_off_needs_no_byte_bound() -> None:
    assert not HierarchyConfig(l1_max_entries=0, l1_max_bytes=0).l1_enabled


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "unknown scheme 'http'"),
        ("redis://localhost:0", "outside 1-65535"),
        ("redis://localhost:70000", "outside 1-65535"),
        ("redis://localhost:abc", "not a number"),
        ("redis://localhost/x", "not a non-negative integer"),
        ("redis://localhost/1/2", "database number only"),
        ("redis://a:1,b:2", "exactly one host"),
        ("redis://", "no host"),
        ("redis://bad host", "invalid host"),
        ("redis://localhost?socket_timeout=1", "unknown query parameter"),
        ("memory://something", "takes no host"),
        ("localhost:6379", "missing '://'"),
        ("", "non-empty str"),
        ("redis+sentinel://h:26379", "service name"),
        ("redis+cluster://h:7000/3", "only database 0"),
        ("unix://", "socket path"),
        ("redis://[::1", "IPv6"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HierarchyConfig(url=url)


def test_good_urls_parse() -> None:
    assert parse_url("memory://").kind == "memory"
    p = parse_url("rediss://user:p%40ss@cache.internal:6380/3?ssl_ca_certs=/ca.pem")
    assert (p.kind, p.tls, p.hosts, p.db, p.username, p.password) == (
        "redis", True, (("cache.internal", 6380),), 3, "user", "p@ss",
    )  # fmt: skip
    assert dict(p.query) == {"ssl_ca_certs": "/ca.pem"}
    assert parse_url("redis://[::1]:7000").hosts == (("::1", 7000),)
    assert parse_url("redis://localhost").hosts == (("localhost", 6379),)
    s = parse_url("redis+sentinel://a:26379,b/mymaster/2")
    assert (s.kind, s.hosts, s.service_name, s.db) == (
        "sentinel", (("a", 26379), ("b", 26379)), "mymaster", 2,
    )  # fmt: skip
    c = parse_url("redis+cluster://n1:7000,n2:7001")
    assert (c.kind, len(c.hosts)) == ("cluster", 2)
    u = parse_url("unix:///run/redis.sock?db=4")
    assert (u.kind, u.path, u.db) == ("unix", "/run/redis.sock", 4)


def test_passwords_never_show() -> None:
    url = "redis://app:s3cr3t-pw@127.0.0.1:6379/0"
    config = HierarchyConfig(url=url, signing_key="x" * 32)
    for text in (repr(config), str(config), config.redacted_url, repr(config.parsed_url)):
        assert "s3cr3t-pw" not in text
        assert "x" * 32 not in text
    assert redact_url(url) == "redis://app:***@127.0.0.1:6379/0"
    with pytest.raises(ConfigurationError) as info:
        HierarchyConfig(url="redis://app:s3cr3t-pw@host:99999")
    assert "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in repr(CacheHierarchy.from_url(url))


def test_from_url_overrides_and_unknown_fields() -> None:
    config = HierarchyConfig.from_url("memory://", namespace="llm", default_ttl=5)
    assert (config.namespace, config.default_ttl) == ("llm", 5)
    with pytest.raises(ConfigurationError, match="unknown HierarchyConfig field"):
        HierarchyConfig.from_url("memory://", no_such_field=1)
    with pytest.raises(ConfigurationError, match="unknown HierarchyConfig field"):
        HierarchyConfig().replace(typo=1)
    assert HierarchyConfig().replace(namespace="x").namespace == "x"


def test_from_env_parses_each_type() -> None:
    env = {
        "RESYNC_CACHE_URL": "redis://127.0.0.1:6390/1",
        "RESYNC_CACHE_NAMESPACE": "svc",
        "RESYNC_CACHE_DEFAULT_TTL": "none",
        "RESYNC_CACHE_L1_MAX_ENTRIES": "50_000",
        "RESYNC_CACHE_L2_TIMEOUT": "0.25",
        "RESYNC_CACHE_SIGNING_KEY": "0123456789abcdef0123",
        "UNRELATED": "x",
    }
    config = HierarchyConfig.from_env(env)
    assert config.url == "redis://127.0.0.1:6390/1"
    assert config.namespace == "svc"
    assert config.default_ttl is None
    assert config.l1_max_entries == 50_000
    assert config.l2_timeout == 0.25
    assert config.signing_key == "0123456789abcdef0123"
    assert HierarchyConfig.from_env(env, namespace="override").namespace == "override"
    cache = CacheHierarchy.from_env({"RESYNC_CACHE_NAMESPACE": "e"})
    assert cache.config.namespace == "e"


def test_from_env_rejects_bad_numbers() -> None:
    with pytest.raises(ConfigurationError, match="RESYNC_CACHE_L1_SHARDS='many'"):
        HierarchyConfig.from_env({"RESYNC_CACHE_L1_SHARDS": "many"})
    with pytest.raises(ConfigurationError, match="power of two"):
        HierarchyConfig.from_env({"RESYNC_CACHE_L1_SHARDS": "6"})


def test_cluster_urls_build_a_cluster_backend_without_connecting() -> None:
    from resync_hierarchy.l2.cluster import ClusterL2

    cache = CacheHierarchy.from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert cache._l2 is not None
    assert isinstance(cache._l2.backend, ClusterL2)
    with pytest.raises(ConfigurationError, match="only database 0"):
        CacheHierarchy.from_url("redis+cluster://127.0.0.1:7000/3")
