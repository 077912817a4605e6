"""Pack and unpack the messages exchanged between front nodes and the worker, with msgpack.

Every message is a msgpack map with string keys. Unpacking is strict and bounded, and any
failure (msgpack may raise more than ValueError on hostile input) becomes one CodecError.
"""

from __future__ import annotations

from typing import Any

import msgpack

MAX_FRAME_BYTES = 4 << 20  # a request is at most 1 MiB of JSON; replies for 10,000 migrations fit


class CodecError(ValueError):
    """A frame that is not a msgpack map of the expected shape."""


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(frame: bytes) -> dict[str, Any]:
    """Decode one frame into a dict; raise CodecError for anything else."""
    if len(frame) > MAX_FRAME_BYTES:
        raise CodecError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack documents that more than ValueError can escape
        raise CodecError(f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(message, dict):
        raise CodecError(f"frame holds a {type(message).__name__}, not a map")
    return message
