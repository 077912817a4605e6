"""A request's fields as the worker received them, each read with its type checked.

Every handler reads the fields it takes through one of these, so a field of the wrong type
is always the same error 12 naming it; fields a handler does not take are ignored, as
Maelstrom bodies may carry more.
"""

from __future__ import annotations

from typing import Any

from broker.codec import MAX_REQUEST_ID_BYTES
from broker.errors import MALFORMED_REQUEST, ReplyError

# The largest SQLite INTEGER (PostgreSQL bigint): a larger value reaches no query, and no
# version can be larger (worker/catalog.py MAX_VERSION).
MAX_INTEGER = 2**63 - 1
JSON_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
              list: "an array", dict: "an object", type(None): "null"}


class Params:
    def __init__(self, fields: dict[str, Any], src: str | None = None) -> None:
        self.fields = fields
        self.src = src  # who sent the request (the envelope's src), for the history

    def integer(self, name: str, minimum: int) -> int | None:
        """The integer field `name` (None when absent); raises error 12 unless it is an
        integer from `minimum` to MAX_INTEGER."""
        if name not in self.fields:
            return None
        value = self.fields[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise _wrong(name, f"an integer, not {_json_name(value)}")
        if value < minimum:
            raise _wrong(name, f"at least {minimum}, not {value}")
        if value > MAX_INTEGER:
            raise _wrong(name, f"at most {MAX_INTEGER}, not {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        """The string field `name` (None when absent); raises error 12 unless it is one of
        `choices`."""
        if name not in self.fields:
            return None
        value = self.fields[name]
        if not isinstance(value, str):
            raise _wrong(name, f"a string, not {_json_name(value)}")
        if value not in choices:
            raise _wrong(name, f"one of {', '.join(choices)}, not {value!r}")
        return value

    def flag(self, name: str) -> bool:
        """The boolean field `name` (False when absent); raises error 12 for another type."""
        value = self.fields.get(name, False)
        if not isinstance(value, bool):
            raise _wrong(name, f"true or false, not {_json_name(value)}")
        return value

    def integers(self, name: str, minimum: int) -> list[int] | None:
        """The list of integers `name` (None when absent); raises error 12 unless it is a
        list whose every item is an integer from `minimum` to MAX_INTEGER."""
        if name not in self.fields:
            return None
        value = self.fields[name]
        if not isinstance(value, list):
            raise _wrong(name, f"a list of integers, not {_json_name(value)}")
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool):
                raise _wrong(name, f"a list of integers, not one holding {_json_name(item)}")
            if not minimum <= item <= MAX_INTEGER:
                raise _wrong(name, f"a list of integers from {minimum} to {MAX_INTEGER},"
                                   f" not one holding {item}")
        return value

    def request_ids(self, name: str, limit: int) -> list[bytes]:
        """The list of request ids `name` ([] when absent); raises error 12 unless it is a
        list of at most `limit` byte strings of at most codec.MAX_REQUEST_ID_BYTES."""
        value = self.fields.get(name, [])
        if not isinstance(value, list) or len(value) > limit:
            raise _wrong(name, f"a list of at most {limit} request ids")
        for item in value:
            if not isinstance(item, bytes) or len(item) > MAX_REQUEST_ID_BYTES:
                raise _wrong(name, f"a list of request ids of at most {MAX_REQUEST_ID_BYTES} bytes")
        return value

    def at_most_one(self, *names: str) -> None:
        """Raise error 12 when more than one of `names` is given: they are alternatives."""
        given = [name for name in names if name in self.fields]
        if len(given) > 1:
            raise ReplyError(MALFORMED_REQUEST, f"give {' or '.join(given)}, not both")


def _wrong(name: str, expected: str) -> ReplyError:
    return ReplyError(MALFORMED_REQUEST, f"{name} must be {expected}")


def _json_name(value: object) -> str:
    return JSON_NAMES.get(type(value), type(value).__name__)
