"""python -m worker: the process that owns one database and serves migration requests.

Exit status: 0 after a normal stop, 75 when another worker already owns the database,
78 when the configuration is unusable (missing folder, duplicate migration versions).
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import TextIO

import zmq

from broker import database_url, endpoint
from broker.cli.bundled import bundled_migrations
from broker.cli.settings import LOCK_RETRIES, LOCK_TIMEOUT_S
from broker.errors import ReplyError
from broker.exits import EXIT_CONFIG, EXIT_OWNED
from broker.stopping import Stopped, StopRequest
from worker.catalog import Catalog
from worker.engine import Engine
from worker.journal import CrashJournal
from worker.server import WorkerServer
from worker.stores.interface import ALTERNATE_TABLE, DEFAULT_TABLE, AlreadyOwned, Store
from worker.stores.opening import open_store

log = logging.getLogger("worker")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default="migrations.db",
        help="SQLite file, postgresql://user@host:port/dbname (password in PGPASSWORD) or"
        " mysql://user@host:port/database (password in MYSQL_PWD); a password written in"
        " the URL is taken out of it and put there",
    )
    parser.add_argument(
        "--table",
        help="tracking table, created on first use (default: found in the database:"
        f" {DEFAULT_TABLE}, or {ALTERNATE_TABLE} where another tool's table has that name)",
    )
    parser.add_argument(
        "--schema", help="PostgreSQL schema of the tracking tables, created on first use"
        " (default: public)"
    )
    parser.add_argument(
        "--wal",
        action="store_true",
        help="SQLite: turn an existing database's rollback journal into WAL (a database the"
        " worker creates starts in WAL)",
    )
    parser.add_argument(
        "--owner-wait",
        type=float,
        metavar="SECONDS",
        help="PostgreSQL: when another worker (another host) owns the database, serve"
        " anyway and let each write wait this long for it to go, then answer error 11"
        " naming it (default: exit with status 75 naming it)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="PostgreSQL: how long each statement of a migration waits for a lock before"
        " its migration is rolled back and tried again; 0: no limit (default: the URL's"
        f" lock_timeout, else {LOCK_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--lock-retries",
        type=int,
        default=LOCK_RETRIES,
        metavar="N",
        help="PostgreSQL: how many more times a migration is tried after a lock timeout,"
        " after a growing wait (default: %(default)s)",
    )
    parser.add_argument(
        "--migrations",
        default=str(bundled_migrations()),
        help="folder of migration files (default: the bundled examples; a node passes its own)",
    )
    parser.add_argument(
        "--bind",
        help="address to serve, e.g. tcp://0.0.0.0:5555 (default: a unix socket derived from --db)",
    )
    parser.add_argument(
        "--keys",
        type=Path,
        help="CurveZMQ key folder (worker.key_secret, authorized/); required for tcp://",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        metavar="SECONDS",
        help="exit this long after the last node disconnected (default: never)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for the database's owner to go instead of exiting"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.lock_retries < 0:
        parser.error("--lock-retries must be 0 or more")
    return args


def _seconds(text: str) -> float:
    """A number of seconds, 0 or more (argparse's type: ValueError is its usage error)."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


def configure_logging(level: str) -> None:
    """Log lines to stderr, each written at once: a killed worker has lost none.

    Applying thousands of migrations logs a line for each. Held until the batch was
    answered, a killed worker lost the lines of the steps it had committed; written at
    once, appended to a log file on the database's filesystem, they cost an apply of 1,000
    in WAL nothing that could be measured (2026-12-06, in turns with and without).
    """
    handler = LogLinesHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())


class LogLinesHandler(logging.StreamHandler):
    """A stream handler that writes each line at once and never stops the worker when the
    log cannot be written (its disk is full): the lines lost are counted, and said with the
    next line written."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.lost = 0  # lines that could not be written, said at the next write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        with self.lock:
            if self.lost:
                note = logging.LogRecord("worker", logging.WARNING, __file__, 0,
                                         "%d log lines were lost: the log could not be written",
                                         (self.lost,), None)
                line = self.format(note) + self.terminator + line
            try:
                self.stream.write(line)
                self.stream.flush()
            except OSError:
                self.lost += 1
                return
            self.lost = 0


def main(argv: list[str] | None = None) -> int:
    # First of all: from here on a SIGTERM is a clean stop, never the default kill.
    stop = StopRequest()
    stop.install()
    args = parse_args(argv)
    configure_logging(args.log_level)
    store: Store | None = None
    shown = args.db  # what logs name the database by: never a secret
    try:
        if database_url.is_url(args.db):
            # Secrets given in the URL go where the store finds them (PGPASSWORD for the
            # password, read by libpq; MYSQL_PWD for MySQL's), and nowhere else: not a log
            # line, not health.
            shown, secrets = database_url.split_secrets(args.db)
            os.environ.update(database_url.secrets_environment(secrets, args.db))
        where = endpoint.for_database(args.db)
        if args.bind and args.bind.startswith("ipc://"):
            endpoint.check_ipc_address(args.bind)
        store = open_store(where, args.table, args.schema, args.owner_wait, wal=args.wal,
                           lock_timeout_s=args.lock_timeout)
        # .sql files are cut into statements by the rules of the database they run on.
        catalog = Catalog(
            Path(args.migrations).resolve(), split_statements=store.split_statements
        )
        count = len(catalog.migrations())
        # The table it chose, when it looked (a server not answering yet: the default).
        tracking = endpoint.tracking_label(args.db, store.tables.migrations, args.schema)
        with stop.interruptible():
            store.acquire_owner(
                endpoint.owner_note(os.getpid(), catalog.folder, tracking,
                                    args.bind or where.address),
                args.wait,
            )
        curve = None
        if args.keys:
            from broker import keys  # only TCP workers pay for it

            curve = keys.for_worker(args.keys)
        if args.bind and not args.bind.startswith("ipc://") and curve is None:
            raise ValueError(f"--bind {args.bind} leaves this machine: --keys is required")
        journal = CrashJournal(where.journal_path)  # read by the owner only
    except Stopped:
        log.info("stopped while waiting for the owner lock of %s", shown)
        _close(store)
        return 0
    except AlreadyOwned as exc:
        log.warning("not starting: database %s is already owned: %s", shown, exc)
        _close(store)
        return EXIT_OWNED
    except (ReplyError, OSError, ValueError, sqlite3.Error, ImportError) as exc:
        # A start-up error: say why once, with an exit status that stops restarts. (An
        # ImportError: a PostgreSQL URL without the driver, see worker/stores/postgres/store.py.)
        _cannot_start(getattr(exc, "text", exc))
        _close(store)
        return EXIT_CONFIG
    try:
        # Reads are answered from a connection of their own, beside a running write.
        reader = store.reader()
    except (OSError, sqlite3.Error) as exc:
        _cannot_start(f"cannot open a second connection for reads: {exc}")
        _close(store)
        return EXIT_CONFIG
    server = WorkerServer(
        Engine(reader, Catalog(catalog.folder, split_statements=store.split_statements)),
        # The server says when to stop.
        Engine(store, catalog, journal=journal, lock_retries=args.lock_retries),
        address=args.bind or where.address,
        describe={"database": str(where.database), "migrations_dir": str(catalog.folder)},
        idle_exit_s=args.idle_exit,
        stop=stop,
        curve=curve,
        target=where.target,
    )
    log.info("owning %s with %d migrations from %s, tracking in %s", where.database, count,
             catalog.folder, store.tables.migrations)
    context = zmq.Context()
    try:
        server.run(context)
    finally:
        reader.close()
        _close(store)
        context.term()
    return 0


def _cannot_start(reason: object) -> None:
    """Log why the worker exits with EXIT_CONFIG, on one line: the node that started it
    finds that line (broker/spawn.py, START_REFUSAL) and quotes the reason alone."""
    log.error("cannot start: %s", " ".join(str(reason).splitlines()))


def _close(store: Store | None) -> None:
    """Let go of the database: the owner lock, then the connection."""
    if store is not None:
        store.release_owner()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
