"""How the chaos tests judge a scenario report, and the heap they run on.

``held(report, known_limit)``: every check held, or the test is marked xfail
at run time when every failure has the shape of the documented delete race
(deletes leave no version in Redis; tombstones are not built). Any other
failure fails the test.

``frozen_heap()``: the test process's heap frozen for the scenario, as a
service does after start-up (``gc.freeze()``). A full collection over
pytest's heap (the suite's modules, fixtures, earlier tests' leftovers)
paused this 2-core machine for ~100 ms mid-scenario: the test process's
cost, not the cache's, and enough to push a call past l2_timeout + 100 ms.
The scenario's own objects are still collected as usual.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import pytest

from resync_hierarchy.testing.chaos import PATTERN_REPLAY_OVERTOOK_DELETE, ScenarioReport


def held(report: ScenarioReport, known_limit: str) -> bool:
    """Print the report (pytest shows it on failure) and tell whether every check held."""
    print(report.failure_summary())
    print(f"measurements: {report.measurements}")
    failed = report.failed_checks()
    if failed and (
        all(c.pattern == PATTERN_REPLAY_OVERTOOK_DELETE for c in failed)
        or only_deletes_came_back(report)
    ):
        pytest.xfail(known_limit + "\n" + report.failure_summary())
    return report.passed and not failed


def only_deletes_came_back(report: ScenarioReport) -> bool:
    """Every failure is an acknowledged delete whose key got a value back, for
    good or for a moment (nothing lost, older or unexpected otherwise): the
    documented limit, seen also when a write held by the server (CLIENT PAUSE
    WRITE) runs after it."""
    verification = report.measurements.extra.get("verification", {})
    if any(verification.get(k) for k in ("lost_writes", "older", "unexpected")):
        return False
    allowed = {"reads_return_last_acknowledged_write", "no_write_or_delete_lost"}
    for check in report.failed_checks():
        if check.name not in allowed:
            return False
        if check.name == "reads_return_last_acknowledged_write" and (
            "returned None" in check.detail or "last acknowledged: None" not in check.detail
        ):
            return False
    return True


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
