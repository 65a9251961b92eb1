#!/usr/bin/env python3
"""The project's two entry points, each creating the environment it needs.

    python3 dev.py bench [bench options]   the main job: resync-hierarchy bench
    python3 dev.py test  [pytest options]  lint, types, the whole suite, coverage

Both create ``.venv`` (with this interpreter, Python 3.11+) and install the
package into it, again only when pyproject.toml changed. Set
RESYNC_REQUIRE_REDIS=1 (CI does) to make a missing redis-server a failure
instead of a skip.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"

EXTRAS = {"bench": "embedded", "test": "dev,embedded"}


def run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, check=False)  # noqa: S603 - our own tools
    if result.returncode:
        raise SystemExit(result.returncode)


def ensure_env(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - a clear message for an old python3
        raise SystemExit(f"Python 3.11+ is needed, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    marker = VENV / f".installed-{digest[:16]}"
    if marker.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "-e", f".[{extras}]")
    for old in VENV.glob(".installed-*"):
        old.unlink()
    marker.touch()


def bench(args: list[str]) -> None:
    ensure_env(EXTRAS["bench"])
    run(BIN / "resync-hierarchy", "bench", *args)


def test(args: list[str]) -> None:
    ensure_env(EXTRAS["test"])
    run(PY, "-m", "ruff", "check", "resync_hierarchy", "tests", "scripts", "dev.py")
    run(PY, "-m", "ruff", "format", "--check", "resync_hierarchy", "tests", "scripts", "dev.py")
    run(PY, "-m", "mypy", "--strict", "resync_hierarchy")
    run(
        PY, "-m", "pytest", "-p", "no:cacheprovider",
        "--cov=resync_hierarchy", "--cov-report=term", "--cov-fail-under=85",
        *args,
    )  # fmt: skip


def main() -> None:
    commands = {"bench": bench, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        raise SystemExit(2)
    commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
