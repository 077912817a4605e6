"""SQLite storage: the connection, explicit transactions, the tracking table and stored replies.

This is the store interface the engine talks to; a PostgreSQL store will offer the same
methods. Python's sqlite3 implicit transactions are off (autocommit mode): every write goes
through `transaction()`, which issues BEGIN IMMEDIATE / COMMIT / ROLLBACK itself.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from broker import codec
from broker.errors import TEMPORARILY_UNAVAILABLE, ReplyError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 5.0  # how long BEGIN IMMEDIATE waits for another program's write lock
BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary codes): worth a retry
KEEP_REPLIES = 10_000  # stored replies kept for resent requests; older ones are pruned
CRASH_AFTER_COMMIT_ENV = "MIGRATIONS_TEST_CRASH_AFTER_COMMIT"  # test hook, see CrashHook

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    execution_ms REAL NOT NULL,
    applied_seq INTEGER NOT NULL,
    request_id BLOB
);
CREATE TABLE IF NOT EXISTS schema_migration_replies (
    seq INTEGER PRIMARY KEY,
    request_id BLOB NOT NULL UNIQUE,
    reply BLOB NOT NULL,
    created_at TEXT NOT NULL
);
"""


class AppliedMigration(NamedTuple):
    version: int
    name: str
    checksum: str
    applied_seq: int  # order of application: rollback reverts the highest
    request_id: bytes | None  # the request that applied it, so a resent request can tell


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Autocommit mode: sqlite3 must never open or commit a transaction behind our back.
        self.connection = sqlite3.connect(
            path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
        )
        # Reading the header now makes a file that is not a database a start-up error.
        self.connection.execute("PRAGMA schema_version")
        self.connection.execute("PRAGMA foreign_keys = ON")
        # Durability: a migration reported as applied survives a power cut.
        self.connection.execute("PRAGMA synchronous = FULL")
        self._schema_ready = False
        self.commits = 0  # transactions this store committed; with data_version(), a change stamp
        self._crash_hook = CrashHook.from_environment()

    def close(self) -> None:
        self.connection.close()

    def _ensure_schema(self) -> None:
        """Create the tracking tables in the first write, so read-only work never writes."""
        if not self._schema_ready:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.connection.execute(statement)

    def _has_schema(self) -> bool:
        if not self._schema_ready:
            row = self.connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
            self._schema_ready = row is not None
        return self._schema_ready

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of its statements reach the disk, or none do.

        BEGIN IMMEDIATE takes the write lock up front, so a migration never fails halfway
        because another program started writing. Raises ReplyError(TEMPORARILY_UNAVAILABLE)
        when the database stays busy or locked for BUSY_TIMEOUT_S; any other failure to
        begin (a read-only or broken file) is raised as the sqlite3 error it is.
        """
        try:
            self.connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in BUSY_CODES:
                raise
            raise ReplyError(
                TEMPORARILY_UNAVAILABLE,
                f"the database is locked by another program ({exc}); try again later",
            ) from exc
        try:
            self._ensure_schema()
            yield self.connection
            self.connection.execute("COMMIT")
        except BaseException:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise
        self._schema_ready = True
        self.commits += 1
        if self._crash_hook is not None:
            self._crash_hook.fire_if_armed()

    def data_version(self) -> int:
        """Changes when another connection commits; with `commits`, tells if anything changed."""
        return self.connection.execute("PRAGMA data_version").fetchone()[0]

    def applied(self) -> list[AppliedMigration]:
        """Every recorded migration, in version order."""
        if not self._has_schema():
            return []
        rows = self.connection.execute(
            "SELECT version, name, checksum, applied_seq, request_id"
            " FROM schema_migrations ORDER BY version"
        )
        return [AppliedMigration(*row) for row in rows]

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
            "INSERT INTO schema_migrations"
            " (version, name, checksum, applied_at, execution_ms, applied_seq, request_id)"
            " VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?, ?, ?)",
            (version, name, checksum, execution_ms, applied_seq, request_id),
        )

    def unrecord(self, version: int) -> None:
        """Mark a migration not applied; call inside the transaction that ran its down()."""
        self.connection.execute("DELETE FROM schema_migrations WHERE version = ?", (version,))

    def stored_reply(self, request_id: bytes) -> dict[str, Any] | None:
        """The reply already given to this request id, if it was stored."""
        if not self._has_schema():
            return None
        row = self.connection.execute(
            "SELECT reply FROM schema_migration_replies WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else codec.unpack(row[0], codec.MAX_REPLY_BYTES)

    def store_reply(self, request_id: bytes, reply: dict[str, Any]) -> None:
        """Keep a reply for resends; call inside the transaction whose effect it reports."""
        cursor = self.connection.execute(
            "INSERT OR REPLACE INTO schema_migration_replies (request_id, reply, created_at)"
            " VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (request_id, codec.pack(reply)),
        )
        self.connection.execute(
            "DELETE FROM schema_migration_replies WHERE seq <= ?",
            (cursor.lastrowid - KEEP_REPLIES,),
        )


class CrashHook:
    """Test hook: die right after a commit, before any reply, when a trigger file exists.

    Two things must both be true for it to fire, so it never does by accident: the worker
    was started with MIGRATIONS_TEST_CRASH_AFTER_COMMIT holding an absolute path (the
    crash tests set it; a worker that has it logs a warning at start), and a file exists
    at that path at the moment of a commit. The file is removed first, so the next worker
    survives, then this process SIGKILLs itself.
    """

    def __init__(self, trigger: str) -> None:
        self.trigger = trigger

    @classmethod
    def from_environment(cls) -> CrashHook | None:
        trigger = os.environ.get(CRASH_AFTER_COMMIT_ENV, "")
        if not trigger:
            return None
        if not os.path.isabs(trigger):
            log.warning("ignoring %s=%r: not an absolute path", CRASH_AFTER_COMMIT_ENV, trigger)
            return None
        log.warning("test hook on: a commit kills this worker while %s exists", trigger)
        return cls(trigger)

    def fire_if_armed(self) -> None:
        try:
            os.unlink(self.trigger)
        except FileNotFoundError:
            return
        log.warning("crashing after commit, as %s asked", CRASH_AFTER_COMMIT_ENV)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
