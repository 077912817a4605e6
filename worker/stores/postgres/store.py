"""The PostgreSQL store: one psycopg connection, explicit transactions, an advisory owner lock.

    PostgresStore(url, table="schema_migrations", schema="public")
        <schema>.schema_migrations           tracking rows     (--table T: T)
        <schema>.schema_migration_replies    stored replies    (T_replies)
        <schema>.schema_migration_history    history           (T_history)
        <schema>.schema_migration_evicted    pruned replies    (T_evicted)
        <schema>.schema_migration_repeats    repeatables' last checksums (T_repeats)
        <schema>.schema_migration_schemas    the schema after each event (T_schemas)

The names are SQLite's (store.tracking_tables). A session that dies is replaced at the next
request (see _live); the one lost mid-request ends that request with error 11.

The connection is in autocommit mode: every write goes through `transaction()`, which issues
BEGIN / COMMIT / ROLLBACK itself, as the SQLite store does. The tracking tables are created
in the first write, so read-only work never writes. Their `seq` columns take the highest
value plus one (no sequence), so a dry run, rolled back, leaves no trace in them at all.

Migration code gets a `db` with SQLite's methods and parameter style: `?` with a sequence,
`:name` with a mapping, translated to psycopg's outside strings, quoted identifiers,
comments and dollar quotes (see `to_psycopg`). Unqualified names in migrations follow the
connection's search_path (set it in the URL: `?options=-csearch_path%3Dapp`); `schema`
places only the tracking tables.

Where PostgreSQL differs from SQLite, and what this store does about it:
- Foreign keys off (`-- migrate:foreign_keys off`, `FOREIGN_KEYS = False`) is `SET
  CONSTRAINTS ALL DEFERRED`: it defers only constraints declared DEFERRABLE (others stay
  checked per statement), and the check before COMMIT names the first table PostgreSQL
  finds, not every one.
- A statement that waits for a lock longer than the session's lock_timeout (LOCK_TIMEOUT_S
  unless the URL or the server sets one), a serialization failure and a deadlock are
  ReplyError(TEMPORARILY_UNAVAILABLE), like SQLite's busy database: the step is rolled back.
- PostgreSQL aborts a transaction at its first failing statement, so a migration that
  catches a database error and carries on fails (SQLite would let it continue).
- The owner lock is a session-level advisory lock: it needs a real session (not a
  transaction-pooling proxy such as PgBouncer in transaction mode) and dies with it. A
  worker waiting for it tries again and again, idle in between, never blocked in a
  statement or a transaction: the holder's CREATE INDEX CONCURRENTLY waits for every
  snapshot older than its own, so a waiter holding one would deadlock with it.
- CREATE INDEX CONCURRENTLY outside a transaction first drops an INVALID index of the name
  it builds, left by a concurrent build that did not finish (see index.py); the drop is
  kept in `repairs` for the history.
- The session is the worker's for its whole life, so what a migration changes of it (SET,
  SET ROLE, temporary tables, WITH HOLD cursors, LISTEN, sequence state; PREPAREd
  statements and advisory locks when its SQL names them) is undone after it, failed or not
  (see RESET_SESSION): each migration meets the session a newly started worker has. DISCARD
  ALL would do it, but would also let go of the owner lock.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker import codec, database_url
from broker.cli.settings import LOCK_TIMEOUT_S as MIGRATION_LOCK_TIMEOUT_S
from broker.errors import LASTING, PRECONDITION_FAILED, TEMPORARILY_UNAVAILABLE, ReplyError
from worker.lock import AlreadyOwned, OwnerLock
from worker.stores.interface import (
    DEFAULT_TABLE,
    KEEP_REPLIES,
    NODE_ID_BYTES,
    REQUEST_ID_BYTES,
    AppliedMigration,
    AppliedRepeatable,
    CrashHook,
    Event,
    ForeignKeyViolation,
    LockTimeout,
    Repair,
    ReplyEvicted,
    Store,
    TableChoice,
    TrackingTables,
    choose_table,
    node_of,
    tracking_facts,
    tracking_tables,
)
from worker.stores.postgres import index as pg_index
from worker.stores.postgres import sql as pg_sql
from worker.stores.postgres.locks import PgLockWatch
from worker.stores.postgres.sql import to_psycopg, transaction_control, translate
from worker.stores.postgres.waits import LockWait, LockWaitWatch
from worker.stores.server_rows import ServerRows

INSTALL_DRIVER = "pip install 'migrations-node[postgres]'"  # psycopg: the optional extra
try:
    import psycopg
    from psycopg import errors, sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.pq import TransactionStatus
except ImportError as exc:
    # The worker stops with this as the reason (EXIT_CONFIG): no restart can install it.
    if exc.name == "psycopg":
        missing = f"psycopg 3, which is not installed for {sys.executable}"
    else:  # installed, but it cannot load (no libpq for it, for one)
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        missing = f"psycopg 3, which cannot be loaded ({cause})"
    raise ImportError(f"a PostgreSQL URL needs {missing}: {INSTALL_DRIVER}") from None

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 5  # how long the store's own statements wait for a lock, if the URL sets none
CONNECT_TIMEOUT_S = 10  # libpq waits for the system's TCP timeout otherwise, if unset
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL cuts longer names silently (NAMEDATALEN - 1)
OWNER_WAIT_S = 30.0  # how long a write waits for another worker's owner lock, if not told
# Worth a retry, like SQLite's busy and locked: nothing of the step stays.
RETRY_ERRORS = (errors.LockNotAvailable, errors.SerializationFailure, errors.DeadlockDetected)
SECRET_OPTIONS = database_url.SECRET_OPTIONS  # never in a log line or an error text
APPLICATION_NAME = "migrations worker pid {pid} on {host}"  # how pg_stat_activity shows us
OUR_APPLICATION = re.compile(r"migrations worker pid (\d+) on (.*)\Z")
OWNER_ATTEMPTS = 3  # tries of the owner lock while its holder is seen to let go
OWNER_POLL_FIRST_S = 0.01  # the first pause between tries of a held owner lock, doubled
OWNER_POLL_MAX_S = 0.25  # up to this: how late a waiter may notice the holder has gone
LOCK_KEY_PREFIX = "migrations-node owner of "  # keeps our advisory keys apart from others'
UTC_NOW = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
EVENT_COLUMNS = "version, name, action, checksum, started_at, duration_ms, src, request_id"
# The server's refusals that waiting does not end: its message as libpq quotes it, what is
# wrong, and what would end it. libpq gives no SQLSTATE for a failed connection (psycopg's
# exception has none), so these are the server's words, unchanged for many major versions,
# with their SQLSTATE beside them; a server whose lc_messages is not English words them
# otherwise, and its refusals are "try again", as before.
LASTING_REFUSALS = (
    ('database ".*" does not exist', "the database does not exist",  # 3D000
     "it is created or the URL names another"),
    ('role ".*" does not exist', "the role does not exist",  # 28000
     "it is created or the URL names another"),
    ('role ".*" is not permitted to log in', "the role may not log in",  # 28000
     "it is given LOGIN or the URL names another"),
    ("password authentication failed for user", "the password was refused",  # 28P01
     "PGPASSWORD, ~/.pgpass or the URL gives the right one"),
    (r"(no pg_hba\.conf entry|pg_hba\.conf rejects connection)",  # 28000
     "the server's pg_hba.conf does not let this role in from here",
     "pg_hba.conf lets it in or the URL names another role"),
    ('permission denied for database ".*"', "the role may not connect to this database",  # 42501
     "it is granted CONNECT on it"),
    ("[A-Za-z]+ authentication failed for user",  # 28000: ident, peer, ldap, cert, ...
     "the server refused the role's credentials",
     "the role is given the credentials the server's pg_hba.conf method expects"),
)
NO_PASSWORD = ("the server wants a password and none was given",  # libpq: fe_sendauth
               "PGPASSWORD, ~/.pgpass or the URL gives one")
NODE_OF = (  # store.node_of, in SQL
    f"CASE WHEN length(request_id) = {REQUEST_ID_BYTES}"
    f" THEN substring(request_id FROM 1 FOR {NODE_ID_BYTES}) ELSE request_id END"
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {migrations} (
        version bigint PRIMARY KEY,
        name text NOT NULL,
        checksum text NOT NULL,
        applied_at text NOT NULL,
        execution_ms double precision NOT NULL,
        applied_seq bigint NOT NULL,
        request_id bytea
    )""",
    """CREATE TABLE IF NOT EXISTS {replies} (
        seq bigint PRIMARY KEY,
        request_id bytea NOT NULL UNIQUE,
        reply bytea NOT NULL,
        created_at text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {history} (
        seq bigint PRIMARY KEY,
        version bigint NOT NULL,
        name text NOT NULL,
        action text NOT NULL,
        checksum text NOT NULL,
        started_at text NOT NULL,
        duration_ms double precision NOT NULL,
        src text,
        request_id bytea
    )""",
    """CREATE TABLE IF NOT EXISTS {evicted} (
        node bytea PRIMARY KEY,
        request_id bytea NOT NULL,
        evicted_at text NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {repeats} (
        name text PRIMARY KEY,
        checksum text NOT NULL,
        applied_at text NOT NULL,
        execution_ms double precision NOT NULL,
        request_id bytea
    )""",
    """CREATE TABLE IF NOT EXISTS {schemas} (
        seq bigint PRIMARY KEY,
        history_seq bigint,
        fingerprint text NOT NULL,
        changes text NOT NULL
    )""",
)

STATEMENTS = {
    "applied": "SELECT version, name, checksum, applied_seq, request_id"
    " FROM {migrations} ORDER BY version",
    "record": "INSERT INTO {migrations}"
    " (version, name, checksum, applied_at, execution_ms, applied_seq, request_id)"
    f" VALUES (%s, %s, %s, {UTC_NOW}, %s, %s, %s)",
    "unrecord": "DELETE FROM {migrations} WHERE version = %s",
    "record_event": f"INSERT INTO {{history}} (seq, {EVENT_COLUMNS})"
    " SELECT coalesce(max(seq), 0) + 1, %s::bigint, %s::text, %s::text, %s::text, %s::text,"
    " %s::double precision, %s::text, %s::bytea FROM {history}",
    "history": f"SELECT {EVENT_COLUMNS} FROM {{history}} ORDER BY seq",
    "recent_history": f"SELECT {EVENT_COLUMNS} FROM (SELECT seq, {EVENT_COLUMNS}"
    " FROM {history} ORDER BY seq DESC LIMIT %s) AS recent ORDER BY seq",
    "events_of": f"SELECT {EVENT_COLUMNS} FROM {{history}}"
    " WHERE request_id = %s AND action = %s ORDER BY seq",
    "stored_reply": "SELECT reply FROM {replies} WHERE request_id = %s",
    "evicted_reply": "SELECT NULL::bytea FROM {evicted} WHERE node = %s AND request_id = %s",
    # One round trip for both: the stored reply, or NULL for a reply pruned since.
    "stored_or_evicted": "SELECT reply FROM {replies} WHERE request_id = %s"
    " UNION ALL SELECT NULL FROM {evicted} WHERE node = %s AND request_id = %s",
    # INSERT OR REPLACE, as on SQLite: a replaced reply moves to the end of the order.
    "store_reply": "INSERT INTO {replies} (seq, request_id, reply, created_at)"
    f" SELECT coalesce(max(seq), 0) + 1, %s::bytea, %s::bytea, {UTC_NOW} FROM {{replies}}"
    " ON CONFLICT (request_id) DO UPDATE SET seq = excluded.seq, reply = excluded.reply,"
    " created_at = excluded.created_at RETURNING seq",
    # Prune, leaving each node's newest pruned id behind (see Store.store_reply).
    "prune_replies": "WITH gone AS (DELETE FROM {replies} WHERE seq <= %s RETURNING request_id)"
    " INSERT INTO {evicted} AS kept (node, request_id, evicted_at)"
    f" SELECT DISTINCT ON (node) node, request_id, {UTC_NOW}"
    f" FROM (SELECT {NODE_OF} AS node, request_id FROM gone) AS pruned"
    " ORDER BY node, request_id DESC"
    " ON CONFLICT (node) DO UPDATE SET request_id = GREATEST(kept.request_id,"
    " excluded.request_id), evicted_at = excluded.evicted_at",
    "repeatables": "SELECT name, checksum, applied_at, request_id FROM {repeats}",
    "record_repeatable": "INSERT INTO {repeats} (name, checksum, applied_at, execution_ms,"
    f" request_id) VALUES (%s, %s, {UTC_NOW}, %s, %s) ON CONFLICT (name) DO UPDATE SET"
    " checksum = excluded.checksum, applied_at = excluded.applied_at,"
    " execution_ms = excluded.execution_ms, request_id = excluded.request_id",
    "newest_schema": "SELECT coalesce(max(seq), 0) FROM {schemas}",
    "schema_rows": "SELECT changes FROM {schemas} WHERE changes <> '[]' ORDER BY seq",
    "add_schema_row": "INSERT INTO {schemas} (seq, history_seq, fingerprint, changes)"
    " SELECT coalesce(max(seq), 0) + 1, (SELECT max(seq) FROM {history}), %s::text, %s::text"
    " FROM {schemas} RETURNING seq",
    "data_version": "SELECT (SELECT coalesce(max(seq), 0) FROM {history}),"
    " (SELECT count(*) FROM {migrations})",
}

EXISTING_TABLES = (
    "SELECT c.relname FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = {} AND c.relname = ANY({}) AND c.relkind IN ('r', 'p')"
)
# Back to the session a new connection has, but for the owner lock (DISCARD ALL would let
# go of it): role and session user, settings (those of the URL's options, and of the
# server, are what RESET goes back to), cursors, LISTEN, temporary objects, sequences.
# The worker's own settings (lock_timeout) are SET again after it (see _session_reset).
RESET_SESSION = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; UNLISTEN *;"
    " DISCARD TEMP; DISCARD SEQUENCES"
)
SESSION_SETTINGS = (  # what the worker SET on a new session (see _configure)
    "SELECT name, current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'"
)
# A migration's PREPAREd statements (psycopg's own are _pg3_N) and advisory locks (all but
# the owner lock) let go of; looked for only when its SQL names them, as the lookup costs
# more than the rest of the reset.
RELEASE_PREPARED_AND_ADVISORY = """DO $release$ DECLARE r record; BEGIN
FOR r IN SELECT name FROM pg_catalog.pg_prepared_statements
    WHERE name NOT LIKE '\\_pg3\\_%' LOOP
  EXECUTE format('DEALLOCATE %I', r.name);
END LOOP;
FOR r IN SELECT DISTINCT classid::bigint AS high, objid::bigint AS low, objsubid,
    mode = 'ShareLock' AS shared FROM pg_catalog.pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted LOOP
  IF r.objsubid = 1 THEN
    CONTINUE WHEN (r.high << 32 | r.low) = {key} AND NOT r.shared;
    IF r.shared THEN
      WHILE pg_advisory_unlock_shared(r.high << 32 | r.low) LOOP END LOOP;
    ELSE
      WHILE pg_advisory_unlock(r.high << 32 | r.low) LOOP END LOOP;
    END IF;
  ELSIF r.shared THEN
    WHILE pg_advisory_unlock_shared((r.high - (r.high >> 31) * 4294967296)::int,
                                    (r.low - (r.low >> 31) * 4294967296)::int) LOOP END LOOP;
  ELSE
    WHILE pg_advisory_unlock((r.high - (r.high >> 31) * 4294967296)::int,
                             (r.low - (r.low >> 31) * 4294967296)::int) LOOP END LOOP;
  END IF;
END LOOP;
END $release$"""
MAY_HOLD_MORE = re.compile(r"prepare|advisory", re.IGNORECASE)
SCHEMA_EXISTS = "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s"
# A table's columns in order; one row with NULL for a table without any, none for no table.
COLUMNS = (
    "SELECT a.attname FROM pg_catalog.pg_class c"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0"
    " AND NOT a.attisdropped"
    " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p') ORDER BY a.attnum"
)
# The session's time zone, as a name zoneinfo may know, and as its offset now, in seconds.
TIME_ZONE = "SELECT current_setting('TimeZone'), extract(timezone FROM now())::int"
# Who holds a bigint advisory key: pg_locks splits it into classid (high) and objid (low).
LOCK_HOLDER = (
    "SELECT l.pid, a.application_name, host(a.client_addr), a.client_hostname"
    " FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_catalog.pg_database"
    " WHERE datname = current_database())"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = %s"
)


class SessionLost(ReplyError):
    """Error 11 for a session that died in the middle of a request (see PostgresStore._lost)."""


class TransactionControlRefused(psycopg.ProgrammingError):
    """Migration code tried to begin, end or prepare the transaction the engine owns."""


class PostgresStore(ServerRows, Store):
    split_statements = staticmethod(pg_sql.split_statements)
    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        table: str = DEFAULT_TABLE,
        schema: str = "public",
        local_lock: OwnerLock | None = None,
        owner_wait_s: float | None = None,
        lock_timeout_s: float | None = None,
    ) -> None:
        """A store for the database at `url` (a libpq URL or key=value string), tracking in
        `schema`.`table`; connects now if the server answers, else at the first request.

        A server that cannot be reached, or refuses us, is not a start-up error: every
        request is answered with error 11 saying why until it answers, and a connection
        lost later is replaced the same way (see _live). `owner_wait_s` is how long a write
        waits for the advisory owner lock held by another session before error 11 names
        the holder (None: a worker that found it held at start exits instead, see
        acquire_owner; writes after a lost connection then wait OWNER_WAIT_S).

        Each session is checked, once connected, against the target the URL names (see
        _wrong_target); one that reached another is closed, and the request gets error 11.

        `lock_timeout_s` is how long a statement of migration code waits for a lock (0: for
        ever) unless the migration says otherwise; None: the URL's (or the server's)
        lock_timeout, else MIGRATION_LOCK_TIMEOUT_S. The store's own statements keep the
        session's (LOCK_TIMEOUT_S unless the URL sets one).

        Raises ValueError for a malformed URL or a table or schema name PostgreSQL would
        cut; its text never holds the password.
        """
        self.database = describe(url)  # for logs and errors: no password in it
        self._url = url
        # Where libpq is to connect, by the rules the node named our endpoint with.
        self._target = database_url.resolve(url) if database_url.is_url(url) else None
        self.schema = schema
        # Given no table, the default's names until the first session finds the table
        # (see _live): nothing uses them before.
        self._choosing = table is None
        self._use_table(TableChoice(table or DEFAULT_TABLE))
        self._owner_wait_s = owner_wait_s
        self._lock_timeout_s = lock_timeout_s  # for migration code; None: see MIGRATION_...
        self._server_lock_timeout_ms = 0  # the URL's or server's lock_timeout (0: none)
        self._own_lock_timeout_ms = LOCK_TIMEOUT_S * 1000  # the session's, for our statements
        self._watch: LockWaitWatch | None = None  # who blocks migration code (see waiting)
        self._on_lock_wait: Callable[[LockWait], None] | None = None
        self._owner = False  # we are the database's worker (the local lock, if any, is ours)
        self._advisory = False  # the current session holds the advisory owner lock
        self._local_lock = local_lock  # the owner lock file on this machine, if any
        self._in_block = False  # inside transaction(): a lost connection ends the step
        self._committing = False  # COMMIT sent: a lost connection leaves the outcome unknown
        self._regaining = False  # replacing a session found dead; a second loss is final
        self._migration_running = False  # migration code runs now: interrupt() may cut it
        self._deferred = False  # inside a transaction with foreign keys off
        self._lock_watch: PgLockWatch | None = None  # a dry run watching its locks
        # Tracking tables seen to exist, committed (at BEGIN, or outside a transaction); a
        # read that finds one gone (dropped by hand) forgets them all and looks again.
        self._existing: set[str] = set()
        self._created: set[str] = set()  # created by the open transaction
        # The session migration code ran on since its last reset, if any (see _session_reset).
        self._dirty: psycopg.Connection[Any] | None = None
        self._release_due = False  # its SQL named PREPARE or advisory locks
        self._reset_sql: tuple[psycopg.Connection[Any] | None, str] = (None, "")
        self.commits = 0  # transactions this store committed; with data_version(), a change stamp
        self.repairs: list[Repair] = []  # done during the latest migration_db (see Store)
        self._crash_hook = CrashHook.from_environment()
        self.connection: psycopg.Connection[Any] | None = None
        try:
            self._live()
        except ReplyError as exc:
            log.warning("%s; each request gets error 11 until a connection succeeds", exc.text)

    def _use_table(self, choice: TableChoice) -> None:
        """Track in `choice.table` (and its companions): every statement and the owner
        lock's key are named by it. Raises ValueError for a name PostgreSQL would cut."""
        tables = tracking_tables(choice.table)
        _check_names(tables, self.schema)
        self.tables, self.table, self.displaced = tables, choice.table, choice.displaced
        self.tracking = f"{self.schema}.{choice.table}"
        names = {key: sql.Identifier(self.schema, name)
                 for key, name in self.tables._asdict().items()}
        self._schema = [sql.SQL(statement).format(**names).as_string() for statement in SCHEMA]
        self._sql = {
            key: sql.SQL(statement).format(**names).as_string()
            for key, statement in STATEMENTS.items()
        }
        self._lock_key = owner_lock_key(self.schema, choice.table)
        literals = sql.Literal(self.schema), sql.Literal(list(self.tables))
        self._existing_sql = sql.SQL(EXISTING_TABLES).format(*literals).as_string()

    def _choose_table(self, connection: psycopg.Connection[Any]) -> None:
        """Given no table, find it in the database (see choose_table), once: at the first
        session, before the owner lock (whose key it names) is taken."""
        self._choosing = False
        choice = choose_table(lambda table: _columns(
            connection.execute(COLUMNS, (self.schema, table)).fetchall()))
        if choice.table != self.table:
            self._use_table(choice)
            log.info("tracking in %s, found in the database%s", self.tracking,
                     "" if choice.displaced is None
                     else f": {self.label(choice.displaced)} is another tool's table")

    # -- the connection --------------------------------------------------------------------

    def _live(self) -> psycopg.Connection[Any]:
        """The session, replaced first if psycopg has seen it die (never inside a
        transaction, whose loss must end its step: see _lost).

        Raises ReplyError(TEMPORARILY_UNAVAILABLE) when no session can be had; nothing has
        run then (see _connect for the text of one the server refuses for good).
        """
        if _usable(self.connection):
            return self.connection
        if self._in_block:
            raise self._lost(psycopg.OperationalError("the server closed the connection"))
        self._drop()
        connection = _connect(self._url, self.database)
        try:
            self._server_lock_timeout_ms, self._own_lock_timeout_ms = _configure(connection)
            wrong = _wrong_target(connection, self._target)
        except psycopg.Error as exc:
            connection.close()
            raise ReplyError(
                TEMPORARILY_UNAVAILABLE,
                f"cannot set up the session with {self.database}: {exc}; nothing ran, try again",
            ) from None
        if wrong is not None:
            connection.close()
            raise ReplyError(
                TEMPORARILY_UNAVAILABLE, f"refused the session with {self.database}: {wrong};"
                f" {LASTING} the URL names where its sessions lead")
        if self._choosing:
            try:
                self._choose_table(connection)
            except psycopg.Error as exc:
                connection.close()
                raise ReplyError(
                    TEMPORARILY_UNAVAILABLE, f"cannot find the tracking table in"
                    f" {self.database}: {exc}; nothing ran, try again") from None
        self.connection = connection
        log.info("connected to %s, tracking in %s", self.database, self.tracking)
        return connection

    def _drop(self) -> None:
        """Forget a dead session, and the advisory lock that died with it."""
        if self.connection is not None:
            if self._advisory:
                log.warning("lost the session holding the owner lock of %s", self.tracking)
            self.connection.close()
        self.connection = None
        self._advisory = False

    def _lost(self, exc: psycopg.Error) -> SessionLost:
        """The error 11 for a session lost in the middle of a request, saying what became
        of the step in progress; the dead session is dropped (the next request connects)."""
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the connection to {self.database} was lost ({cause})"
        if self._committing:
            text = (f"{where} during COMMIT, so whether the step in progress committed is"
                    " unknown: ask for status before retrying")
        elif self._in_block:
            text = f"{where}; the server rolled back the step in progress; try again"
        else:
            text = f"{where}; try again"
        self._drop()
        return SessionLost(TEMPORARILY_UNAVAILABLE, text)

    def close(self) -> None:
        """Close the connection; the owner lock, if held, goes with it."""
        if self._watch is not None:
            self._watch.close()
        if self.connection is not None:
            self.connection.close()

    @property
    def url(self) -> str:
        """The URL (or key=value string) the store connects with: never a password, which
        the node hands over in the environment."""
        return self._url

    def reader(self) -> PostgresStore:
        """A second session on the same database that only reads (status beside a write),
        with this store's tracking table (found by itself while this one has not looked)."""
        reader = PostgresStore(self._url, table=None if self._choosing else self.table,
                               schema=self.schema)
        if not self._choosing:
            reader.displaced = self.displaced
        return reader

    def facts(self) -> dict[str, Any]:
        """The tracking table: the server keeps its own journal."""
        return tracking_facts(self)

    def label(self, table: str) -> str:
        return f"{self.schema}.{table}"

    def columns_of(self, table: str) -> list[str] | None:
        """The columns of `table` in the tracking tables' schema, None for no such table."""
        return _columns(self._run(COLUMNS, (self.schema, table)).fetchall())

    def foreign_rows(self, table: str, query: str) -> list[tuple]:
        """The rows of one read of another program's table. A `timestamp` (without time
        zone, as goose and Flyway keep theirs) is read in the session's TimeZone, the zone
        the server's now() wrote it in: it comes with that zone attached."""
        named = sql.SQL(query).format(table=sql.Identifier(self.schema, table)).as_string()
        rows = self._run(named).fetchall()
        if not any(isinstance(value, datetime) and value.tzinfo is None
                   for row in rows for value in row):
            return rows
        zone = self._time_zone()
        return [tuple(value.replace(tzinfo=zone) if isinstance(value, datetime)
                      and value.tzinfo is None else value for value in row) for row in rows]

    def _time_zone(self) -> tzinfo:
        name, offset_s = self._run(TIME_ZONE).fetchone()
        try:
            return ZoneInfo(name)
        except (ValueError, ZoneInfoNotFoundError):  # a POSIX spec zoneinfo cannot read
            return timezone(timedelta(seconds=offset_s))

    def waiting(self) -> LockWait | None:
        """What the statement of migration code running now waits for, as last seen."""
        return None if self._watch is None else self._watch.current

    def watch_lock_waits(self, on_wait: Callable[[LockWait], None]) -> None:
        self._on_lock_wait = on_wait
        if self._watch is not None:
            self._watch.on_wait = on_wait

    def _watching(self, connection: psycopg.Connection[Any], timeout_ms: int
                  ) -> AbstractContextManager[None]:
        """Watch the session for lock waits while migration code runs (see waits.py)."""
        if self._watch is None:
            self._watch = LockWaitWatch(lambda: _connect(self._url, self.database),
                                        self._on_lock_wait)
        return self._watch.watching(connection.info.backend_pid, timeout_ms / 1000)

    def _migration_lock_timeout_ms(self, lock_timeout_s: float | None) -> int:
        """The lock_timeout for one migration's statements, in milliseconds (0: none)."""
        if lock_timeout_s is None:
            lock_timeout_s = self._lock_timeout_s
        if lock_timeout_s is None:
            return self._server_lock_timeout_ms or round(MIGRATION_LOCK_TIMEOUT_S * 1000)
        # A positive timeout below 1 ms is 1 ms, not 0 (which would mean none).
        return max(1, round(lock_timeout_s * 1000)) if lock_timeout_s > 0 else 0

    def interrupt(self) -> None:
        """Cancel the query migration code runs now (the server's cancel request, sent
        from another thread as psycopg allows). One that reaches the server after the
        migration's code finished stops a statement of the store's own instead: see _run."""
        connection = self.connection
        if self._migration_running and _usable(connection):
            try:
                connection.cancel_safe()
            except psycopg.Error as exc:
                log.warning("could not cancel the running query: %s", exc)

    # -- the owner lock --------------------------------------------------------------------

    def acquire_owner(self, note: bytes = b"", wait: bool = False) -> None:
        """Become the only worker of this tracking table: the local lock file (nodes on
        this machine read who owns the database there), then a session-level advisory
        lock on a key derived from the table's schema-qualified name (see owner_lock_key),
        held until release_owner() or the end of the session, however the process ends.

        Raises AlreadyOwned naming the holder (its worker pid and host when it is one of
        ours, its backend pid and client address when visible) if the local lock is held,
        or if the advisory lock is and neither `wait` nor owner_wait_s was given. With
        `wait`, waits until the holder goes (see _wait_for_owner_lock); an exception raised
        during the wait (a stop signal's) ends it and closes the session. With
        owner_wait_s, a held advisory lock is logged and left to each write to wait for
        (see transaction). A server that does not answer yet defers the advisory lock to
        the first write. `note` goes into the local lock file.
        """
        if self._owner:
            return
        if self._local_lock is not None:
            self._local_lock.acquire(note, wait=wait)
        self._owner = True
        try:
            self._live()
        except ReplyError:
            return  # the first write takes it, once the server answers
        try:
            if wait:
                self._wait_for_owner_lock()
            else:
                self._try_owner_lock()
        except AlreadyOwned as exc:
            if self._owner_wait_s is None:
                self.release_owner()
                raise
            log.warning("%s; writes wait up to %g s for it to go", exc, self._owner_wait_s)

    def ensure_owner(self) -> None:
        self._ensure_owner()

    def _ensure_owner(self) -> None:
        """Hold the advisory lock on the current session before a write: taken again after
        a lost session, waiting up to owner_wait_s (OWNER_WAIT_S if unset) for another
        holder to go. Raises ReplyError(TEMPORARILY_UNAVAILABLE) naming the holder when it
        does not, or when no session can be had; nothing has run then."""
        self._live()
        if self._advisory or not self._owner:
            return  # a store that never asked to own the database (tests, tools) just writes
        wait_s = OWNER_WAIT_S if self._owner_wait_s is None else self._owner_wait_s
        try:
            if wait_s <= 0:
                self._try_owner_lock()
            else:
                self._wait_for_owner_lock(timeout_s=wait_s)
        except AlreadyOwned as exc:
            raise ReplyError(
                TEMPORARILY_UNAVAILABLE,
                f"{exc}; waited {wait_s:g} s for it to go, so nothing ran; try again",
            ) from None

    def _try_owner_lock(self) -> None:
        for _ in range(OWNER_ATTEMPTS):
            (taken,) = self._run(
                "SELECT pg_try_advisory_lock(%s)", (self._lock_key,)
            ).fetchone()
            if taken:
                self._advisory = True
                return
            holder = self._holder()
            if holder is not None:
                raise AlreadyOwned(holder)
            # The holder let go between the two queries (a session ends a moment after
            # its client closes): worth another try.
        raise AlreadyOwned(
            f"{self.tracking} in {self.database} is taken and let go by other sessions"
            " again and again; try again"
        )

    def _wait_for_owner_lock(self, timeout_s: float = 0) -> None:
        """Take the advisory lock once its holder lets go, or raise AlreadyOwned naming
        the holder when `timeout_s` has passed first (0: wait for as long as it takes).

        Each try is pg_try_advisory_lock(), which answers at once; between tries the
        session is idle, in no statement and no transaction, the pause growing up to
        OWNER_POLL_MAX_S. Blocking in pg_advisory_lock() instead would hold a snapshot
        for the whole wait, and the holder's CREATE INDEX CONCURRENTLY waits for every
        snapshot older than its own: a deadlock, which the server ends by failing the
        index build and leaving it INVALID. An exception raised during the wait (a stop
        signal's) ends it and closes the session.
        """
        deadline = None if timeout_s <= 0 else time.monotonic() + timeout_s
        pause = OWNER_POLL_FIRST_S
        said = False
        try:
            while True:
                (taken,) = self._execute(
                    "SELECT pg_try_advisory_lock(%s)", (self._lock_key,)).fetchone()
                if taken:
                    self._advisory = True
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise AlreadyOwned(self._holder() or (
                        f"{self.tracking} in {self.database} is owned by another worker"))
                if not said:
                    said = True
                    log.info("waiting %s for the owner lock: %s", "for as long as it takes"
                             if deadline is None else f"up to {timeout_s:g} s", self._holder())
                time.sleep(pause if left is None else min(pause, left))
                pause = min(pause * 2, OWNER_POLL_MAX_S)
        except AlreadyOwned:
            raise
        except BaseException:
            # Taken or not, whatever the session holds goes with it.
            self._drop()
            raise

    def _holder(self) -> str | None:
        """Who holds the owner lock, for AlreadyOwned; None if nobody does any more."""
        # Not _run: a session lost here must end the wait for the lock, not start one.
        row = self._execute(LOCK_HOLDER, (self._lock_key,)).fetchone()
        if row is None:
            return None
        where = f"{self.tracking} in {self.database}"
        pid, application, address, hostname = row
        seen = [f"PostgreSQL backend pid {pid}"]
        client = hostname or address
        if client:
            seen.append(f"client {client}")
        ours = OUR_APPLICATION.match(application or "")
        if ours is not None:
            return f"{where} is held by worker pid {ours[1]} on {ours[2]} ({', '.join(seen)})"
        if application:
            seen.append(f"application {application!r}")
        return f"{where} is held by {', '.join(seen)}"

    def release_owner(self) -> None:
        connection = self.connection
        if self._advisory and _usable(connection):
            try:
                connection.execute("SELECT pg_advisory_unlock(%s)", (self._lock_key,))
            except psycopg.Error as exc:  # the session ends with the process anyway
                log.warning("could not release the owner lock: %s", exc)
        self._advisory = False
        self._owner = False
        if self._local_lock is not None:
            self._local_lock.release()

    # -- transactions ----------------------------------------------------------------------

    def _run(self, query: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """Execute on the session. Outside a transaction, a session found dead (it died
        while idle: a server restart, pg_terminate_backend) is replaced and the statement
        sent again, once, after taking the owner lock again if the dead one held it:
        nothing had run. Inside one, its loss is the step's end (SessionLost).

        A query cancel sent for migration code that reached the server after that code
        had finished stops whichever statement of ours runs then (found by the 1,000-kill
        soak: a `migrate` planning its steps got error 13). Outside a step's transaction
        the statement is sent again, once, as nothing of it ran; inside one the step is
        rolled back, and the request gets error 11 saying so."""
        try:
            return self._execute(query, params)
        except errors.QueryCanceled as exc:
            if self._migration_running:
                raise  # migration code's own: the cancel it was meant for
            if self._in_block:
                raise ReplyError(
                    TEMPORARILY_UNAVAILABLE,
                    "a query cancel meant for an earlier statement reached the server late"
                    " and stopped one of the store's own, so the step in progress was rolled"
                    " back and is not recorded; try again",
                ) from exc
            log.warning("a late query cancel stopped a statement of the store's own;"
                        " sending it again")
            if self._in_transaction():
                self.connection.execute("ROLLBACK")
            return self._execute(query, params)
        except SessionLost:
            if self._in_block or self._regaining:
                raise
        self._regaining = True
        try:
            self._ensure_owner()
            return self._execute(query, params)
        finally:
            self._regaining = False

    def _execute(self, query: str, params: Sequence[Any] | None) -> psycopg.Cursor[Any]:
        connection = self._live()
        with self._translated():
            return connection.execute(query, params)  # type: ignore[arg-type]

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """What is worth a retry as error 11 (see _retryable_as_unavailable), and a lost
        session too (see _lost)."""
        with self._session_errors(), _retryable_as_unavailable():
            yield

    @contextmanager
    def _session_errors(self) -> Iterator[None]:
        """A session that dies under a statement as SessionLost, error 11."""
        try:
            yield
        except psycopg.OperationalError as exc:
            if not _usable(self.connection):
                raise self._lost(exc) from exc
            raise

    def _in_transaction(self) -> bool:
        if self.connection is None:
            return False
        status = self.connection.info.transaction_status
        return status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def _begin(self) -> None:
        """BEGIN, and learn which tracking tables exist, in one round trip.

        The session never stays in a transaction this did not finish: when the round trip
        fails after its BEGIN took effect (a query cancel meant for a migration's statement
        that reached the server late cancels the lookup, say), the transaction is rolled
        back before the error goes on, since a failed transaction refuses every statement
        after it; and one found open anyway is rolled back first, with a warning.
        """
        if self._in_transaction():
            log.warning("rolling back a transaction left open on the session before a write")
            self.connection.execute("ROLLBACK")
        try:
            cursor = self._run(f"BEGIN; {self._existing_sql}")
            cursor.nextset()
            self._existing = {name for (name,) in cursor.fetchall()}
        except BaseException:
            if self._in_transaction():
                self.connection.execute("ROLLBACK")
            raise
        self._created = set()

    def _ensure_schema(self, restore_tracking: bool) -> None:
        """Create the tracking tables that are missing (as _begin found them), inside the
        write transaction, so read-only work never writes (and needs no right to create):
        all of them in a new database, the companions when they were dropped by hand.
        Raises TrackingTableMissing when the tracking table was dropped and its companions
        remain, unless `restore_tracking` (baseline)."""
        existing = set(self._existing)
        missing = self._tables_to_create(existing, restore_tracking)
        if not missing:
            return
        if not existing and self._run(SCHEMA_EXISTS, (self.schema,)).fetchone() is None:
            self._run(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(self.schema)).as_string())
        for name, statement in missing:
            self._run(statement)
            self._created.add(name)

    def _tables(self) -> set[str]:
        """The tracking tables that exist. Inside a transaction, as BEGIN found them (with
        those it created); outside, as last seen, looked up while one is not yet seen."""
        if self._in_transaction():
            return self._existing | self._created
        if len(self._existing) < len(self.tables):
            self._existing = {name for (name,) in self._run(self._existing_sql)}
        return set(self._existing)

    def _reading(self, read: Callable[[set[str]], Any]) -> Any:
        """`read` given the tracking tables that exist; when one it read was dropped by
        hand since it was seen, once more with them looked up again."""
        try:
            return read(self._tables())
        except errors.UndefinedTable:
            if self._in_transaction():
                raise
            self._existing = set()
        return read(self._tables())

    @contextmanager
    def transaction(
        self, *, commit: bool = True, foreign_keys: bool = True, restore_tracking: bool = False
    ) -> Iterator[None]:
        """One write transaction: all of its statements commit, or none do.

        With `commit` false (a dry run) the transaction is rolled back at the end instead,
        whatever happened in it. With `foreign_keys` false, deferrable constraints are
        deferred for the transaction and checked before the end: raises
        ForeignKeyViolation, after rolling back, when rows lost their parent. It begins by
        creating the tracking tables that are missing (see _ensure_schema). When migration
        code ran in it, the session is reset before COMMIT, in the same round trip (see
        _session_reset), or after ROLLBACK.

        Raises ReplyError(TEMPORARILY_UNAVAILABLE) when a statement waited for a lock past
        lock_timeout, or hit a serialization failure or deadlock; TrackingTableMissing as
        _ensure_schema says; any other failure is raised as the psycopg error it is.
        """
        self._ensure_owner()
        self._begin()
        self._in_block = True
        try:
            if not foreign_keys:
                self._run("SET CONSTRAINTS ALL DEFERRED")
                self._deferred = True
            self._ensure_schema(restore_tracking)
            yield
            if not foreign_keys:
                self.check_foreign_keys()
            if commit:
                self._commit(foreign_keys)
            else:
                self._run("ROLLBACK")
        except BaseException:
            if self._in_transaction():
                self.connection.execute("ROLLBACK")
            raise
        finally:
            self._deferred = self._in_block = self._committing = False
            if self._dirty is not None:
                self._reset_after_rollback()
        if not commit:
            return
        self._existing |= self._created
        self.commits += 1
        self.repairs = []  # recorded by the transaction that committed (see Store.repairs)
        if self._crash_hook is not None:
            self._crash_hook.fire_if_armed()

    def _commit(self, foreign_keys: bool) -> None:
        self._committing = True
        reset = self._dirty is self.connection
        try:
            self._run(f"{self._session_reset()}; COMMIT" if reset else "COMMIT")
            if reset:
                self._dirty, self._release_due = None, False
        except errors.ForeignKeyViolation as exc:
            if foreign_keys:
                raise
            raise ForeignKeyViolation([_table_of(exc)]) from exc

    @contextmanager
    def migration_db(
        self,
        in_transaction: bool = True,
        check: Callable[[], None] | None = None,
        lock_timeout_s: float | None = None,
        steps: Any = None,
    ) -> Iterator[PostgresMigrationDB]:
        """The `db` that migration code gets: inside the open transaction, refusing
        transaction control, or (for a migration that cannot run in one) in autocommit.
        `check` runs before each of its statements (a cancel raises there).

        Its statements wait for a lock at most `lock_timeout_s` (see
        _migration_lock_timeout_ms): SET LOCAL for a migration in a transaction, and SET
        back to the session's after it, so the tracking rows written next keep the
        session's; outside a transaction, SET for the session, which the reset after it
        puts back. One that waits longer raises LockTimeout naming what it waited for and
        who held it, as the watch saw it (see waits.py), and the wait is shown by
        waiting() meanwhile.

        The migration meets the session a new worker has: one that migration code ran on
        before (another step of a dry run) is reset first, and a migration outside a
        transaction is followed by a reset; inside one, the reset comes with its COMMIT
        (see transaction). Outside a transaction, an INVALID index in the way of a CREATE
        INDEX CONCURRENTLY is dropped first (see index.py), and kept in `repairs`, which
        starts empty for each migration.

        Raises RuntimeError afterwards if the migration ended the transaction itself, went
        on after a failed statement (PostgreSQL then aborts the transaction), or left one
        open when it had none.
        """
        self.repairs = []
        if not in_transaction:
            self._ensure_owner()  # a write, even outside a transaction
        connection = self._live()
        timeout_ms = self._migration_lock_timeout_ms(lock_timeout_s)
        set_timeout = f"SET {'LOCAL ' if in_transaction else ''}lock_timeout = {timeout_ms}"
        if self._dirty is connection:
            self._run(f"{self._session_reset()}; {set_timeout}")
        else:
            self._learn_session()  # the worker's own settings, while no migration changed them
            self._run(set_timeout)

        @contextmanager
        def translated() -> Iterator[None]:
            with self._session_errors(), _retryable_as_unavailable():
                try:
                    yield
                except errors.LockNotAvailable as exc:
                    nothing_stayed = in_transaction or db.statements <= 1
                    raise self._lock_timeout(exc, timeout_ms, nothing_stayed) from exc

        watch = self._lock_watch
        db = PostgresMigrationDB(
            connection, guarded=in_transaction, translated=translated, check=check,
            seen=self._seen, after=watch.observe if watch is not None else None,
            repaired=self._repaired,
        )
        self._dirty, self._release_due = connection, False
        self._migration_running = True
        left_open = False
        try:
            with self._watching(connection, timeout_ms):
                yield db
            if in_transaction and self._in_transaction() and (
                    connection.info.transaction_status == TransactionStatus.INTRANS):
                self._run(f"SET LOCAL lock_timeout = {self._own_lock_timeout_ms}")
        finally:
            self._migration_running = False
            if not in_transaction:
                if self._in_transaction():
                    self.connection.execute("ROLLBACK")
                    left_open = True
                self._reset_after_rollback()
        if not in_transaction:
            if left_open:
                raise RuntimeError("the migration left a transaction open")
            return
        status = self.connection.info.transaction_status
        if status == TransactionStatus.IDLE:
            raise RuntimeError("the migration ended the transaction itself")
        if status == TransactionStatus.INERROR:
            raise RuntimeError(
                "a statement of the migration failed and the migration went on, so"
                " PostgreSQL aborted its transaction"
            )

    def _lock_timeout(self, exc: psycopg.Error, timeout_ms: int, nothing_stayed: bool
                      ) -> LockTimeout:
        """The LockTimeout for a statement of migration code that waited `timeout_ms`."""
        wait = None if self._watch is None else self._watch.seen
        waited = f"waited {timeout_ms / 1000:g} s (its lock timeout)"
        if wait is not None:
            text = f"a statement {waited} for {wait.describe()}"
        else:
            cause = exc.diag.message_primary or str(exc)
            text = f"a statement {waited} for a lock ({cause}); what held it was not seen"
        return LockTimeout(text, wait, nothing_stayed)

    @contextmanager
    def watching_locks(self) -> Iterator[PgLockWatch]:
        """Around a dry run's transaction: after each statement of migration code, the
        locks our session holds are read (see locks.py); real runs pay nothing."""
        self._lock_watch = PgLockWatch(self._run, self.schema, list(self.tables))
        try:
            yield self._lock_watch
        finally:
            self._lock_watch = None

    def _repaired(self, repair: Repair) -> None:
        self.repairs.append(repair)

    def _seen(self, sql_text: str) -> None:
        """Note a statement of migration code: one naming PREPARE or advisory locks makes
        the next reset look for them (see RELEASE_PREPARED_AND_ADVISORY)."""
        if not self._release_due and MAY_HOLD_MORE.search(sql_text):
            self._release_due = True

    def _learn_session(self) -> str:
        """RESET_SESSION, then the worker's own settings SET again, as they are on the
        session now: read once per session, before any migration ran on it."""
        connection, statements = self._reset_sql
        if connection is self.connection:
            return statements
        settings = self._run(SESSION_SETTINGS).fetchall()
        statements = RESET_SESSION
        if settings:
            values = sql.SQL(", ").join(
                sql.SQL("({}, {})").format(sql.Literal(name), sql.Literal(value))
                for name, value in settings
            )
            statements += sql.SQL(
                "; SELECT set_config(name, value, false) FROM (VALUES {}) AS s(name, value)"
            ).format(values).as_string()
        self._reset_sql = (self.connection, statements)
        return statements

    def _session_reset(self) -> str:
        """The statements that put the session back as a new one is, but for the owner
        lock (see _learn_session), with, when due, the release of a migration's prepared
        statements and advisory locks."""
        statements = self._learn_session()
        if self._release_due:
            statements += "; " + RELEASE_PREPARED_AND_ADVISORY.replace(
                "{key}", str(self._lock_key))
        return statements

    def _reset_after_rollback(self) -> None:
        """Reset a session migration code ran on, outside a transaction (after ROLLBACK,
        or after a migration that runs outside one). A failure is logged and the session
        stays marked, so the next migration resets it first; a new session needs none."""
        connection = self.connection
        if self._dirty is not connection or not _usable(connection):
            self._dirty = None
            return
        if self._in_transaction():
            return  # the reset rides with COMMIT, or waits for the ROLLBACK
        try:
            self._run(self._session_reset())
        except (psycopg.Error, ReplyError) as exc:
            log.warning("could not reset the session after a migration: %s", exc)
            return
        self._dirty, self._release_due = None, False

    def schema_reading(self) -> tuple[Any, Any, Any]:
        from worker.schema import postgres as reader  # only steps, verify and drift read it

        # Qualified: a table of the same name in another schema is the migrations' own.
        return reader, self._live(), {self.label(name) for name in self._unmanaged()}

    def add_schema_row(self, fingerprint: str, changes: str) -> int:
        return self._run(self._sql["add_schema_row"], (fingerprint, changes)).fetchone()[0]

    @contextmanager
    def scratch(self) -> Iterator[PostgresStore]:
        name = f"mn_verify_{secrets.token_hex(6)}"
        try:
            self._run(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)).as_string())
        except errors.InsufficientPrivilege as exc:
            raise ReplyError(
                PRECONDITION_FAILED,
                f"verify builds a scratch database, and this role may not create one"
                f" ({exc.diag.message_primary}): grant it CREATEDB, or run verify with a"
                " role that has it; nothing was written",
            ) from None
        store = PostgresStore(make_conninfo(self._url, dbname=name), table=self.table,
                              schema=self.schema)
        try:
            yield store
        finally:
            store.close()
            try:
                self._run(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)).as_string())
            except (psycopg.Error, ReplyError) as exc:
                log.warning("could not drop the scratch database %s: %s", name, exc)

    def check_foreign_keys(self) -> None:
        """Raise ForeignKeyViolation if rows reference missing rows: checks every deferred
        constraint now (SET CONSTRAINTS ALL IMMEDIATE), then defers them again when the
        transaction has foreign keys off. The transaction is aborted when it raises."""
        try:
            self._run("SET CONSTRAINTS ALL IMMEDIATE")
        except errors.ForeignKeyViolation as exc:
            raise ForeignKeyViolation([_table_of(exc)]) from exc
        if self._deferred:
            self._run("SET CONSTRAINTS ALL DEFERRED")

    def data_version(self) -> int:
        """A stamp that changes when any connection commits a change to the tracking rows.

        PostgreSQL has no PRAGMA data_version; this is the newest history seq (every apply,
        rollback and baseline adds one) combined with the number of tracking rows (a row
        added or deleted by hand), one indexed max and one count. It misses a change that
        does neither (an UPDATE of a row by hand). It moves for this store's commits too.
        """
        def read(tables: set[str]) -> int:
            if not {self.tables.migrations, self.tables.history} <= tables:
                return 0
            newest, count = self._run(self._sql["data_version"]).fetchone()
            return newest << 32 | count

        return self._reading(read)

    # -- tracking rows, history, stored replies --------------------------------------------

    def applied(self) -> list[AppliedMigration]:
        """Every recorded migration, in version order. Raises TrackingTableMissing when the
        tracking table was dropped by hand and its companions remain."""
        def read(tables: set[str]) -> list[AppliedMigration]:
            if self.tables.migrations not in tables:
                if tables:
                    raise self._tracking_missing(tables)
                not_adopted = self._not_adopted()
                if not_adopted is not None:
                    raise not_adopted
                return []
            try:
                rows = self._run(self._sql["applied"]).fetchall()
            except errors.UndefinedColumn:
                raise self._foreign_table() from None
            return [AppliedMigration(*row) for row in rows]

        return self._reading(read)

    def record(
        self,
        version: int,
        name: str,
        checksum: str,
        execution_ms: float,
        applied_seq: int,
        request_id: bytes,
    ) -> None:
        """Mark a migration applied; call inside the transaction that ran its up()."""
        self._run(
            self._sql["record"],
            (version, name, checksum, execution_ms, applied_seq, request_id),
        )

    def unrecord(self, version: int) -> None:
        """Mark a migration not applied; call inside the transaction that ran its down()."""
        self._run(self._sql["unrecord"], (version,))

    def record_event(self, event: Event) -> None:
        """Add an apply, rollback or baseline to the history, inside its own transaction."""
        self._run(self._sql["record_event"], tuple(event))

    def repeatables(self) -> list[AppliedRepeatable]:
        """Every repeatable migration ever applied, as last applied (see Store)."""
        def read(tables: set[str]) -> list[AppliedRepeatable]:
            if self.tables.repeats not in tables:
                return []
            return [AppliedRepeatable(*row) for row in self._run(self._sql["repeatables"])]

        return self._reading(read)

    def record_repeatable(
        self, name: str, checksum: str, execution_ms: float, request_id: bytes
    ) -> None:
        """Note a repeatable migration applied; call inside the transaction that ran it."""
        self._run(self._sql["record_repeatable"], (name, checksum, execution_ms, request_id))

    def history(self, limit: int | None = None) -> list[Event]:
        """The history, oldest first: every event, or the `limit` most recent."""
        def read(tables: set[str]) -> list[Event]:
            if self.tables.history not in tables:
                return []
            if limit is None:
                rows = self._run(self._sql["history"])
            else:
                rows = self._run(self._sql["recent_history"], (limit,))
            return [Event(*row) for row in rows]

        return self._reading(read)

    def events_of(self, request_id: bytes, action: str) -> list[Event]:
        """What one request did of `action`, oldest first (to resume it after a crash)."""
        def read(tables: set[str]) -> list[Event]:
            if self.tables.history not in tables:
                return []
            rows = self._run(self._sql["events_of"], (request_id, action))
            return [Event(*row) for row in rows]

        return self._reading(read)

    def stored_reply(self, request_id: bytes) -> dict[str, Any] | None:
        """The reply already given to this request id, if it was stored; raises
        ReplyEvicted when it was pruned since."""
        def read(tables: set[str]) -> list[tuple]:
            kept, evicted = self.tables.replies in tables, self.tables.evicted in tables
            evicted_key = (node_of(request_id), request_id)
            if kept and evicted:
                return self._run(
                    self._sql["stored_or_evicted"], (request_id, *evicted_key)).fetchall()
            if kept:
                return self._run(self._sql["stored_reply"], (request_id,)).fetchall()
            if evicted:
                return self._run(self._sql["evicted_reply"], evicted_key).fetchall()
            return []

        rows = self._reading(read)
        for (reply,) in rows:
            if reply is not None:
                return codec.unpack(reply, codec.MAX_REPLY_BYTES)
        if rows:
            raise ReplyEvicted(request_id)
        return None

    def store_reply(self, request_id: bytes, reply: dict[str, Any]) -> None:
        """Keep a reply for resends (the last KEEP_REPLIES), inside the transaction whose
        effect it reports; those pruned leave their node's newest id behind."""
        (seq,) = self._run(
            self._sql["store_reply"], (request_id, codec.pack(reply))
        ).fetchone()
        self._run(self._sql["prune_replies"], (seq - KEEP_REPLIES,))


class PostgresMigrationDB:
    """The `db` a migration's up(db) and down(db) receive on PostgreSQL.

    The same methods and parameter style as on SQLite (see to_psycopg). While guarded (the
    migration runs in the engine's transaction), a statement that begins, ends or prepares
    a transaction is refused with TransactionControlRefused before it is sent. The check
    reads the leading keywords of each statement (see transaction_control); what runs
    inside a function or procedure is not seen, but PostgreSQL itself refuses COMMIT and
    ROLLBACK there while a transaction block is open. Unguarded and outside a transaction,
    a statement that builds an index concurrently is preceded by the drop of an INVALID
    index of that name (see index.py), which `repaired` is told of.
    """

    def __init__(
        self,
        connection: psycopg.Connection[Any],
        guarded: bool,
        translated: Callable[[], AbstractContextManager[None]] = nullcontext,
        check: Callable[[], None] | None = None,
        seen: Callable[[str], None] | None = None,
        after: Callable[[], None] | None = None,
        repaired: Callable[[Repair], None] | None = None,
    ) -> None:
        self._connection = connection
        self._guarded = guarded
        self._translated = translated  # the store's: a lost session is error 11, not a failure
        self._check = check or _nothing  # runs before every statement: a cancel raises there
        self._seen = seen or _noted  # gets every statement's text (see PostgresStore._seen)
        self._repaired = repaired or _noted  # gets each INVALID index dropped
        self.statements = 0  # statements sent so far
        self._after = after or _nothing  # runs after every statement that succeeded

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Rows:
        """Run one statement with parameters (without, several `;`-separated ones may run,
        exactly as written); returns its rows."""
        self._check()
        self._refuse_transaction_control(sql)
        self._drop_invalid_indexes(sql)
        self._seen(sql)
        self.statements += 1
        query, values = to_psycopg(sql, params)
        with self._translated():
            # Never prepared: a migration's DDL may change what a prepared plan returns.
            rows = Rows(self._connection.execute(query, values, prepare=False))  # type: ignore[arg-type]
        self._after()
        return rows

    def executemany(
        self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> Rows:
        """Run one statement once per row of parameters."""
        self._check()
        self._refuse_transaction_control(sql)
        self._drop_invalid_indexes(sql)
        self._seen(sql)
        self.statements += 1
        rows = iter(rows)
        first = next(rows, None)
        cursor = self._connection.cursor()
        if first is not None:
            query = translate(sql, named=isinstance(first, Mapping))
            with self._translated():
                cursor.executemany(query, itertools.chain([first], rows))  # type: ignore[arg-type]
            self._after()
        return Rows(cursor)

    def executescript(self, script: str) -> None:
        """Run several `;`-separated statements in the current transaction, in order, in one
        round trip. Raises the psycopg error of the first statement that fails."""
        self._check()
        self._refuse_transaction_control(script)
        self._drop_invalid_indexes(script)
        self._seen(script)
        self.statements += 1
        with self._translated():
            self._connection.execute(script, prepare=False)  # type: ignore[arg-type]
        self._after()

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple]:
        """Run one statement and return all its rows ([] for one that returns none)."""
        return self.execute(sql, params).fetchall()

    def _drop_invalid_indexes(self, sql: str) -> None:
        """Before `sql` builds an index concurrently, drop an INVALID index of its name (see
        pg_index). Only outside a transaction: inside one, the build itself is refused."""
        if self._guarded or self._connection.info.transaction_status != TransactionStatus.IDLE:
            return
        for build in pg_index.index_builds(sql):
            with self._translated():
                repair = pg_index.drop_invalid_index(self._connection, build)
            if repair is not None:
                self._repaired(repair)

    def _refuse_transaction_control(self, sql: str) -> None:
        if not self._guarded:
            return
        refused = transaction_control(sql)
        if refused is not None:
            raise TransactionControlRefused(
                f"{refused} is refused: a migration runs inside the engine's transaction"
                " and cannot begin, end or prepare one (SAVEPOINT is fine)"
            )


class Rows:
    """What db.execute() returns: its rows, read as from a sqlite3 cursor, and nothing
    that reaches the connection behind it."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        return self._cursor.description

    def fetchone(self) -> tuple | None:
        return self._cursor.fetchone() if self._cursor.description is not None else None

    def fetchmany(self, size: int = 1) -> list[tuple]:
        return self._cursor.fetchmany(size) if self._cursor.description is not None else []

    def fetchall(self) -> list[tuple]:
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())


# -- connecting ----------------------------------------------------------------------------


def describe(url: str) -> str:
    """`postgresql://user@host:port/dbname` for a connection string, without its password.

    Raises ValueError for a malformed one, without echoing it (libpq's message may quote
    the password).
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        raise ValueError(
            "the PostgreSQL connection string is malformed (not shown: it may hold a password)"
        ) from None
    user = params.get("user", "")
    host = params.get("host", "")
    port = params.get("port", "")
    text = "postgresql://"
    if user:
        text += f"{user}@"
    text += host if host and not host.startswith("/") else ""
    if port:
        text += f":{port}"
    text += f"/{params.get('dbname', '')}"
    if host.startswith("/"):
        text += f" (socket in {host})"
    return text


def _connect(url: str, where: str) -> psycopg.Connection[Any]:
    """A new session with the server at `url` (`where` names it, without secrets).

    Raises ReplyError(TEMPORARILY_UNAVAILABLE) with libpq's reason, secrets cut out: for
    a refusal that waiting does not end (LASTING_REFUSALS, or a password wanted and none
    given) saying what is wrong and LASTING; for any other failure (a server down, one
    that refuses connections for now, a timeout) "try again".
    """
    params = conninfo_to_dict(url)  # describe() has checked that it parses
    # The secrets the node took out of the URL and put in our environment (the password,
    # in PGPASSWORD, libpq reads by itself).
    extra: dict[str, Any] = database_url.secrets_to_pass()
    if "application_name" not in params and "PGAPPNAME" not in os.environ:
        name = APPLICATION_NAME.format(pid=os.getpid(), host=socket.gethostname())
        extra["application_name"] = name.encode()[:MAX_IDENTIFIER_BYTES].decode(errors="ignore")
    if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as exc:
        text = str(exc)
        for option in SECRET_OPTIONS:
            secret = params.get(option) or extra.get(option)
            if option == "password":
                secret = secret or os.environ.get("PGPASSWORD")
            if secret:
                text = text.replace(str(secret), "***")
        # libpq's message runs over several lines; a reply's text is one.
        reason = " ".join(text.split())
        needs_password = exc.pgconn is not None and exc.pgconn.needs_password
        raise _not_connected(where, reason, needs_password) from None


def _not_connected(where: str, reason: str, needs_password: bool) -> ReplyError:
    """Error 11 for a failed connection: LASTING and what would end it when the server
    refused it for good (any one of its hosts: the others being down changes nothing), or
    libpq found a password wanted and none given; else "try again"."""
    lasting = next((
        (wrong, until) for said, wrong, until in LASTING_REFUSALS
        if re.search(f"FATAL: +{said}", reason)
    ), NO_PASSWORD if needs_password else None)
    if lasting is None:
        return ReplyError(TEMPORARILY_UNAVAILABLE,
                          f"cannot connect to {where}: {reason}; nothing ran, try again")
    wrong, until = lasting
    return ReplyError(TEMPORARILY_UNAVAILABLE,
                      f"cannot connect to {where}: {wrong} ({reason}); {LASTING} {until}")


def _wrong_target(
    connection: psycopg.Connection[Any], target: database_url.Target | None
) -> str | None:
    """What is wrong with a new session, None if it reached the target the URL names.

    The database and the user are the server's own (current_database(), session_user: a
    role set by `options` changes current_user, not whom we logged in as); the host and
    port are those libpq connected to, which must be one of the target's hosts; through a
    unix socket the server's own port must match too (its socket file is named by it). A
    TCP server's own port (inet_server_port()) is not compared: behind a proxy, a tunnel
    or a container's port mapping it differs from the URL's, and the connection is right.
    """
    if target is None:  # a key=value connection string: no URL to hold it to
        return None
    database, user, server_port = connection.execute(
        "SELECT current_database(), session_user, current_setting('port')").fetchone()
    info = connection.info
    socket_path = info.host.startswith(("/", "@"))
    port = int(info.port)
    via = {database_url.canonical_address(info.host)}
    if info.hostaddr:
        via.add(database_url.canonical_address(info.hostaddr))
    wrong = []
    if "dbname" not in target.unsure and database != target.dbname:
        wrong.append(f'database "{database}", not "{target.dbname}"')
    if "user" not in target.unsure and user != target.user:
        wrong.append(f'user "{user}", not "{target.user}"')
    if {"host", "hostaddr", "port"}.isdisjoint(target.unsure) and not any(
        host.port == port and (host.address in via or (not host.address and socket_path))
        for host in target.hosts
    ):
        wrong.append(f"server {info.host} port {port}, not one the URL names")
    if socket_path and int(server_port) != port:
        wrong.append(f"a server whose port is {server_port} behind the socket of port {port}")
    options = dict(target.settings).get("options", "")
    if "options" not in target.unsure and (info.options or "") != options:
        wrong.append(f"options {info.options!r}, not {options!r}")
    if not wrong:
        return None
    return (f"it reached {', '.join(wrong)}: not the target its URL names ({target}), under"
            " whose name this worker serves (a proxy that maps a database or user to another"
            " is not supported)")


def _check_names(tables: TrackingTables, schema: str) -> None:
    """Raise ValueError for a name PostgreSQL would cut or refuse."""
    named = [("table", name) for name in tables] + [("schema", schema)]
    for what, name in named:
        if not name or "\x00" in name or len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise ValueError(
                f"the {what} name {name!r} must be 1 to {MAX_IDENTIFIER_BYTES} bytes without NUL"
            )


def _columns(rows: list[tuple]) -> list[str] | None:
    """The columns the rows of COLUMNS name, in order; None when there was no table."""
    if not rows:
        return None
    return [name for (name,) in rows if name is not None]


def _configure(connection: psycopg.Connection[Any]) -> tuple[int, int]:
    """A lock wait ends like SQLite's busy timeout, unless the URL or server chose; returns
    the lock_timeout the URL or server chose (0: none) and the session's now, in ms."""
    (chosen,) = connection.execute(
        "SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'lock_timeout'"
    ).fetchone()
    if chosen:
        return chosen, chosen
    connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
    return 0, LOCK_TIMEOUT_S * 1000


def _nothing() -> None:
    pass


def _noted(_: object) -> None:
    pass


def _usable(connection: psycopg.Connection[Any] | None) -> bool:
    """True for a session that psycopg has not seen die."""
    return connection is not None and not (connection.closed or connection.broken)


def owner_lock_key(schema: str, table: str) -> int:
    """The advisory lock key of a tracking table: 64 bits of BLAKE2b of its quoted,
    schema-qualified name, the same in every process and server version (hashtext()
    promises neither). Advisory keys are per database, so one server serves many."""
    qualified = ".".join('"' + name.replace('"', '""') + '"' for name in (schema, table))
    digest = hashlib.blake2b((LOCK_KEY_PREFIX + qualified).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _table_of(exc: psycopg.Error) -> str:
    return exc.diag.table_name or "an unnamed table"


@contextmanager
def _retryable_as_unavailable() -> Iterator[None]:
    """Lock timeouts, serialization failures and deadlocks as error 11, like SQLite's busy."""
    try:
        yield
    except RETRY_ERRORS as exc:
        cause = exc.diag.message_primary or str(exc)
        raise ReplyError(
            TEMPORARILY_UNAVAILABLE,
            f"the database is locked by another program ({cause}); try again later",
        ) from exc
