"""Tests for broker.runs: reply bodies packed, unpacked and written as JSON by runs of their
long lists, each end keeping the last body's runs, give exactly what codec.pack, codec.unpack
and json.dumps give, body after body, whatever changed between them; and a frame that is
not what it should be is refused as codec.unpack refuses it."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import codec
from broker.replies import OrderedReplies
from broker.runs import RUN_ITEMS, RunList, RunPacker, RunUnpacker

LIMIT = codec.MAX_REPLY_BYTES
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=8))
ITEMS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=4)
LENGTHS = st.sampled_from([0, 3, RUN_ITEMS, RUN_ITEMS + 1, 2 * RUN_ITEMS + 7])


def status_body(count: int, applied: int) -> dict[str, Any]:
    return {"type": "migration_status", "migrations": [
        {"version": v, "name": f"t{v}", "applied": v <= applied} for v in range(1, count + 1)]}


def rendered(body: dict[str, Any]) -> bytes:
    """The line a node writes for `body` (no msg_id: no in_reply_to)."""
    replies = OrderedReplies(io.BytesIO())
    replies.fill(replies.reserve(None), body)
    replies.flush()
    return replies.stream.getvalue()


class Ends:
    """A worker's packer and a node's unpacker and writer, each keeping the last body's runs."""

    def __init__(self) -> None:
        self.packer, self.unpacker = RunPacker(), RunUnpacker()
        self.replies = OrderedReplies(io.BytesIO())

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` through both ends, each step checked against codec and json; what the
        node unpacked."""
        frame = self.packer.pack(body)
        assert frame == codec.pack(body)
        got = self.unpacker.unpack(frame, LIMIT)
        assert got == codec.unpack(frame, LIMIT)
        for key, value in got.items():
            assert isinstance(value, RunList) == (isinstance(value, list)
                                                  and len(value) > RUN_ITEMS), key
        written = len(self.replies.stream.getvalue())
        self.replies.fill(self.replies.reserve(None), got)
        self.replies.flush()
        assert self.replies.stream.getvalue()[written:] == rendered(codec.unpack(frame, LIMIT))
        return got


def test_a_status_changing_an_entry_at_a_time_keeps_every_other_run() -> None:
    ends = Ends()
    body = status_body(5 * RUN_ITEMS + 3, 0)
    first = ends.send(body)
    for applied in range(1, 2 * RUN_ITEMS + 1, 37):
        entries = list(body["migrations"])
        entries[applied - 1] = {**entries[applied - 1], "applied": True}
        body = {**body, "migrations": entries}
        got = ends.send(body)
        kept = [run for run in got["migrations"].runs if run in first["migrations"].runs]
        # One run changed; the runs before it and after it are the first body's, unread.
        assert len(kept) >= len(got["migrations"].runs) - 1 - (applied - 1) // RUN_ITEMS


def test_a_line_is_json_dumps_of_a_status_with_runs() -> None:
    body = status_body(3 * RUN_ITEMS, RUN_ITEMS)
    line = rendered(RunUnpacker().unpack(codec.pack(body), LIMIT))
    assert line == json.dumps(body).encode() + b"\n"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bodies_changed_anyhow_go_through_both_ends_as_codec_and_json_would(data) -> None:
    ends = Ends()
    lists = {key: [data.draw(ITEMS) for _ in range(data.draw(LENGTHS))]
             for key in data.draw(st.lists(st.sampled_from("abc"), min_size=1, unique=True))}
    for _ in range(data.draw(st.integers(1, 4))):
        ends.send({"type": "t", **lists})
        for key, items in list(lists.items()):
            items = list(items)  # a new list; its untouched items stay the same objects
            for _ in range(data.draw(st.integers(0, 3))):
                at = data.draw(st.integers(0, len(items)))
                change = data.draw(st.sampled_from(["replace", "insert", "delete"]))
                if change == "insert" or not items:
                    items.insert(at, data.draw(ITEMS))
                elif change == "replace":
                    items[min(at, len(items) - 1)] = data.draw(ITEMS)
                else:
                    del items[min(at, len(items) - 1)]
            lists[key] = items


def outcome(unpack: Any, frame: bytes) -> Any:
    try:
        return unpack(frame, LIMIT)
    except codec.CodecError:
        return codec.CodecError


@settings(max_examples=200, deadline=None)
@given(cut=st.none() | st.integers(0, 10**6), tail=st.binary(max_size=3),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
def test_a_damaged_frame_after_a_good_one_is_unpacked_or_refused_as_codec_does(
    cut: int | None, flips: list[tuple[int, int]], tail: bytes
) -> None:
    good = codec.pack({**status_body(2 * RUN_ITEMS + 5, RUN_ITEMS), "more": [1, "x"]})
    damaged = bytearray(good)
    for at, mask in flips:
        damaged[at % len(damaged)] ^= mask
    if cut is not None:
        damaged = damaged[: cut % (len(good) + 1)]
    damaged = bytes(damaged) + tail
    unpacker = RunUnpacker()
    unpacker.unpack(good, LIMIT)
    assert outcome(unpacker.unpack, damaged) == outcome(codec.unpack, damaged)


@pytest.mark.parametrize("frame", [
    b"", b"\x90", b"\xc1", codec.pack({"a": 1}) + b"\x00",
    b"\x81\x01\xa1x",  # a map keyed by an integer: strict_map_key refuses it
    b"\x81\xa1a\xdc\x01\x01" + b"\x01" * 258,  # an array of 257, then a byte more
])
def test_frames_codec_refuses_are_refused(frame: bytes) -> None:
    assert outcome(RunUnpacker().unpack, frame) is outcome(codec.unpack, frame) is codec.CodecError
