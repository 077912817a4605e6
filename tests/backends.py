"""The databases the engine tests run on, each seen as another program connected to it sees it.

    Backend                  store(), query(), objects(), tables(), records(), versions(),
     |                       stored_replies(), untouched(), snapshot(), lock_writes(), ...
     +- SqliteBackend        a file in the test's tmp_path, read through its own sqlite3
     |                       connection
     +- PostgresBackend      a schema of its own in the module's fresh database (the URL's
     |                       search_path puts the migrations' tables there too), read through
     |                       its own psycopg session, dropped at close()
     +- MariaDbBackend       a fresh database of its own on the server (the URL's database
                             holds the tracking tables and the migrations' alike), read
                             through its own PyMySQL session, dropped at close()

tests/conftest.py hands them out: `backend` is any of them, one test case each; `pg_database`
is the module's database. psycopg and PyMySQL are imported only by their backends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
from abc import ABC, abstractmethod
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from worker.stores.interface import tracking_tables

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_SERVER = f"postgresql://postgres@{PG_HOST}:{PG_PORT}"
MARIADB_HOST, MARIADB_PORT = "127.0.0.1", 3306
MARIADB_SERVER = f"mysql://root@{MARIADB_HOST}:{MARIADB_PORT}"  # user root, empty password
SHORT_LOCK_WAIT_MS = 100  # how long a store waits for another program's lock in lock tests


class Backend(ABC):
    """One test's database; every store and connection it opened is closed by close()."""

    name: str
    tracking = tracking_tables()  # the same names on every backend

    def __init__(self) -> None:
        self._opened: list[Any] = []

    def keep(self, thing: Any) -> Any:
        """`thing` (a store, a connection), to be closed by close(); returns it."""
        self._opened.append(thing)
        return thing

    def close(self) -> None:
        """Close everything opened, newest first, each one even if another fails."""
        with contextlib.ExitStack() as stack:
            for thing in self._opened:
                stack.callback(thing.close)

    def only(self, *names: str, why: str) -> None:
        """Skip the test unless this backend is one of `names`; `why` says what the test
        relies on that the others do not have."""
        if self.name not in names:
            pytest.skip(f"not on {self.name}: {why}")

    @abstractmethod
    def store(self) -> Any:
        """A new store on the database, like a newly started worker's."""

    @abstractmethod
    def read_only_store(self) -> Any:
        """A new store whose connection refuses every write (not a lock: an error)."""

    @abstractmethod
    def query(self, sql: str, params: Any = ()) -> list[tuple]:
        """Rows, as another program sees them (committed data only), with the driver's
        own placeholders."""

    @abstractmethod
    def objects(self) -> set[str]:
        """Names of every table, index, sequence, trigger (and, on PostgreSQL, function)."""

    @abstractmethod
    def untouched(self) -> bool:
        """Nothing was ever written: no object in the file, or not even the schema."""

    @abstractmethod
    def snapshot(self) -> Any:
        """Everything a request that must write nothing could change, to compare."""

    @abstractmethod
    def wait_briefly_for_locks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Stores opened from now on give up waiting for another program's lock quickly."""

    @abstractmethod
    def lock_writes(self) -> Any:
        """Another program's connection holding a lock that every write of the tracking
        tables waits for; closing it lets go."""

    @abstractmethod
    def in_transaction(self, store: Any) -> bool:
        """The store's connection has a transaction open."""

    def tables(self) -> set[str]:
        """The migrations' tables: every table but the tracking tables and the system's."""
        return {
            name
            for name in self._table_names()
            if name not in self.tracking and not name.startswith("sqlite_")
        }

    @abstractmethod
    def _table_names(self) -> set[str]: ...

    def records(self) -> list[tuple]:
        """Every tracking row, in version order (none if there is no tracking table)."""
        if self.tracking.migrations not in self.objects():
            return []
        return self.query(
            "SELECT version, name, checksum, applied_at, execution_ms, applied_seq, request_id"
            f" FROM {self.tracking.migrations} ORDER BY version"
        )

    def versions(self) -> list[int]:
        return [row[0] for row in self.records()]

    def stored_replies(self) -> list[tuple]:
        """(seq, request id, reply) of every stored reply, oldest first."""
        if self.tracking.replies not in self.objects():
            return []
        return self.query(
            f"SELECT seq, request_id, reply FROM {self.tracking.replies} ORDER BY seq")


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def store(self) -> Any:
        from worker.stores.sqlite.store import SqliteStore

        return self.keep(SqliteStore(self.path))

    def read_only_store(self) -> Any:
        store = self.store()
        store.connection.execute("PRAGMA query_only = ON")  # BEGIN IMMEDIATE: READONLY
        return store

    def query(self, sql: str, params: Any = ()) -> list[tuple]:
        with closing(sqlite3.connect(self.path)) as connection:
            return connection.execute(sql, params).fetchall()

    def objects(self) -> set[str]:
        return {name for (name,) in self.query("SELECT name FROM sqlite_master")}

    def _table_names(self) -> set[str]:
        return {name for (name,) in self.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}

    def untouched(self) -> bool:
        return self.objects() == set()

    def snapshot(self) -> bytes:
        """The file, byte for byte."""
        return self.path.read_bytes()

    def wait_briefly_for_locks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("worker.stores.sqlite.store.BUSY_TIMEOUT_S", SHORT_LOCK_WAIT_MS / 1000)

    def lock_writes(self) -> sqlite3.Connection:
        """SQLite's write lock on the whole file, as any other writer takes it."""
        other = self.keep(sqlite3.connect(self.path, isolation_level=None))
        other.execute("BEGIN IMMEDIATE")
        return other

    def in_transaction(self, store: Any) -> bool:
        return store.connection.in_transaction


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, database: str) -> None:
        import psycopg

        super().__init__()
        self.base = database
        self.schema = f"s_{secrets.token_hex(6)}"
        self.settings = [f"search_path={self.schema}"]
        self._psycopg = psycopg
        self._observer = psycopg.connect(self.url, autocommit=True)

    @property
    def url(self) -> str:
        """The database's URL, with this backend's settings (search_path first)."""
        return self.url_with(*self.settings)

    def url_with(self, *settings: str) -> str:
        options = "%20".join("-c" + setting.replace("=", "%3D") for setting in settings)
        return f"{self.base}?options={options}"

    def store(self, **options: Any) -> Any:
        """A PostgresStore with its tracking tables in this backend's schema; `url`,
        `schema`, `table` and the store's other keywords may be given."""
        from worker.stores.postgres.store import PostgresStore

        options.setdefault("schema", self.schema)
        return self.keep(PostgresStore(options.pop("url", self.url), **options))

    def read_only_store(self) -> Any:
        return self.store(url=self.url_with(*self.settings, "default_transaction_read_only=on"))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._observer.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self._observer.close()

    def query(self, sql: str, params: Any = ()) -> list[tuple]:
        cursor = self._observer.execute(sql, params or None)
        return cursor.fetchall() if cursor.description is not None else []

    def relations(self, schema: str | None = None) -> set[str]:
        """Every table, index, view and sequence in the schema."""
        rows = self.query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s",
            (schema or self.schema,),
        )
        return {name for (name,) in rows}

    def objects(self) -> set[str]:
        triggers = self.query(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND NOT t.tgisinternal"
            " UNION SELECT p.proname FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (self.schema, self.schema),
        )
        return self.relations() | {name for (name,) in triggers}

    def _table_names(self) -> set[str]:
        rows = self.query("SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,))
        return {name for (name,) in rows}

    def schema_exists(self) -> bool:
        return bool(self.query("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)))

    def untouched(self) -> bool:
        return not self.schema_exists()

    def snapshot(self) -> tuple:
        """Every object in the schema and every row of the tracking tables."""
        objects = self.objects()
        rows = tuple(
            tuple(self.query(f"SELECT * FROM {table} ORDER BY 1"))
            for table in self.tracking
            if table in objects
        )
        return (objects, rows)

    def wait_briefly_for_locks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.settings.append(f"lock_timeout={SHORT_LOCK_WAIT_MS}")

    def lock_writes(self) -> Any:
        """ACCESS EXCLUSIVE on the tracking tables (created first if need be), held by
        another session until it closes."""
        with self.store().transaction():
            pass  # the first write creates the tracking tables
        other = self.keep(self._psycopg.connect(self.url))  # not autocommit: the lock lasts
        other.execute(f"LOCK TABLE {', '.join(self.tracking)} IN ACCESS EXCLUSIVE MODE")
        return other

    def in_transaction(self, store: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return store.connection.info.transaction_status == TransactionStatus.INTRANS


class MariaDbBackend(Backend):
    name = "mariadb"
    partials = "schema_migration_partials"  # MariaDB's step records, beside the tracking tables

    def __init__(self) -> None:
        import pymysql

        super().__init__()
        self._pymysql = pymysql
        self.schema = f"mn_test_{os.getpid()}_{secrets.token_hex(4)}"
        with closing(mariadb_connect()) as admin, admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {self.schema}")
        self.url = f"{MARIADB_SERVER}/{self.schema}"
        self._observer = mariadb_connect(self.schema)

    def store(self, **options: Any) -> Any:
        """A MariaDbStore on this backend's database; `url`, `table` and the store's other
        keywords may be given."""
        from worker.stores.mariadb.store import MariaDbStore

        return self.keep(MariaDbStore(options.pop("url", self.url), **options))

    def read_only_store(self) -> Any:
        store = self.store()
        with store.connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION READ ONLY")  # writes: error 1792
        return store

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                with closing(mariadb_connect()) as admin, admin.cursor() as cursor:
                    cursor.execute(f"DROP DATABASE IF EXISTS {self.schema}")
            finally:
                self._observer.close()

    def query(self, sql: str, params: Any = ()) -> list[tuple]:
        with self._observer.cursor() as cursor:
            cursor.execute(sql, params or None)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def objects(self) -> set[str]:
        """Every table, view, sequence, named index (not PRIMARY), trigger and routine."""
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " UNION SELECT index_name FROM information_schema.statistics"
            " WHERE table_schema = %s AND index_name <> 'PRIMARY'"
            " UNION SELECT trigger_name FROM information_schema.triggers"
            " WHERE trigger_schema = %s"
            " UNION SELECT routine_name FROM information_schema.routines"
            " WHERE routine_schema = %s",
            (self.schema,) * 4,
        )
        return {name for (name,) in rows}

    def _table_names(self) -> set[str]:
        rows = self.query("SELECT table_name FROM information_schema.tables"
                          " WHERE table_schema = %s AND table_type = 'BASE TABLE'",
                          (self.schema,))
        return {name for (name,) in rows}

    def tables(self) -> set[str]:
        return super().tables() - {self.partials}

    def untouched(self) -> bool:
        """No object in the database (which the backend made: it always exists)."""
        return self.objects() == set()

    def snapshot(self) -> tuple:
        """Every object in the database and every row of the tracking tables and step
        records."""
        objects = self.objects()
        rows = tuple(
            tuple(self.query(f"SELECT * FROM {table} ORDER BY 1"))
            for table in (*self.tracking, self.partials)
            if table in objects
        )
        return (objects, rows)

    def wait_briefly_for_locks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Whole seconds on MariaDB (lock_wait_timeout): the shortest wait that is one.
        monkeypatch.setattr("worker.stores.mariadb.store.OWN_LOCK_WAIT_S", 1)

    def lock_writes(self) -> Any:
        """LOCK TABLES ... WRITE on the tracking tables and step records (created first if
        need be), held by another session until it closes."""
        with self.store().transaction():
            pass  # the first write creates the tracking tables
        other = mariadb_connect(self.schema)
        self.keep(ClosedOnce(other))  # the test may close it first; PyMySQL refuses twice
        with other.cursor() as cursor:
            tables = ", ".join(f"{table} WRITE" for table in (*self.tracking, self.partials))
            cursor.execute(f"LOCK TABLES {tables}")
        return other

    def in_transaction(self, store: Any) -> bool:
        from pymysql.constants.SERVER_STATUS import SERVER_STATUS_IN_TRANS

        return bool(store.connection.server_status & SERVER_STATUS_IN_TRANS)


class ClosedOnce:
    """A PyMySQL connection whose close() does nothing when it is closed already."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def close(self) -> None:
        if self.connection.open:
            self.connection.close()


def mariadb_connect(database: str | None = None) -> Any:
    """A session on the machine's MariaDB server as root, in autocommit mode."""
    import pymysql

    return pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root", password="",
                           database=database, autocommit=True, connect_timeout=5)


def mariadb_problem() -> str | None:
    """Why the MariaDB backend cannot run here (no PyMySQL, no server), or None."""
    try:
        import pymysql
    except ImportError:
        return "PyMySQL is not installed (extra: mariadb)"
    try:
        mariadb_connect().close()
    except pymysql.Error as exc:
        return f"no MariaDB server answers at {MARIADB_HOST}:{MARIADB_PORT}: {exc}"
    return None


def postgres_answers() -> bool:
    """True if something accepts connections at the server's address."""
    with contextlib.suppress(OSError), socket.create_connection((PG_HOST, PG_PORT), timeout=5):
        return True
    return False
