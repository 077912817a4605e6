"""PyMySQL against mysqlclient: what each MySQL driver costs the MariaDB store.

    python -m tests.bench_drivers [--quick] [--repeats N]

Runs with whichever of the two drivers import under this interpreter (a missing one is
skipped, and said so), against one server (MYSQL_HOST, default 127.0.0.1; MYSQL_PORT,
3306; MYSQL_USER, root; MYSQL_PWD, empty), in a fresh database `mn_drivers_<hex>` that is
dropped at the end, even on error. Both drivers talk TCP to the same server with the same
statements, autocommit on, charset utf8mb4, default (buffered) cursors, as the store uses
PyMySQL. Operations:

    connect      open a connection and close it, the driver's defaults (20 per sample);
                 PyMySQL >= 1.2 prepares TLS ("preferred") by default: an SSLContext loading
                 the system's CA certificates on every connect, even when the server has none
    connect_no_tls   the same with TLS turned off in the call (PyMySQL ssl_disabled=True,
                 mysqlclient ssl_mode="DISABLED")
    select_1     `SELECT 1` and fetch its row: one round trip (5,000 per sample)
    insert       single-row INSERT into an InnoDB table, autocommitted (1,000 per sample)
    step         one migration step as the store runs it: BEGIN, CREATE TABLE tN, INSERT a
                 tracking row, INSERT ... SELECT a history row, COMMIT (200 per sample)
    fetch_100k   SELECT and fetchall of 100,000 rows of (INT, VARCHAR(50)) (1 per sample)

A sample is the mean time of one operation over a batch; each figure is the median of the
samples over the repeats. The repeats are interleaved (every operation for each driver in
turn, the order of the drivers swapped each repeat), so that noise on a shared machine falls
on both alike. Wall time is what a user waits; client CPU (this process's) is the driver's own
cost, which wall time hides behind the server's. `--quick` divides the counts by 10 and runs
2 repeats: a smoke test, not figures.
"""

from __future__ import annotations

import argparse
import importlib
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

DRIVERS = (("PyMySQL", "pymysql"), ("mysqlclient", "MySQLdb"))  # (name, module)
COUNTS = {"connect": 20, "connect_no_tls": 20, "select_1": 5_000, "insert": 1_000, "step": 200,
          "fetch_100k": 1}
FETCH_ROWS = 100_000
REPEATS = 5
QUICK_DIVISOR = 10
QUICK_REPEATS = 2
FILL_BATCH = 1_000  # rows per INSERT when filling the fetch table (outside the timing)

# The shape of the store's tracking and history tables and of its "record" and
# "record_event" statements (worker/stores/mariadb/store.py), trimmed to what a step writes.
TRACKING = """CREATE TABLE {name} (
    version BIGINT NOT NULL PRIMARY KEY, name TEXT NOT NULL, checksum VARCHAR(255) NOT NULL,
    applied_at VARCHAR(32) NOT NULL, execution_ms DOUBLE NOT NULL,
    applied_seq BIGINT NOT NULL, request_id VARBINARY(64)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
HISTORY = """CREATE TABLE {name} (
    seq BIGINT NOT NULL PRIMARY KEY, version BIGINT NOT NULL, name TEXT NOT NULL,
    action VARCHAR(64) NOT NULL, checksum VARCHAR(255) NOT NULL,
    started_at VARCHAR(32) NOT NULL, duration_ms DOUBLE NOT NULL, src TEXT,
    request_id VARBINARY(64), KEY by_request (request_id, action)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
RECORD = ("INSERT INTO {name} (version, name, checksum, applied_at, execution_ms, applied_seq,"
          " request_id) VALUES (%s, %s, %s, %s, %s, %s, %s)")
RECORD_EVENT = ("INSERT INTO {name} (seq, version, name, action, checksum, started_at,"
                " duration_ms, src, request_id) SELECT COALESCE(MAX(seq), 0) + 1,"
                " %s, %s, %s, %s, %s, %s, %s, %s FROM {name}")
STEP_TABLE = "CREATE TABLE {name} (id INTEGER PRIMARY KEY, name TEXT) ENGINE=InnoDB"
INSERTS = "CREATE TABLE inserts (id INT AUTO_INCREMENT PRIMARY KEY, n INT NOT NULL," \
          " s VARCHAR(50) NOT NULL) ENGINE=InnoDB"
ROWS = "CREATE TABLE fetch_rows (id INT NOT NULL PRIMARY KEY, s VARCHAR(50) NOT NULL)" \
       " ENGINE=InnoDB"


def server() -> dict[str, Any]:
    return {"host": os.environ.get("MYSQL_HOST", "127.0.0.1"),
            "port": int(os.environ.get("MYSQL_PORT", "3306")),
            "user": os.environ.get("MYSQL_USER", "root"),
            "password": os.environ.get("MYSQL_PWD", ""),
            "charset": "utf8mb4", "autocommit": True}


def installed() -> list[tuple[str, Any]]:
    """The drivers that import here, as (name, module); say which are skipped."""
    found = []
    for name, module in DRIVERS:
        try:
            found.append((name, importlib.import_module(module)))
        except ImportError as error:
            print(f"{name}: skipped, `import {module}` fails under {sys.executable}: {error}")
    return found


def connect(driver: Any, database: str | None, tls_off: bool = False) -> Any:
    extra: dict[str, Any] = {"database": database} if database else {}
    if tls_off and driver.__name__ == "pymysql":  # each driver's spelling of "no TLS"
        extra["ssl_disabled"] = True
    elif tls_off:
        extra["ssl_mode"] = "DISABLED"
    return driver.connect(**server(), **extra)


def time_batch(run: Callable[[], None], count: int) -> tuple[float, float]:
    """Seconds of wall time and of this process's CPU time per operation, for count of them."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


class Bench:
    """The operations for one driver, on the shared database; names unique per driver and run."""

    def __init__(self, name: str, driver: Any, database: str, counts: dict[str, int]):
        self.name, self.driver, self.database, self.counts = name, driver, database, counts
        self.tag = name.lower()
        self.runs = 0
        self.db = connect(driver, database)

    def close(self) -> None:
        self.db.close()

    def connect(self) -> tuple[float, float]:
        def run() -> None:
            for _ in range(self.counts["connect"]):
                connect(self.driver, self.database).close()
        return time_batch(run, self.counts["connect"])

    def connect_no_tls(self) -> tuple[float, float]:
        def run() -> None:
            for _ in range(self.counts["connect"]):
                connect(self.driver, self.database, tls_off=True).close()
        return time_batch(run, self.counts["connect"])

    def select_1(self) -> tuple[float, float]:
        cursor = self.db.cursor()

        def run() -> None:
            for _ in range(self.counts["select_1"]):
                cursor.execute("SELECT 1")
                cursor.fetchall()
        result = time_batch(run, self.counts["select_1"])
        cursor.close()
        return result

    def insert(self) -> tuple[float, float]:
        cursor = self.db.cursor()
        cursor.execute("TRUNCATE TABLE inserts")

        def run() -> None:
            for n in range(self.counts["insert"]):
                cursor.execute("INSERT INTO inserts (n, s) VALUES (%s, %s)", (n, f"row {n}"))
        result = time_batch(run, self.counts["insert"])
        cursor.close()
        return result

    def step(self) -> tuple[float, float]:
        self.runs += 1
        prefix = f"{self.tag}_{self.runs}"
        tracking, history = f"{prefix}_migrations", f"{prefix}_history"
        cursor = self.db.cursor()
        cursor.execute(TRACKING.format(name=tracking))
        cursor.execute(HISTORY.format(name=history))
        record, event = RECORD.format(name=tracking), RECORD_EVENT.format(name=history)
        count = self.counts["step"]

        def run() -> None:
            for version in range(1, count + 1):
                name, checksum, now = f"t{version}", "0" * 64, "2026-01-01T00:00:00.000000Z"
                cursor.execute("BEGIN")
                cursor.execute(STEP_TABLE.format(name=f"{prefix}_t{version}"))
                cursor.execute("BEGIN")  # the store's new BEGIN after a statement that commits
                cursor.execute(record, (version, name, checksum, now, 1.5, version, b"r" * 32))
                cursor.execute(event, (version, name, "apply", checksum, now, 1.5,
                                       "CREATE TABLE ...", b"r" * 32))
                cursor.execute("COMMIT")
        result = time_batch(run, count)
        names = [f"{prefix}_t{v}" for v in range(1, count + 1)] + [tracking, history]
        cursor.execute("DROP TABLE " + ", ".join(names))
        cursor.close()
        return result

    def fetch_100k(self) -> tuple[float, float]:
        cursor = self.db.cursor()

        def run() -> None:
            cursor.execute("SELECT id, s FROM fetch_rows")
            rows = cursor.fetchall()
            assert len(rows) == self.counts["fetch_rows"], len(rows)
        result = time_batch(run, 1)
        cursor.close()
        return result


OPERATIONS = ("connect", "connect_no_tls", "select_1", "insert", "step", "fetch_100k")


def fill(db: Any, rows: int) -> None:
    """The shared tables: the insert target and the rows to fetch (outside the timing)."""
    cursor = db.cursor()
    cursor.execute(INSERTS)
    cursor.execute(ROWS)
    for start in range(0, rows, FILL_BATCH):
        stop = min(rows, start + FILL_BATCH)
        batch = [(i, f"name {i:08d} " + "x" * 30) for i in range(start, stop)]
        cursor.executemany("INSERT INTO fetch_rows (id, s) VALUES (%s, %s)", batch)
    cursor.close()


def unit(seconds: float) -> str:
    if seconds >= 0.1:
        return f"{seconds * 1e3:,.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def table(names: list[str], samples: dict[tuple[str, str], list[tuple[float, float]]],
          counts: dict[str, int]) -> str:
    """Markdown: per operation, each driver's median wall time (best, worst), the ratio of the
    medians, and each driver's median client CPU."""
    def median(name: str, op: str, which: int) -> float:
        return statistics.median(sample[which] for sample in samples[name, op])

    def wall(name: str, op: str) -> str:
        walls = [w for w, _ in samples[name, op]]
        return f"{unit(median(name, op, 0))} ({unit(min(walls))}, {unit(max(walls))})"

    head = ["operation, per op"] + [f"{n} wall (best, worst)" for n in names]
    if len(names) == 2:
        head.append(f"{names[0]} / {names[1]}")
    head += [f"{n} client CPU" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for op in OPERATIONS:
        label = f"{op} (x {counts[op]:,})"
        if op == "fetch_100k":
            label = f"fetch {counts['fetch_rows']:,} rows (x 1)"
        row = [label] + [wall(n, op) for n in names]
        if len(names) == 2:
            row.append(f"{median(names[0], op, 0) / median(names[1], op, 0):.2f}x")
        row += [unit(median(n, op, 1)) for n in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="counts / 10, 2 repeats")
    parser.add_argument("--repeats", type=int, help=f"samples per figure (default {REPEATS})")
    args = parser.parse_args(argv)
    counts = dict(COUNTS, fetch_rows=FETCH_ROWS)
    repeats = args.repeats or REPEATS
    if args.quick:
        counts = {op: max(1, n // QUICK_DIVISOR) if op != "fetch_100k" else n
                  for op, n in counts.items()}
        repeats = args.repeats or QUICK_REPEATS
    drivers = installed()
    if not drivers:
        print("neither driver imports: nothing to measure")
        return 2
    database = f"mn_drivers_{secrets.token_hex(4)}"
    admin = connect(drivers[0][1], None)
    admin.cursor().execute(f"CREATE DATABASE {database}")
    benches: list[Bench] = []
    try:
        filler = connect(drivers[0][1], database)
        fill(filler, counts["fetch_rows"])
        filler.close()
        benches = [Bench(name, module, database, counts) for name, module in drivers]
        for bench in benches:
            cursor = bench.db.cursor()
            cursor.execute("SELECT VERSION()")
            version = cursor.fetchone()[0]
            cursor.close()
            where = f"{server()['host']}:{server()['port']}"
            print(f"{bench.name} {metadata.version(bench.name)} -> {version}"
                  f" at {where}, database {database}")
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for repeat in range(repeats):
            order = benches if repeat % 2 == 0 else benches[::-1]
            for op in OPERATIONS:
                for bench in order:
                    samples.setdefault((bench.name, op), []).append(getattr(bench, op)())
            print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr)
        print()
        print(f"Python {sys.version.split()[0]}, {repeats} repeats: medians;"
              " the ratio is of the wall medians")
        print()
        print(table([b.name for b in benches], samples, counts))
    finally:
        for bench in benches:
            bench.close()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {database}")
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
