"""Peer figures for the benchmark: alembic and yoyo-migrations on a SQLite file, or on a
fresh database of a PostgreSQL server.

`tests/benchmark.py` imports this module to set our node next to the migration tools users
would otherwise pick, and takes its fresh PostgreSQL databases from here (`postgres_database`),
so that ours, the plain loop and the peers are set up alike. Each tool is measured the way a
user runs it: whole processes of its own CLI, started with `sys.executable` so the interpreter
(and venv) is the one the benchmark runs under. For each run, in a fresh temporary directory
(removed afterwards, even on error), and with a server in a fresh database with a unique name
(dropped afterwards `WITH (FORCE)`, even on error):

1. N migrations are generated (outside the timing); migration i creates one small table,
   `CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT)`, and its downgrade/rollback drops it.
2. apply: ONE CLI process applies all N to an empty SQLite file in that directory, or to the
   empty database over TCP; the sample is its wall time (`apply_seconds`).
3. status: ONE cold CLI process reports the state of the fully applied database;
   the sample is its wall time (`status_ms`).

Both timings are `time.perf_counter()` around `subprocess.run(..., check=True,
capture_output=True)`, so they include interpreter start-up and the tool's imports, as ours do.
After the apply, the database is checked (outside the timing) to hold all N tables. On
PostgreSQL both tools are given `postgresql+psycopg://` URLs: psycopg 3 is the driver installed
(SQLAlchemy's and yoyo's plain `postgresql://` mean psycopg2).

How each tool is run:

- alembic: `python -m alembic -c DIR/alembic.ini upgrade head`, then `... current`. The
  environment is generated here: an `alembic.ini` (script_location, sqlalchemy.url), an
  `env.py` doing the standard online migration (`context.configure(connection=...,
  target_metadata=None, transaction_per_migration=True)` then `with
  context.begin_transaction(): context.run_migrations()`), and N revision files in
  `versions/` forming a linear chain, each using `op.execute`.
- yoyo: `python -c "...yoyo.scripts.main.main()" apply --batch --no-config-file
  --database URL DIR`, then `... list ...` with the same options. That is exactly
  what yoyo's console script runs, but it does not depend on finding the `yoyo` script on
  PATH or next to the interpreter; `python -m yoyo` is avoided because its `__main__` drops
  main()'s exit code. `--no-config-file` keeps any yoyo.ini out, read or written. Migrations are
  `NNNN_tI.py` files holding `steps = [step("CREATE ...", "DROP ...")]`.

Fairness notes (our node commits each migration in its own transaction):

- alembic: `transaction_per_migration=True`, its documented setting for a transaction per
  migration. On PostgreSQL (`transactional_ddl = True`) the default would run the whole
  upgrade in one transaction; with it, each migration commits its DDL with its
  `alembic_version` UPDATE (one commit per migration, as pg_stat_database counts them). For
  SQLite the setting changes nothing: alembic sets `transactional_ddl = False` there, so the
  `begin_transaction()` in env.py opens no outer transaction and alembic opens one block per
  migration either way. It is NOT one transaction for the whole upgrade. Under Python's
  sqlite3 driver in its default (legacy) transaction mode, as SQLAlchemy leaves it, no BEGIN
  precedes the CREATE TABLE, so it autocommits on its own; then BEGIN / UPDATE
  alembic_version / COMMIT follows: two commits per migration (seen with a statement trace
  under alembic 1.20 / SQLAlchemy 2.1 / Python 3.11).
- yoyo: per migration, on either backend, the step runs in its own transaction on a second
  connection (SQLite: shared cache), then a `_yoyo_log` row is autocommitted and a
  `_yoyo_migration` row committed: three commits per migration (pg_stat_database counts about
  four on PostgreSQL), all under a row in yoyo's lock table.
- Durability: neither tool's SQLite settings are touched (no journal_mode or synchronous
  pragma), so each runs with the defaults it leaves in place, as a user gets them (with this
  Python's SQLite: journal_mode=delete, synchronous=FULL). On PostgreSQL the server's
  settings hold for all (synchronous_commit on, unless the server says otherwise).
- Compilation: neither tool writes `__pycache__` for its migration files (both load them with
  their own importlib loaders), so every process, the status one too, compiles all N files.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Distribution name -> importable top-level module, for both tools.
_TOOLS: dict[str, str] = {"alembic": "alembic", "yoyo-migrations": "yoyo"}

# A hung tool must not stall the whole benchmark; generous, as 1000+ migrations take a while.
_TIMEOUT_SECONDS = 900.0

# yoyo's console script body, so `sys.executable` runs it wherever the package is installed.
_YOYO_MAIN = "import sys; from yoyo.scripts.main import main; sys.exit(main())"

# The local server, over TCP, for ours, the plain loop and the peers alike.
POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
MARIADB_SERVER = "mysql://root@127.0.0.1:3306"  # user root, empty password
_CONNECT_TIMEOUT_SECONDS = 5


@dataclass
class PeerResult:
    tool: str  # "alembic 1.x.y" / "yoyo-migrations 9.x" (name + installed version)
    apply_seconds: list[float]  # per run: wall time of applying all N migrations, whole process
    status_ms: list[float]  # per run: wall time of one cold status command, all N applied


def _installed_version(dist: str, module: str) -> str | None:
    """The installed version of `dist`, or None when it is missing or `module` can't be found.

    Neither step imports the tool: the metadata lookup reads dist-info, and find_spec on a
    top-level name only locates it.
    """
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    # Metadata can outlive a half-removed package; the CLI needs the module itself.
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return version if found else None


def available() -> dict[str, str | None]:
    """{"alembic": version or None, "yoyo-migrations": version or None}."""
    return {dist: _installed_version(dist, module) for dist, module in _TOOLS.items()}


def timed_run(cmd: Sequence[str], cwd: Path) -> float:
    """Run `cmd` to completion as a whole process; return its wall time in seconds."""
    start = time.perf_counter()
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=_TIMEOUT_SECONDS)
    except subprocess.CalledProcessError as exc:
        # CalledProcessError's message omits the tool's own explanation; log it first.
        stderr = (exc.stderr or b"").decode(errors="replace")
        log.error("%s failed (exit %s):\n%s", " ".join(cmd), exc.returncode, stderr[-4000:])
        raise
    return time.perf_counter() - start


def postgres_problem(server: str = POSTGRES_SERVER) -> str | None:
    """Why nothing can be measured on `server` ("no server at ..."), or None when it answers."""
    try:
        import psycopg
    except ImportError:
        return "psycopg not installed (pip install '.[postgres]')"
    try:
        psycopg.connect(f"{server}/postgres", connect_timeout=_CONNECT_TIMEOUT_SECONDS).close()
    except psycopg.OperationalError as exc:
        # libpq's first line ends with the cause: "... port 5432 failed: Connection refused".
        reason = (str(exc).strip().splitlines() or [""])[0].rpartition(": ")[2]
        return f"no server at {server.partition('@')[2]} ({reason or type(exc).__name__})"
    return None


def _admin(server: str, statement: str) -> None:
    """Run one statement that cannot run in a transaction in the server's `postgres` database."""
    import psycopg

    with psycopg.connect(
        f"{server}/postgres", autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS
    ) as admin:
        admin.execute(statement)


@contextlib.contextmanager
def postgres_database(server: str = POSTGRES_SERVER) -> Iterator[str]:
    """A fresh database with a unique name on `server`, for one measurement: yields its URL,
    and drops it afterwards, even on error, whoever is still connected (WITH (FORCE))."""
    name = f"mnb_{secrets.token_hex(6)}"
    _admin(server, f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        _admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def mariadb_connect(server: str = MARIADB_SERVER, database: str | None = None,
                    autocommit: bool = True) -> Any:
    """A PyMySQL connection to `server` (and `database`), read from the URL by
    broker/mysql_url.py as the worker reads it."""
    import pymysql

    from broker import mysql_url

    args = mysql_url.connect_args(f"{server}/{database or 'mysql'}")  # it needs one
    args.update(database=database, autocommit=autocommit,
                connect_timeout=_CONNECT_TIMEOUT_SECONDS, password=args["password"] or "")
    return pymysql.connect(**args)


def mariadb_problem(server: str = MARIADB_SERVER) -> str | None:
    """Why nothing can be measured on the MariaDB/MySQL `server`, or None when it answers."""
    try:
        import pymysql
    except ImportError:
        return "PyMySQL not installed (pip install '.[mariadb]')"
    try:
        mariadb_connect(server).close()
    except pymysql.err.OperationalError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else type(exc).__name__
        return f"no server at {server.partition('@')[2]} ({reason})"
    return None


@contextlib.contextmanager
def mariadb_database(server: str = MARIADB_SERVER, prefix: str = "mnb") -> Iterator[str]:
    """A fresh database with a unique name on the MariaDB/MySQL `server`: yields its URL,
    and drops it afterwards, even on error."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with contextlib.closing(mariadb_connect(server)) as admin:
        admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"{server}/{name}"
    finally:
        with contextlib.closing(mariadb_connect(server)) as admin:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")


def _table_names(database: Path | str) -> set[str]:
    """The tables of a SQLite file, or of the public schema at a PostgreSQL URL."""
    if isinstance(database, str):
        import psycopg

        with psycopg.connect(database, connect_timeout=_CONNECT_TIMEOUT_SECONDS) as conn:
            query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            return {row[0] for row in conn.execute(query)}
    # closing(): sqlite3's own context manager only commits, it would leave the file open.
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


def check_applied(database: Path | str, n: int) -> None:
    """Fail loudly if the apply did not create all N tables (a silent no-op would look fast)."""
    names = _table_names(database)
    missing = [i for i in range(1, n + 1) if f"t{i}" not in names]
    if missing:
        raise RuntimeError(f"{database}: {len(missing)} of {n} tables missing after apply")


def create_table(version: int) -> str:
    """Migration `version`'s up statement, the same for ours, the plain loop and every peer."""
    return f"CREATE TABLE t{version} (id INTEGER PRIMARY KEY, name TEXT)"


def py_migration(version: int) -> str:
    """Migration `version` as our node's .py file: create_table(), and a down dropping it."""
    return (f'def up(db):\n    db.execute("{create_table(version)}")\n\n\n'
            f'def down(db):\n    db.execute("DROP TABLE t{version}")\n')


def _sqlite_url(db: Path) -> str:
    # An absolute path after "sqlite:///" gives the four-slash form both tools read as absolute.
    return f"sqlite:///{db}"


_ALEMBIC_ENV = '''\
"""Standard online migration, written by tests/bench_peers.py."""

from sqlalchemy import engine_from_config, pool

from alembic import context

config = context.config
connectable = engine_from_config(
    config.get_section(config.config_ini_section, {}),
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with connectable.connect() as connection:
    context.configure(
        connection=connection, target_metadata=None, transaction_per_migration=True
    )
    with context.begin_transaction():
        context.run_migrations()
'''

_ALEMBIC_REVISION = '''\
"""t{i}"""

from alembic import op

revision = "{rev}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT)")


def downgrade() -> None:
    op.execute("DROP TABLE t{i}")
'''


def _alembic_revision_id(i: int) -> str:
    return f"{i:012x}"


def _write_alembic_project(root: Path, url: str, n: int) -> Path:
    """Write alembic.ini, env.py and N chained revisions under `root`; return the ini path."""
    script_dir = root / "alembic"
    versions = script_dir / "versions"
    versions.mkdir(parents=True)
    (script_dir / "env.py").write_text(_ALEMBIC_ENV)
    ini = root / "alembic.ini"
    # configparser interpolates "%", so escape it in paths. path_separator silences a warning
    # from alembic >= 1.16 and is ignored by older releases.
    ini.write_text(
        "[alembic]\n"
        f"script_location = {str(script_dir).replace('%', '%%')}\n"
        "path_separator = os\n"
        f"sqlalchemy.url = {url.replace('%', '%%')}\n"
    )
    for i in range(1, n + 1):
        down = repr(_alembic_revision_id(i - 1)) if i > 1 else "None"
        rev = _alembic_revision_id(i)
        (versions / f"{rev}_t{i}.py").write_text(_ALEMBIC_REVISION.format(i=i, rev=rev, down=down))
    return ini


def measure_alembic(n: int, runs: int, server: str | None = None) -> PeerResult | None:
    """Time `alembic upgrade head` over N revisions and a cold `alembic current`, on SQLite or
    on a fresh database of `server`; None if absent."""

    def commands(root: Path, url: str) -> tuple[list[str], list[str]]:
        ini = _write_alembic_project(root, url, n)
        base = [sys.executable, "-m", "alembic", "-c", str(ini)]
        return [*base, "upgrade", "head"], [*base, "current"]

    return _measure("alembic", n, runs, commands, server)


_YOYO_MIGRATION = '''\
"""t{i}"""

from yoyo import step

steps = [
    step(
        "CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT)",
        "DROP TABLE t{i}",
    )
]
'''


def _write_yoyo_migrations(directory: Path, n: int) -> None:
    """Write N yoyo migrations; zero-padded names so file order is apply order."""
    directory.mkdir()
    width = max(4, len(str(n)))
    for i in range(1, n + 1):
        (directory / f"{i:0{width}d}_t{i}.py").write_text(_YOYO_MIGRATION.format(i=i))


def measure_yoyo(n: int, runs: int, server: str | None = None) -> PeerResult | None:
    """Time `yoyo apply` over N migrations and a cold `yoyo list`, on SQLite or on a fresh
    database of `server`; None if absent."""

    def commands(root: Path, url: str) -> tuple[list[str], list[str]]:
        migrations = root / "migrations"
        _write_yoyo_migrations(migrations, n)
        options = ["--batch", "--no-config-file", "--database", url]
        base = [sys.executable, "-c", _YOYO_MAIN]
        apply_command = [*base, "apply", *options, str(migrations)]
        return apply_command, [*base, "list", *options, str(migrations)]

    return _measure("yoyo-migrations", n, runs, commands, server)


def _measure(
    tool: str,
    n: int,
    runs: int,
    commands: Callable[[Path, str], tuple[list[str], list[str]]],
    server: str | None = None,
) -> PeerResult | None:
    """Per run, in a fresh directory (and a fresh database of `server`, if given):
    `commands(root, url)` writes the tool's project and returns its apply and status
    commands, given the URL the tool reads; both are timed as whole processes."""
    version = available()[tool]
    if version is None:
        return None
    result = PeerResult(tool=f"{tool} {version}", apply_seconds=[], status_ms=[])
    for _ in range(runs):
        with contextlib.ExitStack() as cleanup:
            root = Path(tempfile.mkdtemp(prefix=f"mnb-{tool}-"))
            cleanup.callback(shutil.rmtree, root, ignore_errors=True)
            database: Path | str = root / "bench.db"
            url = _sqlite_url(root / "bench.db")
            if server is not None:
                database = cleanup.enter_context(postgres_database(server))
                url = database.replace("postgresql://", "postgresql+psycopg://", 1)
            apply_command, status_command = commands(root, url)
            result.apply_seconds.append(timed_run(apply_command, root))
            check_applied(database, n)
            result.status_ms.append(timed_run(status_command, root) * 1000.0)
    return result


def _log_result(name: str, result: PeerResult | None) -> None:
    if result is None:
        log.info("%s: not installed", name)
        return
    apply = ", ".join(f"{s:.2f}" for s in result.apply_seconds)
    status = ", ".join(f"{s:.0f}" for s in result.status_ms)
    log.info("%s: apply %s s; status %s ms", result.tool, apply, status)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("installed: %s", available())
    _log_result("alembic", measure_alembic(100, 1))
    _log_result("yoyo-migrations", measure_yoyo(100, 1))
    problem = postgres_problem()
    if problem is not None:
        log.info("PostgreSQL: %s", problem)
    else:
        _log_result("alembic on PostgreSQL", measure_alembic(100, 1, POSTGRES_SERVER))
        _log_result("yoyo-migrations on PostgreSQL", measure_yoyo(100, 1, POSTGRES_SERVER))
