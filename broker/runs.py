"""Reply bodies with a long list, packed and unpacked by runs of items, each run's work kept
for the next body: a status answered while a migrate runs differs from the last one in an
item or two of ten thousand.

    worker: RunPacker.pack(body)      == codec.pack(body); a run whose items are the same
                                         objects as the last body's keeps its bytes
    node:   RunUnpacker.unpack(frame) == codec.unpack(frame), its long lists RunLists; a run
                                         whose bytes are the last body's, at the same place
                                         in the same list, keeps its items (and the node its
                                         JSON: see broker/replies.py)

A run is RUN_ITEMS items of a list of more than RUN_ITEMS at the body's top level, counted
from the list's start; the wire is plain msgpack, and either end works with any other.
"""

from __future__ import annotations

import operator
from typing import Any

import msgpack

from broker.codec import CodecError, unpack

RUN_ITEMS = 256
# msgpack's array16 and array32 headers: a type byte, then the length, big-endian. (A fixarray
# holds at most 15 items: never a run.)
ARRAY_HEADERS = {0xDC: 2, 0xDD: 4}
READ_BYTES = 16 << 10  # an unpacker's reads: a run of status entries is about 11 KiB


class RunPacker:
    """codec.pack() for bodies packed again and again. Bodies are never changed in place
    once packed (a run is known by its items' identity)."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)
        self._runs: dict[tuple[Any, int], tuple[list[Any], bytes]] = {}  # the last body's

    def pack(self, body: dict[str, Any]) -> bytes:
        runs = {}
        parts = [self._packer.pack_map_header(len(body))]
        for key, value in body.items():
            parts.append(self._packer.pack(key))
            if not isinstance(value, list) or len(value) <= RUN_ITEMS:
                parts.append(self._packer.pack(value))
                continue
            parts.append(self._packer.pack_array_header(len(value)))
            for start in range(0, len(value), RUN_ITEMS):
                items = value[start : start + RUN_ITEMS]
                kept = self._runs.get((key, start))
                if kept is None or not _same_objects(kept[0], items):
                    kept = (items, b"".join(map(self._packer.pack, items)))
                runs[key, start] = kept
                parts.append(kept[1])
        self._runs = runs
        return b"".join(parts)


def _same_objects(kept: list[Any], items: list[Any]) -> bool:
    return len(kept) == len(items) and all(map(operator.is_, kept, items))


class Run:
    """Consecutive items of a long list, and the bytes they were unpacked from. Known by
    identity: the same Run object is the same items."""

    __slots__ = ("data", "items")

    def __init__(self, data: bytes, items: list[Any]) -> None:
        self.data = data
        self.items = items


class RunList(list):
    """A long list unpacked by runs, which it keeps in order (`runs`); its items are the
    runs' own (shared with the last body's, where a run was kept). Never changed."""

    runs: tuple[Run, ...] = ()


class RunUnpacker:
    """codec.unpack() for reply bodies that repeat much of the last one."""

    def __init__(self) -> None:
        self._runs: dict[tuple[Any, int], Run] = {}  # the last body's, by list and place

    def unpack(self, frame: bytes, limit: int) -> dict[str, Any]:
        """codec.unpack(frame, limit), with lists of more than RUN_ITEMS as RunLists; raises
        CodecError as it does."""
        if len(frame) > limit:
            return unpack(frame, limit)
        try:
            body, runs = _by_runs(frame, self._runs)
        except Exception:  # anything amiss: codec.unpack says what, as for any frame
            return unpack(frame, limit)
        self._runs = runs
        return body


def _by_runs(frame: bytes, kept: dict[tuple[Any, int], Run]) -> tuple[dict[str, Any], dict]:
    """The body in `frame` and its runs; raises (anything) where codec.unpack might differ:
    not a map with string or bytes keys, bytes left over."""
    reader = _Reader(frame)
    body: dict[Any, Any] = {}
    runs: dict[tuple[Any, int], Run] = {}
    for _ in range(reader.map_header()):
        key = reader.object()
        if not isinstance(key, str | bytes):
            raise CodecError("a map key that strict_map_key refuses")
        length = reader.long_array_header()
        if length is None:
            body[key] = reader.object()
            continue
        value = RunList()
        value.runs = tuple(reader.run(kept.get((key, start)), min(RUN_ITEMS, length - start))
                           for start in range(0, length, RUN_ITEMS))
        for start, run in zip(range(0, length, RUN_ITEMS), value.runs, strict=True):
            runs[key, start] = run
            value += run.items
        body[key] = value
    if reader.offset != len(frame):
        raise CodecError("bytes after the body")
    return body, runs


class _Reader:
    """msgpack objects read one after another from a frame, from any offset."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.offset = 0
        self._view = memoryview(frame)
        self._unpacker: msgpack.Unpacker | None = None
        self._fed_at = 0  # the frame's offset at which _unpacker's data begins

    def map_header(self) -> int:
        count = self._at_offset().read_map_header()
        self._advance()
        return count

    def object(self) -> Any:
        value = self._at_offset().unpack()
        self._advance()
        return value

    def long_array_header(self) -> int | None:
        """The length of the array at the offset, past its header, if it has more than
        RUN_ITEMS items; else None, and the offset stays."""
        width = ARRAY_HEADERS.get(self.frame[self.offset])
        if width is None:
            return None
        start = self.offset + 1
        length = int.from_bytes(self.frame[start : start + width], "big")
        if length <= RUN_ITEMS:
            return None
        self.offset = start + width
        return length

    def run(self, kept: Run | None, count: int) -> Run:
        """The next `count` items: `kept` when the frame has its bytes here."""
        if kept is not None and len(kept.items) == count:
            end = self.offset + len(kept.data)
            if self.frame[self.offset : end] == kept.data:  # a bytes slice: memcmp
                self.offset = end
                return kept
        start = self.offset
        unpacker = self._at_offset()
        items = [unpacker.unpack() for _ in range(count)]
        self._advance()
        return Run(self.frame[start : self.offset], items)

    def _at_offset(self) -> msgpack.Unpacker:
        """An unpacker positioned at the offset: the one in use, or one that reads from
        there, READ_BYTES at a time (a run kept is skipped unread)."""
        unpacker = self._unpacker
        if unpacker is None or self._fed_at + unpacker.tell() != self.offset:
            size = len(self.frame)
            unpacker = msgpack.Unpacker(_Slices(self._view, self.offset), raw=False,
                                        strict_map_key=True, max_buffer_size=size,
                                        read_size=min(READ_BYTES, size))
            self._unpacker, self._fed_at = unpacker, self.offset
        return unpacker

    def _advance(self) -> None:
        self.offset = self._fed_at + self._unpacker.tell()


class _Slices:
    """A file of a frame from `offset` on, for msgpack.Unpacker to read as it needs."""

    def __init__(self, view: memoryview, offset: int) -> None:
        self._view = view
        self._offset = offset

    def read(self, size: int) -> bytes:
        start, self._offset = self._offset, self._offset + size
        return bytes(self._view[start : self._offset])
