"""Soak of the exact partial state on MariaDB: `python -m tests.soak_partial [--kills 1000]
[--seed S] [--output RELIABILITY.md] [--skip-without-server]`.

A fresh database `mnpart_<hex>` on the server at 127.0.0.1:3306 (root, no password), dropped
at the end, and a folder of dbmate-style .sql migrations whose every statement is DDL:
statement i of migration V is `CREATE TABLE t{V}_{i} ...` (some of them slowed by a
`SELECT SLEEP(...)`), its down section `DROP TABLE t{V}_{i}` in reverse order. So "statement
i in effect" is "table t{V}_{i} exists", which information_schema says exactly.

Round after round a node (`node.py`, a real process fed over a pipe) gets one write: a
migrate, or, once some are applied, a rollback with `to: 0` or `steps: K`. After a seeded
random delay the database's worker is SIGKILLed; the node starts another and resends the
write, and its reply is judged. Sometimes the node is SIGKILLed too, right after its
worker, and a new one starts next round. The judge reads the database directly after every
reply (and after every kill that left no reply): the tracking table, the step records and
the tables, against README's "Partial state, said exactly". When a statement is left
uncertain, the soak does what a person would: looks at the tables, finishes the migration
by hand and sends `resolve` with `applied: true`, or undoes it and sends `applied: false`.

Nothing may fail but the kills: an error 14, a lost reply, a reply that does not match the
database, or a database state the README does not allow is a failure (exit status 1, the
first ones printed with the seed, the kill number and the database state). The run's
requests, delays and operator choices are reproduced with the same --seed; the instants
the kills land at are not (they race real processes).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import endpoint
from broker.spawn import IDLE_EXIT_ENV
from tests import reliability
from tests.processes import gone, started_with

PROJECT = Path(__file__).resolve().parent.parent
NODE = PROJECT / "node.py"
HOST, PORT, USER = "127.0.0.1", 3306, "root"
MIGRATIONS = 12
STATEMENTS = (2, 5)  # statements per migration, drawn by the seed
SLOW_CHANCE = 0.5  # of a statement being a CREATE ... SELECT SLEEP(SLOW_S)
SLOW_S = 0.02
ROLLBACK_CHANCE = 0.35  # of a round's write being a rollback, once something is applied
NODE_KILL_CHANCE = 0.15  # of a kill taking the node with it
APPLIED_CHANCE = 0.5  # of the operator finishing an uncertain migration rather than undoing it
REPLY_TIMEOUT_S = 60.0  # a reply later than this is lost
SETTLE_TIMEOUT_S = 30.0  # for a killed worker's session to end on the server
SHOWN_FAILURES = 5
TRACKING, PARTIALS = "schema_migrations", "schema_migration_partials"
FAILURES = ("lost", "doubled", "wrong", "half-applied")
UNCERTAIN = "may or may not have taken effect"
# The check that an uncertain error 22 lists what its request did before the kill: found
# failing by this soak (see RELIABILITY.md), named so that its count is kept apart.
OMITTED_STEPS = "error 22 leaves out the steps its request took before the kill"
KINDS = {
    "done": "apply stopped after statement k, none running (resumed by the next write)",
    "took_effect": "a statement left uncertain that had taken effect",
    "no_effect": "a statement left uncertain that had not taken effect",
    "rollback": "a rollback stopped partway",
}
METHOD_TEXT = f"""`python -m tests.soak_partial` (tests/soak_partial.py) runs, on a fresh MariaDB
database, {MIGRATIONS} dbmate-style .sql migrations of {STATEMENTS[0]} to {STATEMENTS[1]} DDL
statements each (statement i of migration V creates table `t<V>_<i>`, about half of them
slowed by `SELECT SLEEP({SLOW_S:g})`; the down sections drop them in reverse order), so
that which statements are in effect is which tables exist. Each round sends one write to a
real `node.py` (migrate, or rollback with `to: 0` or `steps: K`) and SIGKILLs the worker
after a random delay; the node restarts it and resends the write. One kill in
{round(1 / NODE_KILL_CHANCE)} takes the node with it. After every reply, and after every kill
that left none, the database is read directly: every applied version has all its tables,
every version neither applied nor partly applied has none, at most one step record, and
the record says exactly which tables exist (statements 1..k of an apply, the down
statements 1..k of a rollback, the one statement it names as running either way). A
migrate's or rollback's reply must list exactly the versions the tracking table gained or
lost, an error 22 that says a statement {UNCERTAIN} must name the step record in the
database and, as an error 14 does, list the versions its request applied or rolled back
before the kill, and nothing may fail (error 14) or go unanswered. A statement left uncertain is
resolved as a person would: the tables looked at, the migration finished (`resolve`,
`applied: true`) or undone (`applied: false`) by hand, the reply and the history's last
event checked."""
METHOD = "## How the partial-state soak judges\n\n" + textwrap.fill(" ".join(METHOD_TEXT.split()),
                                                                    width=92)


# -- the folder ------------------------------------------------------------------------------


def write_folder(path: Path, rng: random.Random) -> dict[int, int]:
    """The migrations; returns each version's number of statements."""
    path.mkdir()
    counts = {}
    for version in range(1, MIGRATIONS + 1):
        count = rng.randint(*STATEMENTS)
        counts[version] = count
        up = []
        for i in range(1, count + 1):
            slow = f" SELECT SLEEP({SLOW_S:g}) AS s" if rng.random() < SLOW_CHANCE else ""
            up.append(f"CREATE TABLE t{version}_{i} (id INT){slow};")
        down = [f"DROP TABLE t{version}_{i};" for i in range(count, 0, -1)]
        (path / f"{version:04d}_step{version}.sql").write_text(
            "-- migrate:up\n" + "\n".join(up) + "\n-- migrate:down\n" + "\n".join(down) + "\n")
    return counts


# -- the database ----------------------------------------------------------------------------


@dataclass
class Partial:
    version: int
    action: str
    done: int
    running: int | None


@dataclass
class State:
    """What the database holds at one instant: applied versions, step records, tables."""

    applied: list[int]
    partials: list[Partial]
    tables: dict[int, set[int]]  # version -> statement numbers whose table exists

    def describe(self) -> str:
        partials = ", ".join(f"v{p.version} {p.action} done {p.done} running {p.running}"
                             for p in self.partials) or "none"
        tables = " ".join(f"v{v}:{sorted(s)}" for v, s in sorted(self.tables.items()) if s)
        return f"applied {self.applied}; step records: {partials}; tables {tables or 'none'}"


class Database:
    """A fresh database on the server, read and repaired through a session of its own."""

    def __init__(self) -> None:
        import pymysql

        self.name = f"mnpart_{secrets.token_hex(6)}"
        self.url = f"mysql://{USER}@{HOST}:{PORT}/{self.name}"
        self.session = pymysql.connect(host=HOST, port=PORT, user=USER, password="",
                                       autocommit=True, connect_timeout=5)
        self.execute(f"CREATE DATABASE {self.name}")
        self.execute(f"USE {self.name}")
        self.label = f"MariaDB {self.execute('SELECT VERSION()')[0][0].split('-')[0]}"

    def execute(self, sql: str, args: Any = None) -> list[tuple]:
        with self.session.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def settle(self) -> bool:
        """Wait until no other session uses the database: a SIGKILLed worker's statement
        runs on in the server until it ends. False if one still does after the timeout."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while self.execute("SELECT COUNT(*) FROM information_schema.processlist"
                           " WHERE db = %s AND id <> CONNECTION_ID()", (self.name,))[0][0]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)  # polling another session's state: nothing to wait on
        return True

    def state(self) -> State:
        names = {name for (name,) in self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (self.name,))}
        applied = ([v for (v,) in self.execute(f"SELECT version FROM {TRACKING} ORDER BY 1")]
                   if TRACKING in names else [])
        partials = ([Partial(*row) for row in self.execute(
            f"SELECT version, action, done, running FROM {PARTIALS} ORDER BY version")]
                    if PARTIALS in names else [])
        tables: dict[int, set[int]] = {}
        for name in names:
            if name.startswith("t") and "_" in name and name[1:].replace("_", "").isdigit():
                version, number = name[1:].split("_")
                tables.setdefault(int(version), set()).add(int(number))
        return State(applied, partials, tables)

    def close(self) -> None:
        try:
            self.execute(f"DROP DATABASE IF EXISTS {self.name}")
        finally:
            self.session.close()


def server_problem() -> str | None:
    """Why the soak cannot run here, or None."""
    try:
        import pymysql
    except ImportError:
        return "PyMySQL is not installed (pip install '.[mariadb]')"
    try:
        pymysql.connect(host=HOST, port=PORT, user=USER, password="", connect_timeout=5).close()
    except pymysql.Error as exc:
        return f"no MariaDB server answers at {HOST}:{PORT} as {USER}: {exc}"
    return None


# -- the judge -------------------------------------------------------------------------------


@dataclass
class Findings:
    notes: list[tuple[str, str]] = field(default_factory=list)  # (kind of failure, what)
    checks: list[str] = field(default_factory=list)  # which check failed, for each note

    def add(self, kind: str, what: str, check: str = "") -> None:
        self.notes.append((kind, what))
        self.checks.append(check or kind)


def uncertain_took_effect(partial: Partial, count: int, present: set[int]) -> bool | None:
    """For a step record naming a running statement: whether it took effect, by its table
    (an apply creates it; undoing an apply, or a rollback, drops it); None when none runs."""
    if partial.running is None:
        return None
    if partial.action == "apply":
        creating = partial.running == partial.done + 1  # else it is being undone
        return (partial.running in present) == creating
    return (count - partial.running + 1) not in present


def judge_state(state: State, counts: dict[int, int], found: Findings) -> None:
    """The database against README's partial state: every table accounted for."""
    applied = set(state.applied)
    if state.applied != list(range(1, len(state.applied) + 1)):
        found.add("half-applied", f"applied versions are not 1..n: {state.applied}")
    if len(state.partials) > 1:
        found.add("half-applied", f"{len(state.partials)} step records at once")
    partial_of = {p.version: p for p in state.partials}
    for version, count in counts.items():
        present = state.tables.get(version, set())
        everything = set(range(1, count + 1))
        partial = partial_of.get(version)
        if partial is None:
            want = everything if version in applied else set()
            if present != want:
                said = "applied" if version in applied else "not applied"
                found.add("half-applied", f"v{version} ({said}, no step record) has tables"
                          f" {sorted(present)}")
            continue
        if partial.action == "apply":
            if version in applied:
                found.add("half-applied", f"v{version} is applied and has an apply record")
            if version != len(state.applied) + 1:
                found.add("half-applied", f"partly applied v{version} is not the next one")
            running = partial.running
            if running is not None and running not in (partial.done, partial.done + 1):
                found.add("wrong", f"v{version} apply record done {partial.done} running"
                          f" {running}: neither the next statement nor one being undone")
            sure = {i for i in range(1, partial.done + 1) if i != running}
            top = max(partial.done, running or 0)
            absent = {i for i in everything if i > top}
        else:
            if version not in applied:
                found.add("half-applied", f"v{version} has a rollback record but is not applied")
            if version != (state.applied or [0])[-1]:
                found.add("half-applied", f"v{version} rolled back partway is not the newest")
            running = partial.running
            if running is not None and running != partial.done + 1:
                found.add("wrong", f"v{version} rollback record done {partial.done} running"
                          f" {running}: not the next statement")
            dropped = {count - j + 1 for j in range(1, partial.done + 1)}
            maybe = {count - running + 1} if running is not None else set()
            sure = everything - dropped - maybe
            absent = dropped
        if not sure <= present or present & absent:
            found.add("half-applied", f"v{version} {partial.action} record done {partial.done}"
                      f" running {partial.running}, {count} statements, has tables"
                      f" {sorted(present)}")


def versions_of(reply: dict) -> list[int]:
    return [entry["version"] for entry in reply.get("migrations", [])]


def judge_reply(kind: str, reply: dict, before: State, after: State, found: Findings) -> None:
    """A write's reply against what the database gained or lost meanwhile."""
    if reply.get("type") == "error":
        code, text = reply.get("code"), reply.get("text", "")
        if code == 22 and UNCERTAIN in text:
            said = reply.get("partial", {})
            record = next((p for p in after.partials if p.version == said.get("version")),
                          None)
            if (record is None or record.running is None
                    or said.get("action") != record.action
                    or said.get("statements_done") != record.done
                    or said.get("uncertain", {}).get("statement") != record.running):
                found.add("wrong", f"error 22 says {said}, the database holds"
                          f" {after.partials}")
            # Like an error 14, it lists the steps this request took before its worker died
            # (README, Failure behaviour: a resent migrate's reply names each version once).
            gained = [v for v in after.applied if v not in before.applied]
            lost = [v for v in before.applied if v not in after.applied]
            # In the order taken, as replies list them: a rollback's newest first.
            took = gained if kind == "migrate" else sorted(lost, reverse=True)
            listed = [e["version"] for e in reply.get("applied" if kind == "migrate"
                                                      else "rolled_back", [])]
            if listed != took:
                found.add("wrong", f"error 22 for a {kind} whose steps before the kill"
                          f" {'applied' if kind == 'migrate' else 'rolled back'} {took}"
                          f" lists {listed}", check=OMITTED_STEPS)
            return
        rolling = next((p for p in before.partials if p.action == "rollback"), None)
        if (code == 22 and kind == "migrate" and rolling is not None
                and "send rollback to go on" in text and after.applied == before.applied):
            return
        found.add("wrong", f"{kind} answered error {code}: {text}")
        return
    gained = [v for v in after.applied if v not in before.applied]
    lost = [v for v in before.applied if v not in after.applied]
    listed = versions_of(reply)
    if len(listed) != len(set(listed)):
        found.add("doubled", f"{kind} reply lists a version twice: {listed}")
    if kind == "migrate":
        if reply.get("type") != "migrations_applied" or lost or listed != gained:
            found.add("wrong", f"migrate reply lists {listed}; the tracking table gained"
                      f" {gained} and lost {lost}")
        if after.applied != list(range(1, MIGRATIONS + 1)) or after.partials:
            found.add("wrong", "migrate answered success with migrations left undone")
        return
    undone = [p.version for p in before.partials
              if p.action == "apply" and p.version not in {q.version for q in after.partials}]
    want = sorted(set(lost) | set(undone), reverse=True)
    if reply.get("type") != "migrations_rolled_back" or gained or listed != want:
        found.add("wrong", f"rollback reply lists {listed}; the tracking table lost {lost},"
                  f" gained {gained}, the partial steps undone {undone}")


# -- processes --------------------------------------------------------------------------------


class Node:
    """A node.py process fed requests one at a time; a thread reads its replies."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=stderr, env=env,
                                            cwd=cwd)
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.msg_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, body: dict) -> None:
        self.msg_id += 1
        envelope = {"src": "soak", "dest": "migrations", "body": {**body, "msg_id": self.msg_id}}
        self.process.stdin.write(json.dumps(envelope).encode() + b"\n")
        self.process.stdin.flush()

    def reply(self, timeout: float = REPLY_TIMEOUT_S) -> dict | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return json.loads(line) if line else None

    def answered(self) -> bool:
        return not self.lines.empty()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(timeout=REPLY_TIMEOUT_S)

    def close(self) -> int:
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=REPLY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Totals:
    kills: int = 0
    node_kills: int = 0
    rounds: int = 0
    replies: int = 0
    judged: int = 0
    seen: Counter = field(default_factory=Counter)  # KINDS
    resent: int = 0  # writes answered after their worker was killed under them
    resumed: int = 0  # writes that went on from a step record with none running
    resolves: Counter = field(default_factory=Counter)  # applied / not_applied
    failures: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)  # failures by the check that found them
    shown: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path, database: Database) -> None:
        self.args = args
        self.root = root
        self.db = database
        self.rng = random.Random(args.seed)
        self.counts = write_folder(root / "migrations", self.rng)
        self.runtime = root / "run"
        self.env = {**os.environ, endpoint.RUNTIME_DIR_ENV: str(self.runtime),
                    IDLE_EXIT_ENV: "3600"}  # the worker outlives nodes; close() kills it
        for setting in ("MIGRATIONS_TEST_CRASH_AFTER_COMMIT", "DATABASE_URL", "MIGRATIONS_DIR"):
            self.env.pop(setting, None)
        os.environ[endpoint.RUNTIME_DIR_ENV] = str(self.runtime)  # for the lock path
        self.lock_path = endpoint.for_database(database.url).lock_path
        self.totals = Totals()
        self.node: Node | None = None
        self.span = {"migrate": 1.0, "rollback": 0.3}  # how long a write takes, learnt
        self.kill_number = 0

    # -- processes ---------------------------------------------------------------------

    def start_node(self) -> Node:
        if self.node is None or self.node.process.poll() is not None:
            self.node = Node([sys.executable, str(NODE), "--db", self.db.url, "--migrations",
                              str(self.root / "migrations")], self.env, self.root,
                             self.root / "node.log")
        return self.node

    def owner(self) -> int | None:
        pid = endpoint.read_owner(self.lock_path).pid
        return None if pid is None or gone(pid) else pid

    def kill_workers(self) -> None:
        """SIGKILL every worker this run started, and wait for them to go."""
        pids = set(started_with(endpoint.RUNTIME_DIR_ENV, str(self.runtime)))
        owner = self.owner()
        if owner is not None:
            pids.add(owner)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        if self.node is not None:
            self.node.kill()
        self.kill_workers()

    # -- rounds ------------------------------------------------------------------------

    def fail(self, found: Findings, what: str, state: State) -> None:
        self.totals.checks.update(found.checks)
        for kind, note in found.notes:
            self.totals.failures[kind] += 1
            if len(self.totals.shown) < SHOWN_FAILURES:
                self.totals.shown.append(
                    f"FAILED ({kind}) seed {self.args.seed}, round {self.totals.rounds}, kill"
                    f" {self.kill_number}, {what}: {note}\n  database: {state.describe()}")

    def look(self, what: str, count: bool = True) -> State:
        """Judge the database as it is now; count the step records seen (`count`)."""
        state = self.db.state()
        found = Findings()
        judge_state(state, self.counts, found)
        self.totals.judged += 1
        for partial in state.partials if count else ():
            took = uncertain_took_effect(partial, self.counts[partial.version],
                                         state.tables.get(partial.version, set()))
            if partial.action == "rollback":
                self.totals.seen["rollback"] += 1
            elif took is None:
                self.totals.seen["done"] += 1
            else:
                self.totals.seen["took_effect" if took else "no_effect"] += 1
        self.fail(found, what, state)
        return state

    def write(self, state: State) -> dict:
        """The round's request, by the seed and what the database holds."""
        rolling = any(p.action == "rollback" for p in state.partials)
        partly = any(p.action == "apply" for p in state.partials)
        undoable = len(state.applied) + partly
        if undoable and (rolling or self.rng.random() < ROLLBACK_CHANCE):
            if rolling and self.rng.random() < 0.2:
                return {"type": "migrate"}  # refused: the rollback is to go on first
            if self.rng.random() < 0.3:
                return {"type": "rollback", "to": 0}
            return {"type": "rollback", "steps": self.rng.randint(1, undoable)}
        return {"type": "migrate"}

    def play(self) -> None:
        """One round: a write, a kill at a random instant, the reply judged."""
        self.totals.rounds += 1
        before = self.look("before the write", count=False)
        body = self.write(before)
        delay = self.rng.uniform(0, self.span[body["type"]])
        with_node = self.rng.random() < NODE_KILL_CHANCE
        node = self.start_node()
        began = time.monotonic()
        node.send(body)
        killed = False
        time.sleep(delay)  # the fault's instant, drawn by the seed
        pid = self.owner()
        if pid is not None and not node.answered():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed = True
                self.totals.kills += 1
                self.kill_number = self.totals.kills
        if killed and with_node:
            node.kill()
            self.totals.node_kills += 1
            self.kill_workers()  # one the node may have started meanwhile
            if not self.db.settle():
                self.fail(Findings([("wrong", "a killed worker's session never ended")], ["wrong"]),
                          f"{body} then node kill", self.db.state())
            self.handle(self.look(f"{body} killed with its node"), body)
            return
        reply = node.reply()
        if reply is None:
            state = self.db.state()
            lost = Findings([("lost", f"no reply in {REPLY_TIMEOUT_S:g} s")], ["lost"])
            self.fail(lost, str(body), state)
            node.kill()
            self.kill_workers()
            return
        seconds = time.monotonic() - began
        if not killed and reply.get("type") != "error":
            self.span[body["type"]] = 0.8 * self.span[body["type"]] + 0.2 * seconds
        self.totals.replies += 1
        after = self.look(f"after {body} answered {reply}")
        found = Findings()
        judge_reply(body["type"], reply, before, after, found)
        self.fail(found, f"{body} (killed: {killed}) answered {reply}", after)
        if reply.get("type") != "error":
            self.totals.resent += killed
            self.totals.resumed += any(p.running is None for p in before.partials)
        self.handle(after, body)

    def handle(self, state: State, body: dict) -> None:
        """The operator: a statement left uncertain is looked at, the migration finished
        or undone by hand, and resolve says which."""
        uncertain = next((p for p in state.partials if p.running is not None), None)
        if uncertain is None:
            return
        version, count = uncertain.version, self.counts[uncertain.version]
        applied = self.rng.random() < APPLIED_CHANCE
        for i in range(1, count + 1):
            if applied:
                self.db.execute(f"CREATE TABLE IF NOT EXISTS t{version}_{i} (id INT)")
            else:
                self.db.execute(f"DROP TABLE IF EXISTS t{version}_{i}")
        node = self.start_node()
        node.send({"type": "resolve", "version": version, "applied": applied})
        resolved = node.reply()
        node.send({"type": "history", "limit": 1})
        history = node.reply()
        self.totals.replies += 2
        self.totals.resolves["applied" if applied else "not_applied"] += 1
        after = self.look(f"after resolve {version} applied {applied}")
        found = Findings()
        want = {"type": "migration_resolved", "in_reply_to": node.msg_id - 1,
                "version": version, "name": f"step{version}", "applied": applied}
        if resolved != want:
            found.add("wrong", f"resolve answered {resolved}, not {want}")
        events = (history or {}).get("events") or [{}]
        action = "resolved_applied" if applied else "resolved_not_applied"
        if (events[0].get("action"), events[0].get("version")) != (action, version):
            found.add("wrong", f"the last history event is {events[0]}, not {action} {version}")
        if after.partials:
            found.add("wrong", f"step records stay after resolve: {after.partials}")
        self.fail(found, f"resolve after {body}", after)


def run(args: argparse.Namespace) -> int:
    totals = soak(args)
    return 1 if sum(totals.failures.values()) else 0


def soak(args: argparse.Namespace) -> Totals:
    """The run: its figures printed (and written to --output), its totals returned."""
    root = Path(tempfile.mkdtemp(prefix="mnp-", dir="/tmp"))  # short: unix socket paths
    began = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        database = Database()
        cleanup.callback(database.close)
        rounds = Soak(args, root, database)
        cleanup.callback(rounds.close)
        totals = rounds.totals
        while totals.kills < args.kills:
            rounds.play()
            if totals.rounds % 100 == 0:
                print(progress_line(totals, time.monotonic() - began), flush=True)
        label = database.label
    seconds = time.monotonic() - began
    for shown in totals.shown:
        print(shown)
    summary = describe(args, totals, seconds, label)
    print(summary)
    if args.output:
        reliability.update(args.output, [row(args, totals)],
                           {"soak-partial": METHOD, "soak-partial-mariadb": summary})
    return totals


def progress_line(totals: Totals, seconds: float) -> str:
    return (f"{totals.rounds} rounds, {totals.kills} kills, {totals.judged} judged,"
            f" {sum(totals.failures.values())} failures, {seconds:.0f} s")


def command(args: argparse.Namespace) -> str:
    return f"python -m tests.soak_partial --seed {args.seed} --kills {args.kills}"


def row(args: argparse.Namespace, totals: Totals) -> list[str]:
    return ["SIGKILL of the worker while DDL runs statement by statement (exact partial"
            " state, resolve)", f"{totals.kills:,} kills", "MariaDB",
            *(str(totals.failures[kind]) for kind in FAILURES), f"`{command(args)}`"]


def describe(args: argparse.Namespace, totals: Totals, seconds: float, label: str) -> str:
    today = datetime.date.today().isoformat()
    seen = "; ".join(f"{what}: {totals.seen[kind]:,}" for kind, what in KINDS.items())
    return "\n".join([
        f"## Partial-state soak on {label}",
        "",
        f"Run {today} by `{command(args)}` in {seconds / 60:.1f} minutes on"
        f" {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}.",
        "",
        f"- rounds: {totals.rounds:,} (one write each, {MIGRATIONS} migrations of"
        f" {STATEMENTS[0]}-{STATEMENTS[1]} DDL statements)",
        f"- worker kills (SIGKILL during a write): {totals.kills:,}, of them"
        f" {totals.node_kills:,} with the node",
        f"- replies judged: {totals.replies:,}; database states judged: {totals.judged:,}",
        f"- step records seen: {seen}",
        f"- writes answered after their worker was killed (resent): {totals.resent:,};"
        f" writes that went on from a step record with none running: {totals.resumed:,}",
        f"- resolves: {totals.resolves['applied']:,} finished by hand (applied true),"
        f" {totals.resolves['not_applied']:,} undone by hand (applied false)",
        "- failures: " + ", ".join(f"{kind} {totals.failures[kind]}" for kind in FAILURES)
        + (" (" + "; ".join(f"{check}: {count:,}" for check, count in totals.checks.items())
           + ")" if totals.checks else ""),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000, help="worker kills to land")
    parser.add_argument("--seed", type=int, help="the run's seed (default: a random one)")
    parser.add_argument("--output", type=Path, help="update this RELIABILITY.md")
    parser.add_argument("--skip-without-server", action="store_true",
                        help="exit 0, saying why, when no MariaDB server answers")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = server_problem()
    if problem is not None:
        print(f"soak_partial: {problem}", file=sys.stderr)
        return 0 if args.skip_without_server else 2
    print(f"soak_partial: {args.kills} kills on MariaDB, seed {args.seed}", flush=True)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("soak_partial: interrupted; its processes and database are gone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
