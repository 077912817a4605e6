"""Benchmark: `python -m tests.benchmark [--quick] [--only GROUP] [--output BENCHMARKS.md]`.

Measures each figure next to its floor (what a bare program does on this machine, measured
in the same run) and prints the table, then writes it as markdown with the machine and date.
Machines here are shared and noisy, so every figure is a median over repeated runs (the min
is shown too) and the ratio to its floor is what to compare between runs. `--quick` runs
every measurement once at small sizes, so CI keeps this script working; no test asserts a
timing. `--only GROUP` (repeatable) runs only those groups of figures; with `--output`, their
table replaces its own section of the file (added at the end the first time), the rest kept.

The `postgres` group runs on the local server (POSTGRES_SERVER, over TCP, for ours, the plain
psycopg loop and the peers alike), each measurement in a fresh database dropped afterwards;
when no server answers, its rows say so instead of failing. The `mariadb` group does the
same on the local MariaDB/MySQL server (MARIADB_SERVER, root without a password): applying
1,000 migrations beside a plain PyMySQL loop; its row says why when no server answers or
PyMySQL is missing.

The `go-peers` group sets our apply of 1,000 in WAL beside dbmate's and sql-migrate's (Go,
mattn/go-sqlite3) of the same migrations on a new WAL file, each as shipped (synchronous =
NORMAL: no sync at commit) and with `_sync=FULL` (each commit synced, as ours); the aim is
ours ahead of each at equal durability. See tests/bench_go_peers.py for how they are run and
strace's count of their syncs; a tool not installed gets rows saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import zmq

from broker import endpoint
from broker.client import WINDOW
from tests import bench_go_peers, bench_peers, bench_profile, tool_binaries
from tests.bench_peers import (
    MARIADB_SERVER,
    POSTGRES_SERVER,
    create_table,
    mariadb_connect,
    mariadb_database,
    mariadb_problem,
    postgres_database,
    postgres_problem,
    py_migration,
)
from tests.processes import gone

PROJECT = Path(__file__).resolve().parent.parent
NODE = PROJECT / "node.py"
JOURNALS = {"wal": "WAL", "delete": "rollback journal"}  # SQLite's journal modes, as named


@dataclass
class Figure:
    name: str
    how: str
    unit: str
    samples: list[float]
    floor_name: str
    floor_samples: list[float]
    aim: str
    higher_is_better: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def floor(self) -> float:
        return statistics.median(self.floor_samples)

    @property
    def ratio(self) -> float:
        return self.median / self.floor if self.floor else float("nan")

    def row(self) -> list[str]:
        worst = min(self.samples) if self.higher_is_better else max(self.samples)
        best = max(self.samples) if self.higher_is_better else min(self.samples)
        return [
            self.name,
            f"{_num(self.median)} {self.unit} (best {_num(best)}, worst {_num(worst)})",
            f"{self.floor_name}: {_num(self.floor)} {self.unit}",
            f"{self.ratio:.2f}x",
            self.aim,
            self.how,
        ]


@dataclass
class Unmeasured:
    """A figure this run could not take, and why (no PostgreSQL server answered, say)."""

    name: str
    why: str

    def row(self) -> list[str]:
        return [self.name, self.why, "-", "-", "-", "-"]


def _num(value: float) -> str:
    """Three significant digits at least: 0.213 ms, 4.81 s, 63,320 req/s."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


class Sandbox:
    """A temporary database and runtime directory: a SQLite file, or with `server` a fresh
    database on that PostgreSQL server. At close, workers started in it are stopped and the
    database is removed (the PostgreSQL one dropped)."""

    def __init__(self, server: str | None = None) -> None:
        self.server = server
        self.root = Path(tempfile.mkdtemp(prefix="mnb-"))
        self.env = {**os.environ, endpoint.RUNTIME_DIR_ENV: str(self.root / "run")}
        self.migrations: Path | None = None
        self._cleanup = contextlib.ExitStack()
        self._cleanup.callback(shutil.rmtree, self.root, ignore_errors=True)
        self.db: Path | str = self.root / "bench.db"
        if server is not None:
            fresh = mariadb_database if is_mariadb(server) else postgres_database
            try:
                self.db = self._cleanup.enter_context(fresh(server))
            except BaseException:
                self._cleanup.close()
                raise
        self.lock = self._lock_path()

    def _lock_path(self) -> Path:
        """The file the owning worker writes its pid in: beside a SQLite file, in the
        runtime directory for a server."""
        if self.server is None:
            return endpoint.lock_file(self.db)
        runtime = {endpoint.RUNTIME_DIR_ENV: self.env[endpoint.RUNTIME_DIR_ENV]}
        with mock.patch.dict(os.environ, runtime):
            return endpoint.for_database(self.db).lock_path

    def owner(self) -> int | None:
        """The owning worker's pid while it still runs, else None."""
        pid = endpoint.read_owner(self.lock).pid
        return None if pid is None or gone(pid) else pid

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def generate(self, count: int, kind: str = "py") -> Path:
        """`count` migrations, each creating one small table, as our node's .py or .sql files."""
        self.migrations = self.root / "migrations"
        self.migrations.mkdir()
        for version in range(1, count + 1):
            migration_path(self.migrations, version, kind).write_text(
                f"-- migrate:up\nCREATE TABLE t{version} (id INTEGER);\n"
                f"-- migrate:down\nDROP TABLE t{version};\n"
                if kind == "sql"
                else py_migration(version)
            )
        return self.migrations

    def stop_worker(self) -> None:
        """SIGTERM the database's worker and wait until it has gone."""
        pid = self.owner()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        while not gone(pid):
            time.sleep(0.005)  # waiting for another process to exit: nothing to poll on

    def node(self, *args: str, tree: Path = PROJECT) -> subprocess.Popen:
        """A node.py of `tree` (this project, or another checkout of it to compare with):
        the worker it starts runs that tree's code too (spawn.py starts `-m worker` there)."""
        if self.migrations is not None:
            args = ("--migrations", str(self.migrations), *args)
        return subprocess.Popen(
            [sys.executable, str(tree / "node.py"), "--db", str(self.db), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # restarts are logged there on purpose
            env=self.env,
            cwd=self.root,
        )

    def worker_pid(self) -> int:
        pid = endpoint.read_owner(self.lock).pid
        assert pid is not None, "no worker owns the database"
        return pid

    def close(self) -> None:
        """Stop the worker (a server's database cannot be dropped under it), then remove."""
        try:
            self.stop_worker()
        finally:
            self._cleanup.close()


def is_mariadb(server: str | None) -> bool:
    return server is not None and server.startswith(("mysql://", "mariadb://"))


def migration_path(folder: Path, version: int, kind: str) -> Path:
    return folder / f"{version:05d}_t{version}.{kind}"


def up_statements(path: Path) -> list[str]:
    """A .sql file's up section split at `;`, as a plain loop would read the generated files."""
    up = path.read_text().split("-- migrate:down")[0].split("-- migrate:up")[1]
    return [statement for statement in up.split(";") if statement.strip()]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def ask(node: subprocess.Popen, body: dict) -> dict:
    node.stdin.write(json.dumps({"src": "b", "dest": "m", "body": body}).encode() + b"\n")
    node.stdin.flush()
    return json.loads(node.stdout.readline())


def process_once(imports: str) -> float:
    """One whole Python process that only imports `imports`, in milliseconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {imports}"], check=True)
    return (time.perf_counter() - started) * 1000


def interleaved(
    runs: int, ours: Callable[[], float], floor: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Samples of a figure and of its floor, taken in turns (see in_turns)."""
    samples = in_turns(runs, {"floor": floor, "ours": ours})
    return samples["ours"], samples["floor"]


def in_turns(runs: int, measures: dict[Any, Callable[[], float]]) -> dict[Any, list[float]]:
    """`runs` samples of each measure, by key, taken in turns so that all see the same noise.

    The order is reversed every other run, and pending writes are flushed before each sample,
    so none pays for another's disk work (deleting a database of 10,000 tables, say).
    """
    samples: dict[Any, list[float]] = {key: [] for key in measures}
    for run in range(runs):
        for key in [*measures][:: -1 if run % 2 == 0 else 1]:
            os.sync()
            samples[key].append(measures[key]())
    return samples


def on(server: str | None) -> str:
    """What a figure's name adds when it was taken on a server."""
    if server is None:
        return ""
    return " on MariaDB" if is_mariadb(server) else " on PostgreSQL"


def cold_status(sandbox: Sandbox, worker_running: bool) -> Callable[[], float]:
    """One cold start in `sandbox`: from starting node.py to its first `status` reply (ms)."""

    def once() -> float:
        if worker_running:
            warm = sandbox.node()
            ask(warm, {"type": "health", "msg_id": 0})
            warm.stdin.close()
            warm.wait()
        else:
            sandbox.stop_worker()
        started = time.perf_counter()
        node = sandbox.node()
        reply = ask(node, {"type": "status", "msg_id": 1})
        elapsed = (time.perf_counter() - started) * 1000
        assert reply["type"] == "migration_status", reply
        node.stdin.close()
        node.wait()
        return elapsed

    return once


def cold_start(runs: int, worker_running: bool, server: str | None = None) -> Figure:
    """From starting node.py to its first `status` reply. On a server's fresh database, the
    floor is the same on SQLite in the same run: the node never imports psycopg."""
    with contextlib.ExitStack() as sandboxes:
        once = cold_status(sandboxes.enter_context(Sandbox(server)), worker_running)
        floor_name = "python -c 'import zmq, msgpack' (whole process)"

        def floor() -> float:
            return process_once("zmq, msgpack")

        if server is not None:
            floor = cold_status(sandboxes.enter_context(Sandbox()), worker_running)
            floor_name = "the same on SQLite (cold start above), same run"
        once()  # warms the disk cache
        floor()
        samples, floors = interleaved(runs, once, floor)
    return Figure(
        f"cold start{on(server)}, {'worker running' if worker_running else 'no worker'}",
        f"start `python node.py{' --db postgresql://...' if server else ''}`, write one"
        " `status`, time to its reply",
        "ms",
        samples,
        floor_name,
        floors,
        "<= 1.5x floor" if worker_running else "<= 2.5x floor",
    )


def command_status(runs: int) -> Figure:
    """`python node.py status`, the command a person types, as a whole process with the
    worker running: it asks for status and history and prints a table."""
    with Sandbox() as sandbox:
        sandbox.generate(10)
        warm = sandbox.node()
        ask(warm, {"type": "migrate", "msg_id": 0})
        warm.stdin.close()
        warm.wait()
        command = [sys.executable, str(NODE), "--db", str(sandbox.db),
                   "--migrations", str(sandbox.migrations), "status"]

        def once() -> float:
            started = time.perf_counter()
            done = subprocess.run(command, env=sandbox.env, cwd=sandbox.root,
                                  capture_output=True, check=True)
            elapsed = (time.perf_counter() - started) * 1000
            assert b"10 applied, 0 pending" in done.stdout, done.stdout
            return elapsed

        def floor() -> float:
            return process_once("zmq, msgpack")

        once()  # warms the disk cache
        samples, floors = interleaved(runs, once, floor)
    return Figure(
        "`python node.py status` (command line), worker running",
        "the whole command as a person runs it: start, status and history, print the table,"
        " exit; 10 migrations applied",
        "ms",
        samples,
        "python -c 'import zmq, msgpack' (whole process)",
        floors,
        "<= 1.5x floor",
    )


def round_trips_ms(node: subprocess.Popen, kind: str, count: int) -> list[float]:
    """`count` requests of type `kind`, one at a time; each round trip in milliseconds."""
    trips = []
    for msg_id in range(count):
        started = time.perf_counter()
        ask(node, {"type": kind, "msg_id": msg_id})
        trips.append((time.perf_counter() - started) * 1000)
    return trips


# The floor for a node's two pipes: a child echoing each line of its stdin on its stdout.
PIPE_ECHO = """
import sys
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


def sequential_latency(count: int, runs: int, pipes: bool = False) -> Figure:
    """One `status` at a time through a running node; the median of each run's round trips.
    The floor is a bare ZeroMQ echo; with `pipes`, plus a bare pipe echo's round trip (the
    same requests, timed the same way), as a request also crosses the node's stdin and
    stdout."""
    sandbox = Sandbox()
    node = sandbox.node()
    echo = EchoServer()
    pipe = (
        subprocess.Popen(
            [sys.executable, "-c", PIPE_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        if pipes
        else None
    )

    def median_trip(process: subprocess.Popen) -> float:
        return statistics.median(round_trips_ms(process, "status", count))

    def floor() -> float:
        return echo.round_trip_ms(count) + (median_trip(pipe) if pipe else 0)

    try:
        for warm in (node, pipe) if pipe else (node,):
            median_trip(warm)
        samples, floors = interleaved(runs, lambda: median_trip(node), floor)
        node.stdin.close()
        node.wait()
    finally:
        if pipe:
            pipe.stdin.close()
            pipe.wait()
        echo.close()
        sandbox.close()
    return Figure(
        f"sequential latency{', pipes in the floor' if pipes else ''}",
        f"one `status` at a time through a running node, median of {count}",
        "ms",
        samples,
        f"bare {'pipe echo + bare ' if pipes else ''}pyzmq msgpack echo round trip"
        f"{'s, medians' if pipes else ', median'}",
        floors,
        "<= 1.5x floor" if pipes else "<= 2x floor",
    )


@dataclass
class ReadsDuringWrite:
    idle_ms: list[float]  # status round trips with no write running, before and after it
    during_ms: list[float]  # status round trips answered while the migrate ran


def status_while_applying(count: int, idle_trips: int) -> ReadsDuringWrite:
    """A second node's `status` round trips, one at a time, while a first node's `migrate`
    of `count` generated migrations runs: those answered once `health` (from the second
    node) says a write is running and before the migrate's reply; and, on the same database
    in the same run, `idle_trips` with no write running before the migrate (all pending)
    and as many after it (all applied)."""
    sandbox = Sandbox()
    folder = sandbox.generate(count)
    # Dated a minute back, as a folder written well before: a listing younger than the
    # worker's racy window (2 s) is not cached, and every status would list it anew.
    os.utime(folder, (time.time() - 60,) * 2)
    os.sync()  # writing the generated files is set-up, as in apply_once
    writer, reader = sandbox.node(), sandbox.node()
    try:
        ask(writer, {"type": "health", "msg_id": 0})
        round_trips_ms(reader, "status", 1)  # warms the folder listing and the reply cache
        idle = round_trips_ms(reader, "status", idle_trips)
        replied: list[tuple[dict, float]] = []  # the migrate's reply, and when it came

        def migrate() -> None:
            reply = ask(writer, {"type": "migrate", "msg_id": 1})
            replied.append((reply, time.perf_counter()))

        thread = threading.Thread(target=migrate)
        thread.start()
        while thread.is_alive() and ask(reader, {"type": "health", "msg_id": 1})["running"] is None:
            pass  # the migrate has not started yet
        trips = []  # (when answered, round trip in ms)
        while thread.is_alive():
            trips += [(time.perf_counter(), ms) for ms in round_trips_ms(reader, "status", 1)]
        thread.join()
        assert replied, "the migrate got no reply"
        reply, finished = replied[0]
        assert reply.get("count") == count, str(reply)[:300]
        during = [ms for answered, ms in trips if answered < finished]
        assert during, f"no status answered while the migrate of {count} ran"
        idle += round_trips_ms(reader, "status", idle_trips)
        for node in (writer, reader):
            node.stdin.close()
            node.wait()
        return ReadsDuringWrite(idle, during)
    finally:
        for node in (writer, reader):
            if node.poll() is None:
                node.kill()
        sandbox.close()


def status_during_migrate(count: int, runs: int, idle_trips: int = 20) -> Figure:
    """A `status` round trip from a second node while a `migrate` of `count` runs, beside
    the idle round trip on the same database; both taken in each run, in turns."""
    results = []
    for _ in range(runs):
        os.sync()
        results.append(status_while_applying(count, idle_trips))
    trips = sorted(len(run.during_ms) for run in results)
    return Figure(
        f"status during a migrate of {count:,}",
        f"a second node sends `status` one at a time while a `migrate` of {count:,} runs"
        " (from its `health` saying `running` to the migrate's reply); median of"
        f" {trips[0]:,}{'' if trips[0] == trips[-1] else f' to {trips[-1]:,}'} per run",
        "ms",
        [statistics.median(run.during_ms) for run in results],
        f"idle `status` round trip, same nodes and database, {idle_trips} before the migrate"
        f" and {idle_trips} after it, median",
        [statistics.median(run.idle_ms) for run in results],
        "<= 2x floor",
    )


def plain_connection(sandbox: Sandbox, journal: str = "wal") -> tuple[Any, str, str]:
    """The plain loop's connection, in autocommit mode so that the loop's BEGIN and COMMIT
    are the only ones, with the statement that begins each migration's transaction and the
    INSERT of its tracking row: sqlite3 on the file in SQLite's `journal` mode, or psycopg
    on the server's database (the same TCP connection as our worker's, one session for the
    whole loop). Both connections have the execute() and close() the loop uses."""
    if sandbox.server is None:
        connection = sqlite3.connect(sandbox.db, isolation_level=None)
        connection.execute(f"PRAGMA journal_mode = {journal}")
        connection.execute("PRAGMA synchronous = FULL")  # our worker's setting, in both modes
        return connection, "BEGIN IMMEDIATE", (
            "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))"
        )
    if is_mariadb(sandbox.server):
        return (PlainMariaDb(str(sandbox.db)), "BEGIN",
                "INSERT INTO schema_migrations VALUES (%s, %s, NOW())")
    import psycopg

    connection = psycopg.connect(str(sandbox.db), autocommit=True)
    return connection, "BEGIN", "INSERT INTO schema_migrations VALUES (%s, %s, now()::text)"


class PlainMariaDb:
    """A PyMySQL session in autocommit mode, with the execute() and close() the plain loop
    uses (the same TCP connection and driver as our worker's)."""

    def __init__(self, url: str) -> None:
        server, _, database = url.rpartition("/")
        self.connection = mariadb_connect(server, database, autocommit=True)
        self.cursor = self.connection.cursor()

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.cursor.execute(sql, params or None)

    def close(self) -> None:
        self.connection.close()


def loop_name(server: str | None, kind: str = "py", journal: str = "wal") -> str:
    """The plain loop, as the floor column names it."""
    if is_mariadb(server):
        return ("plain PyMySQL loop, same server over TCP, BEGIN/CREATE/INSERT/COMMIT each"
                " (CREATE commits at once)")
    if server is not None:
        return "plain psycopg loop, same server over TCP, BEGIN/CREATE/INSERT/COMMIT each"
    return (
        f"plain sqlite3 loop{' reading the same .sql files' if kind == 'sql' else ''},"
        f" same journal ({JOURNALS[journal]}) and sync"
    )


def loop_floor(
    count: int, kind: str = "py", server: str | None = None, journal: str = "wal"
) -> float:
    """The plain loop: per migration BEGIN, CREATE, INSERT, COMMIT (seconds), with sqlite3
    on a file in SQLite's `journal` mode, or with psycopg on a fresh database of `server`
    (see plain_connection).

    With kind "sql" the loop reads each migration's statements from the same generated .sql
    files the node gets, splitting each file's up section at `;`.
    """
    sandbox = Sandbox(server)
    files = sandbox.generate(count, kind) if kind == "sql" else None
    if files:
        os.sync()  # writing the generated files is set-up, as in apply_once
    try:
        connection, begin, insert = plain_connection(sandbox, journal)
        with contextlib.closing(connection):
            connection.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT,"
                " applied_at TEXT)"
            )
            started = time.perf_counter()
            for version in range(1, count + 1):
                statements = (
                    up_statements(migration_path(files, version, kind))
                    if files
                    else [create_table(version)]
                )
                connection.execute(begin)
                for statement in statements:
                    connection.execute(statement)
                connection.execute(insert, (version, f"t{version}"))
                connection.execute("COMMIT")
            return time.perf_counter() - started
    finally:
        sandbox.close()


@dataclass
class ApplyRun:
    seconds: float
    node_rss_mb: float
    worker_rss_mb: float
    status_ms: list[float]
    validate_ms: list[float]
    schema_recorded: bool  # the database has the table of the schema after each step


def apply_once(
    count: int,
    read_trips: int,
    kind: str = "py",
    dry_run: bool = False,
    server: str | None = None,
    journal: str = "wal",
    node_args: tuple[str, ...] = (),
    tree: Path = PROJECT,
) -> ApplyRun:
    """Apply `count` generated migrations with one `migrate` through a running node (on a
    fresh database of `server`, if given), then time `read_trips` warm `status` and
    `validate` round trips. A dry run must leave all pending. On SQLite, `journal` "wal" is
    a new database (the worker makes it WAL); "delete" a rollback-journal one made before
    the node starts, which the worker keeps. `node_args` go to the node (and its worker);
    `tree` is the checkout whose node.py runs, and whose worker must answer (see
    worker_tree)."""
    sandbox = Sandbox(server)
    sandbox.generate(count, kind)
    if server is None and journal != "wal":
        existing_database(sandbox.db, journal)
    os.sync()  # writing the generated files is set-up: its disk work is not the apply's
    node = sandbox.node(*node_args, tree=tree)
    try:
        health = ask(node, {"type": "health", "msg_id": 0})
        worker_pid = health["worker_pid"]
        assert worker_tree(worker_pid) == tree.resolve(), (worker_tree(worker_pid), tree)
        if server is None:
            assert health.get("journal_mode") == journal, health
        migrate = {"type": "migrate", "msg_id": 1} | ({"dry_run": True} if dry_run else {})
        started = time.perf_counter()
        reply = ask(node, migrate)
        seconds = time.perf_counter() - started
        assert reply.get("count") == count, str(reply)[:300]
        assert reply.get("dry_run", False) is dry_run, str(reply)[:300]
        rss = peak_rss_mb(node.pid), peak_rss_mb(worker_pid)
        applied = [m["applied"] for m in ask(node, {"type": "status", "msg_id": 2})["migrations"]]
        assert applied == [not dry_run] * count, f"{sum(applied)} of {count} applied"
        status_trips = round_trips_ms(node, "status", read_trips)
        if read_trips:
            reply = ask(node, {"type": "validate", "msg_id": 3})  # warms its checksum cache
            assert reply.get("ok") is True, str(reply)[:300]
        validate_trips = round_trips_ms(node, "validate", read_trips)
        node.stdin.close()
        node.wait()
        recorded = has_table(sandbox, SCHEMAS_TABLE)
        return ApplyRun(seconds, *rss, status_trips, validate_trips, recorded)
    finally:
        if node.poll() is None:
            node.kill()
        sandbox.close()


def worker_tree(pid: int) -> Path:
    """The checkout a worker runs: spawn.py starts `python -m worker` in its project root,
    so its working directory is the tree whose worker package it imported."""
    return Path(os.readlink(f"/proc/{pid}/cwd")).resolve()


SCHEMAS_TABLE = "schema_migration_schemas"  # the schema after each step (worker/schema)


def has_table(sandbox: Sandbox, name: str) -> bool:
    """Whether the sandbox's database has a table `name` (in any schema of a server's)."""
    if sandbox.server is None:
        with contextlib.closing(sqlite3.connect(sandbox.db)) as connection:
            query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            return connection.execute(query, (name,)).fetchone() is not None
    if is_mariadb(sandbox.server):
        with contextlib.closing(PlainMariaDb(str(sandbox.db))) as plain:
            plain.execute("SELECT 1 FROM information_schema.tables WHERE table_schema ="
                          " DATABASE() AND table_name = %s", (name,))
            return plain.cursor.fetchone() is not None
    import psycopg

    with psycopg.connect(str(sandbox.db)) as connection:
        query = "SELECT 1 FROM pg_tables WHERE tablename = %s"
        return connection.execute(query, (name,)).fetchone() is not None


def existing_database(path: Path, journal: str) -> None:
    """A database file in SQLite's `journal` mode, as its owners left it: not empty, so
    the worker keeps its journal mode (it makes only a new or empty file WAL)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA journal_mode = {journal}")
        connection.execute("PRAGMA user_version = 1")  # writes the header


def apply_aim(count: int, kind: str, server: str | None, journal: str | None = None) -> str:
    if count < 1000:
        return "(informative)"
    if journal == "delete":
        return "<= 1.1x floor"  # its COMMIT's four fsyncs leave less to our own work
    if server is not None:
        return "<= 1.1x floor"
    return "<= 1.15x floor" if kind == "sql" else "<= 1.2x floor"


def apply_figures(
    count: int,
    runs: int,
    with_status: bool = False,
    kind: str = "py",
    server: str | None = None,
    journal: str | None = None,
) -> list[Figure]:
    """Applying `count` generated .py (or .sql) migrations, on SQLite or on fresh databases
    of `server`; `with_status`: then the warm reads of all of them applied, and the peak
    memory of node and worker. On SQLite the database is new (WAL) unless `journal` says
    "delete" (see apply_once); a `journal` given is named in the figure."""
    results: list[ApplyRun] = []
    sql = kind == "sql"
    mode = journal or "wal"

    def once() -> float:
        results.append(
            apply_once(count, 20 if with_status else 0, kind, server=server, journal=mode)
        )
        return results[-1].seconds

    samples, floors = interleaved(runs, once, lambda: loop_floor(count, kind, server, mode))
    where = {
        None: "" if server is None else ", fresh database, local server over TCP",
        "wal": ", new database (the worker makes it WAL)",
        "delete": ", rollback-journal database made before the node started (the worker keeps it)",
    }[journal]
    figures = [
        Figure(
            f"apply {count:,} {'.sql ' if sql else ''}migrations{on(server)}"
            f"{'' if journal is None else ', ' + JOURNALS[journal]}",
            f"one `migrate` through a running node{where};"
            f" each {'.sql file' if sql else 'migration'} creates one table",
            "s",
            samples,
            loop_name(server, kind, mode),
            floors,
            apply_aim(count, kind, server, journal),
        )
    ]
    if with_status:
        echo = echo_latency_ms(100)
        figures += [
            Figure(
                f"status, {count:,} migrations",
                "warm `status` round trip, all applied; median of 20 per run",
                "ms",
                [statistics.median(run.status_ms) for run in results],
                "bare pyzmq msgpack echo round trip, median",
                echo,
                "<= 50 ms",
            ),
            Figure(
                f"validate, {count:,} applied migrations",
                "warm `validate` round trip, all checksums match; median of 20 per run",
                "ms",
                [statistics.median(run.validate_ms) for run in results],
                "bare pyzmq msgpack echo round trip, median",
                echo,
                "<= 100 ms",
            ),
            Figure(
                f"memory, node, applying {count:,}",
                "peak RSS (VmHWM) of node.py",
                "MiB",
                [run.node_rss_mb for run in results],
                "python -c 'import zmq, msgpack, sqlite3' RSS",
                [import_rss_mb()],
                "<= 30 MB",
            ),
            Figure(
                f"memory, worker, applying {count:,}",
                "peak RSS (VmHWM) of the worker",
                "MiB",
                [run.worker_rss_mb for run in results],
                "python -c 'import zmq, msgpack, sqlite3' RSS",
                [import_rss_mb()],
                "<= 40 MB",
            ),
        ]
    return figures


def dry_run_figure(count: int, runs: int) -> Figure:
    """A dry run of `count` pending migrations beside the real apply of the same ones."""
    samples, floors = interleaved(
        runs,
        lambda: apply_once(count, 0, dry_run=True).seconds,
        lambda: apply_once(count, 0).seconds,
    )
    return Figure(
        f"dry run, {count:,} migrations",
        "one `migrate` with `dry_run` through a running node, rolled back; all left pending",
        "s",
        samples,
        "the real `migrate` of the same migrations",
        floors,
        "<= 0.5x floor",
    )


def lint_import(runs: int) -> list[Figure]:
    """What loading lint costs, which only a lint request pays: pglast (the PostgreSQL
    parser) as a whole process beside `python -c pass`, and what a worker that has its
    engine loaded adds for worker.lint's runner and every rule."""
    def bare() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return (time.perf_counter() - started) * 1000

    aim = "(informative: paid by a worker's first lint, never at start-up)"
    process_once("pglast, worker.engine, worker.lint.runner")  # warms the disk cache
    samples, floors = interleaved(runs, lambda: process_once("pglast"), bare)
    parser = Figure("import pglast (lint's parser)", "a whole process that imports it, beside"
                    " one that imports nothing", "ms", samples, "python -c pass (whole process)",
                    floors, aim)
    samples, floors = interleaved(runs, lambda: process_once("worker.engine, worker.lint.runner"),
                                  lambda: process_once("worker.engine"))
    runner = Figure("import worker.lint.runner in a worker", "a whole process that imports the"
                    " engine, then lint's runner (pglast, every rule)", "ms", samples,
                    "python -c 'import worker.engine' (whole process)", floors, aim)
    return [parser, runner]


def import_rss_mb() -> float:
    code = (
        "import zmq, msgpack, sqlite3\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    return int(output.stdout) / 1024


def kill_to_reply(runs: int) -> Figure:
    """From a worker's SIGKILL to the node's next reply, a status sent right after the kill."""
    sandbox = Sandbox()
    node = sandbox.node()
    samples = []
    try:
        for msg_id in range(runs):
            assert ask(node, {"type": "status", "msg_id": msg_id})["type"] == "migration_status"
            pid = sandbox.worker_pid()
            started = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            reply = ask(node, {"type": "health", "msg_id": msg_id})
            samples.append((time.perf_counter() - started) * 1000)
            assert reply["worker_pid"] != pid, reply
        node.stdin.close()
        node.wait(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
        sandbox.close()
    return Figure(
        "worker killed -> next reply",
        f"SIGKILL the worker, send `health`, time to its reply; {runs} kills",
        "ms",
        samples,
        "python -c 'import zmq, msgpack, sqlite3'",
        [process_once("zmq, msgpack, sqlite3") for _ in range(max(3, runs // 4))],
        "< 300 ms",
    )


ECHO_SERVER = """
import sys, msgpack, zmq
router = zmq.Context().socket(zmq.ROUTER)
router.bind(sys.argv[1])
print("ready", flush=True)
while True:
    peer, frame = router.recv_multipart()
    request = msgpack.unpackb(frame, raw=False)
    reply = {"id": request["id"], "body": {"type": "migration_status", "migrations": []}}
    router.send_multipart([peer, msgpack.packb(reply)])
"""


class EchoServer:
    """The floor for messaging: a bare ROUTER process echoing msgpack, nothing else."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mnb-echo-"))
        self.address = f"ipc://{self.folder}/echo.sock"
        self.process = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, self.address], stdout=subprocess.PIPE
        )
        assert self.process.stdout.readline() == b"ready\n"
        self.context = zmq.Context()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.connect(self.address)

    def round_trips(self, count: int, window: int) -> float:
        """Send `count` requests keeping `window` in flight; returns the seconds taken."""
        import msgpack

        started = time.perf_counter()
        sent = received = 0
        while received < count:
            while sent < count and sent - received < window:
                self.dealer.send(msgpack.packb({"id": sent.to_bytes(8, "big"), "type": "status"}))
                sent += 1
            msgpack.unpackb(self.dealer.recv(), raw=False)
            received += 1
        return time.perf_counter() - started

    def round_trip_ms(self, count: int) -> float:
        """The median of `count` single round trips, in milliseconds."""
        trips = []
        for _ in range(count):
            started = time.perf_counter()
            self.round_trips(1, 1)
            trips.append((time.perf_counter() - started) * 1000)
        return statistics.median(trips)

    def throughput(self, count: int, window: int) -> float:
        """Requests per second with `window` in flight."""
        return count / self.round_trips(count, window)

    def close(self) -> None:
        self.dealer.close(linger=0)
        self.context.term()
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def echo_latency_ms(count: int) -> list[float]:
    echo = EchoServer()
    try:
        return [echo.round_trip_ms(count)]
    finally:
        echo.close()


def nodes_throughput(nodes: int, count: int, runs: int) -> Figure:
    """`status` requests per second through `nodes` nodes sharing one worker."""
    data = b"".join(
        b'{"src": "b", "dest": "m", "body": {"type": "status", "msg_id": %d}}\n' % i
        for i in range(count)
    )

    def once() -> float:
        sandbox = Sandbox()
        started_nodes = [sandbox.node() for _ in range(nodes)]
        try:
            for node in started_nodes:
                ask(node, {"type": "health", "msg_id": 0})  # warm: the worker runs, all connected
            threads = [
                threading.Thread(target=node.communicate, args=(data,)) for node in started_nodes
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return nodes * count / (time.perf_counter() - started)
        finally:
            for node in started_nodes:
                if node.poll() is None:
                    node.kill()
            sandbox.close()

    echo = EchoServer()
    try:
        echo.throughput(min(count, 1000), WINDOW)  # warm up
        samples, floors = interleaved(runs, once, lambda: echo.throughput(nodes * count, WINDOW))
    finally:
        echo.close()
    return Figure(
        f"throughput, {nodes} node{'s' if nodes > 1 else ''} sharing one worker",
        f"{count:,} `status` written at once to each node; all replies read",
        "req/s",
        samples,
        f"bare pyzmq msgpack echo, window {WINDOW}",
        floors,
        "(informative)" if nodes > 1 else ">= 50% of floor",
        higher_is_better=True,
    )


NOT_INSTALLED: list[str] = []  # peers the table could not include
SERVERS: list[str] = []  # the database servers measured, for the machine line


def not_installed(tool: str, install: str) -> None:
    """Say that `tool` is missing and how to install it; the table's note lists it."""
    print(f"{tool}: not installed ({install})", flush=True)
    if tool not in NOT_INSTALLED:
        NOT_INSTALLED.append(tool)


def peer_figures(count: int, runs: int, server: str | None = None) -> list[Figure]:
    """The same apply and cold status work through the tools users would pick instead, on
    SQLite or on fresh databases of `server`."""
    figures = []
    for tool, measure in (
        ("alembic", bench_peers.measure_alembic),
        ("yoyo-migrations", bench_peers.measure_yoyo),
    ):
        if bench_peers.available()[tool] is None:
            not_installed(tool, "pip install '.[bench]'")
            continue
        figures += peer_pair(measure, count, runs, server)
    return figures


def peer_pair(
    measure: Callable[..., bench_peers.PeerResult | None],
    count: int,
    runs: int,
    server: str | None,
) -> list[Figure]:
    """One peer's apply, in turns with the plain loop, and its cold status after each apply."""
    results: list[bench_peers.PeerResult] = []

    def once() -> float:
        result = measure(count, 1, server)
        assert result is not None
        results.append(result)
        return result.apply_seconds[0]

    # Neither peer touches the journal mode: SQLite's default, the rollback journal.
    samples, floors = interleaved(
        runs, once, lambda: loop_floor(count, server=server, journal="delete")
    )
    where = on(server)
    return [
        Figure(
            f"peer {results[0].tool}: apply {count:,} migrations{where}",
            "its own CLI, one process applies all; each migration creates one table",
            "s",
            samples,
            loop_name(server, journal="delete"),
            floors,
            f"(compare: apply 1,000{where} above)",
        ),
        Figure(
            f"peer {results[0].tool}: cold status{where}",
            "its own CLI's status command as a whole process, all applied",
            "ms",
            [result.status_ms[0] for result in results],
            "python -c 'import zmq, msgpack' (whole process)",
            [process_once("zmq, msgpack") for _ in range(runs)],
            f"(compare: cold start{where} above)",
        ),
    ]


# The floor of the go-peers group, and what each Go peer's setting means for durability.
WAL_FULL_LOOP = "plain sqlite3 loop, WAL, synchronous = FULL (each commit synced)"
GO_DURABILITY = {
    False: "synchronous left at mattn/go-sqlite3's NORMAL: in WAL a commit is not synced, so"
    " an applied migration, its tracking row included, can vanish in a power cut or OS crash,"
    " though not in a process crash",
    True: "synchronous = FULL: each commit synced, as our worker's",
}


def go_peer_figures(count: int, runs: int) -> list[Figure | Unmeasured]:
    """Our apply of `count` in WAL, then dbmate's and sql-migrate's of the same migrations,
    each as shipped and with _sync=FULL (see tests/bench_go_peers.py); every one in turns
    with the plain sqlite3 loop in WAL. A tool not installed gets rows saying so."""
    samples, floors = interleaved(runs, lambda: apply_once(count, 0).seconds,
                                  lambda: loop_floor(count, journal="wal"))
    ours = Figure(
        f"apply {count:,} migrations, WAL (ours, beside the Go peers)",
        "one `migrate` through a running node, new database (the worker makes it WAL); each"
        " migration creates one table; synchronous = FULL: each commit synced",
        "s", samples, WAL_FULL_LOOP, floors,
        "(what the Go peers' _sync=FULL rows are set against)",
    )
    figures: list[Figure | Unmeasured] = [ours]
    for name in bench_go_peers.TOOLS:
        tool = bench_go_peers.installed(name)
        if tool is None:
            not_installed(name, tool_binaries.INSTALL[name])
            figures += [Unmeasured(go_peer_name(name, count, setting),
                                   f"not installed: {tool_binaries.INSTALL[name]}")
                        for setting in bench_go_peers.SETTINGS]
            continue
        figures += [go_peer_figure(tool, setting, count, runs, ours)
                    for setting in bench_go_peers.SETTINGS]
    return figures


def go_peer_name(tool: str, count: int, setting: bench_go_peers.Setting) -> str:
    return f"peer {tool}: apply {count:,} migrations, WAL, {setting.name}"


def go_peer_figure(tool: bench_go_peers.GoTool, setting: bench_go_peers.Setting, count: int,
                   runs: int, ours: Figure) -> Figure:
    """One Go peer's apply of `count` with one `setting`, in turns with the plain loop in
    WAL. Ours and the peer are compared by their ratios to their own floors, each taken in
    turns with it, as the machine's noise changes between the two."""
    samples, floors = interleaved(runs, lambda: bench_go_peers.apply_seconds(tool, setting, count),
                                  lambda: loop_floor(count, journal="wal"))
    figure = Figure(
        go_peer_name(f"{tool.name} {tool.version}", count, setting),
        "its own CLI (the Go binary), one process applies all to a new database, DSN"
        f" `bench.db?{setting.dsn_query}`; {GO_DURABILITY[setting.durable]}",
        "s", samples, WAL_FULL_LOOP, floors, "",
    )
    return replace(figure, aim=go_peer_aim(ours, figure, setting.durable))


def go_peer_aim(ours: Figure, theirs: Figure, durable: bool) -> str:
    """At our durability, ours must be ahead; without it, the figure is only informative."""
    ratios = f"{ours.ratio:.2f}x vs {theirs.ratio:.2f}x floor"
    if not durable:
        return f"none, not durable (ours {ratios})"
    return f"ours ahead: {ratios}, {'met' if ours.ratio < theirs.ratio else 'NOT met'}"


def postgres_figures(quick: bool) -> list[Figure | Unmeasured]:
    """On the local PostgreSQL server: applying 1,000 beside the plain psycopg loop, a cold
    status beside SQLite's, and the peers; rows saying why when no server answers."""
    count = 50 if quick else 1000
    problem = postgres_problem(POSTGRES_SERVER)
    if problem is not None:
        print(f"PostgreSQL: {problem}", flush=True)
        names = (
            f"apply {count:,} migrations on PostgreSQL",
            "cold start on PostgreSQL, worker running",
            "peers on PostgreSQL",
        )
        return [Unmeasured(name, problem) for name in names]
    SERVERS.append(server_description(POSTGRES_SERVER))
    return [
        *apply_figures(count, 1 if quick else 5, server=POSTGRES_SERVER),
        cold_start(1 if quick else 10, worker_running=True, server=POSTGRES_SERVER),
        *peer_figures(20 if quick else count, 1 if quick else 3, POSTGRES_SERVER),
    ]


def mariadb_figures(quick: bool) -> list[Figure | Unmeasured]:
    """On the local MariaDB/MySQL server: applying 1,000 (one CREATE TABLE each) beside
    the plain PyMySQL loop; a row saying why when no server answers or PyMySQL is missing."""
    count = 50 if quick else 1000
    problem = mariadb_problem(MARIADB_SERVER)
    if problem is not None:
        print(f"MariaDB: {problem}", flush=True)
        return [Unmeasured(f"apply {count:,} migrations on MariaDB", problem)]
    SERVERS.append(mariadb_description(MARIADB_SERVER))
    return apply_figures(count, 1 if quick else 5, server=MARIADB_SERVER)


def mariadb_description(server: str) -> str:

    with contextlib.closing(mariadb_connect(server)) as connection:
        cursor = connection.cursor()
        cursor.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog,"
                       " @@log_bin")
        version, flush, sync_binlog, log_bin = cursor.fetchone()
    return (f"MariaDB {version.split('-')[0]} at {server.partition('@')[2]}"
            f" (innodb_flush_log_at_trx_commit {flush}, binary log"
            f" {'on, sync_binlog ' + str(sync_binlog) if log_bin else 'off'}),"
            f" PyMySQL {importlib.metadata.version('PyMySQL')}")


def server_description(server: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres") as connection:
        settings = [
            connection.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "synchronous_commit")
        ]
    return (
        f"PostgreSQL {settings[0].split()[0]} at {server.partition('@')[2]}"
        f" (synchronous_commit {settings[1]}), psycopg {psycopg.__version__}"
    )


def set_local_floor(count: int, server: str, set_local: bool) -> float:
    """The plain psycopg loop (see loop_floor), with `set_local` also the two SET LOCAL
    lock_timeout a migration of ours costs (before its code, and back after it); without
    waiting for the disk at COMMIT (synchronous_commit off), whose noise here is far larger
    than two round trips."""
    import psycopg

    with postgres_database(server) as url, psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SET synchronous_commit = off")
        connection.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                           " name TEXT, applied_at TEXT)")
        insert = "INSERT INTO schema_migrations VALUES (%s, %s, now()::text)"
        started = time.perf_counter()
        for version in range(1, count + 1):
            connection.execute("BEGIN")
            if set_local:
                connection.execute("SET LOCAL lock_timeout = 3000")
            connection.execute(create_table(version))
            if set_local:
                connection.execute("SET LOCAL lock_timeout = 5000")
            connection.execute(insert, (version, f"t{version}"))
            connection.execute("COMMIT")
        return time.perf_counter() - started


def commit_to_apply_s(server: str, args: tuple[str, ...], retrying: bool) -> float:
    """Seconds from a blocking session's COMMIT to the reply of the `migrate` that waited
    for it: the migration (ALTER TABLE on a table the blocker has read) waits in one lock
    wait (`retrying` false: LOCK_TIMEOUT = 0), or gives up and is tried again (true); the
    COMMIT comes once the worker is seen waiting, for a retrying one after its first
    lock timeout, at a random point of its next try or pause."""
    import psycopg

    with Sandbox(server) as sandbox:
        folder = sandbox.root / "migrations"
        folder.mkdir()
        sandbox.migrations = folder
        (folder / "0001_note.py").write_text(
            ("" if retrying else "LOCK_TIMEOUT = 0\n")
            + 'def up(db):\n    db.execute("ALTER TABLE accounts ADD COLUMN note text")\n')
        with psycopg.connect(str(sandbox.db), autocommit=True) as admin:
            admin.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
        blocker = psycopg.connect(str(sandbox.db))
        blocker.execute("SELECT * FROM accounts").fetchall()
        node = sandbox.node(*args)
        try:
            node.stdin.write(json.dumps({"src": "b", "dest": "m", "body": {
                "type": "migrate", "msg_id": 1, "progress": True}}).encode() + b"\n")
            node.stdin.flush()
            want = "retrying" if retrying else "waiting"
            while json.loads(node.stdout.readline()).get("event") != want:
                pass
            if retrying:
                time.sleep(random.uniform(0, 1.0))  # a random moment, not a handshake
            started = time.perf_counter()
            blocker.commit()
            while True:
                reply = json.loads(node.stdout.readline())
                if reply["type"] == "migrations_applied":
                    return time.perf_counter() - started
                assert reply["type"].startswith("migration_"), reply
        finally:
            blocker.close()
            node.stdin.close()
            node.wait()


def plain_commit_to_alter_s(server: str) -> float:
    """The floor: a plain psycopg session's ALTER TABLE waiting behind the same blocker,
    from the blocker's COMMIT to the ALTER's return (the waiter is seen in pg_locks)."""
    import threading

    import psycopg

    with postgres_database(server) as url, psycopg.connect(url, autocommit=True) as admin:
        admin.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
        blocker = psycopg.connect(url)
        blocker.execute("SELECT * FROM accounts").fetchall()
        done: list[float] = []
        with psycopg.connect(url, autocommit=True) as waiter:
            thread = threading.Thread(target=lambda: (
                waiter.execute("ALTER TABLE accounts ADD COLUMN note text"),
                done.append(time.perf_counter())))
            thread.start()
            while admin.execute("SELECT 1 FROM pg_locks WHERE NOT granted").fetchone() is None:
                time.sleep(0.001)  # polling another process's state
            started = time.perf_counter()
            blocker.commit()
            thread.join()
        blocker.close()
        return done[0] - started


def lock_figures(quick: bool) -> list[Figure | Unmeasured]:
    """What lock timeouts cost on the local server: SET LOCAL per migration, and how soon
    a waiting migration applies once its blocker commits."""
    problem = postgres_problem(POSTGRES_SERVER)
    if problem is not None:
        return [Unmeasured("lock timeouts on PostgreSQL", problem)]
    count, runs = (50, 1) if quick else (1000, 5)
    server = POSTGRES_SERVER
    with_set, without = interleaved(runs, lambda: set_local_floor(count, server, True),
                                    lambda: set_local_floor(count, server, False))
    enabled, disabled = interleaved(
        runs, lambda: apply_once(count, 0, server=server).seconds,
        lambda: apply_once(count, 0, server=server, node_args=("--lock-timeout", "0")).seconds)
    waits = interleaved(runs, lambda: commit_to_apply_s(server, (), retrying=False),
                        lambda: plain_commit_to_alter_s(server))
    retries = interleaved(
        runs, lambda: commit_to_apply_s(server, ("--lock-timeout", "0.5"), retrying=True),
        lambda: plain_commit_to_alter_s(server))
    return [
        Figure(
            f"SET LOCAL lock_timeout, {count:,} migrations on PostgreSQL",
            "the plain psycopg loop with the two SET LOCAL lock_timeout a migration of ours"
            " sends (before its code, and back after it)",
            "s", with_set, "the same loop without them", without,
            "(informative: two round trips a migration)",
        ),
        Figure(
            f"apply {count:,} migrations on PostgreSQL, lock timeouts on (3 s)",
            "one `migrate` through a running node, fresh database, local server over TCP;"
            " each migration creates one table", "s", enabled,
            "the same apply with --lock-timeout 0 (off: SET LOCAL lock_timeout = 0)", disabled,
            "<= 1.05x floor",
        ),
        Figure(
            "blocker's COMMIT to the waiting migration's reply, LOCK_TIMEOUT = 0",
            "one `migrate` through a running node waits in one lock wait for a session idle"
            " in transaction; from its COMMIT to the reply", "s", waits[0],
            "a plain psycopg ALTER TABLE waiting for the same COMMIT", waits[1],
            "<= 0.05 s",
        ),
        Figure(
            "blocker's COMMIT to the retried migration's reply, --lock-timeout 0.5",
            "as above, but the migration gives up after 0.5 s and is tried again after a"
            " pause; the COMMIT comes at a random moment after its first retry began",
            "s", retries[0], "a plain psycopg ALTER TABLE waiting for the same COMMIT",
            retries[1], "<= one lock timeout plus one pause (0.5 + 1.0 s)",
        ),
    ]


# The checkout of the code before the schema record (--baseline-tree): made once with
# `git worktree add --detach /tmp/base-f40af16 f40af16`.
BASELINE_TREE = Path("/tmp/base-f40af16")


def schema_record_figures(count: int, runs: int, server: str | None = None,
                          ) -> list[Figure | Unmeasured]:
    """What recording the schema after every step costs: applying `count` on this tree,
    in turns with the same apply through BASELINE_TREE's node.py and worker. Each run
    checks which code answered (the worker's tree, and the schemas table only ours
    makes), so that an A/B of the same code twice cannot pass for one."""
    name = f"apply {count:,} migrations{on(server)}, schema recorded after each step"
    if not (BASELINE_TREE / "node.py").is_file():
        return [Unmeasured(name, f"no baseline tree at {BASELINE_TREE} (git worktree add"
                                 f" --detach {BASELINE_TREE} f40af16)")]
    problem = server_problem(server)
    if problem is not None:
        return [Unmeasured(name, problem)]

    def once(tree: Path, recorded: bool) -> float:
        run = apply_once(count, 0, server=server, tree=tree)
        assert run.schema_recorded is recorded, f"{tree}: {SCHEMAS_TABLE} {run.schema_recorded}"
        return run.seconds

    samples, floors = interleaved(runs, lambda: once(PROJECT, True),
                                  lambda: once(BASELINE_TREE, False))
    where = ("new database (the worker makes it WAL)" if server is None
             else "fresh database, local server over TCP")
    return [Figure(
        name,
        f"one `migrate` through a running node, {where}; each migration creates one table;"
        " this tree's node.py and worker",
        "s",
        samples,
        f"the same apply through the code before the schema record ({tree_commit()}'s"
        " node.py and worker, in turns)",
        floors,
        "(informative)",
    )]


def server_problem(server: str | None) -> str | None:
    """Why nothing can be measured on `server` (None: SQLite, or it answers); a server that
    answers is described in the machine line."""
    if server is None:
        return None
    problem = (mariadb_problem if is_mariadb(server) else postgres_problem)(server)
    if problem is None:
        describe = mariadb_description if is_mariadb(server) else server_description
        description = describe(server)
        if description not in SERVERS:
            SERVERS.append(description)
    return problem


def tree_commit(tree: Path | None = None) -> str:
    """The commit checked out in `tree` (BASELINE_TREE by default), short, as the floor
    column names it."""
    tree = BASELINE_TREE if tree is None else tree
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or str(tree)


# Issue 25's changes to applying, oldest first: each commit, and what it changed since the
# one before it (the first: the code before the issue). The `changes` group measures them.
SPEED_CHANGES = [
    ("9806605", "the code before issue 25"),
    ("c207526", "fewer and cheaper SQLite statements after a step's DDL"),
    ("a7c849a", "the next file read, hashed and compiled during the COMMIT before it"),
    ("0a8da7d", "each log line written at once, none held (for no line lost to a kill)"),
    ("320c129", "no LIKE in the schema reader's query of sqlite_master"),
    ("f3078b5", "no pragma for UNIQUE constraints or foreign keys a definition lacks"),
    ("ac50749", "status patched and read between steps (item 2): its cost to the apply"),
]


def change_figures(count: int, runs: int) -> list[Figure | Unmeasured]:
    """What each change of SPEED_CHANGES saved: applying `count` in WAL through each
    commit's node.py and worker (extracted with git archive), all in turns, each beside
    the commit before it; then this tree beside the plain loop."""
    name = f"apply {count:,} migrations, WAL, change by change"
    with tempfile.TemporaryDirectory(prefix="migrations-changes-") as root:
        trees = []
        for commit, what in SPEED_CHANGES:
            tree = Path(root) / commit
            problem = extract_commit(commit, tree)
            if problem is not None:
                return [Unmeasured(name, problem)]
            trees.append((commit, what, tree))
        measures: dict[Path | None, Callable[[], float]] = {
            tree: lambda tree=tree: apply_once(count, 0, tree=tree).seconds
            for tree in [*(tree for *_, tree in trees), PROJECT]}
        measures[None] = lambda: loop_floor(count)  # the plain loop
        samples = in_turns(runs, measures)
        floors = samples[None]
    figures: list[Figure | Unmeasured] = []
    for (before, _, before_tree), (commit, what, tree) in itertools.pairwise(trees):
        figures.append(Figure(
            f"apply {count:,}, WAL: {what} ({commit})",
            "one `migrate` through a running node of that commit, in turns with every other"
            " commit here; the ratio is the change's, below 1x a saving",
            "s", samples[tree], f"the same apply through {before}", samples[before_tree],
            "(informative)"))
    figures.append(Figure(
        f"apply {count:,} migrations, WAL, this tree ({tree_commit(PROJECT)})",
        "one `migrate` through a running node, in turns with the commits above",
        "s", samples[PROJECT], loop_name(None), floors, apply_aim(count, "py", None)))
    return figures


def profile_figures(count: int, runs: int) -> list[Figure]:
    """Where an in-process apply of `count` spends its time beyond the plain loop, piece by
    piece (see tests/bench_profile.py): the whole apply beside the loop, then the apply
    without each piece beside the whole one, all in turns."""
    measures: dict[str | None, Callable[[], float]] = {
        config: lambda config=config: bench_profile.apply_seconds(count, config)
        for config in [None, *bench_profile.PIECES]}
    samples = in_turns(runs, {**measures, "loop": lambda: loop_floor(count)})
    floors = samples["loop"]
    whole = statistics.median(samples[None])

    def per_migration_us(seconds: float) -> float:
        return seconds / count * 1e6

    costs = {piece: per_migration_us(whole - statistics.median(samples[piece]))
             for piece in bench_profile.PIECES}
    beyond = per_migration_us(whole - statistics.median(floors))
    figures = [Figure(
        f"apply {count:,} in process, WAL, everything",
        "the worker's engine and store in the benchmark's process, no node; beyond the loop:"
        f" {beyond:.0f} µs a migration, of which the pieces below {sum(costs.values()):.0f};"
        f" the rest ({beyond - sum(costs.values()):.0f}: the engine's own Python, loading"
        " each file, the migration's guarded db, statements prepared anew after its DDL)",
        "s", samples[None], loop_name(None), floors, "(informative)")]
    for piece, cost in costs.items():
        figures.append(Figure(
            f"apply {count:,} in process, WAL, without {piece}",
            f"as above, that piece taken out: it costs {cost:.0f} µs a migration",
            "s", samples[piece], "the whole apply in process, same run", samples[None],
            "(informative)"))
    return figures


def extract_commit(commit: str, into: Path) -> str | None:
    """Put `commit`'s files in `into` (git archive); why it cannot, or None."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(PROJECT), "archive", "--format=tar", commit],
                             capture_output=True)
    if archive.returncode != 0:
        return f"cannot read commit {commit} here: {archive.stderr.decode().strip()[:200]}"
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return None


# Each group's title heads its section of the output file when run alone (--only).
GROUPS = {
    "start": "Cold start",
    "latency": "Sequential latency",
    "throughput": "Throughput",
    "apply": "Applying migrations",
    "dry-run": "Dry run",
    "kill": "Worker killed",
    "responsive": "Responsive worker, WAL",
    "peers": "Peers",
    "go-peers": "Go peers on SQLite, WAL",
    "postgres": "PostgreSQL",
    "mariadb": "MariaDB",
    "locks": "Lock timeouts on PostgreSQL",
    "lint": "Lint's parser",
    "schema-record": "Schema record after every step",
    "changes": "Applying, change by change (issue 25)",
    "profile": "Applying, piece by piece",
}

FIGURES: list[tuple[str, Callable[[bool], list[Figure | Unmeasured]]]] = [
    ("start", lambda quick: [cold_start(1 if quick else 10, worker_running=True)]),
    ("start", lambda quick: [cold_start(1 if quick else 10, worker_running=False)]),
    ("start", lambda quick: [command_status(1 if quick else 10)]),
    ("latency", lambda quick: [sequential_latency(20 if quick else 1000, 1 if quick else 5)]),
    (
        "throughput",
        lambda quick: [nodes_throughput(1, 500 if quick else 20_000, 1 if quick else 5)],
    ),
    ("apply", lambda quick: apply_figures(20 if quick else 100, 1 if quick else 5)),
    ("apply", lambda quick: apply_figures(50 if quick else 1000, 1 if quick else 5)),
    ("apply", lambda quick: apply_figures(50 if quick else 1000, 1 if quick else 5, kind="sql")),
    (
        "apply",
        lambda quick: apply_figures(100 if quick else 10_000, 1 if quick else 3, with_status=True),
    ),
    ("dry-run", lambda quick: [dry_run_figure(50 if quick else 1000, 1 if quick else 5)]),
    ("kill", lambda quick: [kill_to_reply(2 if quick else 20)]),
    ("throughput", lambda quick: [nodes_throughput(4, 200 if quick else 5_000, 1 if quick else 5)]),
    ("throughput", lambda quick: [nodes_throughput(8, 100 if quick else 2_500, 1 if quick else 5)]),
    (
        "responsive",
        lambda quick: [status_during_migrate(1000 if quick else 10_000, 1 if quick else 3)],
    ),
    (
        "responsive",
        lambda quick: [
            *apply_figures(50 if quick else 1000, 1 if quick else 5, journal="wal"),
            *apply_figures(50 if quick else 1000, 1 if quick else 5, journal="delete"),
        ],
    ),
    (
        "responsive",
        lambda quick: [sequential_latency(20 if quick else 1000, 1 if quick else 5, pipes=True)],
    ),
    ("peers", lambda quick: peer_figures(20 if quick else 1000, 1 if quick else 3)),
    ("go-peers", lambda quick: go_peer_figures(20 if quick else 1000, 1 if quick else 5)),
    ("postgres", postgres_figures),
    ("mariadb", mariadb_figures),
    ("locks", lock_figures),
    ("lint", lambda quick: lint_import(1 if quick else 20)),
    ("changes", lambda quick: change_figures(20 if quick else 1000, 1 if quick else 7)),
    ("profile", lambda quick: profile_figures(20 if quick else 1000, 1 if quick else 7)),
    ("schema-record", lambda quick: schema_record_figures(50 if quick else 1000,
                                                         1 if quick else 5)),
    ("schema-record", lambda quick: schema_record_figures(100 if quick else 10_000,
                                                         1 if quick else 3)),
    ("schema-record", lambda quick: schema_record_figures(50 if quick else 1000, 1 if quick else 5,
                                                         server=POSTGRES_SERVER)),
    ("schema-record", lambda quick: schema_record_figures(50 if quick else 1000, 1 if quick else 5,
                                                         server=MARIADB_SERVER)),
]


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
        f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, SQLite {sqlite3.sqlite_version}"
        + "".join(f", {server}" for server in SERVERS)
    )


def markdown(figures: list[Figure | Unmeasured], quick: bool, only: list[str]) -> str:
    header = ["figure", "median (best, worst)", "floor, same run", "ratio", "aim", "how"]
    options = (" --quick" if quick else "") + "".join(f" --only {group}" for group in only)
    lines = [
        "## " + ", ".join(GROUPS[group] for group in only) if only else "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} by `python -m tests.benchmark"
        f"{options}` on {machine()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(figure.row()) + " |" for figure in figures]
    if NOT_INSTALLED:
        lines += ["", f"Not installed, so not measured: {', '.join(NOT_INSTALLED)}."]
    return "\n".join(lines) + "\n"


def write_table(path: Path, table: str, only: list[str]) -> None:
    """A full run's table is the whole file. An `--only` run's table is one section of it,
    headed by its groups' titles: it replaces the section of that heading, or is added at
    the end, and the rest of the file is kept."""
    if not only or not path.exists():
        path.write_text(f"# Benchmarks\n\n{table}" if only else table)
        return
    lines = path.read_text().rstrip("\n").splitlines(keepends=True)
    lines[-1] = lines[-1].rstrip("\n") + "\n"
    heading = table.splitlines(keepends=True)[0]
    start = lines.index(heading) if heading in lines else len(lines)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
    )
    before, after = "".join(lines[:start]), "".join(lines[end:])
    if start == len(lines):
        before += "\n"
    path.write_text(before + table + ("\n" + after if after else ""))


def main(argv: list[str] | None = None) -> int:
    global BASELINE_TREE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each measurement once, small")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=list(GROUPS),
        metavar="GROUP",
        help=f"run only this group of figures (repeatable): {', '.join(GROUPS)}",
    )
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=BASELINE_TREE,
        metavar="PATH",
        help="the checkout the schema-record group compares with (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    BASELINE_TREE = args.baseline_tree.resolve()
    only = [group for group in GROUPS if group in args.only]
    figures = []
    for group, measure in FIGURES:
        if only and group not in only:
            continue
        for figure in measure(args.quick):
            print(" | ".join(figure.row()), flush=True)
            figures.append(figure)
    table = markdown(figures, args.quick, only)
    if args.output:
        write_table(args.output, table, only)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
