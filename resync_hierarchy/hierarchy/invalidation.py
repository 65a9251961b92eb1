"""Cross-process L1 invalidation over Redis pub/sub.

Every hierarchy with an L2 and ``invalidation=True`` subscribes to its
namespace's channel on a connection of its own. A local ``set``,
``set_many``, ``delete``, ``delete_many`` or ``clear`` publishes the keys it
changed (once its L2 write is done); every other process evicts them from its
L1. Reads that fill L1 from L2 publish nothing, so misses never turn into
traffic on the bus.

Why pub/sub rather than RESP3 client tracking (BCAST): both were measured on
this machine (``scripts/measure_invalidation.py``, figures in README). Pub/sub
delivered in the same time range, works through redis-py's ordinary asyncio
client and connection pool with RESP2, lets a writer coalesce a burst of keys
into one message, and has a direct Redis Cluster counterpart in sharded
pub/sub (``SPUBLISH``/``SSUBSCRIBE``). Tracking state is per connection and
silently lost on reconnect, and it tells every process about every write
under the prefix, its own included.

Message format (binary, no third-party codec)::

    b"RI1" | origin (16 bytes) | sequence (8 bytes, big-endian) | kind (b"K" or b"C")
    kind K: count (4 bytes) then count x (length (4 bytes) + UTF-8 key)
    kind C: nothing more (the whole namespace was cleared)

A process ignores its own messages (``origin``), so it never evicts the fresh
entry it just wrote. Sequence numbers are per origin; a gap means messages
were lost, and the receiver then drops its whole L1.

Lost invalidations: whenever the subscription is not known to be live, this
process's L1 is *untrusted*. Reads skip it and go to L2. Writes still fill it.
It becomes trusted again only after a new SUBSCRIBE has been confirmed and
L1 has been emptied. The subscription counts as dead as soon as its
connection fails. It also counts as dead when it has been silent for
``ping_interval`` and a PING on it gets no answer within ``l2_timeout``. So an
entry can be served without invalidations for at most ``ping_interval +
l2_timeout`` (a black-holed network), and a dropped connection takes effect
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from resync_hierarchy._tasks import cancel_and_wait
from resync_hierarchy.l2.base import L2Error, Subscription
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.resilience.guard import GuardedL2, L2Unavailable

__all__ = ["InvalidationMessage", "Invalidator", "decode_message", "encode_message"]

_log = get_logger("resync_hierarchy.invalidation")

_MAGIC = b"RI1"
_HEAD = struct.Struct(">3s16sQc")
_COUNT = struct.Struct(">I")
_MAX_MESSAGE_BYTES = 64 * 1024  # a burst is split into messages of about this size
_RESUBSCRIBE_BACKOFF_MAX = 0.5
_REPUBLISH_BACKOFF_MAX = 1.0
_MAX_PENDING_KEYS = 10_000  # past this, one clear message replaces the keys
_MAX_PEERS = 10_000  # sequence numbers remembered per peer process
_PUBLISH_WINDOW = 0.001
"""Seconds between two messages of one process at most. A write after a
quiet moment is announced at once; writes that follow within the window
gather into the next message, so a stream of writes (even from one task)
shares messages instead of paying a PUBLISH each."""


@dataclass(frozen=True, slots=True)
class InvalidationMessage:
    origin: bytes
    sequence: int
    keys: tuple[str, ...]  # empty with clear=True
    clear: bool


def encode_message(origin: bytes, sequence: int, keys: Iterable[str] | None) -> bytes:
    """A keys message, or a clear message when ``keys`` is None."""
    if keys is None:
        return _HEAD.pack(_MAGIC, origin, sequence, b"C")
    parts = [b""]
    count = 0
    for key in keys:
        raw = key.encode("utf-8")
        parts.append(_COUNT.pack(len(raw)))
        parts.append(raw)
        count += 1
    parts[0] = _HEAD.pack(_MAGIC, origin, sequence, b"K") + _COUNT.pack(count)
    return b"".join(parts)


def decode_message(data: bytes) -> InvalidationMessage | None:
    """The message in ``data``, or None if it is not one of ours."""
    try:
        magic, origin, sequence, kind = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            return None
        if kind == b"C":
            return InvalidationMessage(origin, sequence, (), True)
        if kind != b"K":
            return None
        offset = _HEAD.size
        (count,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        keys: list[str] = []
        for _ in range(count):
            (length,) = _COUNT.unpack_from(data, offset)
            offset += _COUNT.size
            if offset + length > len(data):
                return None
            keys.append(data[offset : offset + length].decode("utf-8"))
            offset += length
        if offset != len(data):
            return None
        return InvalidationMessage(origin, sequence, tuple(keys), False)
    except (struct.error, UnicodeDecodeError):
        return None


class Invalidator:
    """Publishes this process's writes and applies everyone else's.

    ``evict(keys)`` and ``evict_all()`` are the hierarchy's callbacks;
    ``trust(flag)`` tells it whether L1 may answer reads.
    """

    def __init__(
        self,
        l2: GuardedL2,
        channel: bytes,
        *,
        evict: Callable[[list[str]], None],
        evict_all: Callable[[], None],
        trust: Callable[[bool], None],
        ping_interval: float,
    ) -> None:
        self._l2 = l2
        self.channel = channel
        self._evict = evict
        self._evict_all = evict_all
        self._trust = trust
        self._ping_interval = ping_interval
        self.origin = uuid.uuid4().bytes
        self._sequence = 0
        self._pending: dict[str, None] = {}  # insertion-ordered set of keys to announce
        self._pending_clear = False
        self._last_published = float("-inf")
        self._publisher: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._last_sequence: dict[bytes, int] = {}
        self._closing = False
        self._wakeup = asyncio.Event()
        self.subscribed = False
        self._subscribed_event = asyncio.Event()
        self.published_messages = 0
        self.published_keys = 0
        self.publish_failures = 0
        self.received_messages = 0
        self.received_keys = 0
        self.ignored_messages = 0
        self.gaps = 0
        self.resubscribes = 0

    # -- publishing ------------------------------------------------------------------

    def announce(self, keys: Iterable[str]) -> None:
        """``keys`` were written or deleted in L2: tell the other processes."""
        pending = self._pending
        for key in keys:
            pending[key] = None
        self._ensure_publisher()

    def announce_clear(self) -> None:
        self._pending.clear()
        self._pending_clear = True
        self._ensure_publisher()

    def _ensure_publisher(self) -> None:
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.get_running_loop().create_task(
                self._publish_pending(), name="resync-invalidation-publish"
            )

    async def _publish_pending(self) -> None:
        """Publish until nothing is pending. Keys announced while a publish is
        in flight go out together in the next message: bursts coalesce.

        A publish that fails leaves its keys pending and is retried with
        backoff: the failure may be on this process's side only, while the
        others stay subscribed and would otherwise keep the old values. Past
        ``_MAX_PENDING_KEYS`` the keys are replaced by one clear message."""
        backoff = 0.02
        loop = asyncio.get_running_loop()
        while self._pending_clear or self._pending:
            wait = self._last_published + _PUBLISH_WINDOW - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if len(self._pending) > _MAX_PENDING_KEYS:
                self._pending.clear()
                self._pending_clear = True
            if self._pending_clear:
                if await self._publish(None, 0):
                    self._pending_clear = False
                    self._pending.clear()  # a clear covers every key
                    backoff = 0.02
                    continue
            else:
                batch: list[str] = []
                size = 0
                for key in self._pending:
                    batch.append(key)
                    size += len(key) + 4
                    if size >= _MAX_MESSAGE_BYTES:
                        break
                if await self._publish(batch, len(batch)):
                    for key in batch:
                        self._pending.pop(key, None)
                    backoff = 0.02
                    continue
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _REPUBLISH_BACKOFF_MAX)

    async def _publish(self, keys: list[str] | None, count: int) -> bool:
        """One message; True if Redis took it. The sequence number advances
        only on success, so receivers see no gap for a failed attempt (and
        treat a repeat after a lost reply as a gap: they empty their L1)."""
        message = encode_message(self.origin, self._sequence + 1, keys)
        try:
            await self._l2.call(self._l2.backend.publish, self.channel, message)
        except L2Unavailable:
            self.publish_failures += 1
            return False
        self._sequence += 1
        self._last_published = asyncio.get_running_loop().time()
        self.published_messages += 1
        self.published_keys += count
        return True

    # -- receiving -------------------------------------------------------------------

    def start(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen_forever(), name="resync-invalidation-listen"
            )

    async def _listen_forever(self) -> None:
        backoff = 0.05
        first = True
        while not self._closing:
            self._wakeup.clear()
            try:
                subscription = await self._l2.call(self._l2.backend.subscribe, self.channel)
            except L2Unavailable:
                # Until subscribed again, L1 answers no reads: retry soon, and
                # at once when L2 is known to answer again (see wake()).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._wakeup.wait()
                backoff = min(backoff * 2, _RESUBSCRIBE_BACKOFF_MAX)
                continue
            backoff = 0.05
            try:
                # Whatever was published before the SUBSCRIBE was confirmed is
                # lost: start from an empty L1.
                self._last_sequence.clear()
                self._evict_all()
                self.subscribed = True
                self._subscribed_event.set()
                self._trust(True)
                if not first:
                    self.resubscribes += 1
                    _log.info("invalidation_resubscribed", channel=self.channel.decode())
                first = False
                await self._receive(subscription)
            except (L2Error, TimeoutError) as exc:
                _log.warning(
                    "invalidation_connection_lost",
                    channel=self.channel.decode(),
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                self.subscribed = False
                self._subscribed_event.clear()
                self._trust(False)
                await subscription.aclose()

    async def _receive(self, subscription: Subscription) -> None:
        """Apply messages until the subscription fails or goes silent: after
        ``ping_interval`` without traffic a PING goes out, and a PONG (or any
        message) must come back within ``l2_timeout``."""
        ping_interval = self._ping_interval
        timeout = self._l2.timeout
        pinged_at: float | None = None
        while not self._closing:
            if pinged_at is None:
                wait = ping_interval
            else:
                wait = max(0.0, pinged_at + timeout - time.monotonic())
            data = await subscription.next_message(wait)
            if data is not None:
                self._apply(data)
            now = time.monotonic()
            if pinged_at is not None:
                if subscription.last_activity >= pinged_at:
                    pinged_at = None  # the PONG (or a message) came back
                elif now - pinged_at >= timeout:
                    raise TimeoutError(f"no PONG within {timeout}s: the subscription is dead")
            if pinged_at is None and now - subscription.last_activity >= ping_interval:
                pinged_at = now
                async with asyncio.timeout(timeout):
                    await subscription.ping()

    def wake(self) -> None:
        """L2 answers again: resubscribe now rather than after the backoff."""
        self._wakeup.set()

    async def wait_subscribed(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the subscription to be live."""
        try:
            async with asyncio.timeout(seconds):
                await self._subscribed_event.wait()
        except TimeoutError:
            return False
        return True

    def _apply(self, data: bytes) -> None:
        message = decode_message(data)
        if message is None:
            self.ignored_messages += 1
            return
        if message.origin == self.origin:
            return
        self.received_messages += 1
        last = self._last_sequence.get(message.origin)
        if last is None and len(self._last_sequence) >= _MAX_PEERS:
            self._last_sequence.clear()  # bounded; a forgotten peer just restarts its count
        self._last_sequence[message.origin] = message.sequence
        if last is not None and message.sequence != last + 1:
            self.gaps += 1
            _log.warning(
                "invalidation_gap",
                channel=self.channel.decode(),
                expected=last + 1,
                got=message.sequence,
            )
            self._evict_all()
            return
        if message.clear:
            self._evict_all()
            return
        self.received_keys += len(message.keys)
        self._evict(list(message.keys))

    async def aclose(self) -> None:
        """Stop listening and publishing. Cancellation is repeated until the
        tasks end: on Python 3.11 ``asyncio.wait_for`` (used inside some
        clients, fakeredis among them) can swallow a cancellation, and the
        loops also stop by themselves at their next turn."""
        self._closing = True
        if (self._pending or self._pending_clear) and (
            self._publisher is None or self._publisher.done()
        ):
            # Announce what is still pending before leaving, within l2_timeout.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._l2.timeout):
                    await self._publish_pending()
        await cancel_and_wait(self._listener)
        await cancel_and_wait(self._publisher)

    def stats(self) -> dict[str, int | bool]:
        return {
            "subscribed": self.subscribed,
            "published_messages": self.published_messages,
            "published_keys": self.published_keys,
            "publish_failures": self.publish_failures,
            "received_messages": self.received_messages,
            "received_keys": self.received_keys,
            "ignored_messages": self.ignored_messages,
            "gaps": self.gaps,
            "resubscribes": self.resubscribes,
        }
