"""Unit tests of resync_hierarchy.codec: envelope layout, values, signing, corruption."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import pickle
import struct
from collections import OrderedDict
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resync_hierarchy.codec import (
    FORMAT_VERSION,
    HEADER_SIZE,
    Codec,
    CorruptValueError,
    Encoded,
    Envelope,
)
from resync_hierarchy.errors import CacheError, SerializationError, ValueTooLargeError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
MAX = 1 << 20
PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def codec() -> Codec:
    return Codec(max_value_bytes=MAX)


@pytest.fixture
def signed() -> Codec:
    return Codec(max_value_bytes=MAX, signing_key=KEY)


def canon(value: Any) -> Any:
    """A type-tagged form: equal only if the values are equal AND of the same types."""
    if value is None:
        return ("none",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if isinstance(value, (str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, datetime):
        return ("datetime", *dt_identity(value))
    if isinstance(value, (list, tuple)):
        return ("list", [canon(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(canon(k), canon(v)) for k, v in value.items()])
    raise AssertionError(f"unexpected type {type(value)}")


def dt_identity(dt: datetime) -> tuple[Any, ...]:
    tz = dt.tzinfo
    if tz is None:
        zone: Any = None
    elif isinstance(tz, ZoneInfo):
        zone = ("zoneinfo", tz.key)
    else:
        assert isinstance(tz, timezone)
        zone = ("fixed", tz.utcoffset(None), tz.tzname(None))
    return (dt.replace(tzinfo=None).isoformat(timespec="microseconds"), dt.fold, zone)


def roundtrip(codec: Codec, value: Any) -> Any:
    encoded = codec.encode(value, expires_at=None, version=1)
    decoded = codec.decode(encoded.blob).value
    assert canon(decoded) == canon(encoded.value)
    return decoded


def expect_corrupt(codec: Codec, data: bytes, reason: str | None = None) -> CorruptValueError:
    with pytest.raises(CorruptValueError) as info:
        codec.decode(data)
    assert not isinstance(info.value, CacheError)
    if reason is not None:
        assert info.value.reason == reason
    return info.value


# -- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        0.0,
        -0.0,
        1.5,
        -2.25e-308,
        1e308,
        math.inf,
        -math.inf,
        "",
        "héllo wörld ✓ 🎉",
        b"",
        b"\x00\xff\x80",
        [],
        {},
        {"a": 1, "b": [1, 2, {"c": None}]},
        {b"bin-key": b"bin", "str-key": "str"},
        [[[[[[[[[["deep"]]]]]]]]]],
        {"mixed": [None, True, 3, 4.5, "s", b"b", {"x": []}]},
    ],
)
def test_roundtrip_of_supported_values(codec: Codec, value: Any) -> None:
    assert canon(roundtrip(codec, value)) == canon(value)


def test_nan_roundtrips(codec: Codec) -> None:
    assert math.isnan(roundtrip(codec, math.nan))


def test_bytes_and_str_stay_distinct(codec: Codec) -> None:
    decoded = roundtrip(codec, ["abc", b"abc", {"k": "v", b"k": b"v"}])
    assert type(decoded[0]) is str
    assert type(decoded[1]) is bytes
    assert decoded[2] == {"k": "v", b"k": b"v"}
    assert type(next(iter(decoded[2].values()))) is str


def test_tuple_comes_back_as_list(codec: Codec) -> None:
    decoded = roundtrip(codec, (1, (2, 3), {"t": (4,)}))
    assert decoded == [1, [2, 3], {"t": [4]}]
    assert type(decoded) is list
    assert type(decoded[1]) is list


def test_subclasses_come_back_as_base_types(codec: Codec) -> None:
    decoded = roundtrip(codec, OrderedDict([("b", bytearray(b"x")), ("m", memoryview(b"y"))]))
    assert type(decoded) is dict
    assert decoded == {"b": b"x", "m": b"y"}
    assert type(decoded["b"]) is bytes


def test_big_and_negative_ints(codec: Codec) -> None:
    values = [2**64 - 1, 2**63, -(2**63), -1, -(2**31), 2**32]
    assert roundtrip(codec, values) == values


# -- datetimes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dt",
    [
        datetime(2024, 5, 17, 12, 30, 45, 123456),
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(2024, 5, 17, 12, 30, 45, 1, tzinfo=UTC),
        datetime(2024, 5, 17, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 5, 17, 12, 30, tzinfo=timezone(timedelta(hours=-8))),
        datetime(2024, 5, 17, 12, 30, tzinfo=timezone(timedelta(hours=1), "CET")),
        datetime(2024, 5, 17, 12, 30, tzinfo=timezone(timedelta(seconds=1, microseconds=7))),
        datetime(2024, 1, 15, 8, 0, 0, 999999, tzinfo=PARIS),
        datetime(2024, 7, 15, 8, 0, tzinfo=PARIS),
        datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=0),  # repeated hour, first pass
        datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1),  # repeated hour, second pass
        datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),  # in the spring-forward gap
        datetime(2024, 5, 17, tzinfo=ZoneInfo("UTC")),
        datetime(2024, 5, 17, fold=1),
    ],
)
def test_datetime_roundtrip_keeps_zone_wall_time_and_instant(codec: Codec, dt: datetime) -> None:
    back = roundtrip(codec, dt)
    assert type(back) is datetime
    assert dt_identity(back) == dt_identity(dt)
    assert back.utcoffset() == dt.utcoffset()
    if dt.tzinfo is not None:
        assert back.timestamp() == dt.timestamp()


def test_datetime_zoneinfo_key_kept_and_fold_distinguishes_instants(codec: Codec) -> None:
    first = datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=0)
    second = first.replace(fold=1)
    back_first, back_second = roundtrip(codec, [first, second])
    assert isinstance(back_first.tzinfo, ZoneInfo)
    assert back_first.tzinfo.key == "Europe/Paris"
    assert back_second.fold == 1
    assert back_first.utcoffset() == timedelta(hours=2)
    assert back_second.utcoffset() == timedelta(hours=1)
    assert back_second.timestamp() - back_first.timestamp() == 3600
    assert (back_first.hour, back_first.minute) == (2, 30)


def test_datetime_fixed_offset_and_utc_identity(codec: Codec) -> None:
    utc, fixed = roundtrip(
        codec,
        [
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=-3))),
        ],
    )
    assert utc.tzinfo is UTC
    assert type(fixed.tzinfo) is timezone
    assert fixed.utcoffset() == timedelta(hours=-3)
    assert not isinstance(fixed.tzinfo, ZoneInfo)


def test_naive_datetime_stays_naive_with_microseconds(codec: Codec) -> None:
    back = roundtrip(codec, {"at": datetime(2000, 2, 29, 23, 59, 59, 5)})["at"]
    assert back.tzinfo is None
    assert back == datetime(2000, 2, 29, 23, 59, 59, 5)


def test_datetime_as_dict_key_is_refused(codec: Codec) -> None:
    with pytest.raises(SerializationError, match="datetime"):
        codec.encode({datetime(2024, 1, 1): 1}, expires_at=None, version=1)


def test_datetime_with_foreign_tzinfo_is_refused(codec: Codec) -> None:
    class Custom(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            return timedelta(hours=1)

    with pytest.raises(SerializationError, match="Custom"):
        codec.encode(datetime(2024, 1, 1, tzinfo=Custom()), expires_at=None, version=1)


def test_zoneinfo_without_key_is_refused(codec: Codec) -> None:
    with open("/usr/share/zoneinfo/Europe/Paris", "rb") as fh:
        tz = ZoneInfo.from_file(fh)
    with pytest.raises(SerializationError, match="no key"):
        codec.encode(datetime(2024, 1, 1, tzinfo=tz), expires_at=None, version=1)


def test_foreign_msgpack_timestamp_decodes_to_utc_datetime(codec: Codec) -> None:
    blob = struct.pack(">BBQQ", 1, 0, 0, 1) + msgpack.packb(msgpack.Timestamp(1_700_000_000, 5000))
    value = codec.decode(blob).value
    assert value == datetime(2023, 11, 14, 22, 13, 20, 5, tzinfo=UTC)


# -- envelope --------------------------------------------------------------------------------


def test_layout_is_fixed(codec: Codec) -> None:
    blob = codec.encode({"a": 1}, expires_at=1_700_000_000.123, version=0x0102030405060708).blob
    assert blob[0] == FORMAT_VERSION == 1
    assert blob[1] == 0
    assert blob[2:10] == (1_700_000_000_123).to_bytes(8, "big")
    assert blob[10:18] == bytes([1, 2, 3, 4, 5, 6, 7, 8])
    assert blob[HEADER_SIZE:] == msgpack.packb({"a": 1})
    assert HEADER_SIZE == 18


def test_signed_layout(signed: Codec) -> None:
    blob = signed.encode([1, 2], expires_at=None, version=7).blob
    assert blob[1] == 1
    payload = blob[HEADER_SIZE + 32 :]
    assert payload == msgpack.packb([1, 2])
    expected = hmac.new(KEY, blob[:HEADER_SIZE] + payload, hashlib.sha256).digest()
    assert blob[HEADER_SIZE : HEADER_SIZE + 32] == expected


@pytest.mark.parametrize("expires_at", [None, 1_700_000_000.123, 1.0, 0.001, 4_102_444_800.999])
@pytest.mark.parametrize("version", [0, 1, 2**63, 2**64 - 1])
def test_expiry_and_version_roundtrip(codec: Codec, expires_at: float | None, version: int) -> None:
    blob = codec.encode("v", expires_at=expires_at, version=version).blob
    envelope = codec.decode(blob)
    assert envelope == Envelope("v", expires_at, version)
    assert codec.decode_header(blob) == (envelope.expires_at, envelope.version)


@given(st.floats(min_value=0.001, max_value=1e11, allow_nan=False))
def test_expiry_has_ms_precision(expires_at: float) -> None:
    codec = Codec(max_value_bytes=MAX)
    blob = codec.encode(None, expires_at=expires_at, version=3).blob
    decoded = codec.decode(blob).expires_at
    assert decoded is not None
    assert abs(decoded - expires_at) <= 0.0005 + 1e-9 * expires_at
    assert decoded == round(decoded * 1000) / 1000


def test_tiny_positive_expiry_is_not_never(codec: Codec) -> None:
    blob = codec.encode(1, expires_at=0.0001, version=1).blob
    assert codec.decode(blob).expires_at == 0.001


@pytest.mark.parametrize("expires_at", [0, -5.0, math.nan, math.inf, 1e30, "soon"])
def test_bad_expiry_is_a_value_error(codec: Codec, expires_at: Any) -> None:
    with pytest.raises(ValueError, match="expires_at"):
        codec.encode(1, expires_at=expires_at, version=1)


@pytest.mark.parametrize("version", [-1, 2**64, 1.5])
def test_bad_version_is_a_value_error(codec: Codec, version: Any) -> None:
    with pytest.raises(ValueError, match="version"):
        codec.encode(1, expires_at=None, version=version)


def test_decoded_envelope_and_encoded_are_frozen_dataclasses(codec: Codec) -> None:
    encoded = codec.encode("v", expires_at=2.5, version=3)
    envelope = codec.decode(encoded.blob)
    assert envelope == Envelope("v", 2.5, 3)
    assert hash(envelope) == hash(Envelope("v", 2.5, 3))
    assert repr(envelope) == "Envelope(value='v', expires_at=2.5, version=3)"
    assert encoded == Encoded(encoded.blob, "v")
    with pytest.raises(AttributeError):
        envelope.version = 4  # type: ignore[misc]
    with pytest.raises(AttributeError):
        encoded.value = "w"  # type: ignore[misc]


def test_decode_accepts_bytearray_and_memoryview(codec: Codec) -> None:
    big = {"x": "y" * 5000}
    for value in ("small", big):
        blob = codec.encode(value, expires_at=5.0, version=9).blob
        for data in (bytearray(blob), memoryview(blob), memoryview(b"pad" + blob)[3:]):
            assert codec.decode(data) == Envelope(value, 5.0, 9)
            assert codec.decode_header(data) == (5.0, 9)


def test_encoded_value_is_what_readers_see_and_detached(codec: Codec) -> None:
    inner = [1, 2]
    original = {"list": inner, "tuple": (3, 4)}
    encoded = codec.encode(original, expires_at=None, version=1)
    assert isinstance(encoded, Encoded)
    assert encoded.value == {"list": [1, 2], "tuple": [3, 4]}
    assert encoded.value == codec.decode(encoded.blob).value
    inner.append(99)
    original["new"] = True
    assert encoded.value == {"list": [1, 2], "tuple": [3, 4]}
    assert encoded.value["list"] is not inner


# -- serialization errors --------------------------------------------------------------------


def _deep(depth: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


class Thing:
    pass


@pytest.mark.parametrize(
    ("value", "mentions"),
    [
        ({1, 2}, "set"),
        (frozenset(), "frozenset"),
        (object(), "object"),
        (lambda: 1, "function"),
        (Thing(), "Thing"),
        ([1, {"nested": {2}}], "set"),
        (2**70, "int"),
        (-(2**63) - 1, "int"),
        pytest.param(10**5000, "int", id="int-5000-digits"),
        ({1: "a"}, "int"),
        ({"ok": {None: 1}}, "NoneType"),
        ({(1, 2): "a"}, "tuple"),
        (_deep(10_000), "nested"),
        (_deep(1024), "nested"),
        ("\ud800", "UTF-8"),
        (msgpack.ExtType(42, b"x"), "ExtType"),
        (datetime(2024, 1, 1).date(), "date"),
    ],
)
def test_unsupported_values_raise_serialization_error(
    codec: Codec, value: Any, mentions: str
) -> None:
    with pytest.raises(SerializationError, match=mentions) as info:
        codec.encode(value, expires_at=None, version=1)
    assert isinstance(info.value, CacheError)


@pytest.mark.parametrize("value", [{1: 2}, {"s": {1}}, [object()], "\udfff"])
def test_serialization_error_lists_supported_types_and_chains(codec: Codec, value: Any) -> None:
    with pytest.raises(SerializationError, match=r"supported types are .*datetime") as info:
        codec.encode(value, expires_at=None, version=1)
    assert info.value.__cause__ is not None


def test_reference_cycle_raises_serialization_error(codec: Codec) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError):
        codec.encode(cyclic, expires_at=None, version=1)


@pytest.mark.parametrize("key", [None, KEY])
def test_value_too_large_boundary(key: bytes | None) -> None:
    overhead = HEADER_SIZE + (32 if key else 0) + 3  # bin 16 header: c5 + 2 length bytes
    limit = 1000
    codec = Codec(max_value_bytes=limit, signing_key=key)
    fits = b"x" * (limit - overhead)
    assert len(codec.encode(fits, expires_at=None, version=1).blob) == limit
    with pytest.raises(ValueTooLargeError) as info:
        codec.encode(fits + b"x", expires_at=None, version=1)
    message = str(info.value)
    assert str(limit + 1) in message
    assert str(limit) in message
    assert "max_value_bytes" in message


# -- corrupt input ---------------------------------------------------------------------------

REDUCE_RAN: list[str] = []


def _sentinel(note: str) -> None:
    REDUCE_RAN.append(note)


class Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_sentinel, ("pwned",))


def test_pickle_payload_is_never_executed(codec: Codec) -> None:
    payload = pickle.dumps(Exploit())
    REDUCE_RAN.clear()
    pickle.loads(payload)  # the payload really does run code when unpickled
    assert REDUCE_RAN == ["pwned"]
    REDUCE_RAN.clear()
    header = struct.pack(">BBQQ", 1, 0, 0, 1)
    for data in (payload, header + payload):
        expect_corrupt(codec, data)
    assert REDUCE_RAN == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (b"\x01\x00" + b"\x00" * 15, "truncated"),
        (struct.pack(">BBQQ", 1, 0, 0, 1), "truncated"),
        (struct.pack(">BBQQ", 2, 0, 0, 1) + b"\xc0", "unknown_format"),
        (struct.pack(">BBQQ", 0, 0, 0, 1) + b"\xc0", "unknown_format"),
        (struct.pack(">BBQQ", 1, 2, 0, 1) + b"\xc0", "unknown_format"),
        (struct.pack(">BBQQ", 1, 1, 0, 1) + b"\x00" * 32, "truncated"),
        (json.dumps({"a": [1, 2, 3], "b": "text"}).encode(), "unknown_format"),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1) + msgpack.packb(msgpack.ExtType(42, b"x")),
            "unknown_ext",
        ),
        (struct.pack(">BBQQ", 1, 0, 0, 1) + b"\x91\xd4\xfb\x00", "unknown_ext"),  # [ext -5]
        (struct.pack(">BBQQ", 1, 0, 0, 1) + b"\xd4\xff\x00", "malformed"),  # 1-byte timestamp
        (struct.pack(">BBQQ", 1, 0, 0, 1) + msgpack.packb({1: 2}), "malformed"),
        (struct.pack(">BBQQ", 1, 0, 0, 1) + b"\x92\x01", "malformed"),
        (struct.pack(">BBQQ", 1, 0, 0, 1) + b"\xc1", "malformed"),
        (struct.pack(">BBQQ", 1, 0, 0, 1) + b"\xa2\xff\xfe", "malformed"),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1) + msgpack.packb(msgpack.ExtType(1, b"junk")),
            "malformed",
        ),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1)
            + msgpack.packb(msgpack.ExtType(1, msgpack.packb(["2024-01-01T00:00:00", 0, "../x"]))),
            "malformed",
        ),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1)
            + msgpack.packb(
                msgpack.ExtType(1, msgpack.packb(["2024-01-01T00:00:00", 0, "No/Zone"]))
            ),
            "malformed",
        ),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1)
            + msgpack.packb(msgpack.ExtType(1, msgpack.packb(["2024-01-01T00:00:00", 2, None]))),
            "malformed",
        ),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1)
            + msgpack.packb(msgpack.ExtType(1, msgpack.packb(["2024-01-01T00:00:00", 0, 10**12]))),
            "malformed",
        ),
        (
            struct.pack(">BBQQ", 1, 0, 0, 1)
            + msgpack.packb(
                msgpack.ExtType(1, msgpack.packb(["2024-01-01T00:00:00+01:00", 0, None]))
            ),
            "malformed",
        ),
    ],
)
def test_corrupt_inputs(codec: Codec, data: bytes, reason: str) -> None:
    expect_corrupt(codec, data, reason)


def test_trailing_garbage_is_corrupt(codec: Codec, signed: Codec) -> None:
    blob = codec.encode({"a": 1}, expires_at=None, version=1).blob
    expect_corrupt(codec, blob + b"\x00", "malformed")
    signed_blob = signed.encode({"a": 1}, expires_at=None, version=1).blob
    expect_corrupt(signed, signed_blob + b"\x00", "bad_signature")
    expect_corrupt(codec, signed_blob + b"\x00", "malformed")


def test_truncated_valid_blob_is_corrupt(codec: Codec) -> None:
    blob = codec.encode({"a": [1, 2, 3], "b": "text"}, expires_at=None, version=1).blob
    for cut in range(len(blob)):
        expect_corrupt(codec, blob[:cut])


# -- signing ---------------------------------------------------------------------------------


def test_signed_roundtrip_and_unsigned_reader_accepts_signed(signed: Codec, codec: Codec) -> None:
    blob = signed.encode({"a": [1]}, expires_at=12.5, version=4).blob
    assert signed.decode(blob) == Envelope({"a": [1]}, 12.5, 4)
    assert codec.decode(blob) == Envelope({"a": [1]}, 12.5, 4)
    assert signed.decode_header(blob) == (12.5, 4)
    assert signed.signed
    assert not codec.signed


def test_flipped_payload_byte_fails_signature(signed: Codec) -> None:
    blob = bytearray(signed.encode({"a": "value"}, expires_at=None, version=4).blob)
    blob[-1] ^= 0x01
    expect_corrupt(signed, bytes(blob), "bad_signature")
    with pytest.raises(CorruptValueError):
        signed.decode_header(bytes(blob))


@pytest.mark.parametrize("offset", [2, 9, 10, 17, HEADER_SIZE, HEADER_SIZE + 31])
def test_tampered_header_or_mac_fails_signature(signed: Codec, offset: int) -> None:
    blob = bytearray(signed.encode("v", expires_at=100.0, version=4).blob)
    blob[offset] ^= 0x80
    expect_corrupt(signed, bytes(blob), "bad_signature")


def test_unsigned_blob_refused_by_signing_codec(signed: Codec, codec: Codec) -> None:
    blob = codec.encode("v", expires_at=None, version=1).blob
    expect_corrupt(signed, blob, "unsigned")
    with pytest.raises(CorruptValueError) as info:
        signed.decode_header(blob)
    assert info.value.reason == "unsigned"


def test_blob_signed_with_other_key_refused(signed: Codec) -> None:
    other = Codec(max_value_bytes=MAX, signing_key=OTHER_KEY)
    blob = other.encode("v", expires_at=None, version=1).blob
    expect_corrupt(signed, blob, "bad_signature")


def test_codec_repr_hides_key(signed: Codec) -> None:
    assert KEY.decode() not in repr(signed)
    assert "signed=True" in repr(signed)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_value_bytes": 10}, ValueError),
        ({"max_value_bytes": "big"}, TypeError),
        ({"max_value_bytes": MAX, "signing_key": b""}, ValueError),
        ({"max_value_bytes": MAX, "signing_key": "text"}, TypeError),
    ],
)
def test_bad_codec_arguments(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Codec(**kwargs)


# -- property tests --------------------------------------------------------------------------

_fixed_zones = st.builds(
    timezone,
    st.integers(min_value=-86_399_999_999, max_value=86_399_999_999).map(
        lambda us: timedelta(microseconds=us)
    ),
)
_datetimes = st.datetimes(timezones=st.none() | st.timezones() | _fixed_zones | st.just(UTC))
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | _datetimes
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text() | st.binary(), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, version=st.integers(min_value=0, max_value=2**64 - 1))
def test_property_supported_values_roundtrip(value: Any, version: int) -> None:
    for codec in (Codec(max_value_bytes=MAX), Codec(max_value_bytes=MAX, signing_key=KEY)):
        encoded = codec.encode(value, expires_at=None, version=version)
        envelope = codec.decode(encoded.blob)
        assert canon(envelope.value) == canon(value)
        assert canon(encoded.value) == canon(value)
        assert envelope.version == version
        assert codec.decode_header(encoded.blob) == (None, version)


def _decode_or_corrupt(codec: Codec, data: bytes) -> None:
    try:
        result = codec.decode(data)
    except CorruptValueError as exc:
        assert exc.reason in {
            "truncated",
            "unknown_format",
            "bad_signature",
            "unsigned",
            "malformed",
            "unknown_ext",
        }
    else:
        assert isinstance(result, Envelope)
    try:
        header = codec.decode_header(data)
    except CorruptValueError:
        pass
    else:
        assert isinstance(header, tuple)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_only_corrupt(data: bytes) -> None:
    _decode_or_corrupt(Codec(max_value_bytes=MAX), data)
    _decode_or_corrupt(Codec(max_value_bytes=MAX, signing_key=KEY), data)


@settings(max_examples=500)
@given(
    flags=st.sampled_from([0, 1]),
    body=st.binary(max_size=300) | _values.map(lambda v: msgpack.packb(v, default=repr)),
    tail=st.binary(max_size=8),
)
def test_property_valid_header_then_arbitrary_bytes(flags: int, body: bytes, tail: bytes) -> None:
    data = struct.pack(">BBQQ", FORMAT_VERSION, flags, 1234, 5) + body + tail
    _decode_or_corrupt(Codec(max_value_bytes=MAX), data)
    _decode_or_corrupt(Codec(max_value_bytes=MAX, signing_key=KEY), data)


_ext_items = st.lists(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=40)
    | st.sampled_from(["2024-10-27T02:30:00.000000", "Europe/Paris", "UTC", "../etc/passwd"])
    | st.binary(max_size=8),
    max_size=5,
)


@settings(max_examples=500)
@given(items=_ext_items)
def test_property_datetime_ext_with_arbitrary_content(items: list[Any]) -> None:
    ext = msgpack.ExtType(1, msgpack.packb(items))
    data = struct.pack(">BBQQ", FORMAT_VERSION, 0, 0, 1) + msgpack.packb([ext])
    try:
        value = Codec(max_value_bytes=MAX).decode(data).value
    except CorruptValueError as exc:
        assert exc.reason == "malformed"
    else:
        assert type(value[0]) is datetime
