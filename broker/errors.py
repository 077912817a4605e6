"""Error codes of the wire contract, and the one exception type that *is* an error reply.

The numbers follow Maelstrom's error codes, so harnesses that know them read ours.
"""

from __future__ import annotations

from typing import Any

UNKNOWN_TYPE = 10  # the request's type is not one we serve
TEMPORARILY_UNAVAILABLE = 11  # the database is locked by another program; retry later
MALFORMED_REQUEST = 12  # not JSON, not an object, no body, no type, a field of the wrong type
CRASH = 13  # the worker died or failed unexpectedly; the request may not have run
MIGRATION_FAILED = 14  # up() or down() raised; its transaction was rolled back
PRECONDITION_FAILED = 22  # rollback with nothing applied, or of a migration without down()
# An error 11 that no wait ends (a database or role that does not exist, a password refused)
# says this instead of "try again"; a command exits 2 for it, not 3.
LASTING = "nothing ran, and nothing will until"


class ReplyError(Exception):
    """An error that travels as data: raising it means "answer the request with this".

    `extra` holds further reply fields (such as `applied` and `failed`), kept in order.
    """

    def __init__(self, code: int, text: str, **extra: Any) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The reply body, without `in_reply_to` (the front node adds that)."""
        return {"type": "error", "code": self.code, "text": self.text, **self.extra}


def cancelled_before_start() -> ReplyError:
    """The answer to a write cancelled before it started, by the node or the worker."""
    return ReplyError(
        MIGRATION_FAILED, "cancelled before it started, so nothing ran", cancelled=True, applied=[]
    )
