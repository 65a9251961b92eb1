"""Dump and warm-up records: one cache entry each, and what makes one bad.

A record is ``{"key": str, "value": <value>, "ttl": seconds or null}``:

* JSON Lines (the default): one JSON object a line. Values are JSON values
  only (null, true/false, numbers, strings, arrays, objects). ``NaN`` and
  ``Infinity`` are refused. Blank lines are ignored.
* msgpack (``--format msgpack``): a stream of maps with the same three
  fields, and values may be anything the cache carries (bytes, datetime).

``ttl`` is the remaining lifetime in seconds when the record was written; null
or absent means the entry does not expire (what a dump writes for a key
without expiry). It must be a positive finite number otherwise. Extra fields
are ignored, so later versions may add some.

A bad line (invalid JSON, not an object, no ``key``, a key that is not a
non-empty str, a bad ttl) becomes a :class:`BadRecord` with its line number
(or record number for msgpack), and the load goes on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "BadRecord",
    "Record",
    "format_json_line",
    "json_problem",
    "parse_json_line",
    "record_from_object",
]

_MAX_REASON: Final = 200


@dataclass(slots=True)
class Record:
    """One entry to load. ``position`` is where the source can resume after it."""

    key: str
    value: Any
    ttl: float | None
    number: int
    """Line number (JSON Lines) or record number (msgpack, Redis), from 1."""
    position: dict[str, Any]


@dataclass(slots=True)
class BadRecord:
    """A line or record that cannot be loaded, and why."""

    number: int
    reason: str
    position: dict[str, Any]
    key: str | None = None

    def describe(self, unit: str = "line") -> str:
        where = f"{unit} {self.number}"
        if self.key is not None:
            where += f" (key {self.key!r:.80})"
        return f"{where}: {self.reason}"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every line (json.loads with options builds a new one per call).
_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def parse_json_line(
    line: bytes, number: int, position: dict[str, Any]
) -> Record | BadRecord | None:
    """The record on one JSON Lines line; None for a blank line."""
    if not line.strip():
        return None
    try:
        obj = _decode(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return BadRecord(number, f"not UTF-8 text: {exc}", position)
    except (ValueError, RecursionError) as exc:
        return BadRecord(number, f"invalid JSON: {str(exc)[:_MAX_REASON]}", position)
    return record_from_object(obj, number, position)


def record_from_object(obj: Any, number: int, position: dict[str, Any]) -> Record | BadRecord:
    """Check a decoded JSON object or msgpack map and make it a record."""
    if not isinstance(obj, dict):
        return BadRecord(
            number, f'expected an object {{"key", "value", "ttl"}}, got {type(obj).__name__}',
            position,
        )  # fmt: skip
    if "key" not in obj:
        return BadRecord(number, 'no "key" field', position)
    key = obj["key"]
    if not isinstance(key, str) or not key:
        return BadRecord(
            number, f'"key" must be a non-empty string, got {type(key).__name__} {key!r:.80}',
            position,
        )  # fmt: skip
    if "value" not in obj:
        return BadRecord(number, 'no "value" field', position, key)
    ttl = obj.get("ttl")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            return BadRecord(
                number, f'"ttl" must be a number of seconds or null, got {ttl!r:.80}', position, key
            )
        if not math.isfinite(ttl) or ttl <= 0:
            return BadRecord(number, f'"ttl" must be > 0 seconds, got {ttl!r}', position, key)
        ttl = float(ttl)
    return Record(key, obj["value"], ttl, number, position)


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be written as a JSON value without loss, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"a float {item!r} (JSON has no NaN or Infinity)"
            continue
        if isinstance(item, (list, tuple)):
            stack.extend(item)
            continue
        if isinstance(item, dict):
            for sub_key, sub in item.items():
                if not isinstance(sub_key, str):
                    return f"a dict key of type {type(sub_key).__name__}"
                stack.append(sub)
            continue
        if isinstance(item, (bytes, bytearray, memoryview)):
            return "bytes"
        if isinstance(item, datetime):
            return "a datetime"
        return f"a {type(item).__name__}"
    return None


def format_json_line(key: str, value: Any, ttl: float | None) -> str:
    """One JSON Lines line (without the newline). The value must pass
    :func:`json_problem`."""
    return json.dumps(
        {"key": key, "value": value, "ttl": ttl},
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    )
