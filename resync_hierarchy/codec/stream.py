"""A stream of msgpack records: the ``--format msgpack`` dump and warm-up file.

The stream is msgpack objects one after another, with no framing: each
record is a map ``{"key": str, "value": <any cache value>, "ttl": float or
None}``. Values use the cache codec's rules (bytes stay bytes, a datetime
travels as ext type 1 with its zone kept); nothing is ever unpickled, and an
unknown ext type is an unreadable record, not an object.

This module is part of the codec package because the codec is the only place
that imports msgpack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO, Final

import msgpack  # type: ignore[import-untyped]

from resync_hierarchy.codec import CorruptValueError, _default, _ext_hook
from resync_hierarchy.errors import SerializationError

__all__ = ["StreamError", "looks_like_msgpack_record", "pack_record", "read_records"]

_READ_CHUNK: Final = 64 * 1024


class StreamError(Exception):
    """The stream cannot be read past this point (bad or truncated bytes)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def pack_record(record: dict[str, Any]) -> bytes:
    """One record as msgpack bytes; SerializationError if a value cannot travel."""
    try:
        packed: bytes = msgpack.Packer(default=_default, use_bin_type=True, datetime=False).pack(
            record
        )
    except Exception as exc:
        raise SerializationError(f"cannot write this value as msgpack: {exc}") from exc
    return packed


def looks_like_msgpack_record(first_byte: int) -> bool:
    """True if a stream starting with ``first_byte`` starts with a msgpack map."""
    return 0x80 <= first_byte <= 0x8F or first_byte in (0xDE, 0xDF)


def read_records(stream: BinaryIO, *, start_offset: int = 0) -> Iterator[tuple[Any, int]]:
    """``(object, offset just after it)`` for each msgpack object in ``stream``.

    ``start_offset`` is where ``stream`` is positioned already (offsets are
    reported from the start of the file). Raises :class:`StreamError` where
    the bytes stop making sense: msgpack cannot resynchronise after that.
    """
    unpacker = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        timestamp=3,
        ext_hook=_ext_hook,
        max_buffer_size=256 * 1024 * 1024,
    )
    fed = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if chunk:
            unpacker.feed(chunk)
            fed += len(chunk)
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                break
            except CorruptValueError as exc:
                raise StreamError(
                    f"unreadable record: {exc}", start_offset + unpacker.tell()
                ) from exc
            except Exception as exc:
                raise StreamError(
                    f"bad msgpack data ({type(exc).__name__}: {exc})",
                    start_offset + unpacker.tell(),
                ) from exc
            yield obj, start_offset + unpacker.tell()
        if not chunk:
            # Bytes left in the buffer that never formed a whole object: truncated.
            if unpacker.tell() < fed:
                raise StreamError(
                    "the stream ends in the middle of a record (truncated file?)",
                    start_offset + unpacker.tell(),
                )
            return
