"""Generated hostile input against live processes, checked one input at a time.

Two targets, each kept alive for a whole run, so that what one input leaves behind meets
the next:

    bytes and JSON --stdin--> node.py --> worker   StdinTarget: a mirror RequestFramer fed
                                                   the same bytes predicts every reply line,
                                                   which is checked in order
    raw frames ------DEALER-----------> worker     FrameTarget: every frame of a message
                                                   gets its reply before two sentinels'

After every input a normal request (a `health`) is answered correctly by the same worker;
no reply is error 13 (the worker failed unexpectedly) or 11; error 14 only for a cancel.
At the end neither process has died, the node exits 0 with nothing left over, and their
memory (VmHWM, VmRSS from /proc) grew by less than MEMORY_GROWTH_KIB however many inputs
there were.

At the end the database must agree with its history: each migration's table and tracking
row exist exactly when its last event says they should (nothing half-applied).

    python -m tests.fuzz --examples 30000      # every fuzz test, long (pytest underneath);
                                               # --output RELIABILITY.md writes the figures
    MIGRATIONS_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py -s
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from broker import codec, endpoint
from broker.errors import (
    CRASH,
    MALFORMED_REQUEST,
    MIGRATION_FAILED,
    PRECONDITION_FAILED,
    UNKNOWN_TYPE,
)
from broker.framing import MAX_REQUEST_BYTES, Malformed, RequestFramer
from broker.kinds import ADOPT_FROM, PROGRESS, WRITES
from broker.requests import Request, parse_request
from tests import reliability
from tests.support import PROCESS_TIMEOUT_S, Workspace, request, write_migration

EXAMPLES_ENV = "MIGRATIONS_FUZZ_EXAMPLES"  # every fuzz test's count, for long runs
REPORTS_ENV = "MIGRATIONS_FUZZ_REPORTS"  # a folder where each target writes its counts
VERSIONS = range(1, 4)  # the migrations every target serves (write_migrations)
TABLE = "t{}"  # the table each creates
ROUND = 1000  # inputs per hypothesis run (see run)
MEMORY_GROWTH_KIB = 64 * 1024  # peak memory a run may add to a process, whatever its length
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
FIRST_SENTINEL = 10**15  # msg_ids from here on are the sentinels'; generated ones stay below

# Each request type's own fields and a valid value of each; every type also has the
# envelope's fields (src, dest, body, and the body's type and msg_id).
FIELDS: dict[str, dict[str, Any]] = {
    "migrate": {"to": 1, "dry_run": False, "allow_out_of_order": False, "progress": False},
    "rollback": {"steps": 1, "to": 0, "dry_run": False, "progress": False},
    "baseline": {"to": 1},
    # No other tool's table is there: refused (22) when well formed, and it writes nothing.
    "adopt": {"from": "dbmate", "dry_run": False},
    "history": {"limit": 1},
    "init": {"node_id": "n1"},
    "status": {},
    "validate": {},
    "lint": {},  # its versions field is checked in tests/test_lint.py
    "health": {},
    "cancel": {},
}
KINDS = sorted(FIELDS)
ANSWERS = {
    "migrate": {"migrations_applied"},
    "rollback": {"migration_rolled_back", "migrations_rolled_back"},
    "baseline": {"migrations_baselined"},
    "adopt": {"migrations_adopted"},
    "status": {"migration_status"},
    "validate": {"validation"},
    "lint": {"lint_result"},
    "history": {"migration_history"},
    "health": {"health_ok"},
    "cancel": {"cancel_ok"},
    "init": {"init_ok"},
}
MINIMUM = {("rollback", "to"): 0}  # other integer fields start at 1
CHOICES = {("adopt", "from"): ADOPT_FROM}  # text fields that take one of these only
REQUIRED = frozenset({"node_id", "from"})  # fields their request cannot go without


def examples(default: int) -> int:
    """How many inputs a fuzz test generates: EXAMPLES_ENV when set, else `default`."""
    return int(os.environ.get(EXAMPLES_ENV) or default)


def run(strategy: st.SearchStrategy, default: int, feed: Callable[[Any], object]) -> None:
    """Call `feed` with `default` inputs drawn from `strategy` (EXAMPLES_ENV when set), in
    hypothesis runs of at most ROUND inputs each: a run remembers every input it drew
    (2.6 GB after 15,000 messages of frames), a new run starts afresh.

    Each run has no deadline (the machine may be busy), no complaint about large or slow
    inputs, which are the point, and no shrinking: after a failure the processes' state is
    not what it was, so the input that failed first is the one reported (see Target).
    """
    def one(data: Any) -> None:  # hypothesis wants tests that return nothing
        feed(data)

    remaining = examples(default)
    while remaining > 0:
        count = min(remaining, ROUND)
        settings(
            max_examples=count,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            verbosity=Verbosity.quiet,  # the failure says its input, cut short (see Target)
        )(given(strategy)(one))()
        remaining -= count


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def check_growth(name: str, before: dict[str, int], after: dict[str, int]) -> str:
    """Fail unless `after` stayed within MEMORY_GROWTH_KIB of `before`; a report line."""
    for field in ("VmRSS", "VmHWM"):
        grown = after[field] - before[field]
        assert grown < MEMORY_GROWTH_KIB, f"{name} {field} grew by {grown} KiB: {before} -> {after}"
    return f"{name} VmHWM {before['VmHWM']} -> {after['VmHWM']} KiB"


# -- strategies ----------------------------------------------------------------------------

# Low surrogates only: JSON decodes a high one followed by a low one as a valid pair.
lone_surrogates = st.text(st.characters(min_codepoint=0xDC00, max_codepoint=0xDFFF), min_size=1,
                          max_size=3)
big_integers = st.integers(min_value=2**63 - 2, max_value=2**64 + 2) | st.integers(
    min_value=-(2**64) - 2, max_value=-(2**63) + 2)
scalars = (st.none() | st.booleans() | st.integers() | big_integers | lone_surrogates
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))


def json_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(scalars, json_containers, max_leaves=12)


def valid_value(kind: str, field: str) -> st.SearchStrategy:
    """Values a request type takes in `field` (targets a few versions above and below)."""
    sample = FIELDS[kind][field]
    if (kind, field) in CHOICES:
        return st.sampled_from(CHOICES[kind, field])
    if isinstance(sample, bool):
        return st.booleans()
    if isinstance(sample, int):
        return st.integers(min_value=MINIMUM.get((kind, field), 1), max_value=5)
    return st.text(max_size=10)


def wrong_value(kind: str, field: str) -> st.SearchStrategy:
    """Values that are not what `field` takes, each one error 12 naming it."""
    others = st.floats(allow_nan=False, allow_infinity=False) | st.lists(
        scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, max_size=3)
    if field == "body":
        return st.lists(scalars, max_size=3) | st.none() | st.text(max_size=5) | st.integers()
    if field == "msg_id":
        return others | st.text(max_size=5) | st.booleans()
    if field in ("src", "dest", "type", "node_id"):
        # A missing src or dest is allowed; a missing type or node_id is not.
        absent = st.nothing() if field in ("src", "dest") else st.none()
        return others | absent | st.integers() | st.booleans() | lone_surrogates
    if isinstance(FIELDS[kind][field], bool):
        return others | st.none() | st.integers() | big_integers | st.text(max_size=5)
    below = st.integers(max_value=MINIMUM.get((kind, field), 1) - 1)
    return others | st.none() | st.booleans() | st.text(max_size=5) | below | st.integers(
        min_value=2**63, max_value=2**70)


@st.composite
def wrong_field_requests(draw) -> tuple[dict, str]:
    """A request of any type, valid but for one field of the wrong type; and that field."""
    kind = draw(st.sampled_from(KINDS))
    wrong = draw(st.sampled_from(["src", "dest", "body", "type", "msg_id", *FIELDS[kind]]))
    fields = {field: draw(valid_value(kind, field)) for field in FIELDS[kind]
              if draw(st.booleans()) or field in REQUIRED}
    if kind == "rollback":  # it takes steps or to, not both
        fields.pop("to" if wrong == "steps" else "steps", None)
    body = {"type": kind, "msg_id": draw(st.integers(0, FIRST_SENTINEL - 1)), **fields}
    message = {"src": "fuzz", "dest": "migrations", "body": body}
    value = draw(wrong_value(kind, wrong))
    if wrong in ("src", "dest", "body"):
        message[wrong] = value
    else:
        body[wrong] = value
    return message, wrong


@st.composite
def requests(draw) -> Any:
    """A request envelope of any type, each field valid, hostile or missing."""
    kind = draw(st.sampled_from(KINDS) | st.text(max_size=8))
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        body["type"] = kind if draw(st.integers(0, 9)) else draw(json_values)
    if draw(st.integers(0, 9)):
        body["msg_id"] = draw(st.integers(0, FIRST_SENTINEL - 1) | json_values)
    for field in FIELDS.get(kind, {}):
        if draw(st.booleans()):
            body[field] = draw(valid_value(kind, field) | json_values)
    body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    message = {"src": draw(st.just("fuzz") | json_values), "dest": "migrations", "body": body}
    if not draw(st.integers(0, 19)):
        message["body"] = draw(json_values)
    return message if draw(st.integers(0, 19)) else draw(json_values)


@st.composite
def json_lines(draw) -> bytes:
    """Requests as JSON text: one a line, pretty-printed, several on a line, cut short."""
    out = b""
    for message in draw(st.lists(requests(), min_size=1, max_size=6)):
        text = json.dumps(message, indent=draw(st.sampled_from([None, None, 1])),
                          ensure_ascii=draw(st.booleans()))
        raw = text.encode("utf-8", "surrogatepass")  # a raw lone surrogate is invalid UTF-8
        if not draw(st.integers(0, 9)):
            raw = raw[: draw(st.integers(0, len(raw)))]
        out += raw + draw(st.sampled_from([b"\n", b"\n", b"", b" ", b"\r\n"]))
    return out


# Bytes that change the framer's state, and fragments of requests, to be strung together.
TOKENS = [b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b" ", b"\n", b"\r", b"\t", b"1",
          b"-", b"e9", b"null", b"true", b"NaN", b'"type"', b'"body"', b'"msg_id"', b'"status"',
          b'"migrate"', b'"\\ud800"', b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
          b"\x00", b'{"body": {"type": "status", "msg_id": 7}}']


@st.composite
def huge_lines(draw) -> bytes:
    """A line around the 1 MiB request bound: garbage, a padded request, an open object."""
    size = draw(st.sampled_from([MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1,
                                 2 * MAX_REQUEST_BYTES, 64 * 1024]))
    shape = draw(st.sampled_from(["garbage", "request", "open"]))
    if shape == "garbage":
        return b"x" * size + b"\n"
    head = b'{"body": {"type": "status", "msg_id": 5, "pad": "'
    tail = b'"}}' if shape == "request" else b""
    return head + b"a" * max(0, size - len(head) - len(tail)) + tail + b"\n"


@st.composite
def deep_nesting(draw) -> bytes:
    """A request holding brackets nested up to 200,000 deep, closed or left open."""
    depth = draw(st.integers(1, 200_000))
    opener = draw(st.sampled_from([b"[", b'{"a":']))
    closer = b"]" if opener == b"[" else b"}"
    inner = opener * depth + (b"0" + closer * depth if draw(st.booleans()) else b"")
    return b'{"body": {"type": "status", "msg_id": 6, "x": ' + inner + b"}}\n"


@st.composite
def invalid_utf8(draw) -> bytes:
    """A request whose string holds bytes that are not UTF-8."""
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xe2\x82",
                                b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]))
    field = draw(st.sampled_from([b"type", b"src", b"x"]))
    return b'{"src": "c", "body": {"type": "status", "msg_id": 8, "' + field + b'": "' + bad \
        + b'"}}\n'


stdin_bytes = (
    st.binary(max_size=300)
    | st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
    | huge_lines()
    | deep_nesting()
    | invalid_utf8()
)


# Frames for the worker's socket.


def msgpack_containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    keys = st.text(max_size=8) | st.binary(max_size=8)  # msgpack maps take both
    return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
    msgpack_containers,
    max_leaves=12,
)


@st.composite
def request_maps(draw) -> dict:
    """A request as the worker sees it, each field valid, hostile or missing, with unknown
    fields beside them."""
    kind = draw(st.sampled_from(KINDS) | st.text(max_size=8))
    message: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):
        message["id"] = draw(st.binary(max_size=70) | msgpack_values)
    if draw(st.integers(0, 9)):
        message["type"] = kind if draw(st.integers(0, 9)) else draw(msgpack_values)
    params = {field: draw(valid_value(kind, field) | msgpack_values)
              for field in FIELDS.get(kind, {}) if draw(st.booleans())}
    if kind == "cancel" and draw(st.booleans()):
        params["ids"] = draw(st.lists(st.binary(max_size=70), max_size=5) | msgpack_values)
    if params or draw(st.booleans()):
        message["params"] = params if draw(st.integers(0, 9)) else draw(msgpack_values)
    if draw(st.booleans()):
        message["src"] = draw(st.text(max_size=10) | msgpack_values)
    message.update(draw(st.dictionaries(st.text(max_size=8), msgpack_values, max_size=2)))
    return message


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


# Headers of msgpack strings, binaries, arrays, maps and extensions announcing up to 4 GiB.
LENGTH_HEADERS = [b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9", b"\xda", b"\xc5", b"\xdc", b"\xde"]


@st.composite
def huge_lengths(draw) -> bytes:
    header = draw(st.sampled_from(LENGTH_HEADERS))
    width = 2 if header in (b"\xda", b"\xc5", b"\xdc", b"\xde") else 4
    length = draw(st.integers(0, 256**width - 1)).to_bytes(width, "big")
    return header + length + draw(st.binary(max_size=16))


@st.composite
def nested_frames(draw) -> bytes:
    """Arrays or maps nested up to 5,000 deep, alone or as a request's params."""
    depth = draw(st.integers(1, 5_000))
    nest = b"\x91" * depth + b"\xc0" if draw(st.booleans()) else b"\x81\xa1k" * depth + b"\xc0"
    if draw(st.booleans()):
        return nest
    # {"id": b"n", "type": "status", "params": <nest>}, written by hand: msgpack's packer
    # refuses to nest that deep.
    return b"\x83" + packed("id") + packed(b"n") + packed("type") + packed("status") \
        + packed("params") + nest


frames = st.one_of(
    request_maps().map(packed),
    request_maps().map(packed).flatmap(lambda frame: st.integers(0, len(frame)).map(
        lambda cut: frame[:cut])),
    st.binary(max_size=64),
    huge_lengths(),
    nested_frames(),
    msgpack_values.map(packed),
)
frame_messages = st.lists(frames, min_size=1, max_size=8) | st.lists(frames, min_size=30,
                                                                       max_size=70)


# -- the targets ---------------------------------------------------------------------------


TOO_DEEP = "request is nested too deeply to decode"
# JSON nested deeper than this meets the decoder's recursion limit at a depth that depends on
# how deep the decoding process's stack already is: the node's and the mirror framer's
# differ, so near it either may call a request too deep where the other decodes it.
AMBIGUOUS_NESTING = 400


def near_the_recursion_limit(item: dict | Malformed) -> bool:
    if isinstance(item, Malformed):
        return item.text == TOO_DEEP or item.text.startswith("request is not valid JSON")
    return nesting(item) > AMBIGUOUS_NESTING


def nesting(value: Any) -> int:
    """How deep lists and dicts nest in `value` (without recursion: it may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            stack.extend((inner, depth + 1) for inner in value)
    return deepest


class Target:
    """Processes fed one input after another. The first failure is kept and raised again
    for every later input: the processes' state no longer follows the model after it, and
    hypothesis reports the input it fails on, which is then that first one."""

    failure: BaseException | None = None

    def feed(self, data: Any) -> list[dict]:
        """Send one input; check every reply it gets. Returns the replies' bodies."""
        if self.failure is not None:
            raise self.failure
        try:
            return self._feed(data)
        except BaseException as failure:
            failure.add_note(f"the input that failed first: {data!r:.3000}")
            self.failure = failure
            raise

    name: str
    db: Path
    counts: Counter[str]

    def finish(self) -> str:
        """Check how the processes end and that no migration is half-applied, unless an
        input failed already (the test reports that); release what the target holds.
        Returns the report line, also written for `python -m tests.fuzz` (REPORTS_ENV)."""
        try:
            if self.failure is not None:
                return ""
            memory_lines = self._finish()
            problems = half_applied(self.db)
            assert not problems, problems
            self.counts["databases checked whole"] += 1
            return report(self.name, self.counts, memory_lines)
        finally:
            self._release()

    def _feed(self, data: Any) -> list[dict]:
        raise NotImplementedError

    def _finish(self) -> list[str]:
        """Check how the processes end; the memory report lines."""
        raise NotImplementedError

    def _release(self) -> None:
        """Nothing to release: the workspace stops the processes."""


class StdinTarget(Target):
    """One node.py (and its worker) fed input after input on stdin, every reply checked."""

    def __init__(self, workspace: Workspace, folder: Path, name: str) -> None:
        self.name, self.db = name, workspace.db
        self.node = workspace.live("--migrations", str(folder))
        self.mirror = RequestFramer()  # the node's framer, fed the same bytes
        self.node_id: str | None = None  # set by a valid init: replies are framed from then on
        self.counts: Counter[str] = Counter()
        self.sentinels = itertools.count(FIRST_SENTINEL)
        self.node.send(request("health", next(self.sentinels)))
        self.worker_pid = self.node.replies(1)[0]["worker_pid"]
        self.memory = {"node": memory(self.node.process.pid), "worker": memory(self.worker_pid)}

    def _feed(self, data: bytes) -> list[dict]:
        """Send `data`, then what closes anything it left open, then a sentinel health;
        check every reply the mirror framer predicts."""
        sent = data + b"\n"  # ends a string or a line of junk left open
        items = self.mirror.feed(sent)
        depth = self.mirror._depth  # brackets still open, whatever their kind
        if depth:
            closing = b"0" + b"]" * depth + b"\n"
            items += self.mirror.feed(closing)
            sent += closing
        sentinel = json.dumps(request("health", next(self.sentinels)))
        items += self.mirror.feed(sentinel.encode() + b"\n")
        self.node.process.stdin.write(sent + sentinel.encode() + b"\n")
        self.node.process.stdin.flush()
        self.counts["inputs"] += 1
        self.counts["input bytes"] += len(data)
        bodies = [self._check(item) for item in items]
        assert bodies[-1]["type"] == "health_ok", bodies[-1]  # the sentinel, answered
        self.counts["sentinels answered"] += 1
        return bodies

    def _check(self, item: dict | Malformed) -> dict:
        self.counts["replies checked"] += 1
        parsed = None if isinstance(item, Malformed) else parse_request(item)
        if parsed is not None and parsed.problem is None and parsed.kind == "init":
            self.node_id = parsed.body["node_id"]
        body, dest = self._next_reply(parsed)
        if TOO_DEEP in (body.get("text"), getattr(item, "text", None)) and near_the_recursion_limit(
            item
        ):
            self.counts["nested near the recursion limit"] += 1
            return body
        if self.node_id is not None:
            assert dest == (parsed.src if parsed else None), (item, dest)
        assert body.pop("in_reply_to", None) == (parsed.msg_id if parsed else None), (item, body)
        if parsed is None:
            assert body == {"type": "error", "code": MALFORMED_REQUEST, "text": item.text}, body
        elif parsed.problem is not None:
            assert body == parsed.problem.body(), (item, body)
        else:
            self._check_answer(parsed, body)
        self.counts[f"error {body['code']}" if body["type"] == "error" else "answers"] += 1
        return body

    def _next_reply(self, parsed: Request | None) -> tuple[dict, str | None]:
        """The next reply line's body, and the dest it was framed for (None unframed),
        after the progress lines a write asked for."""
        while True:
            line, dest = self.node.replies(1)[0], None
            if self.node_id is not None:
                assert line.keys() == {"src", "dest", "body"}, line
                assert line["src"] == self.node_id
                line, dest = line["body"], line["dest"]
            if line["type"] != PROGRESS:
                return line, dest
            assert parsed is not None and parsed.kind in WRITES, (parsed, line)
            assert parsed.body.get("progress") is True, (parsed, line)
            assert line.get("in_reply_to") == parsed.msg_id, (parsed, line)  # none without msg_id
            self.counts["progress lines"] += 1

    def _check_answer(self, parsed: Request, body: dict) -> None:
        kind = parsed.kind
        if body["type"] != "error":
            assert body["type"] in ANSWERS[kind], (parsed, body)
            if kind == "health":
                assert body["worker_pid"] == self.worker_pid and body["worker_restarts"] == 0
            return
        code = body["code"]
        if kind not in ANSWERS:
            assert code in (UNKNOWN_TYPE, MALFORMED_REQUEST), (parsed, body)
        elif code == MIGRATION_FAILED:  # the migrations here never fail: only a cancel
            assert kind in WRITES and body.get("cancelled") is True, (parsed, body)
        else:
            allowed = {MALFORMED_REQUEST} | ({PRECONDITION_FAILED} if kind in WRITES else set())
            assert code in allowed, (parsed, body)

    def _finish(self) -> list[str]:
        """Close stdin: the node answers everything and exits 0; memory stayed bounded."""
        after = {"node": memory(self.node.process.pid), "worker": memory(self.worker_pid)}
        assert self.node.finish() == 0
        assert self.node.no_more_replies()
        return [check_growth(name, self.memory[name], after[name]) for name in after]


class FrameTarget(Target):
    """A raw DEALER on a running worker's socket, fed message after message of frames."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.name, self.db = name, workspace.db
        self.counts: Counter[str] = Counter()
        self.sentinels = itertools.count()
        where = endpoint_of(workspace)
        self.worker_pid = workspace.worker_pid()
        self.memory = memory(self.worker_pid)
        self.context = zmq.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.RCVTIMEO, PROCESS_TIMEOUT_S * 1000)
        self.dealer.connect(where.address)

    def _feed(self, message: list[bytes]) -> list[dict]:
        """Send one message, then a sentinel `health` (answered at once, so after this
        message's reads) and a sentinel `baseline` without `to` (queued behind its writes);
        check a reply for every frame came before both."""
        number = next(self.sentinels)
        health, baseline = b"sentinel-health-%d" % number, b"sentinel-baseline-%d" % number
        self.dealer.send_multipart(message)
        self.dealer.send_multipart([codec.pack_request(health, "health"),
                                    codec.pack_request(baseline, "baseline")])
        bodies, sentinels = [], {}
        while len(sentinels) < 2:
            try:
                frames = self.dealer.recv_multipart()
            except zmq.Again:
                pytest.fail(f"no reply in {PROCESS_TIMEOUT_S} s to {message!r:.300}")
            assert frames and len(frames) % 2 == 0, frames
            for request_id, frame in zip(frames[0::2], frames[1::2], strict=True):
                body = codec.unpack(frame, codec.MAX_REPLY_BYTES)
                if request_id in (health, baseline):
                    sentinels[request_id] = body
                elif body["type"] != PROGRESS:
                    bodies.append(self._checked(body))
                else:
                    self.counts["progress replies"] += 1
        assert sentinels[health]["type"] == "health_ok", sentinels
        assert sentinels[health]["worker_pid"] == self.worker_pid
        assert sentinels[baseline] == {"type": "error", "code": MALFORMED_REQUEST,
                                       "text": "baseline needs to: the version to record up to"}
        limit = codec.MAX_MESSAGE_REQUESTS
        assert len(bodies) == min(len(message), limit) + (len(message) > limit), (message, bodies)
        self.counts["messages"] += 1
        self.counts["frames"] += len(message)
        self.counts["sentinels answered"] += 2
        return bodies

    def _checked(self, body: dict) -> dict:
        self.counts["replies checked"] += 1
        if body["type"] == "error":
            code = body["code"]
            self.counts[f"error {code}"] += 1
            allowed = {UNKNOWN_TYPE, MALFORMED_REQUEST, PRECONDITION_FAILED}
            # A write whose id came before (the fuzzer repeats ids) and whose stored reply
            # 10,000 later ones pushed out is told so: that is a resend, answered honestly.
            resent = code == CRASH and "stored reply is gone" in body["text"]
            assert code in allowed or resent or (
                code == MIGRATION_FAILED and body.get("cancelled")), body
        else:
            assert body["type"] in set().union(*ANSWERS.values()), body
            self.counts["answers"] += 1
        return body

    def _finish(self) -> list[str]:
        return [check_growth("worker", self.memory, memory(self.worker_pid))]

    def _release(self) -> None:
        self.dealer.close()
        self.context.term()


def endpoint_of(workspace: Workspace) -> endpoint.Endpoint:
    """The endpoint of the workspace's database, as its nodes find it."""
    saved = os.environ.get(endpoint.RUNTIME_DIR_ENV)
    os.environ[endpoint.RUNTIME_DIR_ENV] = str(workspace.runtime)
    try:
        return endpoint.for_database(workspace.db)
    finally:
        if saved is None:
            del os.environ[endpoint.RUNTIME_DIR_ENV]
        else:
            os.environ[endpoint.RUNTIME_DIR_ENV] = saved


def write_migrations(folder: Path) -> None:
    """The migrations every target serves: each creates its table, and succeeds whatever
    ran before (`baseline` included, which records migrations without running them), so
    that a failed one is a finding."""
    for version in VERSIONS:
        table = TABLE.format(version)
        write_migration(folder, f"{version:04d}_{table}.py",
                        f'db.execute("CREATE TABLE IF NOT EXISTS {table} (id INTEGER)")',
                        down=f'db.execute("DROP TABLE IF EXISTS {table}")')


def half_applied(db: Path) -> list[str]:
    """What in the database disagrees with its history: a migration's table must exist
    exactly when its last event is an apply, and its tracking row when that event is an
    apply or a baseline (which records a migration without running it)."""
    connection = sqlite3.connect(db)
    try:
        tables = {name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_migrations" not in tables:
            return []  # nothing ever written
        recorded = {version for (version,) in connection.execute(
            "SELECT version FROM schema_migrations")}
        last = dict(connection.execute(
            "SELECT version, action FROM schema_migration_history ORDER BY seq"))
    finally:
        connection.close()
    problems = []
    for version in VERSIONS:
        action = last.get(version)
        if (TABLE.format(version) in tables) != (action == "apply"):
            problems.append(f"table of migration {version} after its last event, {action}")
        if (version in recorded) != (action in ("apply", "baseline", "adopt")):
            problems.append(f"tracking row of migration {version} after its last event, {action}")
    return problems


def report(name: str, counts: Counter[str], memory_lines: list[str]) -> str:
    """The report line of a target's run; also written as JSON into REPORTS_ENV's folder,
    when set, for `main` to gather."""
    parts = ", ".join(f"{value} {key}" for key, value in sorted(counts.items()))
    folder = os.environ.get(REPORTS_ENV)
    if folder:
        path = Path(folder) / f"{len(list(Path(folder).iterdir())):04d}.json"
        path.write_text(json.dumps({"test": name, "counts": counts, "memory": memory_lines}))
    return f"fuzz {name}: {parts}; {'; '.join(memory_lines)}"


# What each fuzz test tries, as RELIABILITY.md names it, the unit of its `tried` column and
# the counts that add up to it.
ROWS = {
    "test_hostile_bytes_on_stdin": (
        "bytes on a node's stdin: random bytes, JSON token soup, lines around the 1 MiB bound,"
        " nesting up to 200,000 deep, invalid UTF-8", "inputs", ("inputs",)),
    "test_requests_of_every_shape_on_stdin": (
        "JSON requests on a node's stdin, every type, each field valid, hostile or missing,"
        " several a line, cut short", "inputs", ("inputs",)),
    "test_a_wrong_type_in_any_field": (
        "a request with one field of a wrong type (each must be error 12 naming it)", "inputs",
        ("inputs",)),
    "test_raw_frames_to_the_worker": (
        "raw frames to the worker's socket: truncated msgpack, wrong types, nesting up to"
        " 5,000 deep, lengths up to 4 GiB, up to 70 frames a message, unknown fields",
        "frames", ("frames",)),
    "test_a_frame_over_the_4_mib_bound": (
        "a frame over the worker's 4 MiB bound (dropped with a log line)", "frames",
        ("oversized frames",)),
    "test_corpus_": ("the regression corpus (tests/fuzz_corpus): inputs that once found a bug",
                     "inputs", ("inputs", "messages")),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=30_000,
                        help="inputs per fuzz test (default: %(default)s)")
    parser.add_argument("-k", dest="select", help="only the fuzz tests matching (pytest -k)")
    parser.add_argument("--output", type=Path, help="update this RELIABILITY.md")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
               str(Path(__file__).with_name("test_fuzz.py"))]
    if args.select:
        command += ["-k", args.select]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as reports:
        env = {**os.environ, EXAMPLES_ENV: str(args.examples), REPORTS_ENV: reports}
        status = subprocess.run(command, env=env,
                                cwd=Path(__file__).resolve().parent.parent).returncode
        runs = [json.loads(path.read_text()) for path in sorted(Path(reports).iterdir())]
    if status == 0 and args.output is not None:
        reproduce = f"`python -m tests.fuzz --examples {args.examples}`"
        rows, lines = gather(runs, reproduce)
        minutes = (time.monotonic() - started) / 60
        reliability.update(args.output, rows, {"fuzz": "\n".join([
            "## Fuzzing on SQLite " + sqlite3.sqlite_version,
            "",
            f"Run {datetime.date.today()} by {reproduce} in {minutes:.1f} minutes on"
            f" {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}."
            " Every input got the reply the node's own framer predicts (or, straight to the"
            " worker, one reply per frame), a `health` sent after it was answered by the same"
            " worker, no process died, and each process's peak memory grew by less than"
            f" {MEMORY_GROWTH_KIB // 1024} MiB over the run. What each test counted:",
            "",
            *lines,
        ])})
    return status


def gather(runs: list[dict], reproduce: str) -> tuple[list[list[str]], list[str]]:
    """RELIABILITY.md rows (one per kind of input, all failure counts 0: the run passed)
    and a line of figures per test."""
    tried: Counter[str] = Counter()
    lines = []
    for run in runs:
        counts = run["counts"]
        prefix = next(prefix for prefix in ROWS if run["test"].startswith(prefix))
        tried[prefix] += sum(counts.get(key, 0) for key in ROWS[prefix][2])
        figures = ", ".join(f"{key} {value:,}" for key, value in sorted(counts.items()))
        lines.append(f"- `{run['test']}`: {figures}; {'; '.join(run['memory'])}")
    rows = []
    for prefix, count in tried.items():
        what, unit, _ = ROWS[prefix]
        rows.append([what, f"{count:,} {unit.removesuffix('s') if count == 1 else unit}",
                     "SQLite", "0", "0", "0", "0", reproduce])
    return rows, lines


if __name__ == "__main__":
    sys.exit(main())
