"""Opening the store `--db` names: the one place that knows every backend.

    migrations.db, ./x/app.sqlite     -> SqliteStore   (worker/stores/sqlite/)
    postgresql://user@host:5432/name  -> PostgresStore (worker/stores/postgres/)
    mysql://user@host:3306/name       -> MariaDbStore  (worker/stores/mariadb/), and mariadb://

Each backend's package is imported only when its database is opened, so that a SQLite
worker never loads a server's driver.
"""

from __future__ import annotations

from broker import database_url
from broker.endpoint import Endpoint
from worker.lock import OwnerLock
from worker.stores.interface import Store


def open_store(
    where: Endpoint,
    table: str | None = None,
    schema: str | None = None,
    owner_wait_s: float | None = None,
    wal: bool = False,
    lock_timeout_s: float | None = None,
) -> Store:
    """The store for a worker's endpoint: a PostgreSQL or MySQL URL's, or a SQLite file's.

    `table` names the tracking table; None: found by looking in the database (see
    choose_table; on a server, once it answers). `schema` places the tracking tables on a
    PostgreSQL server (default `public`); a SQLite file has none, and a MySQL server's
    tracking tables live in the URL's database, so giving one there is a ValueError.
    `owner_wait_s` is how long a write may wait for the owner lock while another worker
    (on another host) holds it; see PostgresStore.
    `wal` turns an existing SQLite database's rollback journal into WAL (one it creates
    starts in WAL anyway); a server keeps its own journal. `lock_timeout_s` is how long a
    statement of migration code waits for a lock on a server (None: its default); SQLite
    has no such wait.
    """
    if isinstance(where.database, str) and (
            database_url.backend_of(where.database) == database_url.MYSQL):
        if schema is not None:
            raise ValueError("--schema is for a PostgreSQL database; on MySQL and MariaDB the"
                             " tracking tables live in the URL's database")
        # Only a MySQL worker loads PyMySQL.
        from worker.stores.mariadb.store import MariaDbStore

        return MariaDbStore(where.database, table=table, local_lock=OwnerLock(where.lock_path),
                            owner_wait_s=owner_wait_s, lock_timeout_s=lock_timeout_s)
    if isinstance(where.database, str):
        # Only a PostgreSQL worker loads psycopg.
        from worker.stores.postgres.store import PostgresStore

        return PostgresStore(
            where.database,
            table=table,
            schema=schema or "public",
            local_lock=OwnerLock(where.lock_path),
            owner_wait_s=owner_wait_s,
            lock_timeout_s=lock_timeout_s,
        )
    if schema is not None:
        raise ValueError("--schema is for a PostgreSQL database; a SQLite file has no schemas")
    from worker.stores.sqlite.store import SqliteStore

    return SqliteStore(where.database, table=table, wal=wal)
