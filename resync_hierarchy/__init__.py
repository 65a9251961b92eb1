"""resync_hierarchy: a two-tier asyncio cache, an in-process L1 in front of Redis.

from resync_hierarchy import CacheHierarchy

async with CacheHierarchy.from_url("redis://127.0.0.1:6379/0", namespace="llm") as cache:
    await cache.set("greeting", {"text": "hello"}, ttl=60)
    value = await cache.get("greeting")
"""

from __future__ import annotations

from resync_hierarchy._types import MISSING
from resync_hierarchy.config import HierarchyConfig
from resync_hierarchy.decorator import CachedFunction, cached
from resync_hierarchy.errors import (
    BackendUnavailableError,
    CacheClosedError,
    CacheError,
    ConfigurationError,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    UnkeyableArgumentError,
    ValueTooLargeError,
)
from resync_hierarchy.health import health_response
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.migration import MigrationFlags, MigrationManager
from resync_hierarchy.observe.metrics import serve_http as start_metrics_server

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "BackendUnavailableError",
    "CacheClosedError",
    "CacheError",
    "CacheHierarchy",
    "CachedFunction",
    "ConfigurationError",
    "HierarchyConfig",
    "InvalidKeyError",
    "InvalidTTLError",
    "MigrationFlags",
    "MigrationManager",
    "SerializationError",
    "UnkeyableArgumentError",
    "ValueTooLargeError",
    "__version__",
    "cached",
    "health_response",
    "start_metrics_server",
]
