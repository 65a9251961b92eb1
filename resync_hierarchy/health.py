"""Health endpoints: the cache's health as an HTTP status and a JSON body.

:func:`health_response` turns ``cache.health()`` (a CacheHierarchy or a
MigrationManager) into what a health endpoint or a Kubernetes probe needs:

===========  ==========================================  ======================
probe        200                                          503
===========  ==========================================  ======================
readiness    ``ok``; ``degraded`` (Redis unavailable,     ``down``: nothing can
             L1 still answers, so the pod can serve)      serve, or shut down
liveness     the cache object works, whatever Redis       shut down (``stop()``
             does                                         was called), or the
                                                          check itself failed
===========  ==========================================  ======================

Why a Redis outage never fails liveness: Kubernetes restarts a pod whose
liveness probe fails. Restarting every pod does not bring Redis back; it
throws away the L1 contents that keep the service answering during the
outage, and the restarted pods then all miss at once. Readiness stays 200
while degraded for the same reason: a pod whose L1 serves is more useful in
the load balancer than out of it, and taking every pod out at once would turn
a cache outage into a service outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Literal

from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.migration import MigrationManager

__all__ = ["Probe", "health_response"]

Probe = Literal["readiness", "liveness"]

_PROBES = ("readiness", "liveness")
_SLACK = 0.25  # seconds on top of l2_timeout before the check counts as hung


async def health_response(
    cache: CacheHierarchy | MigrationManager,
    *,
    probe: Probe = "readiness",
    max_seconds: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """``(http_status, body)`` for a health endpoint or a Kubernetes probe.

    ``body`` is ``cache.health()`` (``status`` ``ok``/``degraded``/``down``,
    ``l1``, ``l2``; for a MigrationManager also ``migration``, ``legacy``
    and ``new``) plus ``probe`` and ``pass`` (the verdict), and can be given
    to ``json.dumps`` as it is. ``http_status`` is 200 when the probe passes,
    503 when it fails (see the module docstring for the rules).

    Never raises (but ConfigurationError for an unknown ``probe``, before
    anything is checked) and returns within ``max_seconds``: by default
    the cache's ``l2_timeout`` plus 0.25 s. A check that takes longer fails
    both probes.
    """
    if probe not in _PROBES:
        raise ConfigurationError(f"probe must be 'readiness' or 'liveness', got {probe!r}")
    budget = max_seconds if max_seconds is not None else _l2_timeout(cache) + _SLACK
    report: dict[str, Any]
    try:
        async with asyncio.timeout(budget):
            report = dict(await cache.health())
    except TimeoutError:
        report = _failed(f"the health check took longer than {budget:g} s")
    except Exception as exc:  # a health endpoint must answer whatever happens
        report = _failed(f"{type(exc).__name__}: {exc}")
    closed = _shut_down(report)
    if probe == "readiness":
        passed = report.get("status") in ("ok", "degraded") and not closed
    else:
        passed = not closed and "error" not in report
    body = _jsonable(report)
    body["probe"] = probe
    body["pass"] = passed
    return (200 if passed else 503), body


def _l2_timeout(cache: CacheHierarchy | MigrationManager) -> float:
    if isinstance(cache, MigrationManager):
        return max(cache.legacy.config.l2_timeout, cache.new.config.l2_timeout)
    return cache.config.l2_timeout


def _failed(error: str) -> dict[str, Any]:
    return {"status": "down", "error": error, "l1": {}, "l2": {}}


def _shut_down(report: Mapping[str, Any]) -> bool:
    """True if the cache (either side of a MigrationManager) was shut down."""
    for part in (report, report.get("legacy"), report.get("new")):
        if isinstance(part, Mapping):
            l2 = part.get("l2")
            if isinstance(l2, Mapping) and l2.get("status") == "closed":
                return True
    return False


def _jsonable(value: Any) -> Any:
    """A copy that json.dumps accepts: mappings with str keys, lists, and
    scalars; anything else as its str()."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
