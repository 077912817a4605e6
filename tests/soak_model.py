"""The soak's judge: the history a database recorded, replayed, and every reply checked
against it. `python -m tests.soak` (tests/soak.py) runs the processes; this module only
reads what they said and what the database holds.

    history rows, in seq order --replay--> Timeline: after each event, which versions are
                                           applied and which request applied each
    one node's stdout lines -----attach--> Request.reply, Request.progress
    Requests + Timeline ---------check---> Findings: lost, doubled, wrong, half-applied

Writes of different nodes interleave in an order only the database knows, and the history
tells it: each event names its request's `src`, which the soak makes unique per request. So
a reply is right when it is what the README promises at some point of the timeline that is
no earlier than its node's previous reply (a node's requests take effect in its order; reads
in a row are pipelined, so concurrent, and a write cancelled before the node sent it does
not end the row) and, for a write, after its own last event. The
earliest such point is taken, which is the most room any later request of the node can have.

The migrations are `t<V>`: each creates table t<V> (the slow ones then insert rows one
statement at a time, so that kills and cancels land inside them) and drops it in down().
The applied versions are therefore always 1..k, and the database must hold table t<V>
exactly for the versions applied by an `apply` (a `baseline` records without running), with
every row of a slow one.

Where DDL commits at once (MariaDB, MySQL), a kill between a CREATE or DROP and its record
leaves that statement uncertain, for a person to resolve: a state this model does not know.
There the folder is written with `tables_exist`: tables t<V> are made beforehand, up()
inserts their rows (one for a fast migration) and down() deletes them, DML only, which
commits whole with its record; the database must then hold every t<V>, with its rows
exactly for the versions applied by an `apply` and none otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from worker.catalog import checksum_of

FAILURES = ("lost", "doubled", "wrong", "half_applied")
WRITES = frozenset({"migrate", "rollback", "baseline"})
READS = frozenset({"status", "health", "validate", "history"})
ACTION_OF = {"migrate": "apply", "rollback": "rollback", "baseline": "baseline"}
HEALTH_FIELDS = ("worker_pid", "database", "migrations_dir", "endpoint", "uptime_s",
                 "requests_served", "nodes_connected", "running", "worker_restarts")
State = tuple  # per version (index v - 1): the src of the request that recorded it, or None


# -- the migrations folder --------------------------------------------------------------------


@dataclass(frozen=True)
class Folder:
    """The generated migrations: version v is t<v>; `rows[v]` rows for a slow one."""

    count: int
    rows: dict[int, int]
    checksums: dict[int, str]
    tables_exist: bool = False  # tables t<V> made beforehand: migrations only fill them

    @property
    def versions(self) -> range:
        return range(1, self.count + 1)


def write_folder(path: Path, count: int, slow_rows: int, slow_every: int = 3,
                 tables_exist: bool = False) -> Folder:
    """Write `count` one-table migrations into `path`; every `slow_every`th inserts
    `slow_rows` rows one statement at a time (each statement a cancellation point). With
    `tables_exist` they run DML only: tables t<V> are the caller's to create (see
    table_statements), up() inserts (one row, or `slow_rows`) and down() deletes."""
    path.mkdir(parents=True, exist_ok=True)
    rows, checksums = {}, {}
    for version in range(1, count + 1):
        rows[version] = slow_rows if version % slow_every == 0 else int(tables_exist)
        up = ("" if tables_exist
              else f'    db.execute("CREATE TABLE t{version} (id INTEGER)")\n')
        if rows[version] == 1:
            up += f'    db.execute("INSERT INTO t{version} VALUES (0)")\n'
        elif rows[version]:
            up += (f"    for i in range({rows[version]}):\n"
                   f'        db.execute("INSERT INTO t{version} VALUES (?)", (i,))\n')
        down = (f'    db.execute("DELETE FROM t{version}")\n' if tables_exist
                else f'    db.execute("DROP TABLE IF EXISTS t{version}")\n')
        source = f"def up(db):\n{up}\n\ndef down(db):\n{down}"
        file = path / f"{version:04d}_t{version}.py"
        file.write_text(source)
        checksums[version] = checksum_of(file.read_bytes())
    return Folder(count, rows, checksums, tables_exist)


def table_statements(count: int) -> list[str]:
    """The CREATE TABLE statements a `tables_exist` folder's migrations need first."""
    return [f"CREATE TABLE t{version} (id INTEGER)" for version in range(1, count + 1)]


# -- what was sent and what came back ---------------------------------------------------------


@dataclass
class Request:
    node: int
    body: dict[str, Any]  # as sent: type, msg_id and the fields
    src: str  # unique in the run: the history names the request by it
    cancellable: bool = False  # a cancel follows it on its node
    reply: dict[str, Any] | None = None  # the final reply body, in_reply_to taken out
    progress: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.body["type"]

    @property
    def msg_id(self) -> int:
        return self.body["msg_id"]

    def envelope(self) -> dict[str, Any]:
        return {"src": self.src, "dest": "migrations", "body": self.body}

    def describe(self) -> str:
        return f"node {self.node} {self.body} src={self.src}"


class Event(NamedTuple):
    """A history row, as the database holds it."""

    seq: int
    version: int
    name: str
    action: str
    checksum: str
    started_at: str
    duration_ms: float
    src: str | None

    def as_reply(self) -> dict[str, Any]:
        """The event as a `history` reply lists it."""
        return {"version": self.version, "name": self.name, "action": self.action,
                "checksum": self.checksum, "started_at": self.started_at,
                "duration_ms": round(self.duration_ms, 3), "src": self.src}


class Snapshot(NamedTuple):
    """What the database holds at one instant (read in one transaction)."""

    records: list[tuple[int, str, str]]  # version, name, checksum of each tracking row
    events: list[Event]  # history rows newer than those already replayed
    tables: dict[str, int]  # every table but the tracking tables: its row count


@dataclass
class Findings:
    """Failures by kind, each with a sentence saying what was wrong."""

    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        assert kind in FAILURES, kind
        self.counts[kind] += 1
        self.notes.append(f"{kind}: {text}")

    def __bool__(self) -> bool:
        return bool(self.notes)


# -- the timeline -----------------------------------------------------------------------------


class Timeline:
    """The history replayed: the state after each event, and each request's events."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self.events: list[Event] = []
        self.states: list[State] = [(None,) * folder.count]  # states[i]: after i events
        self.by_src: dict[str, list[int]] = {}  # src -> indexes into events
        self.baselined: set[int] = set()  # versions recorded now by a baseline, not an apply

    @property
    def end(self) -> int:
        return len(self.events)

    def replay(self, events: list[Event], requests: dict[str, Request], found: Findings) -> None:
        """Append new events; each must be a step its request may take from the state
        before it (an apply of an applied version is a migration applied twice)."""
        for event in events:
            state = list(self.states[-1])
            applied = sum(owner is not None for owner in state)
            v = event.version
            where = f"history seq {event.seq} ({event.action} {v} by {event.src})"
            request = requests.get(event.src or "")
            if request is None or ACTION_OF.get(request.kind) != event.action:
                found.add("wrong", f"{where}: no {event.action} request has that src")
            elif request.body.get("dry_run"):
                found.add("wrong", f"{where}: a dry run committed a step")
            if v not in self.folder.versions or event.name != f"t{v}":
                found.add("wrong", f"{where}: no such migration ({event.name})")
            elif event.checksum != self.folder.checksums[v]:
                found.add("wrong", f"{where}: checksum {event.checksum}")
            elif event.action == "rollback":
                if state[v - 1] is None:
                    found.add("doubled", f"{where}: rolled back while not applied")
                elif v != applied:
                    found.add("wrong", f"{where}: not the newest applied ({applied})")
                state[v - 1] = None
                self.baselined.discard(v)
            else:
                if state[v - 1] is not None:
                    found.add("doubled", f"{where}: applied twice (by {state[v - 1]} before)")
                elif v != applied + 1:
                    found.add("wrong", f"{where}: out of order, {applied} applied")
                state[v - 1] = event.src
                (self.baselined.add if event.action == "baseline" else self.baselined.discard)(v)
            self.by_src.setdefault(event.src or "", []).append(len(self.events))
            self.events.append(event)
            self.states.append(tuple(state))

    def check_database(self, snapshot: Snapshot, found: Findings) -> None:
        """The tracking rows and tables must be what the replayed history says: every
        recorded version's table whole, no table of a version not applied."""
        state = self.states[-1]
        expected = [(v, f"t{v}", self.folder.checksums[v])
                    for v in self.folder.versions if state[v - 1] is not None]
        if snapshot.records != expected:
            found.add("half_applied", f"tracking rows {snapshot.records}, history says {expected}")
        filled = {v for v in self.folder.versions
                  if state[v - 1] is not None and v not in self.baselined}
        wanted = {f"t{v}": self.folder.rows[v] for v in filled}
        if self.folder.tables_exist:
            wanted = {f"t{v}": self.folder.rows[v] if v in filled else 0
                      for v in self.folder.versions}
        if snapshot.tables != wanted:
            found.add("half_applied", f"tables and row counts {snapshot.tables}, expected {wanted}")


def applied_count(state: State) -> int:
    return sum(owner is not None for owner in state)


# -- what a reply may say at one point of the timeline ----------------------------------------


def entries(versions: list[int], status: str) -> list[dict[str, Any]]:
    return [{"version": v, "name": f"t{v}", "status": status} for v in versions]


def error(code: int, text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "text": text, **extra}


def dry(body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    return {**body, "dry_run": True} if dry_run else body


CANCELLED_BEFORE_START = error(14, "cancelled before it started, so nothing ran",
                               cancelled=True, applied=[])


def cancelled(action: str, version: int, started: bool, done: dict[str, Any]) -> dict:
    name = f"{version} t{version}"
    if not started:
        text = f"cancelled before migration {name} started; it and later ones did not run"
    elif action == "apply":
        text = (f"cancelled: migration {name} was interrupted and rolled back, so it is not"
                " applied; no later migration started")
    else:
        text = (f"cancelled: the rollback of migration {name} was interrupted and rolled back,"
                " so it stays applied; no later step started")
    return error(14, text, cancelled=True, **done,
                 failed={"version": version, "name": f"t{version}", "error": "cancelled"})


class Judge:
    """Every body a request's final reply may be, at point `p` of the timeline."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.count = timeline.folder.count

    def candidates(self, request: Request, p: int) -> list[dict[str, Any]]:
        state = self.timeline.states[p]
        mine = [i for i in self.timeline.by_src.get(request.src, []) if i < p]
        handler = getattr(self, f"_{request.kind}", None)
        if handler is None:
            return [error(10, "")]  # text not compared for code 10 and 12, see same_reply()
        found = handler(request, state, [self.timeline.events[i] for i in mine], p)
        if request.cancellable and request.kind in WRITES and not mine:
            found.append(CANCELLED_BEFORE_START)
        return found

    def _status(self, request, state, mine, p):
        return [{"type": "migration_status", "migrations": [
            {"version": v, "name": f"t{v}", "applied": state[v - 1] is not None}
            for v in range(1, self.count + 1)]}]

    def _validate(self, request, state, mine, p):
        newest = max((v for v in range(1, self.count + 1) if state[v - 1]), default=0)
        problems = [{"version": v, "name": f"t{v}", "kind": "out_of_order"}
                    for v in range(1, newest) if state[v - 1] is None]
        return [{"type": "validation", "ok": not problems, "problems": problems}]

    def _history(self, request, state, mine, p):
        limit = request.body.get("limit")
        shown = self.timeline.events[max(0, p - limit) if limit else 0:p]
        return [{"type": "migration_history", "events": [e.as_reply() for e in shown]}]

    def _health(self, request, state, mine, p):
        return [{"type": "health_ok"}]  # its fields are checked by check_health()

    def _init(self, request, state, mine, p):
        return [{"type": "init_ok"}]

    def _cancel(self, request, state, mine, p):
        return [{"type": "cancel_ok"}]  # its count is checked by check_cancels()

    def _migrate(self, request, state, mine, p):
        body = request.body
        to, dry_run = body.get("to"), bool(body.get("dry_run"))
        if isinstance(to, str):
            return [error(12, "")]
        if to is not None and to not in range(1, self.count + 1):
            return [error(22, f"no migration has version {to}")]
        pending = [v for v in range(1, self.count + 1)
                   if state[v - 1] is None and (to is None or v <= to)]
        if dry_run:
            found = [dry(applied_reply(pending), True)]
            found += [cancelled("apply", pending[j], True, {"applied": entries(pending[:j],
                      "applied"), "dry_run": True}) for j in range(len(pending))]
            return found if not mine else []
        own = [v for v in range(1, self.count + 1) if state[v - 1] == request.src]
        found = [] if pending else [applied_reply(own)]
        if pending and request.cancellable:
            done = {"applied": entries(own, "applied")}
            found += [cancelled("apply", pending[0], started, done) for started in (True, False)]
        return found

    def _rollback(self, request, state, mine, p):
        body = request.body
        steps, to, dry_run = body.get("steps"), body.get("to"), bool(body.get("dry_run"))
        if steps == 0:
            return [error(12, "")]
        if to is not None and to not in range(0, self.count + 1):
            return [error(22, f"no migration has version {to}")]
        applied = applied_count(state)
        newest_first = list(range(applied, 0, -1))
        plain = steps is None and to is None
        done = [event.version for event in mine]
        if to is not None:
            targets = [v for v in newest_first if v > to]
        else:
            wanted = (steps or 1) - len(done)
            if not newest_first and not done:
                return [dry(error(22, "nothing to roll back: no migration is applied"), dry_run)]
            if wanted > len(newest_first):
                return [dry(error(22, f"cannot roll back {steps} migrations: only"
                                      f" {len(newest_first) + len(done)} are applied"), dry_run)]
            targets = newest_first[:wanted]
        if dry_run:
            found = [dry(rolled_back_reply(plain, targets), True)]
            for j in range(len(targets)):
                listed = {} if plain else {"rolled_back": entries(targets[:j], "rolled_back")}
                found.append(cancelled("rollback", targets[j], True, {**listed, "dry_run": True}))
            return found if not mine else []
        found = []
        if not targets and (len(done) == 1 or not plain):
            found.append(rolled_back_reply(plain, done))
        if targets and request.cancellable:
            listed = {} if plain else {"rolled_back": entries(done, "rolled_back")}
            found += [cancelled("rollback", targets[0], started, listed)
                      for started in (True, False)]
        return found

    def _baseline(self, request, state, mine, p):
        to = request.body["to"]
        if mine:
            versions = [event.version for event in mine]
            reply = {"type": "migrations_baselined", "count": len(versions),
                     "migrations": entries(versions, "baselined")}
            return [reply] if versions == list(range(1, to + 1)) else []
        applied = applied_count(state)
        if applied:
            return [error(22, f"baseline is for a database with nothing recorded, and {applied}"
                              " migrations are recorded here")]
        return []


def applied_reply(versions: list[int]) -> dict[str, Any]:
    return {"type": "migrations_applied", "count": len(versions),
            "migrations": entries(versions, "applied")}


def rolled_back_reply(plain: bool, versions: list[int]) -> dict[str, Any]:
    if plain:
        (only,) = versions
        return {"type": "migration_rolled_back", "version": only, "name": f"t{only}"}
    return {"type": "migrations_rolled_back", "count": len(versions),
            "migrations": entries(versions, "rolled_back")}


def same_reply(got: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Equal, but for the texts of errors 10 and 12 (the node's or the worker's wording,
    which names the field), the fields of health and cancel_ok (checked apart) and a
    dry run's `locks`."""
    if wanted["type"] in ("health_ok", "cancel_ok"):
        return got.get("type") == wanted["type"]
    if wanted["type"] == "error" and wanted["code"] in (10, 12):
        return (got.get("type") == "error" and got.get("code") == wanted["code"]
                and isinstance(got.get("text"), str) and bool(got["text"]))
    if wanted.get("dry_run") is True and isinstance(got.get("locks"), list):
        # A dry run on PostgreSQL also lists the locks it took (what they are is
        # tests/test_dry_run_locks.py's to check, not the soak's).
        got = {key: value for key, value in got.items() if key != "locks"}
    return got == wanted


# -- one node's replies -----------------------------------------------------------------------


def attach(requests: list[Request], lines: list[dict[str, Any]], found: Findings,
           wrapped_from: int | None, node_id: str | None) -> None:
    """Give each reply line to its request: progress lines (only when asked for, each
    version once) then one final line, in request order. `wrapped_from` is the index of
    the node's init: its reply and every later one come in an envelope."""
    position = 0
    for line in lines:
        envelope = None
        if wrapped_from is not None and set(line) == {"src", "dest", "body"}:
            envelope, line = (line["src"], line["dest"]), line["body"]
        request = requests[position] if position < len(requests) else None
        if request is None or list(line)[:2] != ["type", "in_reply_to"] \
                or line["in_reply_to"] != request.msg_id:
            answered = any(r.msg_id == line.get("in_reply_to") for r in requests[:position])
            waiting = request.describe() if request else "no request"
            found.add("doubled" if answered else "wrong", f"{waiting} waits, got {line}")
            continue
        wrapped = wrapped_from is not None and position >= wrapped_from
        if envelope != ((node_id, request.src) if wrapped else None):
            found.add("wrong", f"{request.describe()}: envelope {envelope}")
        body = {key: value for key, value in line.items() if key != "in_reply_to"}
        if body["type"] == "migration_progress":
            check_progress(request, body, found)
            request.progress.append(body)
        else:
            request.reply = body
            position += 1


def check_progress(request: Request, body: dict[str, Any], found: Findings) -> None:
    asked = request.kind in ("migrate", "rollback") and request.body.get("progress") is True
    if not asked or request.body.get("dry_run"):
        found.add("wrong", f"{request.describe()}: progress line not asked for: {body}")
        return
    if any(line["version"] == body.get("version") for line in request.progress):
        found.add("doubled", f"{request.describe()}: progress for a version again: {body}")
    status = "applied" if request.kind == "migrate" else "rolled_back"
    v = body.get("version")
    shape = {"type", "done", "total", "version", "name", "status"}
    if (set(body) != shape or body["status"] != status or body["name"] != f"t{v}"
            or not 1 <= body["done"] <= body["total"]):
        found.add("wrong", f"{request.describe()}: progress line {body}")


def check_node(judge: Judge, requests: list[Request], start: int, found: Findings,
               killed: bool) -> None:
    """Check a node's replies in its order: each matches the timeline at the earliest
    point no earlier than the previous one's (and after its own events); requests left
    unanswered by a killed node only need their events after that point.

    Reads in a row are pipelined, sent before any of them is answered, so they are
    concurrent: each may see any state from the point the row starts at, and what follows
    them comes after all of them. (The worker answers the statuses of one message from one
    snapshot, while a history in the same message reads the latest state.)
    """
    timeline = judge.timeline
    low = reads_up_to = start
    for request in requests:
        if request.kind in READS:
            point = check_request(judge, request, low, found, killed)
            reads_up_to = max(reads_up_to, point)
        elif unsent(request, timeline):
            # A write cancelled while it waited in the node (behind the reads before it)
            # is answered there and orders nothing: the reads behind it went out at once,
            # beside the reads before it, so they continue the same row.
            check_request(judge, request, low, found, killed)
        else:
            low = check_request(judge, request, max(low, reads_up_to), found, killed)
            reads_up_to = low
    for request in requests:
        events = [timeline.events[i] for i in timeline.by_src.get(request.src, [])]
        lines = [line["version"] for line in request.progress]
        if request.reply is not None and any(
                not any(e.version == v for e in events) for v in lines):
            found.add("wrong", f"{request.describe()}: progress for a step it did not take:"
                               f" {lines}, events {[(e.version, e.action) for e in events]}")


def unsent(request: Request, timeline: Timeline) -> bool:
    """True for a write answered "cancelled before it started" that took no step: the node
    may have answered it without sending it. (One the worker answered, cancelled while
    queued, is taken for one too: what follows it is then judged a little more loosely.)"""
    return (request.reply is not None and not timeline.by_src.get(request.src)
            and same_reply(request.reply, CANCELLED_BEFORE_START))


def check_request(judge: Judge, request: Request, low: int, found: Findings,
                  killed: bool) -> int:
    """The point of the timeline the request's reply matches (the earliest from `low`)."""
    timeline = judge.timeline
    mine = timeline.by_src.get(request.src, [])
    if mine and mine[0] < low:
        found.add("wrong", f"{request.describe()}: took a step (history seq"
                           f" {timeline.events[mine[0]].seq}) before its node's previous reply")
    if request.reply is None:
        if not killed:
            found.add("lost", f"{request.describe()}: no reply")
        return low
    first = max(low, mine[-1] + 1) if mine else low
    for p in range(first, timeline.end + 1):
        if any(same_reply(request.reply, wanted) for wanted in judge.candidates(request, p)):
            return p
    wanted = judge.candidates(request, first)
    found.add("wrong", f"{request.describe()}: reply {request.reply}; at history position"
                       f" {first} of {timeline.end} the model allows {wanted}; its steps:"
                       f" {[timeline.events[i] for i in mine]}")
    return low


def check_health(requests: list[Request], found: Findings, stalled_pid: int | None) -> None:
    """Health replies have every field; in a round that stopped the worker (and killed
    none), the stopped worker answers every one: no node started another that served."""
    for request in requests:
        reply = request.reply
        if request.kind != "health" or reply is None or reply.get("type") != "health_ok":
            continue
        missing = [name for name in HEALTH_FIELDS if name not in reply]
        if missing or not isinstance(reply.get("worker_restarts"), int):
            found.add("wrong", f"{request.describe()}: health {reply} (missing {missing})")
        elif stalled_pid is not None and reply["worker_pid"] != stalled_pid:
            found.add("wrong", f"{request.describe()}: worker {reply['worker_pid']} answered"
                               f" while worker {stalled_pid} was only stopped")


def check_cancels(requests: list[Request], found: Findings) -> None:
    """A cancel counts at most the writes sent before it, and a node's cancels together
    count at least the writes answered as cancelled."""
    writes = counted = 0
    for request in requests:
        reply = request.reply or {}
        if request.kind in WRITES:
            writes += 1
        if request.kind == "cancel" and reply.get("type") == "cancel_ok":
            number = reply.get("cancelled")
            if not isinstance(number, int) or not 0 <= number <= writes or set(reply) != {
                    "type", "cancelled"}:
                found.add("wrong", f"{request.describe()}: {reply} after {writes} writes")
            else:
                counted += number
    answered_cancelled = sum(1 for r in requests
                             if r.kind in WRITES and (r.reply or {}).get("cancelled") is True)
    if answered_cancelled > counted:
        found.add("wrong", f"{answered_cancelled} writes answered cancelled, but the cancels"
                           f" counted {counted}")
