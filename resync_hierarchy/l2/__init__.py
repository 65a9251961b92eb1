"""L2: the shared tier. A backend moves bytes under full keys; it knows
nothing of values, namespaces' meaning, TTL policy or retries.

:class:`L2Backend` is the narrow interface every backend implements;
:class:`L2Error` is the only exception a backend raises (Redis errors are
translated once, at this boundary, chained with ``from``).
"""

from __future__ import annotations

from resync_hierarchy.l2.base import L2Backend, L2Error, glob_escape

__all__ = ["L2Backend", "L2Error", "glob_escape"]
