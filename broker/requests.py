"""Checking a decoded JSON message against the request envelope of the wire contract.

A request is `{"src": str, "dest": str, "body": {"type": str, "msg_id": int, ...}}`.
Checking never raises: a message that breaks the contract becomes a Request whose `problem`
is the error reply it deserves, keeping whatever msg_id could be read for in_reply_to.
Every string must be valid Unicode text: JSON's `\ud800` escape decodes to a lone surrogate,
which msgpack (and any UTF-8 writer) cannot encode.
Which types exist is the worker's business (it answers unknown ones with code 10); only
`init` is the front node's own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from broker.errors import MALFORMED_REQUEST, ReplyError


class Request(NamedTuple):
    kind: str | None
    msg_id: int | None  # None when absent or unreadable: the reply has no in_reply_to
    src: str | None
    dest: str | None
    body: dict[str, Any]
    problem: ReplyError | None = None


def parse_request(message: object) -> Request:
    if not isinstance(message, dict):
        return _malformed("a request must be a JSON object")
    src, dest, body = message.get("src"), message.get("dest"), message.get("body")
    if src is not None and not isinstance(src, str):
        return _malformed("src must be a string")
    if dest is not None and not isinstance(dest, str):
        return _malformed("dest must be a string")
    # src and dest frame the reply, so one that is not text is left out of it; the problem
    # is reported once the msg_id is read, so that the reply can still name the request.
    src_problem, dest_problem = _not_text("src", src), _not_text("dest", dest)
    if src_problem is not None:
        src = None
    if dest_problem is not None:
        dest = None
    if not isinstance(body, dict):
        text = "the request has no body" if body is None else "body must be a JSON object"
        return _malformed(text, src=src, dest=dest)
    msg_id = body.get("msg_id")
    if msg_id is not None and (not isinstance(msg_id, int) or isinstance(msg_id, bool)):
        return _malformed("msg_id must be an integer", src=src, dest=dest)
    kind = body.get("type")
    fields = {"msg_id": msg_id, "src": src, "dest": dest, "body": body}
    if (problem := src_problem or dest_problem) is not None:
        return _malformed(problem, **fields)
    if kind is None:
        return _malformed("the body has no type", **fields)
    if not isinstance(kind, str):
        return _malformed("type must be a string", **fields)
    if (problem := _not_text("type", kind)) is not None:
        return _malformed(problem, **fields)
    if kind == "init":
        node_id = body.get("node_id")
        if not isinstance(node_id, str):
            return _malformed("init needs node_id as a string", kind=kind, **fields)
        if (problem := _not_text("node_id", node_id)) is not None:
            return _malformed(problem, kind=kind, **fields)
    return Request(kind=kind, **fields)


def _not_text(field: str, value: str | None) -> str | None:
    """The error text for a string field that UTF-8 cannot encode, or None if it is fine."""
    if value is None or value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # the only str UTF-8 refuses is a lone surrogate
        return f"{field} is not valid Unicode text (it holds a lone surrogate)"
    return None


def _malformed(text: str, **fields: Any) -> Request:
    request = {"kind": None, "msg_id": None, "src": None, "dest": None, "body": {}} | fields
    return Request(**request, problem=ReplyError(MALFORMED_REQUEST, text))
