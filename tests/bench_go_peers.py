"""Go peers for the benchmark: dbmate and sql-migrate applying N generated migrations to a new
SQLite file in WAL mode, once as shipped and once with `_sync=FULL`.

`tests/benchmark.py` imports this module for its `go-peers` group. Each apply runs in a fresh
temporary directory (removed afterwards, even on error):

1. N migrations are generated (outside the timing); migration i creates one small table,
   `CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT)`, and its down section drops it.
2. ONE process of the tool applies all N to a new SQLite file `bench.db`; the sample is its
   wall time (`time.perf_counter()` around `subprocess.run`, as for the Python peers).
3. Outside the timing, the file is checked to hold all N tables and to be in WAL mode.

How each tool is run (both tools' own files, in the directory layout their docs show):

- dbmate: `dbmate --url sqlite:DSN --migrations-dir DIR/db/migrations --no-dump-schema up`,
  files `NNNN_tI.sql` with `-- migrate:up` / `-- migrate:down` sections. npm's package
  (`tests/tool_binaries.py` finds it) is a node launcher that spawns the Go binary of its
  platform's package; that binary is run directly, so node's start-up (about 0.1 s) is not
  counted against dbmate, as the start-up of our node and worker is not counted in ours.
- sql-migrate: `sql-migrate up -config=DIR/dbconfig.yml -env=bench`, the config saying
  `dialect: sqlite3`, `datasource: DSN`, `dir: DIR/migrations`; files `NNNN_tI.sql` with
  `-- +migrate Up` / `-- +migrate Down` sections.

Both apply each migration in its own transaction, its tracking row committed with it, as our
node does. Both reach SQLite through mattn/go-sqlite3 (dbmate 2.36's binary embeds v1.14.42
and its own SQLite; Debian's sql-migrate, git 2019-12-13, was built with v1.14.16 on the
system's libsqlite3), and both hand the DSN after `sqlite:` / in `datasource` to that driver
unchanged, so one DSN works for both. The database is put in WAL mode the way a user of
either tool does it, with the driver's DSN parameter `_journal_mode=WAL` on a file that does
not exist yet (the file is WAL when the tool is done, checked after every apply).

Durability, the two settings (DSNs as `bench.db?...`):

- as shipped, `?_journal_mode=WAL`: synchronous is not touched, and mattn/go-sqlite3 then
  runs `PRAGMA synchronous = NORMAL` on every connection it opens (its default, whatever
  SQLite's). In WAL that means a commit is not fsynced: the WAL is synced only at a
  checkpoint, so an applied migration, its tracking row included, can vanish in a power cut
  or an OS crash, though not in a crash of the process.
- `_sync=FULL`, `?_journal_mode=WAL&_sync=FULL`: the driver's own parameter (`_synchronous`
  is its long name, same effect) runs `PRAGMA synchronous = FULL`: each commit syncs the WAL,
  as our worker's does.

Evidence, `strace -f -c -e trace=fsync,fdatasync,sync_file_range` around one apply of 100
and of 1,000 migrations into a new file (`python -m tests.bench_go_peers` counts it again):

    tool         setting      100 migrations   1,000 migrations   per migration
    dbmate       as shipped     8 fsync          23 fsync          0.02
    dbmate       _sync=FULL   109 fsync       1,024 fsync          1.02
    sql-migrate  as shipped     6 fdatasync      21 fdatasync      0.02
    sql-migrate  _sync=FULL   107 fdatasync   1,022 fdatasync      1.02
    our node     (WAL, its synchronous = FULL)  108 fdatasync for 100: 1.08

(dbmate's embedded SQLite calls fsync, the system's library fdatasync.) Without
`_journal_mode=WAL` both stay in the rollback journal and sync three times a migration
(303 for 100). So only the `_sync=FULL` runs are at our durability; the figures as shipped
are there to show what the default buys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests import tool_binaries
from tests.bench_peers import check_applied, create_table, timed_run

log = logging.getLogger(__name__)

TOOLS = ("dbmate", "sql-migrate")


@dataclass(frozen=True)
class Setting:
    name: str  # as the figures name it
    dsn_query: str  # what follows the file name in the DSN
    durable: bool  # each commit synced, as our worker's


SETTINGS = (
    Setting("as shipped", "_journal_mode=WAL", durable=False),
    Setting("_sync=FULL", "_journal_mode=WAL&_sync=FULL", durable=True),
)


@dataclass(frozen=True)
class GoTool:
    name: str  # "dbmate", "sql-migrate"
    program: Path  # the Go binary itself
    version: str  # as its --version says it


def installed(name: str) -> GoTool | None:
    """The tool `name` (one of TOOLS) where tool_binaries finds it, or None."""
    found = tool_binaries.find(name)
    if found is None:
        return None
    program = tool_binaries.go_binary(found)
    return GoTool(name, program, _version(program))


def _version(program: Path) -> str:
    # dbmate prints "dbmate version 2.36.0" on stdout, sql-migrate "1.0.0" on stderr.
    done = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                          timeout=30)
    words = (done.stdout + done.stderr).split()
    return words[-1] if words else "(version unknown)"


def _write_migrations(folder: Path, n: int, up: str, down: str) -> None:
    """N .sql files with the tool's `up` and `down` markers; zero-padded names, so that file
    order is apply order."""
    folder.mkdir(parents=True)
    width = max(4, len(str(n)))
    for i in range(1, n + 1):
        (folder / f"{i:0{width}d}_t{i}.sql").write_text(
            f"{up}\n{create_table(i)};\n{down}\nDROP TABLE t{i};\n")


def _dbmate_project(program: Path, root: Path, dsn: str, n: int) -> list[str]:
    folder = root / "db" / "migrations"
    _write_migrations(folder, n, "-- migrate:up", "-- migrate:down")
    return [str(program), "--url", f"sqlite:{dsn}", "--migrations-dir", str(folder),
            "--no-dump-schema", "up"]


def _sql_migrate_project(program: Path, root: Path, dsn: str, n: int) -> list[str]:
    folder = root / "migrations"
    _write_migrations(folder, n, "-- +migrate Up", "-- +migrate Down")
    config = root / "dbconfig.yml"
    # JSON strings are YAML's double-quoted scalars: "?" and "&" stay literal.
    config.write_text(f"bench:\n  dialect: sqlite3\n  datasource: {json.dumps(dsn)}\n"
                      f"  dir: {json.dumps(str(folder))}\n")
    return [str(program), "up", f"-config={config}", "-env=bench"]


# Tool name -> writes its project for N migrations and returns its apply command.
_PROJECTS: dict[str, Callable[[Path, Path, str, int], list[str]]] = {
    "dbmate": _dbmate_project,
    "sql-migrate": _sql_migrate_project,
}


@contextlib.contextmanager
def _project(tool: GoTool, setting: Setting, n: int) -> Iterator[tuple[list[str], Path]]:
    """A fresh directory holding the tool's N migrations: yields the apply command and the
    database file it will create; removes the directory afterwards, even on error."""
    root = Path(tempfile.mkdtemp(prefix=f"mnb-{tool.name}-"))
    try:
        database = root / "bench.db"
        dsn = f"{database}?{setting.dsn_query}"
        yield _PROJECTS[tool.name](tool.program, root, dsn, n), database
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_wal(database: Path) -> None:
    """Fail loudly if the DSN's journal mode did not take (the figure would not be WAL's)."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"{database}: journal_mode {mode} after apply, not wal")


def apply_seconds(tool: GoTool, setting: Setting, n: int) -> float:
    """The wall time of one process of `tool` applying N migrations to a new WAL database."""
    with _project(tool, setting, n) as (command, database):
        os.sync()  # writing the generated files is set-up: its disk work is not the apply's
        seconds = timed_run(command, database.parent)
        check_applied(database, n)
        _check_wal(database)
    return seconds


def syncs_per_migration(tool: GoTool, setting: Setting, n: int) -> float:
    """fsync, fdatasync and sync_file_range calls of one apply of N, per migration, as
    `strace -f -c` counts them."""
    with _project(tool, setting, n) as (command, database):
        counts = database.parent / "strace.txt"
        subprocess.run(["strace", "-f", "-c", "-e", "trace=fsync,fdatasync,sync_file_range",
                        "-o", str(counts), *command], cwd=database.parent, check=True,
                       capture_output=True)
        check_applied(database, n)
        return _strace_total(counts.read_text()) / n


def _strace_total(summary: str) -> int:
    """The calls column of the `total` line of `strace -c`'s summary (0 when none)."""
    match = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total$", summary, re.M)
    return int(match.group(1)) if match else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    for name in TOOLS:
        tool = installed(name)
        if tool is None:
            log.info("%s: not installed (%s)", name, tool_binaries.INSTALL[name])
            continue
        for setting in SETTINGS:
            log.info("%s %s, %s (DSN bench.db?%s): %.2f syncs a migration", tool.name,
                     tool.version, setting.name, setting.dsn_query,
                     syncs_per_migration(tool, setting, count))
