"""Tests for broker.framing: cutting a byte stream into JSON request objects."""

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.framing import MAX_REQUEST_BYTES, Malformed, RequestFramer

CHUNK_SIZE = 64 * 1024


def frame(data: bytes, chunk_size: int | None = None) -> list[dict | Malformed]:
    """Everything a fresh framer yields for ``data`` (fed whole or in chunks) and end of input."""
    framer = RequestFramer()
    items: list[dict | Malformed] = []
    step = chunk_size or max(len(data), 1)
    for start in range(0, len(data), step):
        items += framer.feed(data[start : start + step])
    return items + framer.close()


def frame_split(data: bytes, cuts: list[int]) -> list[dict | Malformed]:
    framer = RequestFramer()
    items: list[dict | Malformed] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, stop in itertools.pairwise(bounds):
        items += framer.feed(data[start:stop])
    return items + framer.close()


def kinds(items: list[dict | Malformed]) -> list[object]:
    """Dicts as they are, Malformed items reduced to the class, for compact expectations."""
    return [Malformed if isinstance(item, Malformed) else item for item in items]


# A stream exercising every rule; used by the chunk-boundary tests.
MIXED_STREAM = (
    b'{"type":"status","msg_id":1}\n'
    b"\n  \t\r\n"
    b"{\n"
    b'"src": "admin",\n'
    b'"body": {\n'
    b'"type": "migrate",\n'
    b'"msg_id": 2\n'
    b"}\n"
    b"}\n"
    b"hello world {\n"
    b'{"a":1}{"b":2} {"c":3}\r\n'
    b'{"a":1} junk\n'
    b'{"a": [1, 2}\n'
    b'{"x": NaN}\n'
    b'{"s": "caf\xc3\xa9 \\" {brace} [", "t": "\\\\"}\n'
    b'{"bad": "\xff"}\n'
    b'{"type": "stat\n'
    b'{"a": 1\n'
    b'{"type":"status","msg_id":3}\n'
    b"[1,2]\n"
    b'{"tail": "no newline"}'
)

MIXED_EXPECTED = [
    {"type": "status", "msg_id": 1},
    {"src": "admin", "body": {"type": "migrate", "msg_id": 2}},
    Malformed,
    {"a": 1},
    {"b": 2},
    {"c": 3},
    {"a": 1},
    Malformed,
    Malformed,
    Malformed,
    {"s": 'café " {brace} [', "t": "\\"},
    Malformed,
    Malformed,
    Malformed,
    {"type": "status", "msg_id": 3},
    Malformed,
    {"tail": "no newline"},
]


def test_mixed_stream_yields_the_expected_requests_and_malformed_items():
    assert kinds(frame(MIXED_STREAM)) == MIXED_EXPECTED


# Rule 1: one object per line, or pretty-printed over several lines.


def test_one_object_per_line_yields_one_request_each():
    data = b'{"type":"status","msg_id":1}\n{"type":"migrate","msg_id":2}\n'
    assert frame(data) == [{"type": "status", "msg_id": 1}, {"type": "migrate", "msg_id": 2}]


def test_pretty_printed_object_over_several_lines_is_one_request():
    data = b'{\n"src": "admin",\n"body": {\n"type": "migrate",\n"msg_id": 1\n}\n}\n'
    assert frame(data) == [{"src": "admin", "body": {"type": "migrate", "msg_id": 1}}]


def test_indented_pretty_printed_object_is_one_request():
    request = {"src": "admin", "body": {"type": "migrate", "steps": [{"id": 1}, {"id": 2}]}}
    assert frame(json.dumps(request, indent=2).encode() + b"\n") == [request]


def test_whitespace_and_blank_lines_between_requests_produce_nothing():
    data = b'\n\n   \t\r\n{"a":1}\r\n\n\t  \n{"b":2}   \n  \n'
    assert frame(data) == [{"a": 1}, {"b": 2}]
    assert frame(b" \t\r\n\n") == []


# Rule 2: text that cannot begin an object.


def test_text_that_cannot_begin_an_object_is_one_malformed_and_its_line_is_skipped():
    items = frame(b'hello world\n{"a":1}\n')
    assert kinds(items) == [Malformed, {"a": 1}]
    assert items[0] == Malformed("text before a request is not a JSON object")


def test_garbage_line_containing_an_object_is_skipped_whole():
    assert kinds(frame(b'hello {"a":1} {"b":2}\n{"c":3}\n')) == [Malformed, {"c": 3}]


def test_garbage_after_leading_whitespace_is_still_one_malformed():
    assert kinds(frame(b'   \tnot json at all\n{"a":1}\n')) == [Malformed, {"a": 1}]


# Rule 3: several objects on one line.


@pytest.mark.parametrize("line", [b'{"a":1}{"b":2}', b'{"a":1} {"b":2}', b'{"a":1}\t{"b":2}\r'])
def test_several_objects_on_one_line_are_separate_requests(line: bytes):
    assert frame(line + b"\n") == [{"a": 1}, {"b": 2}]


def test_junk_after_an_object_on_the_same_line_is_one_malformed():
    assert kinds(frame(b'{"a":1} junk {"b":2}\n{"c":3}\n')) == [{"a": 1}, Malformed, {"c": 3}]


# Rule 4: balanced but invalid objects.


def test_balanced_but_invalid_json_is_one_malformed_with_the_json_error():
    items = frame(b'{"a": 1 "b": 2}\n{"ok":true}\n')
    assert items == [
        Malformed("request is not valid JSON: Expecting ',' delimiter at line 1 column 9"),
        {"ok": True},
    ]


def test_mismatched_brackets_are_one_malformed():
    assert kinds(frame(b'{"a": [1, 2}\n{"b": 1]\n{"c":3}\n')) == [Malformed, Malformed, {"c": 3}]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_rejected(constant: bytes):
    items = frame(b'{"x": ' + constant + b"}\n")
    assert kinds(items) == [Malformed]
    assert items[0].text.startswith("request is not valid JSON")


def test_brackets_and_escaped_quotes_inside_strings_do_not_count():
    data = b'{"s": "} ] { [ \\" }", "t": "\\\\", "u": "\\u00e9"}\n'
    assert frame(data) == [{"s": '} ] { [ " }', "t": "\\", "u": "é"}]


def test_invalid_utf8_is_malformed():
    assert frame(b'{"a": "\xff\xfe"}\n{"b": 2}\n') == [
        Malformed("request is not valid UTF-8"),
        {"b": 2},
    ]


def test_multibyte_character_split_across_chunks_is_decoded():
    data = '{"name": "café ☃"}\n'.encode()
    for cut in range(len(data)):
        assert frame_split(data, [cut]) == [{"name": "café ☃"}]


def test_deeply_nested_request_is_malformed_not_a_crash():
    depth = 100_000
    data = b'{"a": ' + b"[" * depth + b"]" * depth + b'}\n{"b": 2}\n'
    items = frame(data)
    assert kinds(items) == [Malformed, {"b": 2}]
    assert kinds(frame(data, chunk_size=4096)) == [Malformed, {"b": 2}]


def test_deeply_nested_unclosed_request_is_incomplete_at_end_of_input():
    assert frame(b"{" + b'"a":[' * 100_000) == [Malformed("request is incomplete at end of input")]


# Rule 5: end of line inside a string.


def test_line_ending_inside_a_string_ends_the_request_as_malformed():
    items = frame(b'{"type": "stat\n{"type":"status","msg_id":2}\n')
    assert items == [
        Malformed("request ends inside a string at end of line"),
        {"type": "status", "msg_id": 2},
    ]


def test_escaped_newline_inside_a_string_also_ends_the_request():
    assert kinds(frame(b'{"a": "x\\\n{"b":1}\n')) == [Malformed, {"b": 1}]


def test_truncated_string_then_rest_of_pretty_printed_line_resynchronises():
    data = b'{"a": "unterminated\n"b": 2}\n{"c": 3}\n'
    # The second line cannot begin an object, so it is garbage of its own.
    assert kinds(frame(data)) == [Malformed, Malformed, {"c": 3}]


# Rule 6: a `{` that cannot be a nested value.


def test_brace_that_cannot_be_a_nested_value_starts_a_new_request():
    items = frame(b'{"a": 1\n{"type":"status","msg_id":2}\n')
    assert kinds(items) == [Malformed, {"type": "status", "msg_id": 2}]


def test_brace_after_a_closed_string_starts_a_new_request():
    assert kinds(frame(b'{"a": "x"\n{"b": 2}\n')) == [Malformed, {"b": 2}]


def test_nested_objects_after_colon_bracket_and_comma_are_values():
    data = b'{"a": {"b": 1}, "c": [{"d": 2},\n {"e": 3}]}\n'
    assert frame(data) == [{"a": {"b": 1}, "c": [{"d": 2}, {"e": 3}]}]


# Rule 7: size limit.


def object_of_size(size: int) -> bytes:
    head, tail = b'{"data": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("chunk_size", [None, CHUNK_SIZE, 1000])
def test_request_of_exactly_the_limit_is_accepted(chunk_size: int | None):
    request = object_of_size(MAX_REQUEST_BYTES)
    items = frame(request + b"\n", chunk_size)
    assert len(items) == 1
    assert isinstance(items[0], dict)


@pytest.mark.parametrize("chunk_size", [None, CHUNK_SIZE, 1000])
def test_request_one_byte_over_the_limit_is_reported_as_too_large(chunk_size: int | None):
    data = object_of_size(MAX_REQUEST_BYTES + 1) + b'\n{"a": 1}\n'
    assert frame(data, chunk_size) == [Malformed("request is larger than 1 MiB"), {"a": 1}]


def test_fifty_megabyte_line_is_reported_once_and_memory_stays_bounded():
    data = b'{"data": "' + b"x" * 50_000_000 + b'", "n": [1, 2, {"k": "v"}]}\n{"a": 1}\n'
    framer = RequestFramer()
    items: list[dict | Malformed] = []
    for start in range(0, len(data), CHUNK_SIZE):
        items += framer.feed(data[start : start + CHUNK_SIZE])
        assert framer.buffered_bytes <= MAX_REQUEST_BYTES + CHUNK_SIZE
    items += framer.close()
    assert items == [Malformed("request is larger than 1 MiB"), {"a": 1}]


def test_fifty_megabyte_object_without_any_newline_is_skipped_to_its_end():
    data = b'{"n": [' + b"1, 2, 3, " * 6_000_000 + b'0]}{"a": 1}'
    framer = RequestFramer()
    items: list[dict | Malformed] = []
    for start in range(0, len(data), CHUNK_SIZE):
        items += framer.feed(data[start : start + CHUNK_SIZE])
        assert framer.buffered_bytes <= MAX_REQUEST_BYTES + CHUNK_SIZE
    assert items + framer.close() == [Malformed("request is larger than 1 MiB"), {"a": 1}]


def test_fifty_megabyte_garbage_line_is_not_buffered():
    data = b"y" * 50_000_000 + b'\n{"a": 1}\n'
    framer = RequestFramer()
    items: list[dict | Malformed] = []
    for start in range(0, len(data), CHUNK_SIZE):
        items += framer.feed(data[start : start + CHUNK_SIZE])
        assert framer.buffered_bytes == 0
    assert kinds(items + framer.close()) == [Malformed, {"a": 1}]


def test_oversized_pretty_printed_object_is_skipped_until_it_closes():
    data = b'{\n"a": [\n' + b'"xxxxxxxx",\n' * 200_000 + b'0\n]\n} {"b": 2}\n{"c": 3}\n'
    expected = [Malformed("request is larger than 1 MiB"), {"b": 2}, {"c": 3}]
    assert frame(data) == expected
    assert frame(data, CHUNK_SIZE) == expected


def test_oversized_request_cut_short_is_reported_only_once():
    line_in_string = object_of_size(2 * MAX_REQUEST_BYTES)[:-2] + b'\n{"a": 1}\n'
    cut_off = b'{"n": [' + b"1, " * MAX_REQUEST_BYTES + b'0]\n{"a": 1}\n'
    for data in (line_in_string, cut_off):
        expected = [Malformed("request is larger than 1 MiB"), {"a": 1}]
        assert frame(data) == expected
        assert frame(data, CHUNK_SIZE) == expected


def test_oversized_object_open_at_end_of_input_is_not_reported_twice():
    assert frame(b'{"data": "' + b"x" * (2 * MAX_REQUEST_BYTES), CHUNK_SIZE) == [
        Malformed("request is larger than 1 MiB")
    ]


# Rule 8: end of input.


def test_object_open_at_end_of_input_is_reported_by_close():
    framer = RequestFramer()
    assert framer.feed(b'{"a": {"b": 1}') == []
    assert framer.close() == [Malformed("request is incomplete at end of input")]


def test_final_line_without_newline_is_returned():
    assert frame(b'{"a": 1}\n{"b": 2}') == [{"a": 1}, {"b": 2}]


def test_framer_can_be_reused_after_close():
    framer = RequestFramer()
    framer.feed(b'{"a": "open')
    framer.close()
    assert framer.feed(b'{"b": 2}\n') == [{"b": 2}]
    assert framer.buffered_bytes == 0


# Rule 9: only objects are requests.


@pytest.mark.parametrize("line", [b"[1,2]", b"42", b'"x"', b"null", b"true", b"]", b"}"])
def test_top_level_values_other_than_objects_are_garbage(line: bytes):
    assert kinds(frame(line + b'\n{"a": 1}\n')) == [Malformed, {"a": 1}]


# Chunk-boundary independence.


def test_splitting_the_stream_at_every_position_gives_the_same_result():
    whole = frame(MIXED_STREAM)
    for cut in range(len(MIXED_STREAM) + 1):
        assert frame_split(MIXED_STREAM, [cut]) == whole, cut


def test_feeding_one_byte_at_a_time_gives_the_same_result():
    assert frame(MIXED_STREAM, chunk_size=1) == frame(MIXED_STREAM)


JSONISH_PIECES = [
    b"{", b"}", b"[", b"]", b'"', b"\\", b"\n", b"\r", b" ", b":", b",", b"a", b"1",
    b'"k"', b'{"a":1}', b'{"s":"x\\"y"}', b"NaN", b"\xc3\xa9", b"\xff", b"\t", b"junk",
]  # fmt: skip
jsonish_bytes = st.lists(st.sampled_from(JSONISH_PIECES), max_size=60).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=200), jsonish_bytes)


@settings(max_examples=300, deadline=None)
@given(data=any_bytes, cut_fractions=st.lists(st.floats(0, 1), max_size=6))
def test_random_chunk_boundaries_never_change_the_result(data: bytes, cut_fractions: list[float]):
    cuts = [int(fraction * len(data)) for fraction in cut_fractions]
    assert frame_split(data, cuts) == frame(data)


@settings(max_examples=300, deadline=None)
@given(data=any_bytes)
def test_arbitrary_bytes_never_raise(data: bytes):
    for item in frame(data) + frame(data, chunk_size=3):
        assert isinstance(item, dict | Malformed)


GOOD_LINE = b'{"type":"status","msg_id":7}\n'


@settings(max_examples=300, deadline=None)
@given(prefix=any_bytes)
def test_good_line_after_any_garbage_prefix_still_yields_its_dict(prefix: bytes):
    framer = RequestFramer()
    framer.feed(prefix + b"\n")
    left_open = framer.buffered_bytes > 0
    items = framer.feed(GOOD_LINE)
    if not left_open:
        assert items == [{"type": "status", "msg_id": 7}]
    elif items:
        # The good line cut the object left open by the prefix short (rule 6).
        assert kinds(items) == [Malformed, {"type": "status", "msg_id": 7}]
    else:
        # The open object ended in `:`, `[` or `,`, so the good line is a nested value of it;
        # the framer carries on and reports the object at the end of input.
        assert framer.close() == [Malformed("request is incomplete at end of input")]


@settings(max_examples=300, deadline=None)
@given(prefix=any_bytes.filter(lambda data: b"{" not in data))
def test_good_line_after_a_prefix_without_braces_always_yields_its_dict(prefix: bytes):
    items = frame(prefix + b"\n" + GOOD_LINE)
    assert items[-1] == {"type": "status", "msg_id": 7}
