"""The SQLite store: one connection, explicit transactions, the owner lock beside the file.

Python's sqlite3 implicit transactions are off (autocommit mode): every write goes through
`transaction()`, which issues BEGIN IMMEDIATE / COMMIT / ROLLBACK itself.

The connection is the worker's for its whole life, so what a migration changes of it (a
pragma such as query_only or recursive_triggers, a temporary table or trigger, an attached
database) is undone after the migration, failed or not: each migration meets the connection
a newly started worker has (see SESSION_PRAGMAS and _restore_session).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from broker import codec, endpoint
from broker.errors import TEMPORARILY_UNAVAILABLE, ReplyError
from worker import sql_file
from worker.lock import OwnerLock
from worker.stores.interface import (
    DEFAULT_TABLE,
    KEEP_REPLIES,
    NO_EVENT,
    NODE_ID_BYTES,
    REQUEST_ID_BYTES,
    VERSION_SUM_MASK,
    AppliedMigration,
    AppliedRepeatable,
    CrashHook,
    Event,
    ForeignKeyViolation,
    HistoryMark,
    ReplyEvicted,
    Store,
    TableChoice,
    TrackingChanges,
    choose_table,
    is_ours,
    node_of,
    tracking_facts,
    tracking_tables,
)
from worker.stores.sqlite.migration_db import (
    MigrationDB,
    SessionChanges,
    TouchedTables,
    guarded,
)
from worker.stores.turns import Turns

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 5.0  # how long a statement waits for another program's lock
BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes): worth a retry
SQLITE_BUSY = 5  # "database is locked": another connection holds what a statement needs
# Settings of the connection, not of the database file, that a migration may change with a
# pragma and that are put back as they were before the first migration after each one.
# (journal_mode has a rule of its own; user_version, application_id, page_size and
# auto_vacuum belong to the file, and stay as the migration left them, as after a restart.)
SESSION_PRAGMAS = (
    "analysis_limit", "automatic_index", "busy_timeout", "cache_size", "cache_spill",
    "cell_size_check", "checkpoint_fullfsync", "count_changes", "defer_foreign_keys",
    "empty_result_callbacks", "foreign_keys", "full_column_names", "fullfsync",
    "hard_heap_limit", "ignore_check_constraints", "journal_size_limit", "legacy_alter_table",
    "locking_mode", "max_page_count", "mmap_size", "query_only", "read_uncommitted",
    "recursive_triggers", "reverse_unordered_selects", "secure_delete", "short_column_names",
    "soft_heap_limit", "synchronous", "temp_store", "threads", "trusted_schema",
    "wal_autocheckpoint", "writable_schema",
)
# Journal modes that outlive the connection: any other is this connection's alone, and a
# new connection to the file has DELETE (WAL, once set, stays in the file).
FILE_JOURNAL_MODES = frozenset({"wal", "delete"})

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {migrations} (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    execution_ms REAL NOT NULL,
    applied_seq INTEGER NOT NULL,
    request_id BLOB
)""",
    """CREATE TABLE IF NOT EXISTS {replies} (
    seq INTEGER PRIMARY KEY,
    request_id BLOB NOT NULL UNIQUE,
    reply BLOB NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS {history} (
    seq INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    checksum TEXT NOT NULL,
    started_at TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    src TEXT,
    request_id BLOB
)""",
    """CREATE TABLE IF NOT EXISTS {evicted} (
    node BLOB PRIMARY KEY,
    request_id BLOB NOT NULL,
    evicted_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS {repeats} (
    name TEXT PRIMARY KEY,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    execution_ms REAL NOT NULL,
    request_id BLOB
)""",
    """CREATE TABLE IF NOT EXISTS {schemas} (
    seq INTEGER PRIMARY KEY,
    history_seq INTEGER,
    fingerprint TEXT NOT NULL,
    changes TEXT NOT NULL
)""",
)
EVENT_COLUMNS = "version, name, action, checksum, started_at, duration_ms, src, request_id"
UTC_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
STATEMENTS = {
    "applied": "SELECT version, name, checksum, applied_seq, request_id"
    " FROM {migrations} ORDER BY version",
    "record": "INSERT INTO {migrations}"
    " (version, name, checksum, applied_at, execution_ms, applied_seq, request_id)"
    f" VALUES (?, ?, ?, {UTC_NOW}, ?, ?, ?)",
    "unrecord": "DELETE FROM {migrations} WHERE version = ?",
    "record_event": f"INSERT INTO {{history}} ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "history": f"SELECT {EVENT_COLUMNS} FROM {{history}} ORDER BY seq",
    "recent_history": f"SELECT {EVENT_COLUMNS} FROM (SELECT seq, {EVENT_COLUMNS}"
    " FROM {history} ORDER BY seq DESC LIMIT ?) ORDER BY seq",
    "events_of": f"SELECT {EVENT_COLUMNS} FROM {{history}}"
    " WHERE request_id = ? AND action = ? ORDER BY seq",
    "stored_reply": "SELECT reply FROM {replies} WHERE request_id = ?",
    "evicted_reply": "SELECT 1 FROM {evicted} WHERE node = ? AND request_id = ?",
    "store_reply": "INSERT OR REPLACE INTO {replies} (request_id, reply, created_at)"
    f" VALUES (?, ?, {UTC_NOW})",
    # Each node's newest reply among those pruned (node_of, in SQL), remembered by its id.
    "evict_replies": "INSERT INTO {evicted} (node, request_id, evicted_at)"
    f" SELECT CASE WHEN length(request_id) = {REQUEST_ID_BYTES}"
    f" THEN substr(request_id, 1, {NODE_ID_BYTES}) ELSE request_id END, max(request_id),"
    f" {UTC_NOW} FROM {{replies}} WHERE seq <= ? GROUP BY 1"
    " ON CONFLICT (node) DO UPDATE SET request_id = max(request_id, excluded.request_id),"
    " evicted_at = excluded.evicted_at",
    "prune_replies": "DELETE FROM {replies} WHERE seq <= ?",
    "repeatables": "SELECT name, checksum, applied_at, request_id FROM {repeats}",
    "history_mark": "SELECT seq, version, action, started_at FROM {history}"
    " ORDER BY seq DESC LIMIT 1",
    "events_from": "SELECT seq, version, action, started_at FROM {history}"
    " WHERE seq >= ? ORDER BY seq LIMIT ?",
    "recorded_between": "SELECT version, name FROM {migrations} WHERE version IN"
    " (SELECT version FROM {history} WHERE seq > ? AND seq <= ?)",
    # One statement, run inside SQLite: no row comes into Python (see tracking_changes).
    "tracking_sums": f"SELECT count(*), coalesce(sum(version & {VERSION_SUM_MASK}), 0)"
    " FROM {migrations}",
    "record_repeatable": "INSERT INTO {repeats} (name, checksum, applied_at, execution_ms,"
    f" request_id) VALUES (?, ?, {UTC_NOW}, ?, ?) ON CONFLICT (name) DO UPDATE SET"
    " checksum = excluded.checksum, applied_at = excluded.applied_at,"
    " execution_ms = excluded.execution_ms, request_id = excluded.request_id",
    # Prepares only while every tracking table exists, from SQLite's schema in memory.
    "newest_schema": "SELECT coalesce(max(seq), 0) FROM {schemas}",
    "schema_rows": "SELECT changes FROM {schemas} WHERE changes <> '[]' ORDER BY seq",
    "add_schema_row": "INSERT INTO {schemas} (history_seq, fingerprint, changes)"
    " SELECT max(seq), ?, ? FROM {history}",
    "probe": "SELECT 1 FROM {migrations}, {replies}, {history}, {evicted}, {repeats},"
    " {schemas} LIMIT 0",
    "existing": "SELECT name FROM sqlite_master WHERE type = 'table'"
    " AND name IN (?, ?, ?, ?, ?, ?)",
}
IS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
COLUMNS = "SELECT name FROM pragma_table_info(?) ORDER BY cid"


class CannotOpen(sqlite3.OperationalError):
    """The database file cannot be opened; the text names the path and the reason."""


def _open(path: Path) -> sqlite3.Connection:
    """A connection to the database at `path` in autocommit mode, its header read.

    Raises CannotOpen: for a file that is not a database (reading the header now makes it
    a start-up error), and for any path SQLite cannot open, saying why.
    """
    connection = None
    try:
        connection = sqlite3.connect(
            path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
        )
        connection.execute("PRAGMA schema_version")
    except sqlite3.Error as exc:
        if connection is not None:
            connection.close()
        raise CannotOpen(f"cannot open {path} as a SQLite database: {_why(path, exc)}") from None
    return connection


def _why(path: Path, exc: sqlite3.Error) -> str:
    """Why SQLite could not open `path`, in words that name the cause: its own "unable to
    open database file" says neither which part of the path failed nor how."""
    if getattr(exc, "sqlite_errorname", None) != "SQLITE_CANTOPEN":
        return str(exc)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = path.parent
        if not os.path.exists(parent):
            return f"its folder {parent} does not exist"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"no permission to create it in {parent}"
        return str(exc)
    except NotADirectoryError:
        for ancestor in reversed(path.parents):
            if os.path.exists(ancestor) and not os.path.isdir(ancestor):
                return f"{ancestor} is not a folder"
        return str(exc)
    except OSError as error:
        return _said(error)
    if stat.S_ISDIR(mode):
        return "it is a folder"
    try:  # O_NONBLOCK: a FIFO would wait for a writer
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as error:
        return _said(error)
    return str(exc)


def _said(error: OSError) -> str:
    """The system's words for an error, as the middle of a sentence: "permission denied"."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def quoted(name: str) -> str:
    """An SQLite identifier, quoted so that any name is taken as written."""
    return '"' + name.replace('"', '""') + '"'


class SqliteStore(Store):
    split_statements = staticmethod(sql_file.split_statements)
    dialect = "sqlite"

    def __init__(
        self,
        path: Path,
        table: str | None = DEFAULT_TABLE,
        *,
        wal: bool = False,
        reader: bool = False,
    ) -> None:
        """Open the database file at `path` (created if missing), tracking in `table`, or,
        for None, in the table found there (see choose_table).

        A database this call creates starts in WAL mode; an existing one keeps the journal
        mode its owners chose unless `wal` asks to convert it. A `reader` store only reads
        (query_only), beside the writer's: the worker answers status from it while a
        migration runs.

        Raises CannotOpen (a sqlite3.Error) for a path that cannot be opened as a database,
        naming it and why; ValueError for an empty table name.
        """
        self.path = path
        if table is not None:
            tracking_tables(table)  # a bad name is refused before anything is opened
        created = not os.path.exists(path) or os.path.getsize(path) == 0
        self._owner = OwnerLock(endpoint.lock_file(path))
        # Autocommit mode: sqlite3 must never open or commit a transaction behind our back.
        self.connection = _open(path)
        self.table, self.displaced = (
            TableChoice(table) if table is not None else choose_table(self.columns_of))
        self.tables = tracking_tables(self.table)
        names = {key: quoted(name) for key, name in self.tables._asdict().items()}
        self._schema = [statement.format(**names) for statement in SCHEMA]
        self._sql = {key: statement.format(**names) for key, statement in STATEMENTS.items()}
        self._opened = _identity(path)  # the file this connection has, whatever its path
        # The file as it was when this store last emptied its -wal (see settle()); None
        # while the -wal holds pages, from us or another program.
        self._settled: tuple[int, int] | None = None
        self._settled_at_commit = -1
        # settle() runs on the writer thread, moved() on the socket thread: a check during
        # the checkpoint would take the checkpoint's own write for someone else's.
        self._settling = threading.Lock()
        if reader:
            self.connection.execute("PRAGMA query_only = ON")
        # One fsync per commit instead of four, and readers never block the writer. Set
        # once the owner lock is held: a worker that loses the race to start would
        # otherwise meet the winner's first transaction ("database is locked") and fail
        # as one that cannot start at all, stopping its node.
        self._make_wal = not reader and (created or wal)
        self.connection.execute("PRAGMA foreign_keys = ON")
        # Durability: a migration reported as applied survives a power cut, in WAL too.
        self.connection.execute("PRAGMA synchronous = FULL")
        self._migration_running = False  # migration code runs now: interrupt() may cut it
        # PRAGMA schema_version when every tracking table was last seen to exist: while it
        # stays, they still do (a table dropped by hand moves it).
        self._checked_version: int | None = None
        # The seq of the schemas row this store added last, the count of commits at which
        # it is the newest (once its transaction committed) and data_version then, which
        # moves when another connection commits (see newest_schema_seq).
        self._newest_schema: tuple[int, int, int] | None = None
        self._session: dict[str, Any] | None = None  # SESSION_PRAGMAS before any migration
        self._changes = SessionChanges()  # what migration code changed, not yet undone
        self._touched: TouchedTables | None = None  # since the last schema_mark()
        self.commits = 0  # transactions this store committed; with data_version(), a change stamp
        self._crash_hook = CrashHook.from_environment()
        self._turns = Turns()  # the writer thread's connection, lent to reads (see lent)
        self._read_schema: int | None = None  # PRAGMA schema_version at the last reading()

    def close(self) -> None:
        self.connection.close()

    def reader(self) -> SqliteStore:
        """A second connection to the same database that only reads (see __init__), with
        this store's tracking table."""
        reader = SqliteStore(self.path, self.table, reader=True)
        reader.displaced = self.displaced
        return reader

    def facts(self) -> dict[str, Any]:
        """What health reports of the database: its journal mode and tracking table."""
        (mode,) = self.connection.execute("PRAGMA journal_mode").fetchone()
        return {"journal_mode": mode, **tracking_facts(self)}

    def columns_of(self, table: str) -> list[str] | None:
        """The columns of `table` in the database file, None when it has no such table."""
        if self.connection.execute(IS_TABLE, (table,)).fetchone() is None:
            return None
        return [name for (name,) in self.connection.execute(COLUMNS, (table,))]

    def foreign_rows(self, table: str, query: str) -> list[tuple]:
        """The rows of one read of another program's table; times come as it stored them
        (SQLite has no time type: text, or numbers)."""
        return self.connection.execute(query.format(table=quoted(table))).fetchall()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction around several queries: they see one snapshot, and a
        writer creating tables meanwhile cannot make a query fail with "database schema
        has changed" (outside a transaction each query may meet a newer schema)."""
        if self.connection.in_transaction:
            yield
            return
        self.connection.execute("BEGIN")
        try:
            (self._read_schema,) = self.connection.execute("PRAGMA schema_version").fetchone()
            yield
        finally:
            self.connection.execute("COMMIT")

    def stale_schema(self) -> bool:
        """As Store's: a header read, which never reads the schema itself."""
        (version,) = self.connection.execute("PRAGMA schema_version").fetchone()
        return version != self._read_schema

    def writing(self) -> AbstractContextManager[None]:
        return self._turns.writing()

    def lent(self, wait_s: float) -> AbstractContextManager[bool]:
        return self._turns.lend(wait_s)

    def moved(self) -> str | None:
        """Why the path no longer names the file this store has open, or None. SQLite goes
        on with the file it opened: writes to a deleted one reach nobody, and a file put
        in its place (a restored backup) would meet this connection's -wal and -shm."""
        try:
            now = _identity(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was deleted"
        except OSError:
            return None  # cannot tell (a folder we may no longer search): nothing changed
        if now != self._opened:
            return f"the database file {self.path} was replaced by another file"
        return self._rewritten()

    def settle(self) -> None:
        """In WAL mode, once this store wrote: fold its -wal into the file and empty it,
        then note the file's size and modification time. While the -wal stays empty, only
        a writer that bypasses SQLite (a backup copied over the file in place) changes
        them, and moved() says so before this connection lays its cached pages over it."""
        if self.commits == self._settled_at_commit:
            return
        self._settled_at_commit = self.commits
        if self._journal_mode() != "wal":
            return  # a rollback journal: SQLite notices a rewritten file by its header
        with self._settling:
            self._settled = None
            # Never wait for a reader on an old snapshot (the next write would wait too):
            # with no busy timeout, a checkpoint that cannot finish does what it can.
            self.connection.execute("PRAGMA busy_timeout = 0")
            try:
                checkpoint = self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                busy, frames, _ = checkpoint.fetchone()
            finally:
                self.connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if not busy and frames == 0:
                self._settled = _signature(self.path)

    def _journal_mode(self) -> str:
        (mode,) = self.connection.execute("PRAGMA journal_mode").fetchone()
        return mode

    def _rewritten(self) -> str | None:
        """Why the file was written behind SQLite's back since settle(), or None."""
        with self._settling:
            return self._rewritten_since_settled()

    def _rewritten_since_settled(self) -> str | None:
        if self._settled is None:
            return None
        try:
            log_pages = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            log_pages = 0
        except OSError:
            return None
        if log_pages:  # written through SQLite since: its changes are SQLite's to tell
            self._settled = None
            return None
        try:
            if _signature(self.path) == self._settled:
                return None
        except OSError:
            return None
        return (f"the database file {self.path} was rewritten in place while its write-ahead"
                " log was empty (a backup restored over it, or another program's checkpoint)")

    def interrupt(self) -> None:
        """Stop the statement migration code is running, from another thread (a cancel);
        the store's own statements are never cut."""
        if self._migration_running:
            self.connection.interrupt()

    def acquire_owner(self, note: bytes, wait: bool = False) -> None:
        """flock() on `<db>.lock` beside the file; the kernel drops it when we die. Then a
        new database (or one `wal` asked for) is made WAL."""
        self._owner.acquire(note, wait=wait)
        if self._make_wal:
            self.connection.execute("PRAGMA journal_mode = WAL")

    def release_owner(self) -> None:
        """Let go of the lock; first, for a database deleted or replaced meanwhile, empty
        the -wal this connection wrote, which SQLite leaves at the path for a moved file:
        the next connection there would take its pages for the new file's, clobbering it.
        Its pages go into the file this connection has, which nobody reads any more."""
        if self.moved() is not None:
            try:
                self.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("could not empty the write-ahead log of a moved database: %s", exc)
        self._owner.release()

    def _all_tables_exist(self) -> bool:
        """True if every tracking table exists: a header read while the schema is the one
        last checked, else a statement naming them all is prepared."""
        (version,) = self.connection.execute("PRAGMA schema_version").fetchone()
        if version == self._checked_version:
            return True
        try:
            self.connection.execute(self._sql["probe"])
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return False
        self._checked_version = version
        return True

    def _tables(self) -> set[str]:
        """The tracking tables that exist now."""
        if self._all_tables_exist():
            return set(self.tables)
        rows = self.connection.execute(self._sql["existing"], tuple(self.tables))
        return {name for (name,) in rows}

    def _has(self, table: str) -> bool:
        return table in self._tables()

    def _ensure_schema(self, restore_tracking: bool) -> None:
        """Create the tracking tables that are missing, inside the write transaction, so
        read-only work never writes: all of them in a new database, the companions when
        they were dropped by hand. Raises TrackingTableMissing when the tracking table was
        dropped and its companions remain, unless `restore_tracking` (baseline)."""
        existing = self._tables()
        missing = self._tables_to_create(existing, restore_tracking)
        if not missing:
            return
        for _, statement in missing:
            self.connection.execute(statement)

    @contextmanager
    def transaction(
        self, *, commit: bool = True, foreign_keys: bool = True, restore_tracking: bool = False
    ) -> Iterator[None]:
        """One write transaction: all of its statements reach the disk, or none do.

        BEGIN IMMEDIATE takes the write lock up front, so a migration rarely meets another
        program's lock halfway; with a rollback journal, though, a reader's lock still
        stops a statement that must write to the file, and COMMIT. With `commit` false (a
        dry run) the transaction is rolled back at the end instead, whatever happened in
        it. With `foreign_keys` false, foreign keys are off for the transaction (SQLite
        ignores the pragma inside one, so it is set before BEGIN) and checked before the
        end: raises ForeignKeyViolation, after rolling back, when rows lost their parent.
        It begins by creating the tracking tables that are missing (see _ensure_schema).

        Raises ReplyError(TEMPORARILY_UNAVAILABLE), after rolling back, when another
        program kept the database busy or locked for BUSY_TIMEOUT_S at any step: BEGIN,
        any statement, COMMIT. Any other failure (a read-only or broken file) is raised as
        the sqlite3 error it is; TrackingTableMissing as _ensure_schema says.
        """
        if self._session is None:
            self._session = self._read_session()
        if not foreign_keys:
            self.connection.execute("PRAGMA foreign_keys = OFF")
        try:
            self._begin()
            try:
                self._ensure_schema(restore_tracking)
                yield
                if not foreign_keys:
                    self.check_foreign_keys()
                self.connection.execute("COMMIT" if commit else "ROLLBACK")
                if not commit:
                    self._forget_transaction()  # the schema is as before BEGIN again
            except BaseException as exc:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                self._forget_transaction()  # the schema may be as before BEGIN again
                if _busy(exc):
                    raise ReplyError(
                        TEMPORARILY_UNAVAILABLE,
                        f"the database is locked by another program ({exc}), so the step"
                        " in progress was rolled back; try again later",
                    ) from exc
                raise
        finally:
            if not foreign_keys:
                self.connection.execute("PRAGMA foreign_keys = ON")
            if self._changes:
                self._restore_session()  # what could not be undone inside the transaction
        if not commit:
            return
        self.commits += 1
        if self._crash_hook is not None:
            self._crash_hook.fire_if_armed()
        self._turns.between()

    def _forget_transaction(self) -> None:
        """After a rollback: what this store noted of the tables in the transaction."""
        self._checked_version = None
        self._newest_schema = None

    def _begin(self) -> None:
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in BUSY_CODES:
                raise
            raise ReplyError(
                TEMPORARILY_UNAVAILABLE,
                f"the database is locked by another program ({exc}); try again later",
            ) from exc

    @contextmanager
    def migration_db(
        self,
        in_transaction: bool = True,
        check: Callable[[], None] | None = None,
        lock_timeout_s: float | None = None,
        steps: Any = None,
    ) -> Iterator[MigrationDB]:
        """The `db` that migration code gets: inside the open transaction, or (for a
        migration that cannot run in one) in autocommit mode. `check` runs before each of
        its statements (a cancel raises there). `lock_timeout_s` has no effect: SQLite
        locks the whole database, and its busy timeout is the store's.

        Raises RuntimeError afterwards if the migration ended the transaction itself, or
        left one open when it had none.
        """
        if self._session is None:
            self._session = self._read_session()
        self._migration_running = True
        try:
            if not in_transaction:
                # Nothing of ours to protect (VACUUM, say, runs its own transaction inside).
                with guarded(self.connection, check, self._changes,
                             refuse_transaction_control=False, touched=self._touched) as db:
                    yield db
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                    raise RuntimeError("the migration left a transaction open")
                return
            with guarded(self.connection, check, self._changes, touched=self._touched) as db:
                yield db
        finally:
            self._migration_running = False
            if self._changes:
                self._restore_session()
        if not self.connection.in_transaction:
            raise RuntimeError("the migration ended the transaction itself")

    def schema_mark(self) -> Any:
        self._touched = TouchedTables()
        return super().schema_mark()

    def schema_scope(self, stamps: Any) -> Any:
        touched, self._touched = self._touched, None
        if touched is not None and not touched.everything and not touched.names & set(
                self.tables):
            # Every tracking table was there at BEGIN and the step's DDL left them be:
            # the next BEGIN need not look for them again at this schema_version.
            self._checked_version = stamps[1]
        if touched is None or touched.everything or not touched.names:
            return None  # no mark, or more than tables' own objects: read them all
        return touched.names

    def schema_reading(self) -> tuple[Any, Any, Any]:
        from worker.schema import sqlite as reader  # only steps, verify and drift read it

        return reader, self.connection, self._unmanaged()

    def schema_rows(self) -> tuple[int, list[str]]:
        if not self._has(self.tables.schemas):
            return 0, []
        newest = self.newest_schema_seq()
        return newest, [row[0] for row in self.connection.execute(self._sql["schema_rows"])]

    def newest_schema_seq(self) -> int:
        """As Store's; from a PRAGMA alone when the newest row is the one this store added
        and committed last and no other connection committed since: a step's statements
        after its DDL are each prepared anew, and a PRAGMA prepares fastest."""
        known = self._newest_schema
        if known is not None and known[1:] == (self.commits, self.data_version()):
            return known[0]
        if not self._has(self.tables.schemas):
            return 0
        return self.connection.execute(self._sql["newest_schema"]).fetchone()[0]

    def add_schema_row(self, fingerprint: str, changes: str) -> int:
        cursor = self.connection.execute(self._sql["add_schema_row"], (fingerprint, changes))
        # No other connection commits before this transaction ends: it holds the lock.
        self._newest_schema = (cursor.lastrowid, self.commits + 1, self.data_version())
        return cursor.lastrowid

    @contextmanager
    def scratch(self) -> Iterator[SqliteStore]:
        with tempfile.TemporaryDirectory(prefix="migrations-verify-") as folder:
            store = SqliteStore(Path(folder) / "scratch.db", table=self.table)
            try:
                yield store
            finally:
                store.close()

    def check_foreign_keys(self) -> None:
        """Raise ForeignKeyViolation if rows reference missing rows (foreign keys off)."""
        rows = self.connection.execute("PRAGMA foreign_key_check").fetchall()
        if rows:
            raise ForeignKeyViolation(sorted({row[0] for row in rows}))

    def data_version(self) -> int:
        """Changes when another connection commits; with `commits`, tells if anything changed."""
        return self.connection.execute("PRAGMA data_version").fetchone()[0]

    def applied(self) -> list[AppliedMigration]:
        """Every recorded migration, in version order. Raises TrackingTableMissing when the
        tracking table was dropped by hand and its companions remain."""
        existing = self._tables()
        if self.tables.migrations not in existing:
            if existing:
                raise self._tracking_missing(existing)
            not_adopted = self._not_adopted()
            if not_adopted is not None:
                raise not_adopted
            return []
        try:
            rows = self.connection.execute(self._sql["applied"]).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such column" not in str(exc) or self._tracking_is_ours():
                raise
            raise self._foreign_table() from None
        return [AppliedMigration(*row) for row in rows]

    def history_mark(self) -> HistoryMark | None:
        """The history's newest event, NO_EVENT when it has none (or there is no tracking
        table at all yet); None for a history dropped by hand."""
        existing = self._tables()
        if self.tables.history not in existing:
            return None if existing else NO_EVENT
        row = self.connection.execute(self._sql["history_mark"]).fetchone()
        return NO_EVENT if row is None else HistoryMark(*row)

    def tracking_changes(self, since: HistoryMark, most: int) -> TrackingChanges | None:
        """As Store's, in a few statements whatever the number of rows: while a migrate
        commits, each one a status reads row by row waits for the writer thread to hand
        back the GIL, where these wait once each."""
        if not {self.tables.migrations, self.tables.history} <= self._tables():
            return None
        rows = self.connection.execute(self._sql["events_from"], (since.seq, most + 2))
        events = [HistoryMark(*row) for row in rows]
        if since != NO_EVENT:
            if not events or events[0] != since:
                return None  # that event is gone: the history was deleted or restored
            del events[0]
        if len(events) > most:
            return None
        mark = events[-1] if events else since
        recorded: dict[int, str | None] = dict.fromkeys(event.version for event in events)
        if events:
            recorded.update(self.connection.execute(
                self._sql["recorded_between"], (since.seq, mark.seq)))
        count, total = self.connection.execute(self._sql["tracking_sums"]).fetchone()
        return TrackingChanges(mark, recorded, count, total)

    def _tracking_is_ours(self) -> bool:
        columns = self.columns_of(self.tables.migrations)
        return columns is None or is_ours(columns)

    def record(
        self,
        version: int,
        name: str,
        checksum: str,
        execution_ms: float,
        applied_seq: int,
        request_id: bytes,
    ) -> None:
        """Mark a migration applied; call inside the transaction that ran its up().

        `applied_seq` orders applications (one more than the highest recorded). The single
        writer knows it, so no index or scan of the table is needed to find it.
        """
        self.connection.execute(
            self._sql["record"], (version, name, checksum, execution_ms, applied_seq, request_id)
        )

    def unrecord(self, version: int) -> None:
        """Mark a migration not applied; call inside the transaction that ran its down()."""
        self.connection.execute(self._sql["unrecord"], (version,))

    def record_event(self, event: Event) -> None:
        """Add an apply, rollback or baseline to the history, inside its own transaction."""
        self.connection.execute(self._sql["record_event"], event)

    def repeatables(self) -> list[AppliedRepeatable]:
        """Every repeatable migration ever applied, as last applied (see Store)."""
        if not self._has(self.tables.repeats):
            return []
        rows = self.connection.execute(self._sql["repeatables"])
        return [AppliedRepeatable(*row) for row in rows]

    def record_repeatable(
        self, name: str, checksum: str, execution_ms: float, request_id: bytes
    ) -> None:
        """Note a repeatable migration applied; call inside the transaction that ran it."""
        self.connection.execute(
            self._sql["record_repeatable"], (name, checksum, execution_ms, request_id))

    def history(self, limit: int | None = None) -> list[Event]:
        """The history, oldest first: every event, or the `limit` most recent."""
        if not self._has(self.tables.history):
            return []
        if limit is None:
            rows = self.connection.execute(self._sql["history"])
        else:
            rows = self.connection.execute(self._sql["recent_history"], (limit,))
        return [Event(*row) for row in rows]

    def events_of(self, request_id: bytes, action: str) -> list[Event]:
        """What one request did of `action`, oldest first (to resume it after a crash)."""
        if not self._has(self.tables.history):
            return []
        rows = self.connection.execute(self._sql["events_of"], (request_id, action))
        return [Event(*row) for row in rows]

    def stored_reply(self, request_id: bytes) -> dict[str, Any] | None:
        """The reply already given to this request id, if it was stored; raises
        ReplyEvicted when it was pruned since."""
        existing = self._tables()
        if self.tables.replies in existing:
            row = self.connection.execute(self._sql["stored_reply"], (request_id,)).fetchone()
            if row is not None:
                return codec.unpack(row[0], codec.MAX_REPLY_BYTES)
        if self.tables.evicted in existing:
            evicted = self.connection.execute(
                self._sql["evicted_reply"], (node_of(request_id), request_id)
            ).fetchone()
            if evicted is not None:
                raise ReplyEvicted(request_id)
        return None

    def store_reply(self, request_id: bytes, reply: dict[str, Any]) -> None:
        """Keep a reply for resends; call inside the transaction whose effect it reports.
        The replies pruned to keep KEEP_REPLIES leave their node's newest id behind."""
        cursor = self.connection.execute(self._sql["store_reply"], (request_id, codec.pack(reply)))
        pruned = cursor.lastrowid - KEEP_REPLIES  # this seq and those below it go
        self.connection.execute(self._sql["evict_replies"], (pruned,))
        self.connection.execute(self._sql["prune_replies"], (pruned,))

    # -- the connection's own state --------------------------------------------------------

    def _read_session(self) -> dict[str, Any]:
        """The SESSION_PRAGMAS of the connection as it is (before any migration ran)."""
        session = {}
        for name in SESSION_PRAGMAS:
            row = self.connection.execute(f"PRAGMA {name}").fetchone()
            if row is not None:  # a pragma this build of SQLite leaves out reads as nothing
                session[name] = row[0]
        return session

    def _restore_session(self) -> None:
        """Undo what migration code changed of the connection: pragmas back to their value
        before the first migration, temporary objects dropped, attached databases detached.
        What SQLite refuses inside a transaction (synchronous, temp_store, DETACH...) stays
        noted, and is undone once the transaction ends (see transaction)."""
        changes = self._changes
        for name in sorted(changes.pragmas):
            if self._restore_pragma(name):
                changes.pragmas.discard(name)
        if changes.temporary and self._drop_temporary():
            changes.temporary = False
        if changes.attached and self._detach_all():
            changes.attached = False

    def _restore_pragma(self, name: str) -> bool:
        """Put one pragma back; False if SQLite refused it for now (inside a transaction)."""
        connection = self.connection
        try:
            if name == "journal_mode":
                (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
                if mode.lower() in FILE_JOURNAL_MODES:
                    return True
                (mode,) = connection.execute("PRAGMA journal_mode = DELETE").fetchone()
                return mode.lower() == "delete"
            if name == "case_sensitive_like":  # it cannot be read, and is off by default
                connection.execute("PRAGMA case_sensitive_like = OFF")
                return True
            if name not in self._session:
                return True  # not a setting of the connection (user_version, table_info(t))
            before = self._session[name]
            row = connection.execute(f"PRAGMA {name}").fetchone()
            if row is None or row[0] == before:
                return True
            value = before if isinstance(before, int) else quoted_text(str(before))
            connection.execute(f"PRAGMA {name} = {value}")
            return connection.execute(f"PRAGMA {name}").fetchone()[0] == before
        except sqlite3.Error as exc:
            if not connection.in_transaction:
                log.warning("could not put PRAGMA %s back after a migration: %s", name, exc)
                return True  # nothing more can be done; do not try after every write
            return False

    def _drop_temporary(self) -> bool:
        """Drop every temporary trigger, view and table (and so their indexes)."""
        order = {"trigger": 0, "view": 1, "table": 2}
        try:
            rows = self.connection.execute(
                "SELECT type, name FROM temp.sqlite_master"
                " WHERE type IN ('trigger', 'view', 'table')").fetchall()
            for kind, name in sorted(rows, key=lambda row: order[row[0]]):
                self.connection.execute(f"DROP {kind.upper()} IF EXISTS temp.{quoted(name)}")
        except sqlite3.Error as exc:
            log.warning("could not drop a migration's temporary objects: %s", exc)
            return not self.connection.in_transaction
        return True

    def _detach_all(self) -> bool:
        """Detach every database a migration attached; False while SQLite refuses."""
        try:
            for _, name, _ in self.connection.execute("PRAGMA database_list").fetchall():
                if name not in ("main", "temp"):
                    self.connection.execute(f"DETACH DATABASE {quoted(name)}")
        except sqlite3.Error as exc:
            if self.connection.in_transaction:
                return False
            log.warning("could not detach a database a migration attached: %s", exc)
        return True


def quoted_text(text: str) -> str:
    """An SQLite string literal."""
    return "'" + text.replace("'", "''") + "'"


def _busy(exc: BaseException) -> bool:
    """True for SQLite's busy condition ("database is locked": another connection holds a
    lock this one needs, and kept it for BUSY_TIMEOUT_S)."""
    return (isinstance(exc, sqlite3.OperationalError)
            and getattr(exc, "sqlite_errorcode", 0) & 0xFF == SQLITE_BUSY)


def _signature(path: Path) -> tuple[int, int]:
    """The size and modification time of the file at `path` (not its change time, which
    chmod and chattr move too); raises OSError."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns


def _identity(path: Path) -> tuple[int, int]:
    """The device and inode of the file at `path`; raises OSError."""
    info = os.stat(path)
    return info.st_dev, info.st_ino
