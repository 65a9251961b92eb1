"""The L2 backend interface and its error type."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

__all__ = ["L2Backend", "L2Error", "Subscription", "glob_escape"]


class L2Error(Exception):
    """An L2 operation failed for a reason outside the caller's control.

    ``kind`` is a short label used in stats, logs and (later) metric labels:
    ``connection``, ``timeout``, ``oom``, ``noperm``, ``readonly``,
    ``busy``, ``response``, ``unavailable`` or ``other``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_GLOB_SPECIAL = frozenset(b"*?[]\\")


def glob_escape(raw: bytes) -> bytes:
    """Escape Redis glob metacharacters so ``raw`` matches only itself."""
    out = bytearray()
    for byte in raw:
        if byte in _GLOB_SPECIAL:
            out.append(0x5C)  # backslash
        out.append(byte)
    return bytes(out)


class Subscription(Protocol):
    """A channel subscription on its own connection; never reconnects by itself."""

    last_activity: float

    async def next_message(self, wait: float) -> bytes | None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


class L2Backend(Protocol):
    """What the hierarchy needs from a shared tier. Keys are full keys
    (namespace prefix included); values are opaque bytes.

    Every method raises only :class:`L2Error` (and ``CancelledError``).
    """

    async def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        ...

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values in the order of ``keys``, in one round trip."""
        ...

    async def set(self, key: bytes, value: bytes, ttl_ms: int | None) -> None:
        """Store ``value``; ``ttl_ms`` None means no expiry."""
        ...

    async def set_many(self, items: Sequence[tuple[bytes, bytes, int | None]]) -> None:
        """Store every ``(key, value, ttl_ms)`` in one round trip."""
        ...

    async def delete_many(self, keys: Sequence[bytes]) -> list[bool]:
        """Delete ``keys`` in one round trip; True where a key existed."""
        ...

    async def exists(self, key: bytes) -> bool: ...

    async def write_if_newer(
        self, items: Sequence[tuple[bytes, bytes | None, int, int | None]]
    ) -> list[bool]:
        """Apply each ``(key, envelope or None to delete, version, ttl_ms)``
        unless the stored envelope carries a newer version; one round trip."""
        ...

    async def delete_if_value(self, key: bytes, value: bytes) -> bool:
        """Delete ``key`` only if it still holds exactly ``value`` (atomic)."""
        ...

    def scan_prefix(self, prefix: bytes, batch: int = 500) -> AsyncGenerator[list[bytes], None]:
        """Batches of the keys that start with ``prefix`` (SCAN: keys written
        during the scan may or may not be seen)."""
        ...

    async def scan_page(
        self, prefix: bytes, cursor: int, count: int = 500
    ) -> tuple[int, list[bytes]]:
        """One SCAN step: (next cursor, keys starting with ``prefix``); 0 = done."""
        ...

    async def clear_prefix(self, prefix: bytes) -> int:
        """Remove every key that starts with ``prefix``; returns how many."""
        ...

    async def ping(self) -> None: ...

    async def publish(self, channel: bytes, message: bytes) -> int: ...

    async def subscribe(self, channel: bytes) -> Subscription:
        """A subscription whose SUBSCRIBE the server has confirmed."""
        ...

    async def info(self) -> dict[str, Any]:
        """Server facts for operators (version, memory, hit counters)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the backend is unusable afterwards."""
        ...

    @property
    def description(self) -> str:
        """Where this backend points, safe to log (no secrets)."""
        ...
