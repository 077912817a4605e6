"""Benchmark: `python -m tests.benchmark [--quick] [--output BENCHMARKS.md]`.

Measures each figure next to its floor (what a bare program does on this machine, measured
in the same run) and prints the table, then writes it as markdown with the machine and date.
Machines here are shared and noisy, so every figure is a median over repeated runs (the min
is shown too) and the ratio to its floor is what to compare between runs. `--quick` runs
every measurement once at small sizes, so CI keeps this script working; no test asserts a
timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
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
from dataclasses import dataclass
from pathlib import Path

import zmq

from broker.client import WINDOW
from tests.processes import alive_owner, gone, lock_owner

PROJECT = Path(__file__).resolve().parent.parent
NODE = PROJECT / "node.py"


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

    def row(self) -> list[str]:
        ratio = self.median / self.floor if self.floor else float("nan")
        worst = min(self.samples) if self.higher_is_better else max(self.samples)
        best = max(self.samples) if self.higher_is_better else min(self.samples)
        return [
            self.name,
            f"{_num(self.median)} {self.unit} (best {_num(best)}, worst {_num(worst)})",
            f"{self.floor_name}: {_num(self.floor)} {self.unit}",
            f"{ratio:.2f}x",
            self.aim,
            self.how,
        ]


def _num(value: float) -> str:
    """Three significant digits at least: 0.213 ms, 4.81 s, 63,320 req/s."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


class Sandbox:
    """A temporary database and runtime directory; workers started in it are stopped at exit."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mnb-"))
        self.db = self.root / "bench.db"
        self.env = {**os.environ, "MIGRATIONS_RUNTIME_DIR": str(self.root / "run")}
        self.migrations: Path | None = None

    def generate(self, count: int, kind: str = "py") -> Path:
        """`count` migrations, each creating one small table, as our node's .py or .sql files."""
        self.migrations = self.root / "migrations"
        self.migrations.mkdir()
        for version in range(1, count + 1):
            migration_path(self.migrations, version, kind).write_text(
                f"-- migrate:up\nCREATE TABLE t{version} (id INTEGER);\n"
                f"-- migrate:down\nDROP TABLE t{version};\n"
                if kind == "sql"
                else f'def up(db):\n    db.execute("{create_table(version)}")\n\n\n'
                f'def down(db):\n    db.execute("DROP TABLE t{version}")\n'
            )
        return self.migrations

    def stop_worker(self) -> None:
        """SIGTERM the database's worker and wait until it has gone."""
        pid = alive_owner(self.db)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        while not gone(pid):
            time.sleep(0.005)  # waiting for another process to exit: nothing to poll on

    def node(self, *args: str) -> subprocess.Popen:
        if self.migrations is not None:
            args = ("--migrations", str(self.migrations), *args)
        return subprocess.Popen(
            [sys.executable, str(NODE), "--db", str(self.db), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # restarts are logged there on purpose
            env=self.env,
            cwd=self.root,
        )

    def worker_pid(self) -> int:
        pid = lock_owner(self.db)
        assert pid is not None, "no worker owns the database"
        return pid

    def close(self) -> None:
        pid = alive_owner(self.db)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


def create_table(version: int) -> str:
    return f"CREATE TABLE t{version} (id INTEGER PRIMARY KEY, name TEXT)"


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
    """Samples of a figure and of its floor, taken in turns so that both see the same noise.

    Who goes first alternates, and pending writes are flushed before each sample, so neither
    pays for the other's disk work (deleting a database of 10,000 tables, say).
    """
    samples, floors = [], []
    for run in range(runs):
        for measure, into in ((floor, floors), (ours, samples))[:: 1 if run % 2 else -1]:
            os.sync()
            into.append(measure())
    return samples, floors


def cold_start(runs: int, worker_running: bool) -> Figure:
    """From starting node.py to its first `status` reply."""
    sandbox = Sandbox()

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

    try:
        once()  # warms the disk cache
        samples, floors = interleaved(runs, once, lambda: process_once("zmq, msgpack"))
    finally:
        sandbox.close()
    return Figure(
        f"cold start, {'worker running' if worker_running else 'no worker'}",
        "start `python node.py`, write one `status`, time to its reply",
        "ms",
        samples,
        "python -c 'import zmq, msgpack' (whole process)",
        floors,
        "<= 1.5x floor" if worker_running else "<= 2.5x floor",
    )


def round_trips_ms(node: subprocess.Popen, kind: str, count: int) -> list[float]:
    """`count` requests of type `kind`, one at a time; each round trip in milliseconds."""
    trips = []
    for msg_id in range(count):
        started = time.perf_counter()
        ask(node, {"type": kind, "msg_id": msg_id})
        trips.append((time.perf_counter() - started) * 1000)
    return trips


def sequential_latency(count: int, runs: int) -> Figure:
    """One `status` at a time through a running node; the median of each run's round trips."""
    sandbox = Sandbox()
    node = sandbox.node()
    echo = EchoServer()

    def once() -> float:
        return statistics.median(round_trips_ms(node, "status", count))

    try:
        once()
        samples, floors = interleaved(runs, once, lambda: echo.round_trip_ms(count))
        node.stdin.close()
        node.wait()
    finally:
        echo.close()
        sandbox.close()
    return Figure(
        "sequential latency",
        f"one `status` at a time through a running node, median of {count}",
        "ms",
        samples,
        "bare pyzmq msgpack echo round trip, median",
        floors,
        "<= 2x floor",
    )


def sqlite_floor(count: int, kind: str = "py") -> float:
    """The plain sqlite3 loop: per migration BEGIN IMMEDIATE, CREATE, INSERT, COMMIT (seconds).

    With kind "sql" the loop reads each migration's statements from the same generated .sql
    files the node gets, splitting each file's up section at `;`.
    """
    sandbox = Sandbox()
    files = sandbox.generate(count, kind) if kind == "sql" else None
    if files:
        os.sync()  # writing the generated files is set-up, as in apply_once
    try:
        connection = sqlite3.connect(sandbox.db, isolation_level=None)
        connection.execute("PRAGMA synchronous = FULL")  # our node's setting, rollback journal
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
            connection.execute("BEGIN IMMEDIATE")
            for statement in statements:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))",
                (version, f"t{version}"),
            )
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.close()
        return elapsed
    finally:
        sandbox.close()


@dataclass
class ApplyRun:
    seconds: float
    node_rss_mb: float
    worker_rss_mb: float
    status_ms: list[float]
    validate_ms: list[float]


def apply_once(count: int, read_trips: int, kind: str = "py", dry_run: bool = False) -> ApplyRun:
    """Apply `count` generated migrations with one `migrate` through a running node, then time
    `read_trips` warm `status` and `validate` round trips. A dry run must leave all pending."""
    sandbox = Sandbox()
    sandbox.generate(count, kind)
    os.sync()  # writing the generated files is set-up: its disk work is not the apply's
    node = sandbox.node()
    try:
        worker_pid = ask(node, {"type": "health", "msg_id": 0})["worker_pid"]
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
        return ApplyRun(seconds, *rss, status_trips, validate_trips)
    finally:
        if node.poll() is None:
            node.kill()
        sandbox.close()


def apply_figures(
    count: int, runs: int, with_status: bool = False, kind: str = "py"
) -> list[Figure]:
    """Applying `count` generated .py (or .sql) migrations; `with_status`: then the warm
    reads of all of them applied, and the peak memory of node and worker."""
    results: list[ApplyRun] = []
    sql = kind == "sql"

    def once() -> float:
        results.append(apply_once(count, 20 if with_status else 0, kind))
        return results[-1].seconds

    samples, floors = interleaved(runs, once, lambda: sqlite_floor(count, kind))
    figures = [
        Figure(
            f"apply {count:,} {'.sql ' if sql else ''}migrations",
            f"one `migrate` through a running node; each {'.sql file' if sql else 'migration'}"
            " creates one table",
            "s",
            samples,
            f"plain sqlite3 loop{' reading the same .sql files' if sql else ''},"
            " same journal and sync",
            floors,
            ("<= 1.15x floor" if sql else "<= 1.2x floor") if count >= 1000 else "(informative)",
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


def peer_figures(count: int, runs: int) -> list[Figure]:
    """The same apply and cold status work through the tools users would pick instead."""
    from tests import bench_peers

    figures = []
    for tool, measure in (
        ("alembic", bench_peers.measure_alembic),
        ("yoyo-migrations", bench_peers.measure_yoyo),
    ):
        result = measure(count, runs)
        if result is None:
            print(f"{tool}: not installed (pip install '.[bench]')", flush=True)
            NOT_INSTALLED.append(tool)
            continue
        figures += [
            Figure(
                f"peer {result.tool}: apply {count:,} migrations",
                "its own CLI, one process applies all; each migration creates one table",
                "s",
                result.apply_seconds,
                "plain sqlite3 loop, same journal and sync",
                [sqlite_floor(count) for _ in range(runs)],
                "(compare: apply 1,000 above)",
            ),
            Figure(
                f"peer {result.tool}: cold status",
                "its own CLI's status command as a whole process, all applied",
                "ms",
                result.status_ms,
                "python -c 'import zmq, msgpack' (whole process)",
                [process_once("zmq, msgpack") for _ in range(runs)],
                "(compare: cold start above)",
            ),
        ]
    return figures


FIGURES: list[Callable[[bool], list[Figure]]] = [
    lambda quick: [cold_start(1 if quick else 10, worker_running=True)],
    lambda quick: [cold_start(1 if quick else 10, worker_running=False)],
    lambda quick: [sequential_latency(20 if quick else 1000, 1 if quick else 5)],
    lambda quick: [nodes_throughput(1, 500 if quick else 20_000, 1 if quick else 5)],
    lambda quick: apply_figures(20 if quick else 100, 1 if quick else 5, with_status=False),
    lambda quick: apply_figures(50 if quick else 1000, 1 if quick else 5, with_status=False),
    lambda quick: apply_figures(50 if quick else 1000, 1 if quick else 5, kind="sql"),
    lambda quick: apply_figures(100 if quick else 10_000, 1 if quick else 3, with_status=True),
    lambda quick: [dry_run_figure(50 if quick else 1000, 1 if quick else 5)],
    lambda quick: [kill_to_reply(2 if quick else 20)],
    lambda quick: [nodes_throughput(4, 200 if quick else 5_000, 1 if quick else 5)],
    lambda quick: [nodes_throughput(8, 100 if quick else 2_500, 1 if quick else 5)],
    lambda quick: peer_figures(20 if quick else 1000, 1 if quick else 3),
]


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, "
        f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, SQLite {sqlite3.sqlite_version}"
    )


def markdown(figures: list[Figure], quick: bool) -> str:
    header = ["figure", "median (best, worst)", "floor, same run", "ratio", "aim", "how"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} by `python -m tests.benchmark"
        f"{' --quick' if quick else ''}` on {machine()}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(figure.row()) + " |" for figure in figures]
    if NOT_INSTALLED:
        lines += ["", f"Not installed, so not measured: {', '.join(NOT_INSTALLED)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each measurement once, small")
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    figures = []
    for measure in FIGURES:
        for figure in measure(args.quick):
            print(" | ".join(figure.row()), flush=True)
            figures.append(figure)
    table = markdown(figures, args.quick)
    if args.output:
        args.output.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
