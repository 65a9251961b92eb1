"""HierarchyConfig: every setting of a CacheHierarchy, validated, in one place.

The config is a frozen dataclass; build a changed copy with
:meth:`HierarchyConfig.replace`. Every field is checked when the config is
built, so a bad value fails at start-up with a message that names the field,
never later in the middle of traffic.

Defaults (the "Configuration" table of README.md repeats them):

========================  ==============  ==========================================
field                     default         meaning
========================  ==============  ==========================================
url                       ``memory://``   where L2 lives; ``memory://`` = L1 only
namespace                 ``"default"``   key prefix; namespaces never share keys
default_ttl               300.0           seconds, for ``set`` without ``ttl``;
                                          None = entries never expire
l1_max_entries            10_000          L1 bound by count; 0 turns L1 off
l1_max_bytes              64 MiB          L1 bound by estimated bytes
l1_ttl                    None            cap on an entry's life in L1 (seconds)
l1_shards                 16              lock stripes (a power of two)
l1_sweep_interval         1.0             seconds between background sweeps of
                                          expired L1 entries (0 = no sweeper)
l1_policy                 ``"tinylfu"``   L1 eviction/admission: ``"tinylfu"``
                                          (W-TinyLFU: frequency-based admission,
                                          scan resistant) or ``"lru"``
l2_timeout                0.5             seconds: the most one L2 operation may
                                          take, queueing for a connection included
l2_max_connections        64              L2 commands in flight at once (and the
                                          pool size); further callers queue FIFO
l2_retries                2               retries of a quickly failing L2 call
                                          (connection refused/reset, loading)
l2_retry_backoff          0.01            seconds: full-jitter window of the first
                                          retry; doubles each retry
l2_retry_backoff_max      0.2             seconds: cap of that window
breaker_failure_threshold 5               consecutive L2 failures that open the
                                          circuit
breaker_reset_timeout     5.0             seconds open before the one probe
fail_safe_max_stale       300.0           seconds an expired L1 entry may still be
                                          served while L2 is unavailable (0: off)
recovery_queue_max        10_000          writes kept for replay while L2 is
                                          unavailable (one per key)
invalidation              True            a write or delete in one process evicts
                                          the key from every other process's L1
invalidation_ping_interval 1.0            seconds of silence on the invalidation
                                          subscription before it is PINGed
max_key_bytes             1024            UTF-8 bytes of a key
max_value_bytes           1 MiB           bytes of an encoded value
signing_key               None            secret; values carry an HMAC-SHA256
metrics                   True            False: no Prometheus metrics are recorded
hot_keys_snapshot         None            file path: at shutdown the most used L1 keys
                                          are written there; at start they are read
                                          back from L2 into L1
hot_keys_max              1000            most keys in that snapshot
cluster_multikey          ``"split"``     Redis Cluster only: ``"split"`` spreads a
                                          namespace over every shard (multi-key calls
                                          run one pipeline per node, concurrently);
                                          ``"hashtag"`` puts a whole namespace on one
                                          slot (one round trip, no sharding of it)
========================  ==============  ==========================================
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from resync_hierarchy._url import ParsedURL, parse_url, redact_url
from resync_hierarchy.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "HierarchyConfig"]

ENV_PREFIX = "RESYNC_CACHE_"

_MAX_NAMESPACE_CHARS = 256


@dataclass(frozen=True, kw_only=True)
class HierarchyConfig:
    """Settings of one CacheHierarchy. See the module docstring for defaults."""

    url: str = "memory://"
    namespace: str = "default"
    default_ttl: float | None = 300.0
    l1_max_entries: int = 10_000
    l1_max_bytes: int = 64 * 1024 * 1024
    l1_ttl: float | None = None
    l1_shards: int = 16
    l1_sweep_interval: float = 1.0
    l1_policy: str = "tinylfu"
    l2_timeout: float = 0.5
    l2_max_connections: int = 64
    l2_retries: int = 2
    l2_retry_backoff: float = 0.01
    l2_retry_backoff_max: float = 0.2
    breaker_failure_threshold: int = 5
    breaker_reset_timeout: float = 5.0
    fail_safe_max_stale: float = 300.0
    recovery_queue_max: int = 10_000
    invalidation: bool = True
    invalidation_ping_interval: float = 1.0
    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    signing_key: str | bytes | None = field(default=None, repr=False)
    metrics: bool = True
    hot_keys_snapshot: str | None = None
    hot_keys_max: int = 1000
    cluster_multikey: str = "split"
    parsed_url: ParsedURL = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed_url", parse_url(self.url))
        _check_str(self, "namespace")
        if not self.namespace or len(self.namespace) > _MAX_NAMESPACE_CHARS:
            raise ConfigurationError(
                f"namespace must be 1-{_MAX_NAMESPACE_CHARS} characters, got {self.namespace!r}"
            )
        _check_positive_number(self, "default_ttl", optional=True)
        _check_int(self, "l1_max_entries", minimum=0)
        _check_int(self, "l1_max_bytes", minimum=0)
        if self.l1_max_entries > 0 and self.l1_max_bytes <= 0:
            raise ConfigurationError(
                "l1_max_bytes must be > 0 while L1 is on; set l1_max_entries=0 to turn L1 off"
            )
        _check_positive_number(self, "l1_ttl", optional=True)
        _check_int(self, "l1_shards", minimum=1)
        if self.l1_shards & (self.l1_shards - 1):
            raise ConfigurationError(
                f"l1_shards must be a power of two (1, 2, 4, ... 1024), got {self.l1_shards}"
            )
        if self.l1_shards > 1024:
            raise ConfigurationError(f"l1_shards must be at most 1024, got {self.l1_shards}")
        _check_number(self, "l1_sweep_interval", minimum=0.0)
        if self.l1_policy not in ("tinylfu", "lru"):
            raise ConfigurationError(
                f"l1_policy must be 'tinylfu' or 'lru', got {self.l1_policy!r}; 'tinylfu' "
                "(default) admits by frequency and resists scans, 'lru' is plain LRU"
            )
        _check_positive_number(self, "l2_timeout")
        _check_int(self, "l2_max_connections", minimum=1)
        _check_int(self, "l2_retries", minimum=0)
        _check_number(self, "l2_retry_backoff", minimum=0.0)
        _check_number(self, "l2_retry_backoff_max", minimum=0.0)
        _check_int(self, "breaker_failure_threshold", minimum=1)
        _check_positive_number(self, "breaker_reset_timeout")
        _check_number(self, "fail_safe_max_stale", minimum=0.0)
        _check_int(self, "recovery_queue_max", minimum=0)
        if not isinstance(self.invalidation, bool):
            raise ConfigurationError(
                f"invalidation must be True or False, got {self.invalidation!r}"
            )
        _check_positive_number(self, "invalidation_ping_interval")
        if not isinstance(self.metrics, bool):
            raise ConfigurationError(f"metrics must be True or False, got {self.metrics!r}")
        if self.hot_keys_snapshot is not None:
            _check_str(self, "hot_keys_snapshot")
            if not self.hot_keys_snapshot:
                raise ConfigurationError(
                    "hot_keys_snapshot must be a file path or None, got an empty string"
                )
        _check_int(self, "hot_keys_max", minimum=1)
        if self.cluster_multikey not in ("split", "hashtag"):
            raise ConfigurationError(
                f"cluster_multikey must be 'split' or 'hashtag', got {self.cluster_multikey!r}; "
                "'split' (default) shards a namespace over the cluster, 'hashtag' keeps it on "
                "one slot"
            )
        _check_int(self, "max_key_bytes", minimum=1)
        _check_int(self, "max_value_bytes", minimum=64)
        key = self.signing_key
        if key is not None and (not isinstance(key, (str, bytes)) or len(key) < 16):
            raise ConfigurationError(
                "signing_key must be a str or bytes of at least 16 characters "
                "(use a random secret, e.g. secrets.token_hex(32))"
            )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={redact_url(self.url)!r}"
            if f.name == "url"
            else f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        secret = ", signing_key=<set>" if self.signing_key is not None else ""
        return f"HierarchyConfig({shown}{secret})"

    @property
    def signing_key_bytes(self) -> bytes | None:
        """The signing key as bytes (UTF-8 for a str key), or None."""
        key = self.signing_key
        return key.encode() if isinstance(key, str) else key

    @property
    def l1_enabled(self) -> bool:
        return self.l1_max_entries > 0

    @property
    def redacted_url(self) -> str:
        """The URL with any password masked: safe to log or print."""
        return redact_url(self.url)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated like a new config."""
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Self:
        """Config for ``url`` with keyword ``overrides`` of any other field."""
        _check_field_names(overrides)
        return cls(url=url, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Config from ``RESYNC_CACHE_URL``, ``RESYNC_CACHE_NAMESPACE`` and
        ``RESYNC_CACHE_<FIELD>`` (e.g. ``RESYNC_CACHE_L2_TIMEOUT=0.2``).

        Numbers are parsed by the field's type; ``none`` (or an empty value)
        means None for optional fields; booleans accept 1/0, true/false,
        yes/no, on/off. Keyword ``overrides`` win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in _settable_fields():
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse_env_value(f, raw)
        _check_field_names(overrides)
        values.update(overrides)
        return cls(**values)


def _settable_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(HierarchyConfig) if f.init]


def _check_field_names(changes: Mapping[str, Any]) -> None:
    names = {f.name for f in _settable_fields()}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigurationError(
            f"unknown HierarchyConfig field(s) {', '.join(unknown)}; known fields: "
            + ", ".join(sorted(names))
        )


def _parse_env_value(f: dataclasses.Field[Any], raw: str) -> Any:
    name = ENV_PREFIX + f.name.upper()
    text = raw.strip()
    kind = str(f.type)
    optional = "None" in kind
    if optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if kind.startswith("int"):
            return int(text.replace("_", ""))
        if kind.startswith("float"):
            return float(text)
    except ValueError as exc:
        raise ConfigurationError(
            f"environment variable {name}={raw!r} is not a valid {kind}"
        ) from exc
    if kind.startswith("bool"):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(
            f"environment variable {name}={raw!r} is not a boolean (1/0, true/false)"
        )
    return raw


def _check_str(cfg: HierarchyConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a str, got {type(value).__name__} {value!r}")


def _check_int(cfg: HierarchyConfig, name: str, *, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")


def _check_number(cfg: HierarchyConfig, name: str, *, minimum: float) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")


def _check_positive_number(cfg: HierarchyConfig, name: str, *, optional: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        hint = " or None" if optional else ""
        raise ConfigurationError(
            f"{name} must be a positive number of seconds{hint}, got {value!r}"
        )
    if value <= 0:
        raise ConfigurationError(f"{name} must be > 0 seconds, got {value}")
