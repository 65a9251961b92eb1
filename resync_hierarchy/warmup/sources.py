"""Where warm-up records come from: a dump file, another cache, a hot-key snapshot.

Every source yields lists (chunks, to keep per-record overhead low) of
:class:`~resync_hierarchy.warmup.records.Record` and
:class:`~resync_hierarchy.warmup.records.BadRecord` items in order, each with
a ``position`` the source can resume after, and names itself with
``identity()`` so a checkpoint is never applied to another source.

* :class:`FileSource`: a JSON Lines or msgpack file, or ``-`` for stdin.
  Resumes at a byte offset (seek, or reading past it on a pipe).
* :class:`CacheSource`: every live key of another cache (another Redis or
  namespace), read by SCAN + MGET with its remaining TTL. Resumes at a SCAN
  cursor: SCAN returns every key present for the whole scan at least once.
* :class:`HotKeysSource`: the keys of a hot-key snapshot, with their values
  read from another cache. Resumes at an index into the snapshot.
"""

from __future__ import annotations

import fnmatch
import io
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO, Final, Literal, Protocol

from resync_hierarchy.codec.stream import StreamError, looks_like_msgpack_record, read_records
from resync_hierarchy.errors import ConfigurationError
from resync_hierarchy.warmup._bulk import BulkCache
from resync_hierarchy.warmup.records import (
    BadRecord,
    Record,
    parse_json_line,
    record_from_object,
)

__all__ = ["CacheSource", "FileSource", "Format", "HotKeysSource", "Source"]

Format = Literal["auto", "jsonl", "msgpack"]
Item = Record | BadRecord

_SKIP_CHUNK: Final = 1024 * 1024
_ITEMS_PER_CHUNK: Final = 256


class Source(Protocol):
    unit: str
    """What a record number counts: ``line`` or ``record``."""

    def identity(self) -> dict[str, Any]: ...

    def records(self, resume: dict[str, Any] | None) -> AsyncIterator[list[Item]]: ...


class FileSource:
    """A dump file (``path``; ``-`` reads ``stdin``, default ``sys.stdin.buffer``)."""

    def __init__(self, path: str, *, format: Format = "auto", stdin: BinaryIO | None = None):
        if format not in ("auto", "jsonl", "msgpack"):
            raise ConfigurationError(f"format must be auto, jsonl or msgpack, got {format!r}")
        self.path = path
        self.format: Format = format
        self._stdin = stdin
        self.unit = "line" if format == "jsonl" else "record"
        if path != "-" and not os.path.isfile(path):
            raise ConfigurationError(f"warm-up file {path!r} does not exist or is not a file")

    def identity(self) -> dict[str, Any]:
        """The file's path, size and modification time: a checkpoint never
        applies to a file that changed since (stdin cannot be told apart)."""
        if self.path == "-":
            return {"kind": "file", "path": "-"}
        stat = os.stat(self.path)
        return {
            "kind": "file",
            "path": os.path.abspath(self.path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }

    def _open(self) -> BinaryIO:
        if self.path == "-":
            return self._stdin if self._stdin is not None else sys.stdin.buffer
        return open(self.path, "rb")

    async def records(self, resume: dict[str, Any] | None) -> AsyncIterator[list[Item]]:
        offset = int(resume["offset"]) if resume else 0
        number = int(resume["number"]) if resume else 0
        stream = self._open()
        try:
            _skip_to(stream, offset)
            raw: Any = stream
            reader: Any = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)
            fmt = self.format
            if fmt == "auto":
                head = reader.peek(64).lstrip()[:1]
                fmt = "msgpack" if head and looks_like_msgpack_record(head[0]) else "jsonl"
            self.unit = "line" if fmt == "jsonl" else "record"
            parse = _json_lines if fmt == "jsonl" else _msgpack_records
            chunk: list[Item] = []
            for item in parse(reader, offset, number):
                chunk.append(item)
                if len(chunk) >= _ITEMS_PER_CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        finally:
            if stream is not self._stdin and stream is not sys.stdin.buffer:
                stream.close()


def _skip_to(stream: BinaryIO, offset: int) -> None:
    if offset <= 0:
        return
    if stream.seekable():
        stream.seek(offset)
        return
    left = offset
    while left > 0:  # a pipe: read past what the checkpoint says was loaded
        chunk = stream.read(min(left, _SKIP_CHUNK))
        if not chunk:
            break
        left -= len(chunk)


def _json_lines(reader: Any, offset: int, number: int) -> Iterator[Item]:
    for line in reader:
        offset += len(line)
        number += 1
        item = parse_json_line(line, number, {"offset": offset, "number": number})
        if item is not None:
            yield item


def _msgpack_records(reader: Any, offset: int, number: int) -> Iterator[Item]:
    try:
        for obj, end in read_records(reader, start_offset=offset):
            number += 1
            yield record_from_object(obj, number, {"offset": end, "number": number})
    except StreamError as exc:
        # Nothing after unreadable msgpack bytes can be trusted: report and stop.
        yield BadRecord(
            number + 1,
            f"{exc} at byte {exc.offset}; the rest of the stream is not read",
            {"offset": exc.offset, "number": number + 1},
        )


class CacheSource:
    """Every live entry of another cache (``bulk``), ``batch`` keys per SCAN
    step, optionally only keys matching the glob ``match``."""

    unit = "record"

    def __init__(self, bulk: BulkCache, *, batch: int = 500, match: str | None = None) -> None:
        self.bulk = bulk
        self.batch = batch
        self.match = match

    def identity(self) -> dict[str, Any]:
        config = self.bulk.cache.config
        return {
            "kind": "redis",
            "url": config.redacted_url,
            "namespace": config.namespace,
            "match": self.match,
        }

    async def records(self, resume: dict[str, Any] | None) -> AsyncIterator[list[Item]]:
        if resume and resume.get("done"):
            return
        cursor = int(resume["cursor"]) if resume else 0
        number = int(resume.get("number", 0)) if resume else 0
        while True:
            next_cursor, keys = await self.bulk.scan_page(cursor, self.batch)
            if self.match is not None:
                keys = [k for k in keys if fnmatch.fnmatchcase(k, self.match)]
            entries = await self.bulk.read(keys)
            # Until a page is fully loaded, resuming repeats the page.
            repeat = {"cursor": cursor, "number": number}
            chunk: list[Item] = []
            for index, entry in enumerate(entries):
                number += 1
                position = (
                    {"cursor": next_cursor, "number": number, "done": next_cursor == 0}
                    if index == len(entries) - 1
                    else repeat
                )
                chunk.append(Record(entry.key, entry.value, entry.ttl, number, position))
            if chunk:
                yield chunk
            if next_cursor == 0:
                return
            cursor = next_cursor


class HotKeysSource:
    """The keys of a hot-key snapshot, with their values read from ``bulk``."""

    unit = "record"

    def __init__(self, path: str, keys: list[str], bulk: BulkCache, *, batch: int = 500) -> None:
        self.path = path
        self.keys = keys
        self.bulk = bulk
        self.batch = batch

    def identity(self) -> dict[str, Any]:
        config = self.bulk.cache.config
        return {
            "kind": "hot-keys",
            "path": os.path.abspath(self.path),
            "url": config.redacted_url,
            "namespace": config.namespace,
        }

    async def records(self, resume: dict[str, Any] | None) -> AsyncIterator[list[Item]]:
        start = int(resume["index"]) if resume else 0
        number = start
        for first in range(start, len(self.keys), self.batch):
            chunk = self.keys[first : first + self.batch]
            entries = await self.bulk.read(chunk)
            end = first + len(chunk)
            items: list[Item] = []
            for index, entry in enumerate(entries):
                number += 1
                position = {"index": end if index == len(entries) - 1 else first}
                items.append(Record(entry.key, entry.value, entry.ttl, number, position))
            if items:
                yield items
