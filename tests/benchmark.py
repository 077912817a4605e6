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

    def generate(self, count: int) -> Path:
        """`count` migrations, each creating one small table, as our node's files."""
        self.migrations = self.root / "migrations"
        self.migrations.mkdir()
        for version in range(1, count + 1):
            (self.migrations / f"{version:05d}_t{version}.py").write_text(
                f'def up(db):\n    db.execute("{create_table(version)}")\n\n\n'
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


def sequential_latency(count: int, runs: int) -> Figure:
    """One `status` at a time through a running node; the median of each run's round trips."""
    sandbox = Sandbox()
    node = sandbox.node()
    echo = EchoServer()

    def once() -> float:
        trips = []
        for msg_id in range(count):
            started = time.perf_counter()
            ask(node, {"type": "status", "msg_id": msg_id})
            trips.append((time.perf_counter() - started) * 1000)
        return statistics.median(trips)

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


def sqlite_floor(count: int) -> float:
    """The plain sqlite3 loop: per migration BEGIN IMMEDIATE, CREATE, INSERT, COMMIT (seconds)."""
    folder = Path(tempfile.mkdtemp(prefix="mnb-floor-"))
    try:
        connection = sqlite3.connect(folder / "floor.db", isolation_level=None)
        connection.execute("PRAGMA synchronous = FULL")  # our node's setting, rollback journal
        connection.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT,"
            " applied_at TEXT)"
        )
        started = time.perf_counter()
        for version in range(1, count + 1):
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(create_table(version))
            connection.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))",
                (version, f"t{version}"),
            )
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - started
        connection.close()
        return elapsed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class ApplyRun:
    seconds: float
    node_rss_mb: float
    worker_rss_mb: float
    status_ms: list[float]


def apply_once(count: int, status_trips: int) -> ApplyRun:
    """Apply `count` generated migrations with one `migrate` through a running node."""
    sandbox = Sandbox()
    sandbox.generate(count)
    os.sync()  # writing the generated files is set-up: its disk work is not the apply's
    node = sandbox.node()
    try:
        worker_pid = ask(node, {"type": "health", "msg_id": 0})["worker_pid"]
        started = time.perf_counter()
        reply = ask(node, {"type": "migrate", "msg_id": 1})
        seconds = time.perf_counter() - started
        assert reply.get("count") == count, str(reply)[:300]
        rss = peak_rss_mb(node.pid), peak_rss_mb(worker_pid)
        trips = []
        for msg_id in range(status_trips):
            started = time.perf_counter()
            ask(node, {"type": "status", "msg_id": msg_id})
            trips.append((time.perf_counter() - started) * 1000)
        node.stdin.close()
        node.wait()
        return ApplyRun(seconds, *rss, trips)
    finally:
        if node.poll() is None:
            node.kill()
        sandbox.close()


def apply_figures(count: int, runs: int, with_status: bool) -> list[Figure]:
    results: list[ApplyRun] = []

    def once() -> float:
        results.append(apply_once(count, 20 if with_status else 0))
        return results[-1].seconds

    samples, floors = interleaved(runs, once, lambda: sqlite_floor(count))
    figures = [
        Figure(
            f"apply {count:,} migrations",
            "one `migrate` through a running node; each migration creates one table",
            "s",
            samples,
            "plain sqlite3 loop, same journal and sync",
            floors,
            "<= 1.2x floor" if count >= 1000 else "(informative)",
        )
    ]
    if with_status:
        figures += [
            Figure(
                f"status, {count:,} migrations",
                "warm `status` round trip, all applied; median of 20 per run",
                "ms",
                [statistics.median(run.status_ms) for run in results],
                "bare pyzmq msgpack echo round trip, median",
                echo_latency_ms(100),
                "<= 50 ms",
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
    lambda quick: apply_figures(100 if quick else 10_000, 1 if quick else 3, with_status=True),
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
