"""Reply lines are exactly json.dumps of the reply, in request order, however they are built."""

from __future__ import annotations

import io
import json

from hypothesis import example, given
from hypothesis import strategies as st

from broker.replies import OrderedReplies
from broker.requests import parse_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)
# Keys of every length, and often the ones a reply line is built around: a body that carries
# its own `type`, `in_reply_to` or envelope field must still give exactly one line.
REAL_KEYS = ("type", "in_reply_to", "msg_id", "src", "dest", "body", "code", "text", "version",
             "migrations", "migration_progress")
keys = st.sampled_from(REAL_KEYS) | st.text(max_size=20)
bodies = st.builds(
    lambda kind, rest: {"type": kind, **rest},
    st.text(min_size=1, max_size=10),
    st.dictionaries(keys, json_values, max_size=6),
)


def expected_line(body: dict, msg_id: int | None, envelope: tuple | None) -> bytes:
    """The line for `body`: in_reply_to is the request's msg_id (absent without one), never
    a value the body carried."""
    reply = {"type": body["type"]}
    if msg_id is not None:
        reply["in_reply_to"] = msg_id
    reply.update((key, value) for key, value in body.items()
                 if key not in ("type", "in_reply_to"))
    if envelope is not None:
        reply = {"src": envelope[0], "dest": envelope[1], "body": reply}
    return (json.dumps(reply) + "\n").encode()


@given(
    body=bodies,
    msg_id=st.none() | st.integers(),
    src=st.none() | st.text(max_size=6),
    dest=st.none() | st.text(max_size=6),
    framed=st.booleans(),
    repeats=st.integers(min_value=1, max_value=3),
)
@example(body={"type": "x", "in_reply_to": 7}, msg_id=5, src=None, dest=None, framed=False,
         repeats=1)
@example(body={"type": "x", "in_reply_to": 7}, msg_id=None, src="c1", dest="n1", framed=True,
         repeats=2)
def test_each_line_is_exactly_json_dumps_of_the_reply(body, msg_id, src, dest, framed, repeats):
    stream = io.BytesIO()
    replies = OrderedReplies(stream, envelope=framed)
    message = {"body": {"type": "status", "msg_id": msg_id}, "src": src, "dest": dest}
    request = parse_request({key: value for key, value in message.items() if value is not None})
    for _ in range(repeats):  # the same body object again takes the remembered rendering
        replies.fill(replies.reserve(request), body)
    replies.flush()
    line = expected_line(body, msg_id, (dest, src) if framed else None)
    assert stream.getvalue() == line * repeats


def test_replies_are_written_in_reservation_order_whatever_order_they_fill_in():
    stream = io.BytesIO()
    replies = OrderedReplies(stream)
    slots = [replies.reserve(parse_request({"body": {"type": "status", "msg_id": i}}))
             for i in range(3)]
    replies.fill(slots[2], {"type": "c"})
    replies.fill(slots[1], {"type": "b"})
    replies.flush()
    assert stream.getvalue() == b""
    replies.fill(slots[0], {"type": "a"})
    replies.flush()
    assert [json.loads(line)["in_reply_to"] for line in stream.getvalue().splitlines()] == [
        0, 1, 2]


# -- progress lines: before their request's reply, in request order, each version once ------


def progress(version: int, done: int, total: int = 3) -> dict:
    return {"type": "migration_progress", "done": done, "total": total, "version": version,
            "name": f"m{version}", "status": "applied"}


def ordered(framed: bool = False, count: int = 2) -> tuple[io.BytesIO, OrderedReplies, list]:
    stream = io.BytesIO()
    replies = OrderedReplies(stream, envelope=framed)
    slots = [replies.reserve(parse_request({"src": "c1", "dest": "n1",
                                            "body": {"type": "migrate", "msg_id": i}}))
             for i in range(count)]
    return stream, replies, slots


def written(stream: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_head_requests_progress_lines_are_written_at_once_before_its_reply():
    stream, replies, slots = ordered()
    replies.fill(slots[0], progress(1, 1))
    replies.flush()
    assert stream.getvalue() == expected_line(progress(1, 1), 0, None)
    replies.fill(slots[0], progress(2, 2))
    replies.fill(slots[0], {"type": "migrations_applied", "count": 2})
    replies.flush()
    assert [(line["type"], line.get("version")) for line in written(stream)] == [
        ("migration_progress", 1), ("migration_progress", 2), ("migrations_applied", None)]
    assert replies.waiting() == 1


def test_a_later_requests_progress_waits_until_every_earlier_reply_is_written():
    stream, replies, slots = ordered()
    replies.fill(slots[1], progress(1, 1))
    replies.fill(slots[1], progress(2, 2))
    replies.flush()
    assert stream.getvalue() == b""
    replies.fill(slots[0], {"type": "status_ok"})
    replies.flush()
    assert [(line["in_reply_to"], line["type"]) for line in written(stream)] == [
        (0, "status_ok"), (1, "migration_progress"), (1, "migration_progress")]
    replies.fill(slots[1], {"type": "migrations_applied", "count": 2})
    replies.flush()
    assert written(stream)[-1] == {"type": "migrations_applied", "in_reply_to": 1, "count": 2}
    assert replies.waiting() == 0


def test_progress_lines_are_framed_like_the_reply_and_exactly_json_dumps():
    stream, replies, slots = ordered(framed=True, count=1)
    replies.fill(slots[0], progress(7, 1, total=1))
    replies.fill(slots[0], {"type": "migrations_applied", "count": 1})
    replies.flush()
    assert stream.getvalue() == (expected_line(progress(7, 1, total=1), 0, ("n1", "c1"))
                                 + expected_line({"type": "migrations_applied", "count": 1},
                                                 0, ("n1", "c1")))


def test_a_version_shown_once_is_not_shown_again_whether_written_yet_or_not():
    stream, replies, slots = ordered()
    replies.fill(slots[1], progress(1, 1))
    replies.fill(slots[1], progress(1, 1))  # buffered, then reported again
    replies.fill(slots[0], {"type": "status_ok"})
    replies.flush()
    replies.fill(slots[1], progress(1, 1))  # written, then reported again by a new worker
    replies.fill(slots[1], progress(2, 2))
    replies.fill(slots[1], {"type": "migrations_applied", "count": 2})
    replies.flush()
    assert [line.get("version") for line in written(stream)] == [None, 1, 2, None]


def test_progress_after_the_final_reply_is_dropped():
    stream, replies, slots = ordered(count=1)
    replies.fill(slots[0], {"type": "migrations_applied", "count": 0})
    replies.fill(slots[0], progress(1, 1))
    replies.flush()
    assert written(stream) == [{"type": "migrations_applied", "in_reply_to": 0, "count": 0}]
