"""Migration flags (parsing, strict refusal, modes) and the rollout buckets.

The buckets are checked for stability across calls, processes and hash seeds,
for the share of keys at each percentage and for monotonicity: a key that
reads new at 10 % must still read new at 25 %.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resync_hierarchy.errors import CacheError, ConfigurationError
from resync_hierarchy.migration import MigrationFlags, reads_new, rollout_bucket
from resync_hierarchy.migration.flags import ENV_NAMES, parse_bool, parse_percent
from resync_hierarchy.migration.rollout import BUCKETS

KEYS = [f"key-{i}" for i in range(2000)]

# --------------------------------------------------------------------------- parse_bool


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, True), (False, False),
        ("true", True), ("TRUE", True), (" True ", True), ("1", True), ("yes", True),
        ("on", True), ("false", False), ("False", False), ("0", False), ("no", False),
        ("off", False), (" OFF\n", False),
    ],
)  # fmt: skip
def test_parse_bool_accepts_the_documented_spellings(raw: object, expected: bool) -> None:
    assert parse_bool("MIGRATION_USE_NEW_CACHE", raw) is expected


@pytest.mark.parametrize(
    "raw", ["maybe", "", " ", "2", "-1", "truthy", "y", "n", "enabled", None, 1, 0, 1.0, [], {}]
)
def test_parse_bool_refuses_anything_else_naming_the_flag(raw: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_bool("MIGRATION_USE_NEW_CACHE", raw)
    assert "MIGRATION_USE_NEW_CACHE" in str(caught.value)
    assert isinstance(caught.value, CacheError)


# --------------------------------------------------------------------------- parse_percent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, 0.0), (100, 100.0), (25, 25.0), (12.5, 12.5), (0.25, 0.25), (12.345, 12.35),
        ("0", 0.0), ("100", 100.0), ("25", 25.0), (" 10 ", 10.0), ("25%", 25.0),
        ("0.5", 0.5), ("1e1", 10.0),
    ],
)  # fmt: skip
def test_parse_percent_accepts_numbers_from_0_to_100(raw: object, expected: float) -> None:
    assert parse_percent("MIGRATION_ROLLOUT_PERCENT", raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        150, -1, 100.01, -0.01, 1e9, "150", "-1", "101%", "abc", "maybe", "", "%",
        "ten", "nan", "inf", "-inf", float("nan"), float("inf"), float("-inf"),
        True, False, None, [], {}, [50], b"50",
    ],
)  # fmt: skip
def test_parse_percent_refuses_out_of_range_non_numbers_and_bools(raw: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_percent("MIGRATION_ROLLOUT_PERCENT", raw)
    assert "MIGRATION_ROLLOUT_PERCENT" in str(caught.value)


# --------------------------------------------------------------------------- MigrationFlags


def test_defaults() -> None:
    flags = MigrationFlags()
    assert flags.as_dict() == {
        "use_new_cache": False,
        "rollout_percent": 100.0,
        "enable_metrics": True,
        "dual_write": True,
        "shadow_read_percent": 0.0,
        "finished": False,
        "mode": "dual_write",
    }


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("rollout_percent", 150), ("rollout_percent", -1), ("rollout_percent", "abc"),
        ("rollout_percent", True), ("shadow_read_percent", 101), ("shadow_read_percent", False),
        ("use_new_cache", "maybe"), ("use_new_cache", 1), ("enable_metrics", "abc"),
        ("dual_write", None), ("finished", "sometimes"),
    ],
)  # fmt: skip
def test_constructor_refuses_invalid_values(field: str, raw: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MigrationFlags(**{field: raw})
    assert field in str(caught.value)


def test_flags_are_immutable_and_replace_validates() -> None:
    flags = MigrationFlags(use_new_cache=True, rollout_percent=10)
    with pytest.raises(AttributeError):
        flags.rollout_percent = 50  # type: ignore[misc]
    assert flags.replace(rollout_percent=25).rollout_percent == 25.0
    assert flags.rollout_percent == 10.0
    with pytest.raises(ConfigurationError):
        flags.replace(rollout_percent=150)
    # strings are normalized at construction
    assert MigrationFlags(use_new_cache="yes", rollout_percent="25") == MigrationFlags(  # type: ignore[arg-type]
        use_new_cache=True, rollout_percent=25
    )


# --------------------------------------------------------------------------- from_env


def test_env_names_are_the_documented_ones() -> None:
    assert ENV_NAMES["use_new_cache"] == "MIGRATION_USE_NEW_CACHE"
    assert ENV_NAMES["rollout_percent"] == "MIGRATION_ROLLOUT_PERCENT"
    assert ENV_NAMES["enable_metrics"] == "MIGRATION_ENABLE_METRICS"


def test_from_env_reads_the_variables() -> None:
    flags = MigrationFlags.from_env(
        {
            "MIGRATION_USE_NEW_CACHE": "true",
            "MIGRATION_ROLLOUT_PERCENT": "25",
            "MIGRATION_ENABLE_METRICS": "false",
            "MIGRATION_DUAL_WRITE": "on",
            "MIGRATION_SHADOW_READ_PERCENT": "5",
            "UNRELATED": "150",
        }
    )
    assert flags == MigrationFlags(
        use_new_cache=True,
        rollout_percent=25,
        enable_metrics=False,
        dual_write=True,
        shadow_read_percent=5,
    )
    assert flags.mode == "read_new"


def test_from_env_with_nothing_set_gives_the_defaults() -> None:
    assert MigrationFlags.from_env({}) == MigrationFlags()


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIGRATION_USE_NEW_CACHE", "1")
    monkeypatch.setenv("MIGRATION_ROLLOUT_PERCENT", "10")
    assert MigrationFlags.from_env() == MigrationFlags(use_new_cache=True, rollout_percent=10)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MIGRATION_ROLLOUT_PERCENT", "150"), ("MIGRATION_ROLLOUT_PERCENT", "-1"),
        ("MIGRATION_ROLLOUT_PERCENT", "abc"), ("MIGRATION_ROLLOUT_PERCENT", "true"),
        ("MIGRATION_ROLLOUT_PERCENT", ""), ("MIGRATION_USE_NEW_CACHE", "maybe"),
        ("MIGRATION_USE_NEW_CACHE", "2"), ("MIGRATION_USE_NEW_CACHE", ""),
        ("MIGRATION_ENABLE_METRICS", "abc"), ("MIGRATION_DUAL_WRITE", "nope"),
        ("MIGRATION_SHADOW_READ_PERCENT", "200"),
    ],
)  # fmt: skip
def test_from_env_refuses_invalid_values_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MigrationFlags.from_env({variable: raw})
    assert variable in str(caught.value)


# --------------------------------------------------------------------------- from_record


def test_from_record_ignores_bookkeeping_fields() -> None:
    record = {
        "use_new_cache": True,
        "rollout_percent": 25,
        "enable_metrics": True,
        "dual_write": True,
        "shadow_read_percent": 0,
        "finished": False,
        "revision": 7,
        "updated_at": 1764000000.0,
        "updated_by": "cli:ops-host",
        "mode": "whatever",
    }
    assert MigrationFlags.from_record(record) == MigrationFlags(
        use_new_cache=True, rollout_percent=25
    )


def test_from_record_round_trips_as_dict_through_json() -> None:
    flags = MigrationFlags(
        use_new_cache=True, rollout_percent=12.5, enable_metrics=False, shadow_read_percent=3
    )
    assert MigrationFlags.from_record(json.loads(json.dumps(flags.as_dict()))) == flags


@pytest.mark.parametrize(
    "record",
    [
        {"rollout_percent": 150}, {"rollout_percent": -1}, {"rollout_percent": "abc"},
        {"rollout_percent": True}, {"rollout_percent": None}, {"use_new_cache": "maybe"},
        {"use_new_cache": 1}, {"enable_metrics": None}, {"finished": "yes please"},
        {"rollout_pct": 50}, {"use_new_cache": True, "surprise": 1},
    ],
)  # fmt: skip
def test_from_record_refuses_invalid_or_unknown_fields(record: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        MigrationFlags.from_record(record)


# --------------------------------------------------------------------------- modes

MODE_TABLE = [
    # use_new_cache, rollout_percent, dual_write, finished -> mode
    (False, 100, False, False, "legacy_only"),
    (False, 0, False, False, "legacy_only"),
    (False, 100, True, False, "dual_write"),
    (False, 50, True, False, "dual_write"),
    (True, 0, True, False, "dual_write"),
    (True, 0, False, False, "dual_write"),
    (True, 0.01, True, False, "read_new"),
    (True, 10, True, False, "read_new"),
    (True, 100, True, False, "read_new"),
    (True, 100, False, False, "read_new"),
    (True, 100, True, True, "new_only"),
    (False, 0, False, True, "new_only"),
    (True, 25, False, True, "new_only"),
]


@pytest.mark.parametrize(("use_new", "percent", "dual_write", "finished", "mode"), MODE_TABLE)
def test_mode_derivation(
    use_new: bool, percent: float, dual_write: bool, finished: bool, mode: str
) -> None:
    flags = MigrationFlags(
        use_new_cache=use_new, rollout_percent=percent, dual_write=dual_write, finished=finished
    )
    assert flags.mode == mode
    assert flags.as_dict()["mode"] == mode


def test_enable_metrics_and_shadow_do_not_change_the_mode() -> None:
    for metrics in (True, False):
        for shadow in (0, 10, 100):
            flags = MigrationFlags(enable_metrics=metrics, shadow_read_percent=shadow)
            assert flags.mode == "dual_write"


# --------------------------------------------------------------------------- rollout buckets

# Pinned: the bucket of a key must never change between releases or Python
# versions, or a fleet running two releases would split keys differently.
GOLDEN = {
    "user:1": 6315,
    "user:2": 506,
    "llm:prompt:abc": 7525,
    "": 5817,
    "é☃": 7770,
    "k-0": 3700,
    "k-1999": 9862,
}


def test_buckets_are_pinned() -> None:
    assert {key: rollout_bucket(key) for key in GOLDEN} == GOLDEN


def test_buckets_are_in_range_and_stable_across_calls() -> None:
    first = [rollout_bucket(k) for k in KEYS]
    assert all(0 <= b < BUCKETS for b in first)
    assert [rollout_bucket(k) for k in KEYS] == first
    assert len(set(first)) > 1500  # spread, not a constant


def test_buckets_do_not_use_builtin_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = [rollout_bucket(k) for k in KEYS[:50]]

    def forbidden(obj: object) -> int:
        raise AssertionError(f"hash({obj!r}) called: rollout buckets must not use hash()")

    monkeypatch.setattr(builtins, "hash", forbidden)
    got = [rollout_bucket(k) for k in KEYS[:50]]
    got_reads = [reads_new(k, 37.5) for k in KEYS[:50]]
    monkeypatch.undo()
    assert got == expected
    assert got_reads == [b < 3750 for b in expected]


_CHILD = """
import json, sys
from resync_hierarchy.migration import reads_new, rollout_bucket
keys = [f"key-{i}" for i in range(2000)] + ["user:1", "", "é☃"]
print(json.dumps({
    "buckets": [rollout_bucket(k) for k in keys],
    "reads": {p: [reads_new(k, float(p)) for k in keys] for p in ("10", "25", "50", "90")},
    "hash_of_key": hash("key-0"),
}))
"""


def _buckets_in_subprocess(seed: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_buckets_are_identical_in_other_processes_whatever_the_hash_seed() -> None:
    keys = [*KEYS, "user:1", "", "é☃"]
    here = [rollout_bucket(k) for k in keys]
    one = _buckets_in_subprocess("1")
    two = _buckets_in_subprocess("4242")
    # the seeds really differ (so hash() would have given different answers) ...
    assert one["hash_of_key"] != two["hash_of_key"]
    # ... and the buckets do not
    assert one["buckets"] == here
    assert two["buckets"] == here
    for p in ("10", "25", "50", "90"):
        expected = [reads_new(k, float(p)) for k in keys]
        assert one["reads"][p] == expected
        assert two["reads"][p] == expected


@pytest.mark.parametrize("percent", [10, 25, 50, 90])
def test_share_within_3_points_over_2000_keys(percent: float) -> None:
    share = 100 * sum(reads_new(k, percent) for k in KEYS) / len(KEYS)
    assert abs(share - percent) <= 3, f"{share:.2f} % of keys read new at {percent} %"


@pytest.mark.parametrize("prefix", ["user:", "llm:resp:", "session/", "x"])
def test_share_within_3_points_for_other_key_shapes(prefix: str) -> None:
    keys = [f"{prefix}{i:06d}" for i in range(2000)]
    for percent in (10, 25, 50, 90):
        share = 100 * sum(reads_new(k, percent) for k in keys) / len(keys)
        assert abs(share - percent) <= 3, (prefix, percent, share)


def test_share_is_monotone_across_the_rollout_steps() -> None:
    steps = [0, 1, 5, 10, 25, 50, 75, 90, 99, 100]
    previous: set[str] = set()
    for percent in steps:
        current = {k for k in KEYS if reads_new(k, percent)}
        assert previous <= current, f"a key left the new side going up to {percent} %"
        previous = current
    assert {k for k in KEYS if reads_new(k, 10)} <= {k for k in KEYS if reads_new(k, 25)}


def test_edges_and_fractional_percentages() -> None:
    assert not any(reads_new(k, 0) for k in KEYS)
    assert all(reads_new(k, 100) for k in KEYS)
    # 0.25 % is 25 buckets out of 10,000: exactly the keys with bucket < 25
    for key in KEYS:
        assert reads_new(key, 0.25) == (rollout_bucket(key) < 25)
        assert reads_new(key, 12.34) == (rollout_bucket(key) < 1234)


@settings(max_examples=300, deadline=None)
@given(
    key=st.text(max_size=40),
    low=st.floats(min_value=0, max_value=100, allow_nan=False),
    high=st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_monotone_for_any_key_and_percentages(key: str, low: float, high: float) -> None:
    low, high = sorted((round(low, 2), round(high, 2)))
    assert 0 <= rollout_bucket(key) < BUCKETS
    if reads_new(key, low):
        assert reads_new(key, high)


@settings(max_examples=100, deadline=None)
@given(key=st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3))
def test_lone_surrogates_have_a_bucket(key: str) -> None:
    # keys are str; a lone surrogate must not crash the rollout decision
    assert 0 <= rollout_bucket(key) < BUCKETS
