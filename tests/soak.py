"""Soak: `python -m tests.soak [--kills 1000] [--backend sqlite|postgresql|mariadb] [--seed S]
[--max-seconds 3600] [--output RELIABILITY.md]`.

Round after round, 4 front nodes (real `node.py` processes fed over pipes) send mixed
traffic, every request type in every variant (migrate and rollback with to, steps, dry_run,
progress; cancel; baseline; status, health, validate, history; init; malformed ones), to one
database, while faults land at random instants:

    kill round:  SIGKILL of the worker, once or twice (each kill counted only if the pid
                 was alive; 3 kills in 10 stop it for up to 0.4 s first, so that requests
                 and cancels pile up unread and die with it), and sometimes SIGKILL of a node
    stall round: every 10th round, SIGSTOP of the worker for 1-3 s, then SIGCONT; one node
                 starts while it is stopped (a stopped worker is not a dead one: no node may
                 start a second one, every reply still comes)

After each round the database is read in one transaction, its history replayed and every
reply checked against what the README allows at some point of it (tests/soak_model.py): no
reply lost, none doubled, none wrong, no migration half-applied or applied twice, exit
statuses 0 (or SIGKILL's for killed nodes). No request may be killed three times (that would
be the crash-loop guard's error 13): a round kills at most twice.

A run stops at the number of kills or at --max-seconds, whichever comes first, and says
which. A failure prints the round (its seed, requests, replies, the history it added); the
run's traffic is reproduced with the same --seed (the instants of the faults are not: they
race real processes). `--backend postgresql` runs on a fresh database of the server at
127.0.0.1:5432, `--backend mariadb` on one of the MariaDB/MySQL server at 127.0.0.1:3306
(root, no password), dropped afterwards; there the migrations only insert into and delete
from tables made beforehand (tests/soak_model.py says why). `--output` writes the figures
into RELIABILITY.md (tests/reliability.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import endpoint
from broker.spawn import IDLE_EXIT_ENV
from tests import reliability
from tests.bench_peers import (
    MARIADB_SERVER,
    POSTGRES_SERVER,
    mariadb_connect,
    mariadb_database,
    mariadb_problem,
    postgres_database,
    postgres_problem,
)
from tests.processes import gone, started_with
from tests.soak_model import (
    FAILURES,
    WRITES,
    Event,
    Findings,
    Folder,
    Judge,
    Request,
    Snapshot,
    Timeline,
    attach,
    check_cancels,
    check_health,
    check_node,
    table_statements,
    write_folder,
)

PROJECT = Path(__file__).resolve().parent.parent
NODE = PROJECT / "node.py"
NODES = 4
MIGRATIONS = 12  # versions t1..t12; every third is slow
# Rows a slow migration inserts one by one.
SLOW_ROWS = {"sqlite": 1500, "postgresql": 300, "mariadb": 300}
STALL_EVERY = 10  # every 10th round stops the worker instead of killing it
STALL_S = (1.0, 3.0)
NODE_KILL_CHANCE = 0.2  # of a round killing one node too
# Of a kill, landing on a worker stopped for up to FROZEN_S first: requests and cancels pile
# up unread in its socket, and die with it.
FROZEN_CHANCE, FROZEN_S = 0.3, 0.4
ROUND_TIMEOUT_S = 120.0  # a node still running this long has lost replies
OWNER_WAIT_S = 15.0  # how long a fault waits for a worker to own the database
TRACKING = ("schema_migrations", "schema_migration_replies", "schema_migration_history",
            "schema_migration_evicted", "schema_migration_repeats",
            "schema_migration_schemas")
PARTIALS = "schema_migration_partials"  # MariaDB's steps that stopped partway
KINDS = {"worker_kill": "SIGKILL of the worker at a random instant",
         "stall": "SIGSTOP of the worker for 1-3 s, then SIGCONT",
         "node_kill": "SIGKILL of a front node at a random instant"}
UNITS = {"worker_kill": "kills", "stall": "stalls", "node_kill": "node kills"}
MAX_SECONDS = 3600.0
METHOD = f"""## How the soak judges

`python -m tests.soak` (tests/soak.py, tests/soak_model.py) runs rounds of {NODES} real
`node.py` processes fed over pipes, each with 6 to 14 requests of every type and variant
(migrate and rollback with `to`, `steps`, `dry_run`, `progress`; `cancel`; `baseline`;
`status`, `health`, `validate`, `history`; `init`; malformed ones), against one database and
{MIGRATIONS} migrations, each creating one table, every third inserting its rows one statement
at a time so that faults land inside it. Kill rounds SIGKILL the worker once or twice at random
instants (3 kills in 10 stop it for up to {FROZEN_S} s first, so that requests and cancels
pile up unread and die with it), and one round in five also SIGKILLs a node; every
{STALL_EVERY}th round instead stops the worker (SIGSTOP) for {STALL_S[0]:g}-{STALL_S[1]:g} s,
starting a node meanwhile, then continues it. A kill counts only if the worker's pid was alive.

After each round the database is read in one transaction and its history replayed: every
event must be a step its request may take (the history names each request by its `src`,
unique per request), and the tracking rows and tables must be exactly what the history says,
each slow table with all its rows. Each node's output must hold one final line per request,
in request order (progress lines only when asked for, each version once, before it), and
each reply must be exactly what the README allows at some point of the history no earlier
than its node's previous reply (reads sent together may see any state from where the row of
them starts, and a write the node answered itself, cancelled before it was sent, does not
end a row), after its own steps; a stopped worker must be the one that answers, and nodes
exit 0 (killed ones by SIGKILL). Lost: no final line. Doubled: a second line, a version
twice, a migration applied or rolled back twice. Wrong: anything else the contract does not
allow (error 13 from the crash-loop guard included: no request is killed three times).
Half-applied: tracking rows or tables that disagree with the history."""


# -- the databases ----------------------------------------------------------------------------


class SqliteTarget:
    """A SQLite file in the run's directory."""

    name = "SQLite"

    def __init__(self, root: Path) -> None:
        self.db = root / "soak.db"
        self.label = f"SQLite {sqlite3.sqlite_version} (WAL)"

    def lock_path(self) -> Path:
        return endpoint.lock_file(self.db)

    def snapshot(self, after_seq: int) -> Snapshot:
        with contextlib.closing(sqlite3.connect(self.db)) as connection:
            connection.execute("BEGIN")  # one read transaction: one instant
            names = {name for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            return read_snapshot(connection.execute, names, after_seq, "?")

    def close(self) -> None:
        pass


class PostgresTarget:
    """A fresh database on the server, dropped at close()."""

    name = "PostgreSQL"

    def __init__(self) -> None:
        import psycopg

        self._dropping = contextlib.ExitStack()
        self.db = self._dropping.enter_context(postgres_database(POSTGRES_SERVER))
        self.observer = psycopg.connect(self.db)
        self.observer.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        version = self.observer.execute("SHOW server_version").fetchone()[0]
        self.observer.rollback()
        self.label = f"PostgreSQL {version.split()[0]}"

    def lock_path(self) -> Path:
        return endpoint.for_database(self.db).lock_path  # in the runtime directory

    def snapshot(self, after_seq: int) -> Snapshot:
        try:
            names = {name for (name,) in self.observer.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            return read_snapshot(self.observer.execute, names, after_seq, "%s")
        finally:
            self.observer.rollback()

    def close(self) -> None:
        try:
            self.observer.close()
        finally:
            self._dropping.close()


class MariaDbTarget:
    """A fresh database on the MariaDB/MySQL server, holding tables t1..tN for the
    migrations to fill (DML only, see tests/soak_model.py), dropped at close()."""

    name = "MariaDB"

    def __init__(self, migrations: int) -> None:
        self._dropping = contextlib.ExitStack()
        self.db = self._dropping.enter_context(mariadb_database(MARIADB_SERVER, "mnsoak"))
        self.observer = mariadb_connect(MARIADB_SERVER, self.db.rpartition("/")[2],
                                        autocommit=False)
        cursor = self.observer.cursor()
        for statement in table_statements(migrations):
            cursor.execute(statement)
        cursor.execute("SELECT VERSION()")
        self.label = f"MariaDB {cursor.fetchone()[0].split('-')[0]} (InnoDB)"
        self.observer.rollback()

    def lock_path(self) -> Path:
        return endpoint.for_database(self.db).lock_path  # in the runtime directory

    def snapshot(self, after_seq: int) -> Snapshot:
        cursor = self.observer.cursor()

        def execute(sql: str, params: tuple = ()) -> Any:
            cursor.execute(sql, params or None)
            return cursor

        try:
            execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")  # one instant
            names = {name for (name,) in execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = DATABASE()").fetchall()}
            snapshot = read_snapshot(execute, names - {PARTIALS}, after_seq, "%s", "`")
            if PARTIALS in names:
                # DML-only migrations never stop partway: a step record is a failure, shown
                # as a table the history does not explain.
                stopped = execute(f"SELECT count(*) FROM {PARTIALS}").fetchone()[0]
                if stopped:
                    snapshot.tables[PARTIALS] = stopped
            return snapshot
        finally:
            self.observer.rollback()

    def close(self) -> None:
        try:
            self.observer.close()
        finally:
            self._dropping.close()


def read_snapshot(execute: Any, names: set[str], after_seq: int, mark: str,
                  quote: str = '"') -> Snapshot:
    """Tracking rows, new history rows and every migration table's row count, read inside
    the caller's one transaction."""
    migrations, _, history, *_ = TRACKING
    records, events = [], []
    if migrations in names:
        records = [tuple(row) for row in execute(
            f"SELECT version, name, checksum FROM {migrations} ORDER BY version")]
    if history in names:
        events = [Event(*row) for row in execute(
            "SELECT seq, version, name, action, checksum, started_at, duration_ms, src"
            f" FROM {history} WHERE seq > {mark} ORDER BY seq", (after_seq,))]
    tables = {name: execute(f"SELECT count(*) FROM {quote}{name}{quote}").fetchone()[0]
              for name in sorted(names - set(TRACKING))}
    return Snapshot(records, events, tables)


# -- traffic ----------------------------------------------------------------------------------


def plan_node(rng: random.Random, node: int, tag: str) -> list[Request]:
    """One node's requests for a round: init first sometimes, health last always."""
    bodies: list[dict[str, Any]] = []
    if rng.random() < 0.2:
        bodies.append({"type": "init", "node_id": f"soak-node-{node}"})
    for _ in range(rng.randint(5, 12)):
        bodies.append(random_body(rng, wrote=any(b["type"] in WRITES for b in bodies)))
    bodies.append({"type": "health"})
    requests = []
    for msg_id, body in enumerate(bodies, start=1):
        body = {"type": body.pop("type"), "msg_id": msg_id, **body}
        requests.append(Request(node, body, f"{tag}n{node}m{msg_id}"))
    for index, request in enumerate(requests):
        request.cancellable = any(later.kind == "cancel" for later in requests[index + 1:])
    return requests


def random_body(rng: random.Random, wrote: bool) -> dict[str, Any]:
    kind = rng.choices(
        ["migrate", "rollback", "status", "health", "validate", "history", "cancel",
         "baseline", "malformed"],
        [24, 24, 10, 5, 5, 8, 8 if wrote else 0, 3, 3],
    )[0]
    top = MIGRATIONS
    if kind == "migrate":
        body = rng.choice([{}, {}, {"to": rng.randint(1, top)}, {"progress": True},
                           {"dry_run": True}, {"to": top + 3}])
    elif kind == "rollback":
        body = rng.choice([{}, {}, {"steps": rng.randint(1, 4)}, {"to": rng.randint(0, top)},
                           {"dry_run": True}, {"steps": rng.randint(1, 3), "dry_run": True},
                           {"to": top + 3}])
        if "to" in body or "steps" in body:
            body["progress"] = rng.random() < 0.5
    elif kind == "history":
        body = {"limit": rng.randint(1, 25)}
    elif kind == "baseline":
        body = {"to": rng.randint(1, top)}
    elif kind == "malformed":
        return rng.choice([{"type": "frobnicate"}, {"type": "rollback", "steps": 0},
                           {"type": "migrate", "to": "3"}])
    else:
        body = {}
    return {"type": kind, **body}


# -- one round --------------------------------------------------------------------------------


@dataclass
class NodeRun:
    """One node.py process of a round, fed its requests in a few chunks."""

    index: int
    requests: list[Request]
    process: subprocess.Popen | None = None
    stderr: Path | None = None  # the node's log
    stdout: bytes = b""
    killed: bool = False
    threads: list[threading.Thread] = field(default_factory=list)


@dataclass
class RoundResult:
    faults: Counter
    found: Findings
    requests: int
    replies: int
    progress: int


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path, target: Any) -> None:
        self.args = args
        self.root = root
        self.target = target
        self.runtime = root / "run"
        self.env = {**os.environ, endpoint.RUNTIME_DIR_ENV: str(self.runtime),
                    IDLE_EXIT_ENV: "3600"}  # the worker outlives rounds; close() kills it
        self.env.pop("MIGRATIONS_TEST_CRASH_AFTER_COMMIT", None)
        os.environ[endpoint.RUNTIME_DIR_ENV] = str(self.runtime)  # for lock_path()
        self.folder: Folder = write_folder(root / "migrations", MIGRATIONS,
                                           SLOW_ROWS[args.backend],
                                           tables_exist=args.backend == "mariadb")
        self.timeline = Timeline(self.folder)
        self.requests: dict[str, Request] = {}  # every request of the run, by src
        self.span = 1.0  # how long a round's traffic lasts, learnt as rounds go
        self.stopped: int | None = None  # a worker stopped right now, to continue at close

    # -- processes ---------------------------------------------------------------------

    def owner(self) -> int | None:
        pid = endpoint.read_owner(self.target.lock_path()).pid
        return None if pid is None or gone(pid) else pid

    def wait_for_owner(self, runs: list[NodeRun]) -> int | None:
        """The live worker, once one owns the database (a restart may be under way)."""
        deadline = time.monotonic() + OWNER_WAIT_S
        while time.monotonic() < deadline:
            pid = self.owner()
            if pid is not None:
                return pid
            if all(run.process is not None and run.process.poll() is not None for run in runs):
                return None
            time.sleep(0.002)  # polling another process's state: nothing to wait on
        return None

    def start(self, run: NodeRun, rng: random.Random) -> None:
        run.stderr = self.root / f"node-{run.index}.log"
        with open(run.stderr, "wb") as log:  # the child keeps its own copy of the descriptor
            run.process = subprocess.Popen(
                [sys.executable, str(NODE), "--db", str(self.target.db),
                 "--migrations", str(self.root / "migrations")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=self.env, cwd=self.root,
            )
        chunks = split(run.requests, rng)
        gaps = [rng.uniform(0, 0.15) for _ in chunks]
        run.threads = [threading.Thread(target=feed, args=(run.process, chunks, gaps)),
                       threading.Thread(target=collect, args=(run,))]
        for thread in run.threads:
            thread.start()

    def faults(self, kind: str, rng: random.Random, kills_left: int) -> list[tuple]:
        """(instant, action) pairs for the round, sorted."""
        span = self.span
        if kind == "stall":
            plan = [(rng.uniform(0.02, 0.3), "stall", rng.uniform(*STALL_S))]
        else:
            count = min(kills_left, rng.choice([1, 2]))
            plan = [(rng.uniform(0, span), "kill_worker",
                     rng.uniform(0, FROZEN_S) if rng.random() < FROZEN_CHANCE else None)
                    for _ in range(count)]
        if rng.random() < NODE_KILL_CHANCE:
            plan.append((rng.uniform(0, span), "kill_node", rng.randrange(NODES)))
        return sorted(plan, key=lambda item: item[0])

    def inflict(self, plan: list[tuple], runs: list[NodeRun], late: NodeRun | None,
                rng: random.Random, landed: Counter, stalled: list[int]) -> None:
        """Carry out the round's faults at their instants; count those that landed."""
        began = time.monotonic()
        for instant, action, argument in plan:
            time.sleep(max(0.0, began + instant - time.monotonic()))  # the random instant
            if action == "stall":
                self.stall(runs, late, rng, argument, landed, stalled)
                continue
            if all(run.process.poll() is not None for run in runs if run.process):
                return  # the round is over: a fault now would land on nothing
            if action == "kill_node":
                landed["node_kill"] += kill_node(runs[argument])
            else:
                landed["worker_kill"] += self.kill_worker(runs, frozen=argument)

    def kill_worker(self, runs: list[NodeRun], frozen: float | None) -> int:
        """SIGKILL the live worker, after stopping it for `frozen` seconds if given;
        returns 1 if the kill landed."""
        pid = self.wait_for_owner(runs)
        if pid is None:
            return 0
        try:
            if frozen is not None:
                os.kill(pid, signal.SIGSTOP)
                time.sleep(frozen)  # requests and cancels reach a worker that reads nothing
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return 0
        return 1

    def stall(self, runs: list[NodeRun], late: NodeRun | None, rng: random.Random,
              seconds: float, landed: Counter, stalled: list[int]) -> None:
        """Stop the worker, start the late node meanwhile, continue it after `seconds`."""
        pid = self.wait_for_owner(runs)
        try:
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                self.stopped = pid
                stalled.append(pid)
                landed["stall"] += 1
            if late is not None:
                self.start(late, rng)
            time.sleep(seconds)  # the stall itself
        finally:
            self.resume()

    def resume(self) -> None:
        if self.stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.stopped, signal.SIGCONT)
            self.stopped = None

    def play(self, number: int, seed: int, kills_left: int) -> RoundResult:
        """One round: start the nodes, inflict the faults, wait, then check everything."""
        rng = random.Random(seed)
        kind = "stall" if number % STALL_EVERY == STALL_EVERY - 1 else "kill"
        runs = [NodeRun(i, plan_node(rng, i, f"r{number}")) for i in range(NODES)]
        for run in runs:
            self.requests.update((request.src, request) for request in run.requests)
        plan = self.faults(kind, rng, kills_left)
        late = runs[-1] if kind == "stall" else None
        start = self.timeline.end
        began = time.monotonic()
        landed: Counter = Counter()
        stalled: list[int] = []
        for run in runs:
            if run is not late:
                self.start(run, rng)
        self.inflict(plan, runs, late, rng, landed, stalled)
        found = Findings()
        for run in runs:
            self.finish(run, began, found)
        seconds = time.monotonic() - began
        if kind == "kill":
            self.span = 0.8 * self.span + 0.2 * seconds
        snapshot = self.target.snapshot(self.timeline.events[-1].seq if self.timeline.events
                                        else 0)
        self.timeline.replay(snapshot.events, self.requests, found)
        self.timeline.check_database(snapshot, found)
        judge = Judge(self.timeline)
        for run in runs:
            self.check(run, judge, start, found, stalled[0] if stalled else None)
        if found:
            self.report(number, seed, kind, runs, landed, start, found)
        every = [request for run in runs for request in run.requests]
        return RoundResult(
            landed, found, len(every),
            sum(request.reply is not None for request in every),
            sum(len(request.progress) for request in every),
        )

    def finish(self, run: NodeRun, began: float, found: Findings) -> None:
        """Wait for the node to exit; one still running at the deadline is killed and its
        missing replies count as lost."""
        process = run.process
        try:
            process.wait(timeout=max(1.0, began + ROUND_TIMEOUT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            found.add("wrong", f"node {run.index} still ran after {ROUND_TIMEOUT_S:.0f} s")
        for thread in run.threads:
            thread.join()
        expected = -signal.SIGKILL if run.killed else 0
        if process.returncode != expected:
            found.add("wrong", f"node {run.index} exited {process.returncode}, not {expected}")

    def check(self, run: NodeRun, judge: Judge, start: int, found: Findings,
              stalled_pid: int | None) -> None:
        lines = []
        raw = run.stdout.split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        elif run.killed and raw:
            raw.pop()  # a line cut short by the kill
        for line in raw:
            try:
                lines.append(json.loads(line))
            except ValueError:
                found.add("wrong", f"node {run.index} wrote a line that is not JSON: {line!r}")
        wrapped = next((i for i, r in enumerate(run.requests) if r.kind == "init"), None)
        attach(run.requests, lines, found, wrapped, f"soak-node-{run.index}")
        check_node(judge, run.requests, start, found, run.killed)
        check_health(run.requests, found, stalled_pid)
        if not run.killed:
            check_cancels(run.requests, found)

    def report(self, number: int, seed: int, kind: str, runs: list[NodeRun],
               landed: Counter, start: int, found: Findings) -> None:
        """Everything needed to understand a failed round, on stdout."""
        print(f"\nFAILED round {number} ({kind}, round seed {seed}, run seed"
              f" {self.args.seed}; faults landed: {dict(landed)})")
        for note in found.notes:
            print(f"  {note}")
        for run in runs:
            print(f"  node {run.index}{' (killed)' if run.killed else ''},"
                  f" exit {run.process.returncode}:")
            for request in run.requests:
                print(f"    > {json.dumps(request.envelope())}")
            for line in run.stdout.decode(errors="replace").splitlines():
                print(f"    < {line}")
            for line in run.stderr.read_text(errors="replace").splitlines()[-15:]:
                print(f"    ! {line}")
        print("  history of the round:")
        for event in self.timeline.events[start:]:
            print(f"    {event}")
        print(f"  reproduce the traffic: {command(self.args)}", flush=True)

    def close(self) -> None:
        """Continue a stopped worker, kill every worker of the run, remove the database."""
        self.resume()
        leftovers = set(started_with(endpoint.RUNTIME_DIR_ENV, str(self.runtime)))
        owner = self.owner()
        if owner is not None:
            leftovers.add(owner)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def kill_node(run: NodeRun) -> int:
    """SIGKILL the node if it still runs; returns 1 if the kill landed (the node may exit
    on its own between the check and the signal: then it was not killed)."""
    process = run.process
    if process is None or process.poll() is not None:
        return 0
    process.kill()
    run.killed = process.wait() == -signal.SIGKILL
    return int(run.killed)


def split(requests: list[Request], rng: random.Random) -> list[bytes]:
    """The node's stdin, cut into 1 to 3 chunks written with gaps between them."""
    cuts = sorted(rng.sample(range(1, len(requests)), k=min(rng.randint(0, 2), len(requests) - 1)))
    bounds = [0, *cuts, len(requests)]
    return [b"".join(json.dumps(r.envelope()).encode() + b"\n" for r in requests[a:b])
            for a, b in itertools.pairwise(bounds)]


def feed(process: subprocess.Popen, chunks: list[bytes], gaps: list[float]) -> None:
    try:
        for chunk, gap in zip(chunks, gaps, strict=True):
            process.stdin.write(chunk)
            process.stdin.flush()
            time.sleep(gap)  # traffic spread over the round, so that faults land inside it
        process.stdin.close()
    except (BrokenPipeError, ValueError):  # the node was killed
        pass


def collect(run: NodeRun) -> None:
    run.stdout = run.process.stdout.read()
    run.process.stdout.close()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Totals:
    rounds: int = 0
    faults: Counter = field(default_factory=Counter)
    failures: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in KINDS})
    requests: int = 0
    replies: int = 0
    progress: int = 0
    failed_rounds: list[int] = field(default_factory=list)

    def add(self, number: int, result: RoundResult, kind: str) -> None:
        self.rounds += 1
        self.faults.update(result.faults)
        self.requests += result.requests
        self.replies += result.replies
        self.progress += result.progress
        # A round's failures count against every fault it inflicted (its own kind if none).
        for fault in [k for k in KINDS if result.faults[k]] or [kind]:
            self.failures[fault].update(result.found.counts)
        if result.found:
            self.failed_rounds.append(number)

    def failed(self) -> int:
        return sum(sum(counts.values()) for counts in self.failures.values())


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="mns-", dir="/tmp"))  # short: unix socket paths
    master = random.Random(args.seed)
    totals = Totals()
    began = time.monotonic()
    bound_hit = False
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        target = open_target(args.backend, root)
        cleanup.callback(target.close)
        soak = Soak(args, root, target)
        cleanup.callback(soak.close)
        number = 0
        while totals.faults["worker_kill"] < args.kills:
            if time.monotonic() - began > args.max_seconds:
                bound_hit = True
                break
            seed = master.getrandbits(32)
            kind = "stall" if number % STALL_EVERY == STALL_EVERY - 1 else "worker_kill"
            result = soak.play(number, seed, args.kills - totals.faults["worker_kill"])
            totals.add(number, result, kind)
            number += 1
            if number % 25 == 0:
                print(progress_line(totals, time.monotonic() - began), flush=True)
        label = target.label
    seconds = time.monotonic() - began
    summary = describe(args, totals, seconds, bound_hit, label)
    print(summary)
    if args.output:
        reliability.update(args.output, rows(args, totals, target.name),
                           {"soak": METHOD, f"soak-{args.backend}": summary})
    return 1 if totals.failed() else 0


def open_target(backend: str, root: Path) -> Any:
    if backend == "postgresql":
        return PostgresTarget()
    if backend == "mariadb":
        return MariaDbTarget(MIGRATIONS)
    return SqliteTarget(root)


def progress_line(totals: Totals, seconds: float) -> str:
    return (f"{totals.rounds} rounds, {totals.faults['worker_kill']} kills,"
            f" {totals.faults['stall']} stalls, {totals.faults['node_kill']} node kills,"
            f" {totals.requests} requests, {totals.failed()} failures, {seconds:.0f} s")


def command(args: argparse.Namespace) -> str:
    extra = f" --backend {args.backend}" if args.backend != "sqlite" else ""
    if args.max_seconds != MAX_SECONDS:
        extra += f" --max-seconds {args.max_seconds:g}"
    return f"python -m tests.soak --seed {args.seed} --kills {args.kills}{extra}"


def rows(args: argparse.Namespace, totals: Totals, backend: str) -> list[list[str]]:
    found = []
    for kind, what in KINDS.items():
        counts = totals.failures[kind]
        found.append([what, f"{totals.faults[kind]:,} {UNITS[kind]}", backend,
                      *(str(counts[failure]) for failure in FAILURES),
                      f"`{command(args)}`"])
    return found


def describe(args: argparse.Namespace, totals: Totals, seconds: float, bound_hit: bool,
             label: str) -> str:
    failures = Counter()
    for counts in totals.failures.values():
        failures.update(counts)
    stopped = (f"stopped by --max-seconds {args.max_seconds:g} after"
               f" {totals.faults['worker_kill']:,} of {args.kills:,} kills" if bound_hit
               else f"all {args.kills:,} kills done")
    today = datetime.date.today().isoformat()
    unanswered = totals.requests - totals.replies
    return "\n".join([
        f"## Soak on {label}",
        "",
        f"Run {today} by `{command(args)}` ({stopped}) in {seconds / 60:.1f} minutes on"
        f" {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}.",
        "",
        f"- rounds: {totals.rounds:,} ({NODES} nodes each, {MIGRATIONS} migrations,"
        f" every third inserting {SLOW_ROWS[args.backend]:,} rows one statement at a time"
        + ("; on MariaDB DML only, into tables made beforehand, as a kill between DDL and"
           " its record leaves an uncertain statement the judge does not model"
           if args.backend == "mariadb" else "") + ")",
        f"- worker kills (SIGKILL, pid alive): {totals.faults['worker_kill']:,}",
        f"- worker stalls (SIGSTOP 1-3 s, SIGCONT): {totals.faults['stall']:,}",
        f"- node kills (SIGKILL): {totals.faults['node_kill']:,}",
        f"- requests sent: {totals.requests:,}; replies checked: {totals.replies:,}"
        + (f" (the other {unanswered:,} were sent by nodes killed before answering them)"
           if unanswered else "")
        + f"; progress lines checked: {totals.progress:,}",
        "- failures: " + ", ".join(f"{kind.replace('_', '-')} {failures[kind]}"
                                   for kind in FAILURES)
        + (f" (rounds {totals.failed_rounds})" if totals.failed_rounds else ""),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000, help="worker kills to land")
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                        help="stop after this long whatever the kills (default: %(default)g)")
    parser.add_argument("--seed", type=int, help="the run's seed (default: a random one)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "mariadb"],
                        default="sqlite")
    parser.add_argument("--skip-without-server", action="store_true",
                        help="with --backend postgresql or mariadb: exit 0 when no server"
                             " answers (or its driver is missing)")
    parser.add_argument("--output", type=Path, help="update this RELIABILITY.md")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = {"postgresql": lambda: postgres_problem(POSTGRES_SERVER),
               "mariadb": lambda: mariadb_problem(MARIADB_SERVER)}.get(args.backend,
                                                                      lambda: None)()
    if problem is not None:
        print(f"soak on {args.backend}: {problem}", file=sys.stderr)
        return 0 if args.skip_without_server else 2
    print(f"soak: {args.kills} kills on {args.backend}, seed {args.seed}", flush=True)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("soak: interrupted; its processes and database are gone", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
