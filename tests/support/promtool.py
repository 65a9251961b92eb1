"""Running ``promtool`` (Debian package ``prometheus``) from the tests.

Policy, like real Redis: without ``promtool`` (or the ``prometheus`` server of
the same package) on PATH the tests that need it
SKIP with the reason shown, but FAIL when ``RESYNC_REQUIRE_PROMTOOL=1`` (set by
``.ci/run``), so CI cannot go green without running them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["promtool", "require_prometheus", "require_promtool"]

INSTALL_HINT = "install Debian's `prometheus` package (apt-get install prometheus)"


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is not None:
        return path
    reason = f"{binary} not found on PATH: {INSTALL_HINT}"
    if os.environ.get("RESYNC_REQUIRE_PROMTOOL") == "1":
        pytest.fail(f"{reason}. It is mandatory because RESYNC_REQUIRE_PROMTOOL=1.", pytrace=False)
    pytest.skip(reason)


def require_promtool() -> str:
    """The path of ``promtool``, or skip (fail under RESYNC_REQUIRE_PROMTOOL=1)."""
    return _require("promtool")


def require_prometheus() -> str:
    """The path of the ``prometheus`` server (same package as promtool), same policy."""
    return _require("prometheus")


def promtool(
    *args: str | Path, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args...`` (bounded to 60 s) and return its result, output captured."""
    return subprocess.run(
        [require_promtool(), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
