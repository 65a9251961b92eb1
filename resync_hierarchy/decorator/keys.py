"""Canonical, process-independent encoding of a call's arguments.

The encoding is text, the same in every process and run (it never uses
``hash()``, ``id()`` or a ``repr`` that shows an address), and injective:
two argument values get the same text only if they are the same value of the
same kind. ``1``, ``1.0``, ``True`` and ``"1"`` all differ.

=========================================  ===============================================
value                                      text
=========================================  ===============================================
``str`` (and str subclasses, StrEnum)      JSON string: ``"abc"``
``int`` (and IntEnum, IntFlag)             decimal (hex beyond 64 bits): ``42``
``float``                                  ``repr``: ``1.0``, ``1e+20``, ``nan``
``bool`` / ``None``                        ``true`` / ``false`` / ``null``
``bytes`` / ``bytearray``                  ``b"<hex>"``
``list`` / ``tuple`` (NamedTuple too)      ``[a,b]`` (a tuple and a list are the same)
``dict`` (keys of any kind above)          ``{k:v,...}`` sorted by the encoded key
``set`` / ``frozenset``                    ``S[a,b]`` sorted
``datetime`` / ``date`` / ``time``         ``dt"<isoformat>"``, ``d"..."``, ``t"..."``
``timedelta``                              ``td<microseconds>``
``UUID`` / ``Decimal``                     ``u"<hex>"`` / ``D"<str>"``
other ``Enum`` members                     ``E"module.Class.NAME"``
a dataclass instance                       ``@"module.Class"{"field":value,...}``
an object with ``__cache_key__()``         ``@"module.Class"`` + the encoding of its result
=========================================  ===============================================

Anything else (functions, lambdas, files, sockets, arbitrary objects) is
refused with :class:`UnkeyableArgumentError`: its only stable identity would
be its address, which differs in every process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import json.encoder
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from resync_hierarchy.errors import UnkeyableArgumentError

__all__ = ["MAX_DEPTH", "SCALAR_ENCODERS", "ArgumentEncoder"]

MAX_DEPTH = 32  # nesting of containers; deeper (or a cycle) is refused

_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


# The C string escaper behind json.dumps(ensure_ascii=False): 4x faster than
# going through JSONEncoder.encode, same output.
_str: Callable[[str], str] = json.encoder.encode_basestring


def _int(value: int) -> str:
    # Beyond 64 bits, hex: str() of a huge int is slow and limited to 4300 digits.
    return str(value) if _INT64_MIN <= value <= _UINT64_MAX else hex(value)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class ArgumentEncoder:
    """Encodes the values of one argument of one function; ``path`` names
    the position inside the value in errors."""

    __slots__ = ("argument", "function")

    def __init__(self, function: str, argument: str) -> None:
        self.function = function
        self.argument = argument

    def encode(self, value: Any, path: str = "", depth: int = 0) -> str:
        kind = type(value)
        scalar = _SCALARS.get(kind)
        if scalar is not None:
            return scalar(value)
        if depth >= MAX_DEPTH:
            self._refuse(value, path, f"it is nested more than {MAX_DEPTH} levels deep (a cycle?)")
        if kind is list or kind is tuple:
            return self._sequence(value, path, depth)
        if kind is dict:
            return self._mapping(value, path, depth)
        return self._other(value, path, depth)

    def _sequence(self, value: Any, path: str, depth: int) -> str:
        items = [self.encode(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        return "[" + ",".join(items) + "]"

    def _mapping(self, value: Any, path: str, depth: int) -> str:
        items = []
        for key, item in value.items():
            encoded_key = self.encode(key, f"{path}<key {key!r:.40}>", depth + 1)
            items.append((encoded_key, self.encode(item, f"{path}[{key!r:.40}]", depth + 1)))
        items.sort()
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"

    def _other(self, value: Any, path: str, depth: int) -> str:
        kind = type(value)
        custom = getattr(kind, "__cache_key__", None)
        if custom is not None and callable(custom):
            return f"@{_str(_qualified(kind))}" + self.encode(
                value.__cache_key__(), f"{path}.__cache_key__()", depth + 1
            )
        # Subclasses key as their base value: they compare equal to it.
        if isinstance(value, str):
            return _str(str.__str__(value))
        if isinstance(value, int):
            return _int(int(value))
        if isinstance(value, float):
            return repr(float(value))
        if isinstance(value, enum.Enum):
            return "E" + _str(f"{_qualified(kind)}.{value.name}")
        if isinstance(value, (list, tuple)):
            return self._sequence(value, path, depth)
        if isinstance(value, dict):
            return self._mapping(value, path, depth)
        if isinstance(value, (set, frozenset)):
            items = sorted(
                self.encode(item, f"{path}<item {item!r:.40}>", depth + 1) for item in value
            )
            return "S[" + ",".join(items) + "]"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = ",".join(
                f"{_str(field.name)}:"
                + self.encode(getattr(value, field.name), f"{path}.{field.name}", depth + 1)
                for field in dataclasses.fields(value)
            )
            return f"@{_str(_qualified(kind))}{{{fields}}}"
        for base, scalar in _SCALAR_BASES:
            if isinstance(value, base):
                return scalar(value)
        self._refuse(value, path, _why_not(value))
        raise AssertionError("unreachable")  # pragma: no cover

    def _refuse(self, value: Any, path: str, why: str) -> None:
        where = f"argument {self.argument!r}{path}" if path else f"argument {self.argument!r}"
        raise UnkeyableArgumentError(
            f"{where} of {self.function}() cannot form a stable cache key: "
            f"{type(value).__name__} {why}. Pass key= to @cached to build the key yourself, "
            f"add {self.argument!r} to ignore= if the result does not depend on it, or pass a "
            "value (str, int, float, bool, None, bytes, datetime, UUID, Decimal, Enum, a "
            "list/tuple/dict/set or dataclass of these, or an object with a __cache_key__() "
            "method)"
        )


def _why_not(value: Any) -> str:
    if callable(value):
        return "is callable (a function, lambda or class): its identity differs in every process"
    if hasattr(value, "read") or hasattr(value, "fileno"):
        return "is a file or stream: its content is not its value"
    return "is an object known only by its identity (its repr may show an address)"


def _bytes(value: bytes | bytearray) -> str:
    return f'b"{value.hex()}"'


_SCALARS: dict[type, Callable[[Any], str]] = {
    str: _str,
    int: _int,
    float: repr,
    bool: lambda value: "true" if value else "false",
    type(None): lambda value: "null",
    bytes: _bytes,
    bytearray: _bytes,
    dt.datetime: lambda value: f'dt"{value.isoformat()}"',
    dt.date: lambda value: f'd"{value.isoformat()}"',
    dt.time: lambda value: f't"{value.isoformat()}"',
    dt.timedelta: lambda value: f"td{_int(value // dt.timedelta(microseconds=1))}",
    uuid.UUID: lambda value: f'u"{value.hex}"',
    Decimal: lambda value: f'D"{value}"',
}

# Subclasses of the scalar types (a datetime subclass such as pendulum's):
# datetime before date, since a datetime is a date.
_SCALAR_BASES: tuple[tuple[type, Callable[[Any], str]], ...] = (
    (dt.datetime, _SCALARS[dt.datetime]),
    (dt.date, _SCALARS[dt.date]),
    (dt.time, _SCALARS[dt.time]),
    (dt.timedelta, _SCALARS[dt.timedelta]),
    (uuid.UUID, _SCALARS[uuid.UUID]),
    (Decimal, _SCALARS[Decimal]),
    (bytes, _bytes),
    (bytearray, _bytes),
)


SCALAR_ENCODERS: Mapping[type, Callable[[Any], str]] = MappingProxyType(_SCALARS)
"""Encoders of the exact scalar types (no nesting, never refused)."""
