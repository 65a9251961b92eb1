"""scripts/compare_peers.py --quick: a structural smoke run (never timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resync_hierarchy.testing.redis_server import redis_server_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(redis_server_binary() is None, reason="needs a redis-server binary")
def test_compare_peers_quick_reports_every_section() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_peers.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert {"l1_hit", "l2_hit", "load", "hit_ratio", "memory", "growth", "goals"} <= set(result)
    assert result["l1_hit"]["floor"]["ratio"] == 1.0
    assert result["l1_hit"]["ours"]["median_ns"] > 0
    assert result["l2_hit"]["ours"]["median_ns"] > 0
    for row in ("closed_raw", "closed_ours", "open_raw", "open_ours"):
        assert result["load"][row]["requests"] > 0
        assert result["load"][row]["errors"] == 0
    zipf = result["hit_ratio"]["traces"]["zipf"]["1%"]
    assert zipf["ours"]["hit_ratio"] <= zipf["OPT"]
    assert [goal["goal"][0] for goal in result["goals"]] == ["1", "2", "3", "4", "5", "6"]
    skipped = result["skipped"]
    for peer in ("theine", "cachetools", "aiocache", "cashews"):
        assert peer in result["l1_hit"] or peer in skipped
