"""Reply lines are exactly json.dumps of the reply, in request order, however they are built."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from broker.replies import OrderedReplies
from broker.requests import parse_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)
bodies = st.builds(
    lambda kind, rest: {"type": kind, **rest},
    st.text(min_size=1, max_size=10),
    st.dictionaries(st.text(max_size=6).filter(lambda key: key != "type"), json_values,
                    max_size=4),
)


def expected_line(body: dict, msg_id: int | None, envelope: tuple | None) -> bytes:
    reply = {"type": body["type"]}
    if msg_id is not None:
        reply["in_reply_to"] = msg_id
    reply.update((key, value) for key, value in body.items() if key != "type")
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
