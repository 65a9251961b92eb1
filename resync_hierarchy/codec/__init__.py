"""The codec: cache values to the bytes stored in Redis, and back.

This package is the only place in resync_hierarchy that imports msgpack. It
never uses pickle and never evaluates anything it reads: decoding untrusted
bytes can only build plain data (or fail with :class:`CorruptValueError`).

Envelope layout (fixed: a Redis Lua script may read the version at offset 10
and compare it as bytes, which big-endian makes equivalent to comparing the
numbers)::

    offset 0   1 byte   FORMAT_VERSION (= 1)
    offset 1   1 byte   flags: bit 0 = signed; every other bit must be 0
    offset 2   8 bytes  expires_at in integer ms since the epoch, unsigned
                        big-endian; 0 = never expires
    offset 10  8 bytes  write version, unsigned big-endian
    -- HEADER_SIZE = 18 --
    if signed: 32 bytes HMAC-SHA256(signing_key, header + payload)
    then:      the msgpack payload (exactly one object, nothing after it)

``expires_at`` is rounded to the nearest millisecond on encode (a positive time
that would round to 0 is stored as 1 ms, "long expired"); decode returns
``ms / 1000`` or None.

Signing rules
-------------
* With a ``signing_key``, :meth:`Codec.encode` always signs, and
  :meth:`Codec.decode` / :meth:`Codec.decode_header` refuse an unsigned blob
  (reason ``"unsigned"``) and a blob whose MAC does not verify (reason
  ``"bad_signature"``; compared with :func:`hmac.compare_digest`). The header
  is covered by the MAC, so expiry and version cannot be altered either.
* Without a ``signing_key``, encode never signs, and decode accepts unsigned
  blobs and also signed ones, skipping the MAC: no key, no promise.

Values
------
Supported: None, bool, int in [-2**63, 2**64 - 1], float (inf and nan too),
str, bytes, list, tuple, dict with str (or bytes) keys, nested freely up to
msgpack's depth limit (about 1000 levels), and :class:`datetime.datetime`.
What a reader gets back (and :attr:`Encoded.value` already holds):

* a tuple comes back as a list; bytearray and memoryview come back as bytes;
* subclasses of supported types come back as the base type (an IntEnum member
  as an int, an OrderedDict as a dict, a namedtuple as a list);
* a datetime keeps its time zone: naive stays naive, a
  :class:`zoneinfo.ZoneInfo` comes back with the same key, a
  :class:`datetime.timezone` with the same offset (and name); microseconds
  and ``fold`` are kept. It travels as msgpack ext type 1 (see
  ``_datetime_ext``). Other tzinfo classes (pytz, dateutil) are refused.
* a foreign msgpack Timestamp (ext type -1, never written by this codec)
  decodes to an aware UTC datetime (nanoseconds truncated to microseconds).

Anything else (a set, an arbitrary object, an int out of 64-bit range, a dict
with other keys, a str with lone surrogates, nesting too deep) makes
:meth:`Codec.encode` raise :class:`~resync_hierarchy.errors.SerializationError`.
Every encode unpacks its own payload once, with the very unpacker decode
uses, so a value that encodes is guaranteed to decode.

Errors
------
:class:`CorruptValueError` is internal: decode raises it, and only it, for any
unreadable blob (empty, truncated, unknown format byte or flags, foreign
bytes, a pickle, an unknown msgpack ext type, a bad or missing signature,
trailing bytes, anything msgpack or the datetime decoding rejects). The cache
hierarchy turns it into a counted miss; it never reaches the cache's caller.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Final, Literal

import msgpack  # type: ignore[import-untyped]

from resync_hierarchy.codec._datetime_ext import (
    EXT_DATETIME,
    UnsupportedValue,
    pack_datetime,
    unpack_datetime,
)
from resync_hierarchy.errors import SerializationError, ValueTooLargeError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAC_SIZE",
    "Codec",
    "CorruptReason",
    "CorruptValueError",
    "Encoded",
    "Envelope",
]

FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 18
MAC_SIZE: Final = 32
"""Bytes of the HMAC-SHA256 that follows the header of a signed blob."""

_FLAG_SIGNED: Final = 0x01
_HEADER: Final = struct.Struct(">BBQQ")
_SIGNED_START: Final = HEADER_SIZE + MAC_SIZE
_MAX_U64: Final = 2**64 - 1
_SUPPORTED: Final = (
    "supported types are None, bool, int (-2**63 .. 2**64-1), float, str, bytes, "
    "list, tuple, dict with str or bytes keys, and datetime.datetime (naive, "
    "zoneinfo.ZoneInfo or datetime.timezone)"
)

CorruptReason = Literal[
    "truncated", "unknown_format", "bad_signature", "unsigned", "malformed", "unknown_ext"
]


class CorruptValueError(Exception):
    """A stored blob cannot be read. Internal: the hierarchy counts it as a miss.

    ``reason`` is one of ``"truncated"``, ``"unknown_format"``,
    ``"bad_signature"``, ``"unsigned"``, ``"malformed"``, ``"unknown_ext"``.
    """

    reason: CorruptReason

    def __init__(self, reason: CorruptReason, detail: str = "") -> None:
        super().__init__(f"corrupt cache value ({reason}): {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded blob."""

    value: Any
    expires_at: float | None
    """Absolute wall-clock expiry, epoch seconds with ms precision; None = never."""
    version: int
    """Write version, unsigned 64-bit."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """An encoded value: what to store, and what every reader will see."""

    blob: bytes
    """The bytes to store in Redis."""
    value: Any
    """The value as decode will return it (tuples became lists, ...), obtained by
    unpacking the payload once: it shares no object with the caller's value."""


def _default(obj: Any) -> Any:
    """msgpack ``default`` hook: datetimes to ext 1, everything else refused."""
    if isinstance(obj, datetime):
        return msgpack.ExtType(EXT_DATETIME, pack_datetime(obj))
    if isinstance(obj, int):  # msgpack hands over ints outside the 64-bit range
        raise UnsupportedValue(
            f"cannot cache an int of {obj.bit_length()} bits: msgpack carries ints in "
            f"-2**63 .. 2**64-1 only; store it as a str (or bytes) instead"
        )
    cls = type(obj)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    raise UnsupportedValue(
        f"cannot cache a value of type {name}: msgpack cannot carry it; {_SUPPORTED}"
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_DATETIME:
        return unpack_datetime(data)
    raise CorruptValueError("unknown_ext", f"msgpack ext type code {code}")


# A Packer per call (no shared state between threads). buf_size: msgpack's
# default 256 KiB initial buffer is above glibc's mmap threshold, so every
# Packer would mmap/munmap it: measured 2x slower on a 200 KB value, and
# ~6 us per nested Packer (datetime ext) on a small one.
_new_packer = partial(
    msgpack.Packer, default=_default, use_bin_type=True, datetime=False, buf_size=4096
)
_msgpack_unpackb = msgpack.unpackb
# The C unpackb parses its keywords itself: passing them at the call site is
# ~100 ns cheaper than going through a functools.partial (which merges dicts).
_header_pack = _HEADER.pack
_header_unpack_from = _HEADER.unpack_from

# Below this size a bytes slice (one small copy) beats building a memoryview.
_SLICE_BELOW: Final = 1024

# Fast construction of the two frozen dataclasses on the hot paths: their
# generated __init__ sets each field through object.__setattr__ (~350 ns for
# three fields); filling the slots through their descriptors costs ~150 ns.
# The result is the same object (eq, hash, repr, immutability unchanged).
_new_object = object.__new__
_set_value: Callable[[Envelope, Any], None] = Envelope.__dict__["value"].__set__
_set_expires_at: Callable[[Envelope, float | None], None] = Envelope.__dict__["expires_at"].__set__
_set_version: Callable[[Envelope, int], None] = Envelope.__dict__["version"].__set__
_set_blob: Callable[[Encoded, bytes], None] = Encoded.__dict__["blob"].__set__
_set_encoded_value: Callable[[Encoded, Any], None] = Encoded.__dict__["value"].__set__


def _encoded(blob: bytes, value: Any) -> Encoded:
    encoded = _new_object(Encoded)
    _set_blob(encoded, blob)
    _set_encoded_value(encoded, value)
    return encoded


class Codec:
    """Encodes values into envelopes and decodes them; safe to share.

    ``max_value_bytes`` bounds the whole blob (header and MAC included).
    ``signing_key`` (bytes) turns signing on; see the module docstring.
    """

    __slots__ = ("_mac", "max_value_bytes")

    def __init__(self, *, max_value_bytes: int, signing_key: bytes | None = None) -> None:
        if isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int):
            raise TypeError(f"max_value_bytes must be an int, got {max_value_bytes!r}")
        if max_value_bytes < _SIGNED_START + 1:
            raise ValueError(
                f"max_value_bytes must be >= {_SIGNED_START + 1}, got {max_value_bytes}"
            )
        if signing_key is not None:
            if not isinstance(signing_key, bytes):
                raise TypeError("signing_key must be bytes or None")
            if not signing_key:
                raise ValueError("signing_key must not be empty")
        self.max_value_bytes: Final = max_value_bytes
        self._mac: Final = (
            None if signing_key is None else hmac.new(signing_key, digestmod=hashlib.sha256)
        )

    @property
    def signed(self) -> bool:
        """True when this codec signs and requires signatures."""
        return self._mac is not None

    def __repr__(self) -> str:
        return f"Codec(max_value_bytes={self.max_value_bytes}, signed={self.signed})"

    # -- encode ---------------------------------------------------------------------------

    def encode(self, value: Any, *, expires_at: float | None, version: int) -> Encoded:
        """Envelope ``value`` with its absolute expiry and write version.

        Raises SerializationError if msgpack cannot carry ``value`` and
        ValueTooLargeError if the blob would exceed ``max_value_bytes``.
        ``expires_at`` must be None or a finite epoch time > 0 and ``version``
        an int in 0 .. 2**64-1, else ValueError (a bug of the caller).
        """
        exp_ms = 0 if expires_at is None else _expires_ms(expires_at)
        mac = self._mac
        flags = 0 if mac is None else _FLAG_SIGNED
        try:
            header = _header_pack(FORMAT_VERSION, flags, exp_ms, version)
        except struct.error as exc:
            raise ValueError(f"version must be an int in 0 .. 2**64-1, got {version!r}") from exc
        try:
            payload: bytes = _new_packer().pack(value)
        except Exception as exc:
            raise SerializationError(_pack_failure(exc)) from exc
        size = len(payload) + (HEADER_SIZE if mac is None else _SIGNED_START)
        if size > self.max_value_bytes:
            raise ValueTooLargeError(
                f"encoded value is {size} bytes, over max_value_bytes={self.max_value_bytes}; "
                "raise max_value_bytes or store less"
            )
        try:  # the very unpacking decode does: what encodes, decodes
            decoded = _msgpack_unpackb(
                payload, raw=False, strict_map_key=True, timestamp=3, ext_hook=_ext_hook
            )
        except Exception as exc:
            raise SerializationError(_readback_failure(value, exc)) from exc
        if mac is None:
            return _encoded(header + payload, decoded)
        signer = mac.copy()
        signer.update(header)
        signer.update(payload)
        return _encoded(b"".join((header, signer.digest(), payload)), decoded)

    # -- decode ---------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """The envelope in ``data``; CorruptValueError (only) if it cannot be read."""
        # Hot path (every L2 hit): unsigned blob, no key; everything else goes
        # through _payload_start. Inline on purpose, like the envelope construction.
        try:
            fmt, flags, exp_ms, version = _header_unpack_from(data)
        except (struct.error, TypeError, ValueError) as exc:
            raise _short_header(data) from exc
        if flags or fmt != FORMAT_VERSION or self._mac is not None:
            start = self._payload_start(data, fmt, flags)
        elif len(data) > HEADER_SIZE:
            start = HEADER_SIZE
        else:
            raise CorruptValueError("truncated", "no payload after the header")
        try:
            value = _msgpack_unpackb(
                data[start:] if len(data) < _SLICE_BELOW else memoryview(data)[start:],
                raw=False,
                strict_map_key=True,
                timestamp=3,
                ext_hook=_ext_hook,
            )
        except CorruptValueError:
            raise
        except Exception as exc:
            raise CorruptValueError("malformed", f"{type(exc).__name__}: {exc}") from exc
        envelope = _new_object(Envelope)
        _set_value(envelope, value)
        _set_expires_at(envelope, exp_ms / 1000 if exp_ms else None)
        _set_version(envelope, version)
        return envelope

    def decode_header(self, data: bytes | bytearray | memoryview) -> tuple[float | None, int]:
        """``(expires_at, version)`` of ``data`` without unpacking the payload.

        Checks everything decode checks except the payload itself: format,
        flags, presence of a payload and (with a signing key) the signature.
        """
        try:
            fmt, flags, exp_ms, version = _header_unpack_from(data)
        except (struct.error, TypeError, ValueError) as exc:
            raise _short_header(data) from exc
        if flags or fmt != FORMAT_VERSION or self._mac is not None:
            self._payload_start(data, fmt, flags)
        elif len(data) <= HEADER_SIZE:
            raise CorruptValueError("truncated", "no payload after the header")
        return (exp_ms / 1000 if exp_ms else None), version

    def _payload_start(self, data: bytes | bytearray | memoryview, fmt: int, flags: int) -> int:
        """Check format, flags, signing and length; return where the payload starts."""
        if fmt != FORMAT_VERSION or flags & ~_FLAG_SIGNED:
            raise CorruptValueError("unknown_format", f"format byte {fmt}, flags {flags:#04x}")
        mac = self._mac
        if not flags:
            if mac is not None:
                raise CorruptValueError("unsigned", "a signing key is set but the blob is unsigned")
            start = HEADER_SIZE
        else:
            start = _SIGNED_START
            if mac is not None and len(data) >= start:
                view = memoryview(data)
                verifier = mac.copy()
                verifier.update(view[:HEADER_SIZE])
                verifier.update(view[start:])
                if not hmac.compare_digest(verifier.digest(), view[HEADER_SIZE:start]):
                    raise CorruptValueError("bad_signature", "HMAC does not verify")
        if len(data) <= start:
            raise CorruptValueError(
                "truncated", f"{len(data)} bytes: no payload after the {start}-byte header"
            )
        return start


def _short_header(data: object) -> CorruptValueError:
    try:
        size = f"{len(data)} bytes"  # type: ignore[arg-type]
    except TypeError:
        size = f"a {type(data).__name__}"
    return CorruptValueError("truncated", f"{size}, the header needs {HEADER_SIZE}")


def _expires_ms(expires_at: float) -> int:
    try:
        ms = round(expires_at * 1000)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"expires_at must be None or a finite epoch time, got {expires_at!r}"
        ) from exc
    if ms <= 0:
        if not expires_at > 0:
            raise ValueError(f"expires_at must be None or an epoch time > 0, got {expires_at!r}")
        ms = 1
    if ms > _MAX_U64:
        raise ValueError(f"expires_at {expires_at!r} is out of range")
    return ms


def _pack_failure(exc: Exception) -> str:
    if isinstance(exc, UnsupportedValue):
        return str(exc)
    if isinstance(exc, UnicodeEncodeError):
        return f"cannot cache a str that is not valid UTF-8 (lone surrogate?): {exc}; {_SUPPORTED}"
    if isinstance(exc, RecursionError) or (isinstance(exc, ValueError) and "recursion" in str(exc)):
        return (
            "cannot cache a value nested deeper than msgpack allows (about 1000 levels) "
            "or holding a reference cycle"
        )
    return f"cannot cache this value: msgpack failed with {type(exc).__name__}: {exc}; {_SUPPORTED}"


def _readback_failure(value: Any, exc: Exception) -> str:
    """Message for a value msgpack packed but its strict unpacker refuses."""
    bad_key = _find_bad_key(value)
    if bad_key is not None:
        return (
            f"cannot cache a dict with a key of type {type(bad_key).__name__} ({bad_key!r:.80}): "
            f"dict keys must be str or bytes; {_SUPPORTED}"
        )
    if isinstance(exc, CorruptValueError) and exc.reason == "unknown_ext":
        return f"cannot cache a msgpack ExtType of unknown code ({exc}); {_SUPPORTED}"
    if isinstance(exc, (RecursionError, msgpack.StackError)):
        return "cannot cache a value nested deeper than msgpack allows (about 1000 levels)"
    return (
        f"cannot cache this value: it would not read back ({type(exc).__name__}: {exc}); "
        f"{_SUPPORTED}"
    )


def _find_bad_key(value: Any) -> object | None:
    """First dict key in ``value`` that is neither str nor bytes (error path only)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, (str, bytes, bytearray, memoryview)):
                    return key  # type: ignore[no-any-return]
                stack.append(sub)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None
