"""MariaDB and MySQL: the store interface on a server whose DDL commits at once.

    transaction():  BEGIN ... COMMIT on a session in autocommit mode; the tracking tables
                    are created before the BEGIN (CREATE TABLE commits on its own)
    migration_db(): statement by statement (see worker/steps.py and db.py): a statement
                    that commits at once is preceded by a step record (committed with the
                    DML before it) and followed by a new BEGIN
    owner:          GET_LOCK(name) held by the session for the worker's life
    interrupt():    KILL QUERY <our connection id> from a second session

Tracking rows, history, stored replies and step records live in InnoDB tables beside the
migrations' own, in the URL's database. The password comes from the environment (the node
takes it out of the URL), never from argv; no text here holds it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from broker import codec, mysql_url
from broker.errors import PRECONDITION_FAILED, TEMPORARILY_UNAVAILABLE, ReplyError
from worker.lock import AlreadyOwned, OwnerLock
from worker.steps import StatementSteps
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
    Partial,
    ReplyEvicted,
    Store,
    TableChoice,
    choose_table,
    node_of,
    tracking_facts,
    tracking_tables,
)
from worker.stores.mariadb import sql as mysql_sql
from worker.stores.mariadb import statements
from worker.stores.mariadb.db import MariaDbMigrationDB
from worker.stores.server_rows import ServerRows

INSTALL_DRIVER = "pip install 'migrations-node[mariadb]'"  # PyMySQL: the optional extra
try:
    import pymysql
    from pymysql.constants import ER
except ImportError:
    # The worker stops with this as the reason (EXIT_CONFIG): no restart can install it.
    raise ImportError(f"a MySQL URL needs PyMySQL, which is not installed for"
                      f" {sys.executable}: {INSTALL_DRIVER}") from None

log = logging.getLogger(__name__)
OWN_LOCK_WAIT_S = 5  # how long the store's own statements wait for a lock
MIGRATION_LOCK_TIMEOUT_S = 3.0  # a migration's statements, unless told otherwise
FOREVER_S = 31_536_000  # lock_wait_timeout's largest value: "0: for ever"
OWNER_WAIT_S = 30.0  # how long a write waits for another worker's owner lock, if not told
OWNER_POLL_FIRST_S = 0.01
OWNER_POLL_MAX_S = 0.25
MAX_NAME_CHARS = 64  # MySQL's identifier limit; _partials is the longest suffix
LOCK_ERRORS = (ER.LOCK_WAIT_TIMEOUT, ER.LOCK_DEADLOCK)
PROGRAM = "migrations worker pid {pid} on {host}"  # connection attribute program_name
# Errors after which the session is gone: the server went away, or killed it.
LOST = frozenset({2006, 2013, 2055, ER.CON_COUNT_ERROR, 1927})  # 1927: connection killed
EVENT_COLUMNS = "version, name, action, checksum, started_at, duration_ms, src, request_id"
# Session variables that change by themselves: never put back (an old `timestamp` would
# stop the session's clock).
VOLATILE = frozenset({
    "TIMESTAMP", "LAST_INSERT_ID", "INSERT_ID", "IDENTITY", "RAND_SEED1", "RAND_SEED2",
    "WARNING_COUNT", "ERROR_COUNT", "LAST_GTID", "IN_TRANSACTION", "GTID_SEQ_NO",
    "PSEUDO_THREAD_ID", "SERVER_ID", "GTID_DOMAIN_ID",
})

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS {migrations} (
        version BIGINT NOT NULL PRIMARY KEY,
        name TEXT NOT NULL,
        checksum VARCHAR(255) NOT NULL,
        applied_at VARCHAR(32) NOT NULL,
        execution_ms DOUBLE NOT NULL,
        applied_seq BIGINT NOT NULL,
        request_id VARBINARY(64)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS {replies} (
        seq BIGINT NOT NULL PRIMARY KEY,
        request_id VARBINARY(64) NOT NULL UNIQUE,
        reply LONGBLOB NOT NULL,
        created_at VARCHAR(32) NOT NULL
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {history} (
        seq BIGINT NOT NULL PRIMARY KEY,
        version BIGINT NOT NULL,
        name TEXT NOT NULL,
        action VARCHAR(64) NOT NULL,
        checksum VARCHAR(255) NOT NULL,
        started_at VARCHAR(32) NOT NULL,
        duration_ms DOUBLE NOT NULL,
        src TEXT,
        request_id VARBINARY(64),
        KEY by_request (request_id, action)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS {evicted} (
        node VARBINARY(64) NOT NULL PRIMARY KEY,
        request_id VARBINARY(64) NOT NULL,
        evicted_at VARCHAR(32) NOT NULL
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {repeats} (
        name VARCHAR(255) NOT NULL PRIMARY KEY,
        checksum VARCHAR(255) NOT NULL,
        applied_at VARCHAR(32) NOT NULL,
        execution_ms DOUBLE NOT NULL,
        request_id VARBINARY(64)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS {schemas} (
        seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        history_seq BIGINT,
        fingerprint VARCHAR(255) NOT NULL,
        changes LONGTEXT NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
)
PARTIALS_SCHEMA = """CREATE TABLE IF NOT EXISTS {partials} (
        version BIGINT NOT NULL PRIMARY KEY,
        name TEXT NOT NULL,
        action VARCHAR(16) NOT NULL,
        done INT NOT NULL,
        checksums TEXT NOT NULL,
        running INT,
        running_line TEXT,
        request_id VARBINARY(64),
        updated_at VARCHAR(32) NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

NODE_OF = (f"IF(LENGTH(request_id) = {REQUEST_ID_BYTES},"
           f" SUBSTRING(request_id, 1, {NODE_ID_BYTES}), request_id)")
STATEMENTS = {
    "applied": "SELECT version, name, checksum, applied_seq, request_id"
    " FROM {migrations} ORDER BY version",
    "record": "INSERT INTO {migrations}"
    " (version, name, checksum, applied_at, execution_ms, applied_seq, request_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
    "unrecord": "DELETE FROM {migrations} WHERE version = %s",
    "record_event": f"INSERT INTO {{history}} (seq, {EVENT_COLUMNS})"
    " SELECT COALESCE(MAX(seq), 0) + 1, %s, %s, %s, %s, %s, %s, %s, %s FROM {history}",
    "history": f"SELECT {EVENT_COLUMNS} FROM {{history}} ORDER BY seq",
    "recent_history": f"SELECT {EVENT_COLUMNS} FROM (SELECT seq, {EVENT_COLUMNS}"
    " FROM {history} ORDER BY seq DESC LIMIT %s) AS recent ORDER BY seq",
    "events_of": f"SELECT {EVENT_COLUMNS} FROM {{history}}"
    " WHERE request_id = %s AND action = %s ORDER BY seq",
    "stored_reply": "SELECT reply FROM {replies} WHERE request_id = %s"
    " UNION ALL SELECT NULL FROM {evicted} WHERE node = %s AND request_id = %s",
    "next_reply_seq": "SELECT COALESCE(MAX(seq), 0) + 1 FROM {replies}",
    # As on SQLite: a replaced reply moves to the end of the order.
    "store_reply": "INSERT INTO {replies} (seq, request_id, reply, created_at)"
    " VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE seq = VALUES(seq),"
    " reply = VALUES(reply), created_at = VALUES(created_at)",
    "pruned": f"SELECT {NODE_OF}, MAX(request_id) FROM {{replies}} WHERE seq <= %s"
    f" GROUP BY {NODE_OF}",
    "evict": "INSERT INTO {evicted} (node, request_id, evicted_at) VALUES (%s, %s, %s)"
    " ON DUPLICATE KEY UPDATE request_id = GREATEST(request_id, VALUES(request_id)),"
    " evicted_at = VALUES(evicted_at)",
    "prune": "DELETE FROM {replies} WHERE seq <= %s",
    "newest_schema": "SELECT COALESCE(MAX(seq), 0) FROM {schemas}",
    "schema_rows": "SELECT changes FROM {schemas} WHERE changes <> '[]' ORDER BY seq",
    "add_schema_row": "INSERT INTO {schemas} (history_seq, fingerprint, changes)"
    " SELECT MAX(seq), %s, %s FROM {history}",
    "repeatables": "SELECT name, checksum, applied_at, request_id FROM {repeats}",
    "record_repeatable": "INSERT INTO {repeats} (name, checksum, applied_at, execution_ms,"
    " request_id) VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE"
    " checksum = VALUES(checksum), applied_at = VALUES(applied_at),"
    " execution_ms = VALUES(execution_ms), request_id = VALUES(request_id)",
    "data_version": "SELECT (SELECT COALESCE(MAX(seq), 0) FROM {history}),"
    " (SELECT COUNT(*) FROM {migrations})",
    "partials_stamp": "SELECT COUNT(*), COALESCE(SUM(done), 0), COALESCE(SUM(running), 0),"
    " COALESCE(MAX(updated_at), '') FROM {partials}",
    "partials": "SELECT version, name, action, done, checksums, running, running_line,"
    " request_id, updated_at FROM {partials} ORDER BY version",
    "save_partial": "INSERT INTO {partials} (version, name, action, done, checksums, running,"
    " running_line, request_id, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE name = VALUES(name), action = VALUES(action),"
    " done = VALUES(done), checksums = VALUES(checksums), running = VALUES(running),"
    " running_line = VALUES(running_line), request_id = VALUES(request_id),"
    " updated_at = VALUES(updated_at)",
    "drop_partial": "DELETE FROM {partials} WHERE version = %s",
}
EXISTING_TABLES = ("SELECT table_name FROM information_schema.tables"
                   " WHERE table_schema = DATABASE() AND table_name IN ({})")
COLUMNS = ("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE()"
           " AND table_name = %s ORDER BY ordinal_position")
# Every foreign key of the database: checked by hand after a step with foreign keys off,
# since MariaDB does not check existing rows when foreign_key_checks comes back on.
FOREIGN_KEYS = (
    "SELECT k.constraint_name, k.table_name, k.column_name, k.referenced_table_name,"
    " k.referenced_column_name FROM information_schema.key_column_usage k"
    " WHERE k.table_schema = DATABASE() AND k.referenced_table_name IS NOT NULL"
    " ORDER BY k.table_name, k.constraint_name, k.ordinal_position"
)


class MariaDbStore(ServerRows, Store):
    split_statements = staticmethod(statements.split_statements)
    dialect = "mysql"
    implicit_commits = True

    def __init__(
        self,
        url: str,
        table: str | None = None,
        local_lock: OwnerLock | None = None,
        owner_wait_s: float | None = None,
        lock_timeout_s: float | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        """A store for the database at `url` (mysql:// or mariadb://, without its password,
        which comes from `environ`, the process's by default); connects now if the server
        answers, else at the first request, which gets error 11 until it does.

        Raises ValueError for a malformed URL or a table name MySQL would refuse."""
        self._url = url
        self._environ = os.environ if environ is None else environ
        self.database = url  # the node took the password out: it is in our environment
        self.schema = mysql_url.connect_args(url, self._environ)["database"]
        self._choosing = table is None
        self._use_table(TableChoice(table or DEFAULT_TABLE))
        self._owner_wait_s = owner_wait_s
        self._lock_timeout_s = lock_timeout_s
        self._local_lock = local_lock
        self._owner = False
        self._locked = False  # the session holds GET_LOCK
        self._in_block = False  # inside transaction()
        self._committing = False
        self._dry = False  # the open transaction is a dry run's
        self._migration_running = False
        self._killer: pymysql.connections.Connection | None = None  # for KILL QUERY
        self._killer_guard = threading.Lock()
        self._existing: set[str] = set()
        # The tables migration code named since the last schema_mark(); None: not only.
        self._schema_targets: set[str] | None = None
        self._has_partials: set[int] | None = None  # versions with a step record, when read
        self._session: dict[str, Any] | None = None  # variables as the worker set them
        self.commits = 0
        self.repairs = []
        self._crash_hook = CrashHook.from_environment()
        self.connection: pymysql.connections.Connection | None = None
        try:
            self._live()
        except ReplyError as exc:
            log.warning("%s; each request gets error 11 until a connection succeeds", exc.text)

    def _use_table(self, choice: TableChoice) -> None:
        tables = tracking_tables(choice.table)
        partials = ("schema_migration_partials" if choice.table == DEFAULT_TABLE
                    else f"{choice.table}_partials")
        for name in (*tables, partials):
            if len(name) > MAX_NAME_CHARS:
                raise ValueError(f"the table name {name!r} is longer than MySQL's"
                                 f" {MAX_NAME_CHARS} characters: give --table a shorter name")
        self.tables, self.table, self.displaced = tables, choice.table, choice.displaced
        self.partials_table = partials
        self.tracking = f"{self.schema}.{choice.table}"
        names = {key: _quoted(name) for key, name in tables._asdict().items()}
        names["partials"] = _quoted(partials)
        self._schema = [statement.format(**names) for statement in SCHEMA]
        self._partials_schema = PARTIALS_SCHEMA.format(**names)
        self._sql = {key: statement.format(**names) for key, statement in STATEMENTS.items()}
        everything = [*tables, partials]
        self._existing_sql = EXISTING_TABLES.format(", ".join(["%s"] * len(everything)))
        self._existing_args = everything
        self._lock_name = owner_lock_name(self.schema, choice.table)

    # -- the connection --------------------------------------------------------------------

    def _connect(self) -> pymysql.connections.Connection:
        # Read at each connection, as the mysql client does: an option file written or
        # changed since counts.
        args = mysql_url.connect_args(self._url, self._environ)
        args.setdefault("program_name", PROGRAM.format(pid=os.getpid(),
                                                       host=socket.gethostname())[:64])
        try:
            connection = pymysql.connect(autocommit=True, **args)
        except pymysql.Error as exc:
            reason = _reason(exc, args.get("password"))
            raise ReplyError(TEMPORARILY_UNAVAILABLE, f"cannot connect to {self.database}:"
                             f" {reason}; nothing ran, try again") from None
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {OWN_LOCK_WAIT_S},"
                               f" SESSION lock_wait_timeout = {OWN_LOCK_WAIT_S},"
                               " SESSION time_zone = '+00:00'")
        except pymysql.Error as exc:
            connection.close()
            raise ReplyError(TEMPORARILY_UNAVAILABLE, f"cannot set up the session with"
                             f" {self.database}: {_reason(exc)}; nothing ran, try again"
                             ) from None
        return connection

    def _live(self) -> pymysql.connections.Connection:
        """The session, replaced when it was lost (never inside a transaction, whose loss
        ends its step). Raises ReplyError(TEMPORARILY_UNAVAILABLE) when none can be had."""
        if self.connection is not None and self.connection.open:
            return self.connection
        if self._in_block:
            raise self._lost(None)
        self._drop()
        connection = self._connect()
        if self._choosing:
            self._choosing = False
            with connection.cursor() as cursor:
                def columns_of(table: str) -> list[str] | None:
                    cursor.execute(COLUMNS, (table,))
                    rows = cursor.fetchall()
                    return [row[0] for row in rows] if rows else None
                choice = choose_table(columns_of)
            if choice.table != self.table:
                self._use_table(choice)
        self.connection = connection
        self._session = None
        log.info("connected to %s, tracking in %s", self.database, self.tracking)
        return connection

    def _drop(self) -> None:
        if self.connection is not None:
            if self._locked:
                log.warning("lost the session holding the owner lock of %s", self.tracking)
            with suppress(pymysql.Error):
                self.connection.close()
        self.connection = None
        self._locked = False

    def _lost(self, exc: BaseException | None) -> ReplyError:
        cause = "" if exc is None else f" ({_reason(exc)})"
        where = f"the connection to {self.database} was lost{cause}"
        if self._committing:
            text = (f"{where} during COMMIT, so whether the step in progress committed is"
                    " unknown: ask for status before retrying")
        elif self._in_block:
            text = f"{where}; the server rolled back what the step had not committed; try again"
        else:
            text = f"{where}; try again"
        self._drop()
        return ReplyError(TEMPORARILY_UNAVAILABLE, text)

    def close(self) -> None:
        for connection in (self._killer, self.connection):
            if connection is not None:
                with suppress(pymysql.Error):
                    connection.close()

    @property
    def url(self) -> str:
        """The URL the store connects with: never a password, which the node hands over in
        the environment (or the option file holds)."""
        return self._url

    def reader(self) -> MariaDbStore:
        reader = MariaDbStore(self._url, table=None if self._choosing else self.table,
                              environ=self._environ)
        if not self._choosing:
            reader.displaced = self.displaced
        return reader

    def facts(self) -> dict[str, Any]:
        return tracking_facts(self)

    def label(self, table: str) -> str:
        return f"{self.schema}.{table}"

    def columns_of(self, table: str) -> list[str] | None:
        rows = self._run(COLUMNS, (table,)).fetchall()
        return [row[0] for row in rows] if rows else None

    def foreign_rows(self, table: str, query: str) -> list[tuple]:
        """Another program's rows; the session's time zone is UTC, so a DATETIME written
        by NOW() in another session may be off by that session's zone (as the server kept
        it, without one)."""
        rows = self._run(query.format(table=_quoted(table))).fetchall()
        return [tuple(value.replace(tzinfo=UTC) if isinstance(value, datetime)
                      and value.tzinfo is None else value for value in row) for row in rows]

    # -- statements ------------------------------------------------------------------------

    def _run(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """Execute one of the store's statements; a session found lost outside a
        transaction is replaced and the statement sent again, once."""
        try:
            return self._execute(query, params)
        except ReplyError:
            if self._in_block:
                raise
        self._ensure_owner()
        return self._execute(query, params)

    def _execute(self, query: str, params: Sequence[Any] | None = None) -> Any:
        connection = self._live()
        cursor = connection.cursor()
        try:
            cursor.execute(query, params)
        except pymysql.OperationalError as exc:
            if exc.args and exc.args[0] in LOST:
                raise self._lost(exc) from exc
            if exc.args and exc.args[0] in LOCK_ERRORS:
                raise ReplyError(TEMPORARILY_UNAVAILABLE, f"{self.database} is busy:"
                                 f" {_reason(exc)}; nothing ran, try again") from exc
            raise
        except pymysql.InterfaceError as exc:
            raise self._lost(exc) from exc
        return cursor

    # -- the owner lock --------------------------------------------------------------------

    def acquire_owner(self, note: bytes = b"", wait: bool = False) -> None:
        """The local lock file, then GET_LOCK on a name derived from the tracking table,
        held by the session until release_owner() or its end. Raises AlreadyOwned naming
        the holder, unless `wait` (waits for it to go) or owner_wait_s (writes wait)."""
        if self._owner:
            return
        if self._local_lock is not None:
            self._local_lock.acquire(note, wait=wait)
        self._owner = True
        try:
            self._live()
        except ReplyError:
            return
        try:
            self._take_lock(None if wait else 0)
        except AlreadyOwned as exc:
            if self._owner_wait_s is None:
                self.release_owner()
                raise
            log.warning("%s; writes wait up to %g s for it to go", exc, self._owner_wait_s)

    def ensure_owner(self) -> None:
        self._ensure_owner()

    def _ensure_owner(self) -> None:
        self._live()
        if self._locked or not self._owner:
            return
        wait_s = OWNER_WAIT_S if self._owner_wait_s is None else self._owner_wait_s
        try:
            self._take_lock(wait_s)
        except AlreadyOwned as exc:
            raise ReplyError(TEMPORARILY_UNAVAILABLE, f"{exc}; waited {wait_s:g} s for it to"
                             " go, so nothing ran; try again") from None

    def _take_lock(self, timeout_s: float | None) -> None:
        """GET_LOCK without blocking, tried until `timeout_s` has passed (None: for ever),
        so that a stop signal ends the wait."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = OWNER_POLL_FIRST_S
        while True:
            (taken,) = self._execute("SELECT GET_LOCK(%s, 0)", (self._lock_name,)).fetchone()
            if taken == 1:
                self._locked = True
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise AlreadyOwned(self._holder())
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, OWNER_POLL_MAX_S)

    def _holder(self) -> str:
        where = f"{self.tracking} in {self.database}"
        row = self._execute(
            "SELECT p.id, p.host, p.user FROM information_schema.processlist p"
            " WHERE p.id = IS_USED_LOCK(%s)", (self._lock_name,)).fetchone()
        if row is None:
            return f"{where} is owned by another worker"
        connection_id, host, user = row
        program = None
        try:
            found = self._execute(
                "SELECT attr_value FROM performance_schema.session_connect_attrs"
                " WHERE processlist_id = %s AND attr_name = 'program_name'",
                (connection_id,)).fetchone()
            program = None if found is None else found[0]
        except pymysql.Error:
            pass  # performance_schema off: the process list says enough
        if program and program.startswith("migrations worker"):
            pid_host = program.removeprefix("migrations worker ")
            return f"{where} is held by worker {pid_host} (connection {connection_id})"
        return f"{where} is held by connection {connection_id} of {user} from {host}"

    def release_owner(self) -> None:
        if self._locked and self.connection is not None and self.connection.open:
            try:
                self._execute("SELECT RELEASE_LOCK(%s)", (self._lock_name,))
            except (pymysql.Error, ReplyError) as exc:
                log.warning("could not release the owner lock: %s", exc)
        self._locked = False
        self._owner = False
        if self._local_lock is not None:
            self._local_lock.release()

    # -- transactions ----------------------------------------------------------------------

    def _tables(self) -> set[str]:
        if len(self._existing) < len(self._existing_args):
            rows = self._run(self._existing_sql, self._existing_args).fetchall()
            self._existing = {row[0] for row in rows}
        return set(self._existing)

    def _ensure_schema(self, restore_tracking: bool) -> None:
        """Create the missing tracking tables, before the transaction: CREATE TABLE
        commits at once, and creating a table that exists changes nothing."""
        self._existing = set()
        existing = self._tables()
        for name, statement in self._tables_to_create(existing & set(self.tables),
                                                      restore_tracking):
            self._run(statement)
            self._existing.add(name)
        if self.partials_table not in existing:
            self._run(self._partials_schema)
            self._existing.add(self.partials_table)

    @contextmanager
    def transaction(
        self, *, commit: bool = True, foreign_keys: bool = True, restore_tracking: bool = False
    ) -> Iterator[None]:
        """One write transaction: BEGIN ... COMMIT (or ROLLBACK for a dry run). What a
        migration's statements commit at once on the way is theirs (see migration_db)."""
        self._ensure_owner()
        self._ensure_schema(restore_tracking)
        self._run("BEGIN")
        self._in_block = True
        self._dry = not commit
        try:
            if not foreign_keys:
                self._run("SET SESSION foreign_key_checks = 0")
            yield
            if not foreign_keys:
                self._run("SET SESSION foreign_key_checks = 1")
                self.check_foreign_keys()
            if commit:
                self._committing = True
                self._run("COMMIT")
            else:
                self._run("ROLLBACK")
        except BaseException:
            if self.connection is not None and self.connection.open:
                try:
                    self.connection.rollback()
                    if not foreign_keys:
                        self._execute("SET SESSION foreign_key_checks = 1")
                except (pymysql.Error, ReplyError):
                    self._drop()
            raise
        finally:
            self._in_block = self._committing = self._dry = False
        if not commit:
            return
        self.commits += 1
        if self._crash_hook is not None:
            self._crash_hook.fire_if_armed()

    @contextmanager
    def migration_db(
        self,
        in_transaction: bool = True,
        check: Callable[[], None] | None = None,
        lock_timeout_s: float | None = None,
        steps: StatementSteps | None = None,
    ) -> Iterator[MariaDbMigrationDB]:
        """The `db` migration code gets: statement by statement, each statement that
        commits at once preceded by a step record (see worker/steps.py and db.py). Its
        statements wait `lock_timeout_s` for a lock (innodb_lock_wait_timeout and
        lock_wait_timeout, in whole seconds); one that waits longer raises LockTimeout.
        A dry run refuses a statement that would commit (db.py says so). What the
        migration SET of its session, and its temporary tables, are undone after it."""
        self._ensure_owner()
        connection = self._live()
        if self._session is None:
            self._session = self._session_variables()
        seconds = self._lock_seconds(lock_timeout_s)
        self._run(f"SET SESSION innodb_lock_wait_timeout = {seconds},"
                  f" SESSION lock_wait_timeout = {seconds}")
        db = MariaDbMigrationDB(self, connection, steps, in_transaction, self._dry, check)
        self._migration_running = True
        try:
            yield db
            if steps is not None:
                steps.finish()
        except BaseException as exc:
            if steps is not None and steps.saved:
                self._say_what_stays(steps)
            if isinstance(exc, pymysql.OperationalError) and exc.args and (
                    exc.args[0] in LOCK_ERRORS):
                raise LockTimeout(
                    f"a statement waited {seconds} s (its lock timeout) for a lock"
                    f" ({_reason(exc)})", None,
                    nothing_stayed=steps is None or steps.committed == steps.skip) from exc
            raise
        finally:
            self._migration_running = False
            if self.connection is connection and connection.open:
                self._restore_session(db.touched_session, db.temporary)

    def _say_what_stays(self, steps: StatementSteps) -> None:
        """After a statement failed: roll back what the step had not committed, and record
        exactly what stays (statements 1..committed; none: no record). A session lost
        first leaves the record as it was: the statement it names stays uncertain."""
        if self.connection is None or not self.connection.open:
            return
        try:
            self.connection.rollback()
            self.save_partial(steps.stays(), steps.version)
        except (pymysql.Error, ReplyError) as exc:
            log.warning("could not record what stays of migration %s: %s", steps.version, exc)

    def _lock_seconds(self, lock_timeout_s: float | None) -> int:
        if lock_timeout_s is None:
            lock_timeout_s = self._lock_timeout_s
        if lock_timeout_s is None:
            lock_timeout_s = MIGRATION_LOCK_TIMEOUT_S
        if lock_timeout_s <= 0:
            return FOREVER_S
        return max(1, math.ceil(lock_timeout_s))

    def _session_variables(self) -> dict[str, Any]:
        rows = self._run("SELECT variable_name, variable_value FROM"
                         " information_schema.session_variables").fetchall()
        return dict(rows)

    def _restore_session(self, touched: bool, temporary: list[str]) -> None:
        """Put back what migration code changed of the session: the database in use, the
        variables it SET (found by comparing with the session as the worker left it), its
        temporary tables; only looked for when its statements could have changed them.
        The worker's own lock timeouts are SET again."""
        try:
            if touched:
                self._execute(f"USE {_quoted(self.schema)}")
                now = self._session_variables()
                changed = [name for name, value in now.items()
                           if name not in VOLATILE and self._session.get(name, value) != value]
                for name in changed:
                    value = self._session[name]
                    try:
                        self._execute(f"SET SESSION {name} = %s", (value,))
                    except pymysql.Error:
                        self._execute(f"SET SESSION {name} = DEFAULT")
                for name in temporary:
                    self._execute(f"DROP TEMPORARY TABLE IF EXISTS {name}")
            self._execute(f"SET SESSION innodb_lock_wait_timeout = {OWN_LOCK_WAIT_S},"
                          f" SESSION lock_wait_timeout = {OWN_LOCK_WAIT_S}")
        except (pymysql.Error, ReplyError) as exc:
            log.warning("could not reset the session after a migration: %s", exc)

    def interrupt(self) -> None:
        """KILL QUERY the statement migration code runs now, from a second session."""
        connection = self.connection
        if not self._migration_running or connection is None:
            return
        with self._killer_guard:
            try:
                if self._killer is None or not self._killer.open:
                    self._killer = self._connect()
                with self._killer.cursor() as cursor:
                    cursor.execute(f"KILL QUERY {int(connection.thread_id())}")
            except (pymysql.Error, ReplyError) as exc:
                log.warning("could not cancel the running statement: %s", exc)

    # -- step records (see worker/steps.py) ------------------------------------------------

    def partials(self) -> list[Partial]:
        def read(tables: set[str]) -> list[tuple]:
            if self.partials_table not in tables:
                return []
            return self._run(self._sql["partials"]).fetchall()

        rows = self._reading(read)
        found = [Partial(version, name, action, done,
                         tuple(checksums.split()) if checksums else (), running, line,
                         request_id, updated_at)
                 for (version, name, action, done, checksums, running, line, request_id,
                      updated_at) in rows]
        self._has_partials = {partial.version for partial in found}
        return found

    def save_partial(self, partial: Partial | None, version: int) -> None:
        """Commit the step record of `version` (None: it has none any more), with whatever
        the open transaction holds (the DML before a statement that commits at once)."""
        if partial is None:
            self._run(self._sql["drop_partial"], (version,))
            if self._has_partials is not None:
                self._has_partials.discard(version)
        else:
            self._run(self._sql["save_partial"], (
                partial.version, partial.name, partial.action, partial.done,
                " ".join(partial.checksums), partial.running, partial.running_line,
                partial.request_id, partial.updated_at))
            if self._has_partials is not None:
                self._has_partials.add(version)
        self._run("COMMIT")
        self.begin()

    def begin(self) -> None:
        """BEGIN again inside a step, after a statement that committed at once."""
        self._run("BEGIN")

    def forget_partial(self, version: int) -> None:
        self._drop_partial_in_step(version)

    def _drop_partial_in_step(self, version: int) -> None:
        """The step's own transaction ends its step record, if there may be one."""
        if self._has_partials is None or version in self._has_partials:
            self._run(self._sql["drop_partial"], (version,))
            if self._has_partials is not None:
                self._has_partials.discard(version)

    # -- reads and records -----------------------------------------------------------------

    def _unmanaged(self) -> set[str]:
        return {*super()._unmanaged(), self.partials_table}

    def schema_mark(self) -> Any:
        self._schema_targets = set()
        return super().schema_mark()

    def note_schema_targets(self, sql: str) -> None:
        """Note the tables a statement of migration code may change the objects of (see
        sql.schema_targets), for schema_scope(); any other object: read everything."""
        if self._schema_targets is not None:
            targets = mysql_sql.schema_targets(sql)
            self._schema_targets = None if targets is None else self._schema_targets | targets

    def schema_scope(self, stamps: Any) -> Any:
        # None, or no table named while the counts moved: read everything.
        targets, self._schema_targets = self._schema_targets, None
        return targets or None

    def schema_reading(self) -> tuple[Any, Any, Any]:
        from worker.schema import mariadb as reader  # only steps, verify and drift read it

        return reader, self._live(), self._unmanaged()

    def add_schema_row(self, fingerprint: str, changes: str) -> int:
        return self._run(self._sql["add_schema_row"], (fingerprint, changes)).lastrowid

    @contextmanager
    def scratch(self) -> Iterator[MariaDbStore]:
        name = f"mn_verify_{secrets.token_hex(6)}"
        try:
            self._run(f"CREATE DATABASE {_quoted(name)}")
        except pymysql.err.OperationalError as exc:
            if not exc.args or exc.args[0] not in (ER.DBACCESS_DENIED_ERROR,
                                                   ER.ACCESS_DENIED_ERROR):
                raise
            raise ReplyError(
                PRECONDITION_FAILED,
                f"verify builds a scratch database, and this user may not create one"
                f" ({_reason(exc)}): grant it CREATE, or run verify as a user that has it;"
                " nothing was written",
            ) from None
        store = MariaDbStore(mysql_url.with_database(self._url, name), table=self.table,
                             environ=self._environ)
        try:
            yield store
        finally:
            store.close()
            try:
                self._run(f"DROP DATABASE IF EXISTS {_quoted(name)}")
            except (pymysql.Error, ReplyError) as exc:
                log.warning("could not drop the scratch database %s: %s", name, exc)

    def check_foreign_keys(self) -> None:
        """Raise ForeignKeyViolation naming the tables with rows whose parent is missing."""
        keys: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for constraint, table, column, parent, parent_column in self._run(FOREIGN_KEYS):
            keys.setdefault((table, constraint), []).append((column, parent, parent_column))
        broken = []
        for (table, _), columns in keys.items():
            parent = columns[0][1]
            joined = " AND ".join(f"p.{_quoted(pc)} = c.{_quoted(c)}" for c, _, pc in columns)
            present = " AND ".join(f"c.{_quoted(c)} IS NOT NULL" for c, _, _ in columns)
            found = self._run(
                f"SELECT 1 FROM {_quoted(table)} c WHERE {present} AND NOT EXISTS"
                f" (SELECT 1 FROM {_quoted(parent)} p WHERE {joined}) LIMIT 1").fetchone()
            if found is not None and table not in broken:
                broken.append(table)
        if broken:
            raise ForeignKeyViolation(broken)

    def _reading(self, read: Callable[[set[str]], Any]) -> Any:
        """`read` given the tracking tables that exist (as last seen); when one it read was
        dropped by hand since, once more with them looked up again."""
        try:
            return read(self._tables())
        except pymysql.err.ProgrammingError as exc:
            if self._in_block or not exc.args or exc.args[0] != ER.NO_SUCH_TABLE:
                raise
        self._existing = set()
        return read(self._tables())

    def data_version(self) -> int:
        """A stamp that changes when any connection commits a change to the tracking rows:
        the newest history seq, the number of tracking rows, and the step records (a
        migration that stopped partway changes no other)."""
        def read(tables: set[str]) -> int:
            if not {self.tables.migrations, self.tables.history} <= tables:
                return 0
            stamp = tuple(self._run(self._sql["data_version"]).fetchone())
            if self.partials_table in tables:
                stamp += tuple(self._run(self._sql["partials_stamp"]).fetchone())
            return hash(stamp) & (2**63 - 1)

        return self._reading(read)

    def applied(self) -> list[AppliedMigration]:
        def read(existing: set[str]) -> list[tuple]:
            tables = existing & set(self.tables)
            if self.tables.migrations not in tables:
                if tables:
                    raise self._tracking_missing(tables)
                not_adopted = self._not_adopted()
                if not_adopted is not None:
                    raise not_adopted
                return []
            try:
                return self._run(self._sql["applied"]).fetchall()
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == ER.BAD_FIELD_ERROR:
                    raise self._foreign_table() from None
                raise

        rows = self._reading(read)
        return [AppliedMigration(int(v), n, c, int(s), _bytes(r)) for v, n, c, s, r in rows]

    def record(self, version: int, name: str, checksum: str, execution_ms: float,
               applied_seq: int, request_id: bytes) -> None:
        self._run(self._sql["record"], (version, name, checksum, _utc_now(), execution_ms,
                                        applied_seq, request_id))
        self._drop_partial_in_step(version)

    def unrecord(self, version: int) -> None:
        self._run(self._sql["unrecord"], (version,))
        self._drop_partial_in_step(version)

    def record_event(self, event: Event) -> None:
        self._run(self._sql["record_event"], tuple(event))

    def repeatables(self) -> list[AppliedRepeatable]:
        def read(tables: set[str]) -> list[tuple]:
            if self.tables.repeats not in tables:
                return []
            return self._run(self._sql["repeatables"]).fetchall()

        return [AppliedRepeatable(n, c, a, _bytes(r)) for n, c, a, r in self._reading(read)]

    def record_repeatable(self, name: str, checksum: str, execution_ms: float,
                          request_id: bytes) -> None:
        self._run(self._sql["record_repeatable"],
                  (name, checksum, _utc_now(), execution_ms, request_id))

    def history(self, limit: int | None = None) -> list[Event]:
        def read(tables: set[str]) -> list[tuple]:
            if self.tables.history not in tables:
                return []
            if limit is None:
                return self._run(self._sql["history"]).fetchall()
            return self._run(self._sql["recent_history"], (limit,)).fetchall()

        return [_event(row) for row in self._reading(read)]

    def events_of(self, request_id: bytes, action: str) -> list[Event]:
        def read(tables: set[str]) -> list[tuple]:
            if self.tables.history not in tables:
                return []
            return self._run(self._sql["events_of"], (request_id, action)).fetchall()

        return [_event(row) for row in self._reading(read)]

    def stored_reply(self, request_id: bytes) -> dict[str, Any] | None:
        def read(tables: set[str]) -> list[tuple]:
            if not {self.tables.replies, self.tables.evicted} <= tables:
                return []
            return self._run(self._sql["stored_reply"],
                             (request_id, node_of(request_id), request_id)).fetchall()

        rows = self._reading(read)
        for (reply,) in rows:
            if reply is not None:
                return codec.unpack(bytes(reply), codec.MAX_REPLY_BYTES)
        if rows:
            raise ReplyEvicted(request_id)
        return None

    def store_reply(self, request_id: bytes, reply: dict[str, Any]) -> None:
        (seq,) = self._run(self._sql["next_reply_seq"]).fetchone()
        self._run(self._sql["store_reply"], (seq, request_id, codec.pack(reply), _utc_now()))
        cut = int(seq) - KEEP_REPLIES
        if cut <= 0:
            return
        now = _utc_now()
        for node, newest in self._run(self._sql["pruned"], (cut,)).fetchall():
            self._run(self._sql["evict"], (node, newest, now))
        self._run(self._sql["prune"], (cut,))


def owner_lock_name(database: str, table: str) -> str:
    """The GET_LOCK name of the worker tracking in `database`.`table`: a hash, since MySQL
    takes names of at most 64 characters, under a prefix that keeps it apart from others'."""
    digest = hashlib.sha256(f"{database}.{table}".encode()).hexdigest()[:40]
    return f"migrations-node {digest}"


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _event(row: tuple) -> Event:
    version, name, action, checksum, started_at, duration_ms, src, request_id = row
    return Event(int(version), name, action, checksum, started_at, float(duration_ms), src,
                 _bytes(request_id))


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _reason(exc: BaseException, secret: str | None = None) -> str:
    """A driver error as one line: `(1045) Access denied ...`, the password cut out."""
    if isinstance(exc, pymysql.Error) and len(exc.args) == 2:
        text = f"({exc.args[0]}) {exc.args[1]}"
    else:
        text = str(exc) or type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    return " ".join(text.split())


