"""Latency histograms kept in plain lists, read at scrape time.

A prometheus_client ``Histogram.observe()`` takes a lock and walks its
buckets in Python; here an observation is one ``bisect`` and two list
updates, and nothing is shared with another thread but the numbers the
scraping thread reads (a scrape may see an observation half-applied: the
exported ``_count`` is computed from the buckets, so it always agrees with
them).

The series are fixed when the recorder is built, so the number of exported
series never depends on the keys or the traffic.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

__all__ = ["LATENCY_BUCKETS", "LatencyRecorder"]

#: Upper bounds (seconds) from one microsecond to 100 ms; +Inf is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
)


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class LatencyRecorder:
    """One histogram per label tuple given at construction."""

    __slots__ = ("_series",)

    def __init__(self, labels: Iterable[tuple[str, ...]]) -> None:
        self._series = {label: _Series() for label in labels}

    def observe(self, label: tuple[str, ...], seconds: float) -> None:
        """Record one duration under ``label`` (which must be one given at construction)."""
        series = self._series[label]
        series.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series.total += seconds

    def snapshot(self) -> Iterator[tuple[tuple[str, ...], list[int], float]]:
        """``(label, counts per bucket (not cumulative, +Inf last), sum)`` of each series."""
        for label, series in self._series.items():
            yield label, list(series.counts), series.total
