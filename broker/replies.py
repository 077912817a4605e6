"""Writing replies to stdout as JSON lines, in the order their requests arrived.

Each request (or malformed chunk) reserves a slot when it is read; its reply fills the slot
whenever it comes; flush() writes the run of filled slots at the head, so a slow reply holds
back the later ones and the output order is always the input order. A `migrate` or
`rollback` asked for progress also gets progress lines before its reply: the head slot's are
written at the next flush(), a later slot's wait in it until every earlier reply is written.

A line is exactly `json.dumps(reply)`: the body with `type` first and `in_reply_to` second,
or, once framing is on (after `init`, or from the start with --envelope), the body wrapped
as {"src": own id, "dest": the request's src, "body": ...}, as Maelstrom expects.
"""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING, Any, BinaryIO

from broker.kinds import WAITING, before_reply
from broker.requests import Request

if TYPE_CHECKING:
    from broker.runs import Run  # not at run time: it loads msgpack, which --version does not

NODE_FIELDS = ("type", "in_reply_to")  # a reply line's first two, written by the node


class Slot:
    """One reply's place in the output; `line` is set when the reply is ready."""

    __slots__ = ("envelope", "line", "msg_id", "progress", "versions")

    def __init__(self, msg_id: int | None, envelope: tuple[str | None, str | None] | None):
        self.msg_id = msg_id
        self.envelope = envelope  # (src, dest) of the reply when framed, else None
        self.line: bytes | None = None
        # Progress lines not yet written, and every version shown so far: a worker restarted
        # mid-request may report again a migration the first worker reported. None until the
        # first progress line, so that the common reply pays nothing for them.
        self.progress: list[bytes] | None = None
        self.versions: set[Any] | None = None


class OrderedReplies:
    def __init__(self, stream: BinaryIO, envelope: bool = False) -> None:
        self.stream = stream
        self.envelope = envelope
        self.node_id: str | None = None  # from init; replaces each request's dest as our src
        self._slots: deque[Slot] = deque()
        self._last_body: dict[str, Any] | None = None  # the body rendered last, and its JSON
        self._last_rest: list[str] = []
        self._run_json: dict[Run, str] = {}  # the last body's runs (broker/runs.py), rendered

    def adopt_identity(self, node_id: str) -> None:
        """What init does: take the node id and frame every reply from now on."""
        self.node_id = node_id
        self.envelope = True

    def reserve(self, request: Request | None) -> Slot:
        """Take the next place in the output for a request (None for a malformed chunk)."""
        msg_id = request.msg_id if request else None
        framing = None
        if self.envelope:
            own_id = self.node_id if self.node_id is not None else request and request.dest
            framing = (own_id, request.src if request else None)
        slot = Slot(msg_id, framing)
        self._slots.append(slot)
        return slot

    def fill(self, slot: Slot, body: dict[str, Any]) -> None:
        """Take a reply for `slot`: its one final reply, or before it a progress body
        (BEFORE_REPLY), which adds a line unless the slot showed it already: a
        migration_progress of that version (a repeatable migration's: of that name), a
        migration_waiting of that event, version and attempt (a new worker may tell them
        again).

        A progress body that comes after the final reply is dropped.
        """
        if not before_reply(body):
            slot.line = self._render(slot, body)
        elif slot.line is None:
            self._add_progress(slot, body)

    def _add_progress(self, slot: Slot, body: dict[str, Any]) -> None:
        version = body.get("version")
        if version is None:  # a repeatable migration's step: no version, its name instead
            version = ("repeatable", body.get("name"))
        if body["type"] == WAITING:
            version = (body.get("event"), version, body.get("attempt"))
        if slot.versions is None:
            slot.versions, slot.progress = set(), []
        elif version in slot.versions:
            return
        slot.versions.add(version)
        slot.progress.append(self._render(slot, body))

    def _render(self, slot: Slot, body: dict[str, Any]) -> bytes:
        """The line for `body` in `slot`: exactly json.dumps of the reply, built faster.

        json.dumps writes a dict as "{" + ", ".join('"key": value') + "}", so the line is
        assembled from the body rendered once (after its type) and the per-request fields.
        A body object seen again (the worker's unchanged status) is not rendered again.
        """
        if body is not self._last_body:
            # in_reply_to is the request's msg_id, written here: one a body carried would
            # put a second in_reply_to in the line, which a JSON reader takes as the answer.
            self._last_body, self._last_rest = body, self._fields_text(
                {key: value for key, value in body.items() if key not in NODE_FIELDS})
        parts = ['{"type": ', json.dumps(body["type"])]
        if slot.msg_id is not None:
            parts += [', "in_reply_to": ', json.dumps(slot.msg_id)]
        if self._last_rest:
            parts += [", ", *self._last_rest]
        parts.append("}")
        if slot.envelope is not None:
            src, dest = slot.envelope
            parts[:0] = ['{"src": ', json.dumps(src), ', "dest": ', json.dumps(dest), ', "body": ']
            parts.append("}")
        parts.append("\n")
        return "".join(parts).encode()

    def _fields_text(self, fields: dict[str, Any]) -> list[str]:
        """json.dumps(fields) between its braces, as pieces to join (none for no field):
        "key": value for each, ", " between them, and a RunList's "[", its runs' texts with
        ", " between them, "]", each run written once for as long as the next bodies keep
        it. Pieces, not one text: a status is half a megabyte, copied once by the join."""
        if not any(_runs_of(value) for value in fields.values()) or not all(
                isinstance(key, str) for key in fields):
            text = json.dumps(fields)[1:-1]
            return [text] if text else []
        rendered: dict[Run, str] = {}
        pieces: list[str] = []
        for key, value in fields.items():
            pieces += [", " if pieces else "", json.dumps(key), ": "]
            runs = _runs_of(value)
            if not runs:
                pieces.append(json.dumps(value))
                continue
            pieces.append("[")
            for run in runs:
                known = self._run_json.get(run)
                rendered[run] = json.dumps(run.items)[1:-1] if known is None else known
                pieces += [rendered[run], ", "]
            pieces[-1] = "]"
        self._run_json = rendered
        return pieces

    def waiting(self) -> int:
        """Replies reserved but not yet written."""
        return len(self._slots)

    def flush(self) -> None:
        """Write every reply at the head that is ready, and the progress lines of the first
        slot still waiting; raises BrokenPipeError if stdout closed."""
        lines = []
        slots = self._slots
        while slots:
            head = slots[0]
            if head.progress:
                lines += head.progress
                head.progress.clear()
            if head.line is None:
                break
            lines.append(slots.popleft().line)
        if lines:
            self.stream.write(b"".join(lines))
            self.stream.flush()


def _runs_of(value: Any) -> tuple[Run, ...]:
    """The runs of a RunList (broker/runs.py), told by its `runs` without importing it;
    none for anything else."""
    return value.runs if isinstance(value, list) and hasattr(value, "runs") else ()
