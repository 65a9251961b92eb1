"""msgpack ext type 1: a :class:`datetime.datetime`, its time zone kept.

The ext data is itself a small msgpack array (packed with ``use_bin_type``)::

    [wall, fold, zone]            naive datetime (zone None) or ZoneInfo (zone str)
    [wall, fold, zone, name]      fixed offset with a non-default name

``wall``  the wall-clock time WITHOUT offset, ``datetime.isoformat(timespec=
          "microseconds")`` of the naive datetime, e.g. ``"2024-10-27T02:30:00.000000"``
``fold``  0 or 1 (PEP 495; picks the first or second of a repeated wall time)
``zone``  None (naive), a str (the IANA key of a :class:`zoneinfo.ZoneInfo`), or
          an int (a fixed :class:`datetime.timezone` offset in microseconds east of UTC)
``name``  only for fixed offsets whose ``tzname`` is not the default ``"UTC+01:00"`` form

Keeping the wall time, the fold and the zone (rather than the instant) rebuilds
the very same datetime: same fields, same fold, same zone key; even a wall time
that does not exist in its zone (in a spring-forward gap) survives unchanged.
The instant follows from those, as it does for the original.

Other ``tzinfo`` implementations (pytz, dateutil, a ZoneInfo built with
``ZoneInfo.from_file`` and so without a key) are refused: their zone could not
be rebuilt faithfully. Decoding looks a zone key up with ``ZoneInfo(key)``
only when the key looks like an IANA key; a key this host's tz database does
not know makes the value unreadable (the codec reports it as corrupt).

This module imports no other part of the codec; ``pack_datetime`` raises
:class:`UnsupportedValue` (the codec re-raises it as
:class:`~resync_hierarchy.errors.SerializationError`), ``unpack_datetime``
raises ``ValueError`` (or any other exception msgpack/zoneinfo raises) for
bad data, which the codec turns into a corrupt-value report.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache, partial
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgpack  # type: ignore[import-untyped]

__all__ = ["EXT_DATETIME", "UnsupportedValue", "pack_datetime", "unpack_datetime"]

EXT_DATETIME: Final = 1

_ONE_MICROSECOND: Final = timedelta(microseconds=1)
_ZONE_KEY: Final = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*")
_MAX_ZONE_KEY_CHARS: Final = 128


class UnsupportedValue(TypeError):
    """Raised from msgpack's ``default`` hook for a value the codec cannot carry;
    the message is the one the caller will see."""


def _no_nested_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"unexpected ext type {code} inside a datetime")


# A small buf_size matters: this Packer is built while the outer one is
# active, and msgpack's default 256 KiB buffer costs an mmap (~6 us) each time.
_packb = partial(msgpack.packb, use_bin_type=True, buf_size=256)
_unpackb = partial(
    msgpack.unpackb, raw=False, strict_map_key=True, timestamp=0, ext_hook=_no_nested_ext
)


def pack_datetime(dt: datetime) -> bytes:
    """The ext data for ``dt``; UnsupportedValue for a zone we cannot rebuild."""
    tz = dt.tzinfo
    if tz is None:
        return _packb((dt.isoformat(timespec="microseconds"), dt.fold, None))  # type: ignore[no-any-return]
    wall = dt.replace(tzinfo=None).isoformat(timespec="microseconds")
    if isinstance(tz, ZoneInfo):
        key = tz.key
        if key is None:
            raise UnsupportedValue(
                "cannot cache a datetime whose ZoneInfo has no key (built with "
                "ZoneInfo.from_file); use ZoneInfo('Area/City') or a datetime.timezone"
            )
        return _packb((wall, dt.fold, key))  # type: ignore[no-any-return]
    if isinstance(tz, timezone):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        offset_us = offset // _ONE_MICROSECOND
        if name == timezone(offset).tzname(None):
            return _packb((wall, dt.fold, offset_us))  # type: ignore[no-any-return]
        return _packb((wall, dt.fold, offset_us, name))  # type: ignore[no-any-return]
    raise UnsupportedValue(
        f"cannot cache a datetime with tzinfo of type {type(tz).__module__}."
        f"{type(tz).__qualname__} ({tz!r}): its zone could not be rebuilt; use "
        "zoneinfo.ZoneInfo or datetime.timezone (or a naive datetime)"
    )


@lru_cache(maxsize=256)
def _zone(key: str) -> ZoneInfo:
    if len(key) > _MAX_ZONE_KEY_CHARS or _ZONE_KEY.fullmatch(key) is None:
        raise ValueError(f"not a time zone key: {key[:_MAX_ZONE_KEY_CHARS]!r}")
    return ZoneInfo(key)


@lru_cache(maxsize=256)
def _fixed_offset(offset_us: int, name: str | None) -> timezone:
    offset = timedelta(microseconds=offset_us)
    return timezone(offset) if name is None else timezone(offset, name)


def unpack_datetime(data: bytes) -> datetime:
    """The datetime in ext ``data``; raises (ValueError or other) if malformed."""
    items = _unpackb(data)
    if type(items) is not list or not 3 <= len(items) <= 4:
        raise ValueError("datetime ext: expected a 3- or 4-item array")
    wall, fold, zone = items[0], items[1], items[2]
    if type(wall) is not str or type(fold) is not int or fold not in (0, 1):
        raise ValueError("datetime ext: bad wall time or fold")
    dt = datetime.fromisoformat(wall)
    if dt.tzinfo is not None:
        raise ValueError("datetime ext: wall time carries an offset")
    if zone is None:
        if len(items) != 3:
            raise ValueError("datetime ext: naive datetime with a zone name")
        return dt.replace(fold=1) if fold else dt
    if type(zone) is str:
        if len(items) != 3:
            raise ValueError("datetime ext: zone key with a zone name")
        return dt.replace(tzinfo=_zone(zone), fold=fold)
    if type(zone) is int:
        name = items[3] if len(items) == 4 else None
        if name is not None and type(name) is not str:
            raise ValueError("datetime ext: zone name is not a str")
        return dt.replace(tzinfo=_fixed_offset(zone, name), fold=fold)
    raise ValueError("datetime ext: zone is neither None, a key nor an offset")
