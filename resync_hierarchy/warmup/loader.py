"""The warm-up loader: records from a source into a cache's Redis, in batches.

::

    source ──► parse + validate + encode (a bad record: counted, listed, skipped)
           ──► batches of ``batch`` entries ──► token bucket (``rate`` keys/s)
           ──► up to ``concurrency`` batches in flight, one round trip each
           ──► acknowledged: checkpoint moves past every batch acknowledged so far

* **Per-entry TTL**: each entry keeps its own ``ttl`` (null: no expiry, or
  ``default_ttl`` when given).
* **skip_existing**: a key that already holds a value in Redis is left alone.
  The check and the write are one atomic version-conditional write per key
  (the loaded entry counts as older than any value a cache wrote), so a value
  written between a check and the write cannot be overwritten either.
* **Checkpoint** (``state_file``): after acknowledged batches, the position
  after the last batch such that it and every batch before it were
  acknowledged is saved (temporary file + rename, at most every
  ``checkpoint_interval`` seconds and at the end). A run with the same state
  file continues from there. The file is deleted when a load completes.
* **Failures**: a batch gets ``l2_timeout`` per 50 entries (see
  ``batch_deadline``). One that Redis did not acknowledge (timeout,
  connection, busy, circuit open) is sent again after 0.25 s, then 0.5 s
  (``batch_attempts`` in all, counted in ``retried``). If it still fails it is
  counted as failed and no further batch is sent; the checkpoint stays before
  it, so a rerun resumes there. Other refusals (OOM, no permission) are not
  retried. A bad record never stops the load.
* **dry_run**: parse, validate and encode everything; write nothing (not the
  state file either).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from resync_hierarchy.errors import CacheError, ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.observe.logging import get_logger
from resync_hierarchy.warmup._bulk import BatchFailed, BulkCache, Prepared
from resync_hierarchy.warmup.records import BadRecord
from resync_hierarchy.warmup.sources import Source

__all__ = ["STATE_FORMAT", "TokenBucket", "WarmupReport", "warm_up"]

STATE_FORMAT: Final = "resync-warmup-state"
_RETRYABLE: Final = frozenset({"timeout", "connection", "busy", "loading", "circuit_open"})
_STATE_VERSION: Final = 1

_log = get_logger("resync_hierarchy.warmup")

Sleep = Callable[[float], Awaitable[None]]
Progress = Callable[["WarmupReport"], None]


class TokenBucket:
    """At most ``rate`` keys per second on average, bursts of at most ``burst``.

    ``acquire(n)`` takes ``n`` tokens, sleeping first for any shortfall, so a
    request larger than the bucket is allowed but paid for in full: the
    average never exceeds ``rate``. ``clock`` (monotonic seconds) and
    ``sleep`` are injectable.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ConfigurationError(f"rate must be > 0 keys per second, got {rate}")
        if not burst >= 1:
            raise ConfigurationError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self.waited = 0.0

    async def acquire(self, n: int) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= n
        if self._tokens < 0:
            wait = -self._tokens / self.rate
            self.waited += wait
            await self._sleep(wait)


@dataclass
class WarmupReport:
    source: dict[str, Any] = field(default_factory=dict)
    loaded: int = 0
    skipped: int = 0
    """Keys that already held a value (skip_existing)."""
    failed: int = 0
    """Entries in batches Redis did not acknowledge."""
    retried: int = 0
    """Batches sent again after Redis did not acknowledge them."""
    bad_lines: int = 0
    bad: list[str] = field(default_factory=list)
    """The first bad records, each with its line (or record) number and why."""
    read: int = 0
    """Records read from the source this run (bad ones included)."""
    would_load: int = 0
    """dry_run: valid records, which a real run would write."""
    dry_run: bool = False
    resumed_from: dict[str, Any] | None = None
    completed: bool = False
    stopped: str | None = None
    """Why the load ended early: ``limit``, ``failed``, ``source unavailable``."""
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def keys_per_second(self) -> float:
        done = self.would_load if self.dry_run else self.loaded + self.skipped
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Everything read was loaded (or skipped as existing), nothing bad."""
        return self.completed and not self.failed and not self.bad_lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": self.loaded,
            "skipped": self.skipped,
            "failed": self.failed,
            "retried": self.retried,
            "bad_lines": self.bad_lines,
            "bad": list(self.bad),
            "read": self.read,
            "dry_run": self.dry_run,
            "would_load": self.would_load,
            "resumed_from": self.resumed_from,
            "completed": self.completed,
            "stopped": self.stopped,
            "errors": list(self.errors),
            "duration_seconds": round(self.seconds, 3),
            "keys_per_second": round(self.keys_per_second, 1),
        }


def _read_state(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read the warm-up state file {path}: {exc}") from exc
    try:
        state = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"{path} is not a warm-up state file (not JSON); delete it or pass another --resume"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigurationError(
            f"{path} is not a warm-up state file; delete it or pass another --resume"
        )
    if state.get("source") != identity:
        raise ConfigurationError(
            f"the warm-up state file {path} belongs to another source, or the file changed "
            f"since ({state.get('source')}); delete it or pass another --resume file"
        )
    position = state.get("position")
    return position if isinstance(position, dict) else None


def _write_state(path: Path, identity: dict[str, Any], position: dict[str, Any]) -> None:
    document = {
        "format": STATE_FORMAT,
        "version": _STATE_VERSION,
        "source": identity,
        "position": position,
        "updated_at": time.time(),
    }
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


async def warm_up(
    target: CacheHierarchy,
    source: Source,
    *,
    batch: int = 500,
    concurrency: int = 4,
    rate: float | None = None,
    skip_existing: bool = False,
    dry_run: bool = False,
    state_file: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    default_ttl: float | None = None,
    max_listed: int = 20,
    progress: Progress | None = None,
    checkpoint_interval: float = 0.5,
    batch_attempts: int = 3,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> WarmupReport:
    """Load ``source`` into ``target``'s Redis; see the module docstring.

    ``limit`` stops after that many records (bad ones included), leaving the
    checkpoint for a later run. Raises ConfigurationError for bad arguments
    or a state file of another source; never raises for bad records or
    Redis trouble (those are in the report).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"batch must be an int >= 1, got {batch!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
    if limit is not None and limit < 0:
        raise ConfigurationError(f"limit must be >= 0, got {limit}")
    if (
        isinstance(batch_attempts, bool)
        or not isinstance(batch_attempts, int)
        or batch_attempts < 1
    ):
        raise ConfigurationError(f"batch_attempts must be an int >= 1, got {batch_attempts!r}")
    if default_ttl is not None and not default_ttl > 0:
        raise ConfigurationError(f"default TTL must be > 0 seconds, got {default_ttl}")
    bucket = None if rate is None else TokenBucket(rate, burst=batch, clock=clock, sleep=sleep)
    bulk = BulkCache(target, require_l2=not dry_run)
    report = WarmupReport(source=source.identity(), dry_run=dry_run)
    state_path = None if state_file is None else Path(state_file)
    resume = None
    if state_path is not None:
        resume = _read_state(state_path, report.source)
        report.resumed_from = resume
    started = clock()
    semaphore = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    acknowledged: dict[int, dict[str, Any]] = {}
    next_ack = 0
    watermark: dict[str, Any] | None = None
    last_saved = clock()
    failed = False

    def save_checkpoint(force: bool = False) -> None:
        nonlocal last_saved
        if state_path is None or dry_run or watermark is None:
            return
        now = clock()
        if force or now - last_saved >= checkpoint_interval:
            _write_state(state_path, report.source, watermark)
            last_saved = now

    async def send(sequence: int, items: list[Prepared], position: dict[str, Any]) -> None:
        nonlocal next_ack, watermark, failed
        try:
            attempt = 1
            while True:
                try:
                    written = await bulk.write(items, skip_existing=skip_existing)
                    break
                except BatchFailed as exc:
                    if attempt >= batch_attempts or exc.kind not in _RETRYABLE or failed:
                        failed = True
                        report.failed += len(items)
                        if len(report.errors) < max_listed:
                            report.errors.append(
                                f"batch of {len(items)} not written after {attempt} "
                                f"attempt(s): {exc}"
                            )
                        return
                    report.retried += 1
                    await sleep(0.25 * 2 ** (attempt - 1))
                    attempt += 1
        finally:
            semaphore.release()
        report.loaded += written
        report.skipped += len(items) - written
        acknowledged[sequence] = position
        while next_ack in acknowledged:
            watermark = acknowledged.pop(next_ack)
            next_ack += 1
        save_checkpoint()
        if progress is not None:
            progress(report)

    sequence = 0

    async def dispatch(items: list[Prepared], position: dict[str, Any]) -> None:
        nonlocal sequence
        if dry_run:
            report.would_load += len(items)
            return
        if bucket is not None:
            await bucket.acquire(len(items))
        await semaphore.acquire()
        if failed:  # a batch failed while this one waited: send nothing more
            semaphore.release()
            return
        task = asyncio.get_running_loop().create_task(send(sequence, items, position))
        sequence += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def bad(item: BadRecord) -> None:
        report.bad_lines += 1
        if len(report.bad) < max_listed:
            report.bad.append(item.describe(source.unit))

    pending: list[Prepared] = []
    position: dict[str, Any] = {}
    records = source.records(resume)
    prepare = bulk.prepare
    try:
        async for chunk in records:
            for item in chunk:
                if failed:
                    report.stopped = "failed"
                    break
                report.read += 1
                if isinstance(item, BadRecord):
                    bad(item)
                else:
                    ttl = item.ttl if item.ttl is not None else default_ttl
                    try:
                        pending.append(
                            prepare(item.key, item.value, ttl, skip_existing=skip_existing)
                        )
                    except CacheError as exc:
                        bad(BadRecord(item.number, str(exc), item.position, item.key))
                    position = item.position
                    if len(pending) >= batch:
                        await dispatch(pending, position)
                        pending = []
                if limit is not None and report.read >= limit:
                    report.stopped = "limit"
                    break
            if report.stopped is not None:
                break
        if pending and not failed:
            await dispatch(pending, position)
    except BatchFailed as exc:
        report.stopped = "source unavailable"
        report.errors.append(f"reading the source failed: {exc}")
    finally:
        await records.aclose()  # type: ignore[attr-defined]
        if tasks:
            await asyncio.gather(*tasks)
    if failed and report.stopped is None:
        report.stopped = "failed"
    report.completed = report.stopped is None
    report.seconds = clock() - started
    if state_path is not None and not dry_run:
        if report.completed:
            with contextlib.suppress(FileNotFoundError):
                state_path.unlink()
        else:
            save_checkpoint(force=True)
    if progress is not None:
        progress(report)
    _log.info(
        "warmup_finished",
        namespace=target.config.namespace,
        **{k: v for k, v in report.as_dict().items() if k not in ("bad", "errors", "source")},
    )
    return report
