"""RecoveryQueue: one pending write per key, bounded, last operation wins."""

from __future__ import annotations

from structlog.testing import capture_logs

from resync_hierarchy.resilience.recovery import PendingWrite, RecoveryQueue


def write(key: str, version: int, blob: bytes | None = b"v") -> PendingWrite:
    return PendingWrite(key.encode(), key, blob, version, None)


def test_last_operation_per_key_wins_and_order_is_oldest_first() -> None:
    queue = RecoveryQueue(10)
    assert not queue
    queue.record(write("a", 1))
    queue.record(write("b", 2))
    queue.record(write("a", 3, None))  # a delete after a set replaces it
    assert len(queue) == 2
    assert [(w.key, w.version, w.blob) for w in queue.oldest(10)] == [
        ("b", 2, b"v"),
        ("a", 3, None),
    ]
    assert queue.oldest(1)[0].key == "b"
    assert queue.recorded == 3


def test_supersede_and_done() -> None:
    queue = RecoveryQueue(10)
    first = write("a", 1)
    queue.record(first)
    queue.record(write("b", 2))
    queue.supersede(b"b")
    assert queue.get(b"b") is None
    replacement = write("a", 5)
    queue.record(replacement)
    assert not queue.done(first)  # replaced while "in flight": stays queued
    assert queue.get(b"a") is replacement
    assert queue.done(replacement)
    assert not queue


def test_clear_drops_pending_and_is_remembered() -> None:
    queue = RecoveryQueue(10)
    queue.record(write("a", 1))
    queue.record_clear(7)
    assert len(queue) == 0
    assert queue  # the clear itself is pending
    assert queue.clear_version == 7


def test_overflow_drops_the_oldest_counts_and_logs_at_most_once_a_second() -> None:
    now = [100.0]
    queue = RecoveryQueue(2, clock=lambda: now[0])
    with capture_logs() as logs:
        for i in range(5):
            queue.record(write(f"k{i}", i))
        now[0] += 1.0
        queue.record(write("k5", 5))
    assert [w.key for w in queue.oldest(10)] == ["k4", "k5"]
    assert queue.overflowed == 4
    assert [entry["event"] for entry in logs] == ["recovery_queue_overflow"] * 2
    assert [entry["dropped_since_last_event"] for entry in logs] == [1, 3]
