"""Errors raised to callers of resync_hierarchy.

Only mistakes of the caller raise. Redis trouble (down, slow, refusing) never
reaches the caller of a cache operation: it is absorbed, counted and logged.

::

    CacheError                      base of everything this package raises
    ├── InvalidKeyError             key not a str, empty, over max_key_bytes, not UTF-8
    ├── SerializationError          value msgpack cannot carry (a set, an object, ...)
    ├── ValueTooLargeError          encoded value over max_value_bytes
    ├── InvalidTTLError             ttl not a positive number of seconds
    ├── ConfigurationError          bad config field, bad URL, unknown scheme
    ├── CacheClosedError            operation on a cache after shutdown()
    ├── BackendUnavailableError     an optional backend package is missing
    └── UnkeyableArgumentError      a @cached function's argument cannot form a stable key

Every message says what was wrong and what to do about it. An operation that
raises changes nothing in either tier.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "CacheClosedError",
    "CacheError",
    "ConfigurationError",
    "InvalidKeyError",
    "InvalidTTLError",
    "SerializationError",
    "UnkeyableArgumentError",
    "ValueTooLargeError",
]


class CacheError(Exception):
    """Base class of every error resync_hierarchy raises to its caller."""


class InvalidKeyError(CacheError, TypeError):
    """The key is not a non-empty ``str`` within ``max_key_bytes`` of UTF-8."""


class SerializationError(CacheError, TypeError):
    """The value holds something msgpack cannot carry."""


class ValueTooLargeError(CacheError, ValueError):
    """The encoded value is larger than ``max_value_bytes``."""


class ConfigurationError(CacheError, ValueError):
    """A configuration field or URL is invalid."""


class BackendUnavailableError(CacheError, RuntimeError):
    """An optional package needed by the chosen backend is not installed."""


class InvalidTTLError(CacheError, ValueError):
    """A ``ttl`` argument is not a positive number of seconds (or None)."""


class CacheClosedError(CacheError, RuntimeError):
    """The cache was shut down; build or start a new one."""


class UnkeyableArgumentError(CacheError, TypeError):
    """An argument of a ``@cached`` function cannot form a stable cache key
    (a lambda, an open file, an object known only by its identity), or the
    arguments do not match the function's signature."""
