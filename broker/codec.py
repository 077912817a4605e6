"""Pack and unpack the messages exchanged between front nodes and the worker, with msgpack.

    request: one frame, a map {"id": bytes, "type": str, "src"?: str, "params"?: map of the
             body's other fields, "target"?: str, "cancelled"?: true}; a message holds one
             or more. "target" names the database the node means (a worker serving another
             refuses the request); a write
             resent with "cancelled" had its cancel acknowledged by an earlier worker: it
             must not start (see mark_cancelled)
    reply:   two frames, the request id (empty when unreadable) and the body as a map; the
             replies to one message travel in one message, in the same order

The body travels in a frame of its own so that a reply body the worker answers often (a
`status` while nothing changes) is packed once and sent as the same bytes. Unpacking is
strict and bounded, and any failure (msgpack may raise more than ValueError on hostile
input) becomes one CodecError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

# Bounds of the wire, one place for both ends. A request is at most 1 MiB of JSON, so 4 MiB
# of msgpack is ample. A reply lists every migration (10,000 take about 0.5 MB); the worker
# never sends a bigger reply than a node accepts, and answers with an error instead.
MAX_REQUEST_BYTES = 4 << 20
MAX_REPLY_BYTES = 64 << 20
MAX_REQUEST_ID_BYTES = 64
MAX_MESSAGE_REQUESTS = 32  # requests in one message: a node sends no more, the worker serves
# no more of one message (the worker serves nodes a message a turn, so this is also fairness)


class CodecError(ValueError):
    """A frame that is not a msgpack map of the expected shape."""


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def pack_request(
    request_id: bytes,
    kind: str,
    params: dict[str, Any] | None = None,
    src: str | None = None,
    target: str | None = None,
) -> bytes:
    """The frame of one request: its id, type, and (when present) its fields and sender.

    Raises CodecError naming the field when a value cannot travel (an integer beyond 64
    bits, a string with a lone surrogate).
    """
    request: dict[str, Any] = {"id": request_id, "type": kind}
    if src is not None:
        request["src"] = src
    if params:
        request["params"] = params
    if target:
        request["target"] = target
    try:
        return pack(request)
    except Exception as exc:  # msgpack raises OverflowError, UnicodeEncodeError, ValueError...
        raise CodecError(f"{_culprit(request)} cannot be sent to the worker: {exc}") from exc


def mark_cancelled(frame: bytes) -> bytes:
    """The frame of a write whose cancel a worker acknowledged, marked so that a worker it
    is resent to never starts it: the acknowledged cancel holds across a worker's death."""
    return pack({**unpack(frame), "cancelled": True})


def _culprit(request: dict[str, Any]) -> str:
    """Which field of a request made packing fail, for the error text."""
    for name, value in [("src", request.get("src")), *request.get("params", {}).items()]:
        try:
            pack({"v": value})
        except Exception:
            return name
    return "the request"


def pack_reply(request_id: bytes | None, body: bytes) -> list[bytes]:
    """The frames of a reply whose body is already packed."""
    return [request_id or b"", body]


def unpack_reply(
    frames: list[bytes], unpack_body: Callable[[bytes, int], dict[str, Any]] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The request id and body of a reply, its body by `unpack_body` (as unpack() does, by
    default unpack itself); raises CodecError for anything else."""
    if len(frames) != 2:
        raise CodecError(f"a reply has 2 frames, not {len(frames)}")
    body = (unpack_body or unpack)(frames[1], MAX_REPLY_BYTES)
    if not isinstance(body.get("type"), str):
        raise CodecError("a reply body needs a type")
    return frames[0], body


def unpack(frame: bytes, limit: int = MAX_REQUEST_BYTES) -> dict[str, Any]:
    """Decode one frame of at most `limit` bytes into a dict; raise CodecError otherwise."""
    if len(frame) > limit:
        raise CodecError(f"frame of {len(frame)} bytes exceeds {limit}")
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack documents that more than ValueError can escape
        raise CodecError(f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(message, dict):
        raise CodecError(f"frame holds a {type(message).__name__}, not a map")
    return message
