"""The other tools' tracking tables, built as each tool builds them, and their rows as each
writes them, on SQLite and PostgreSQL (for the tools the tests cannot run themselves).

    golang-migrate  database/{postgres,sqlite3}: ensureVersionTable, SetVersion
    goose           internal/dialect/dialectquery: CreateTable, InsertVersion (its row 0 first)
    Flyway          resources/.../{postgresql,sqlite}/createMetaDataTable.sql; a row per run
    sql-migrate     gorp's CreateTablesIfNotExists for MigrationRecord{Id, AppliedAt}
    dbmate          pkg/driver/{postgres,sqlite}: CreateMigrationsTable, InsertMigration

Each takes a ToolDatabase: `execute(sql, params)` with `?` placeholders on both backends,
and `kind`, "sqlite" or "postgresql".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class ToolDatabase(Protocol):
    kind: str

    def execute(self, sql: str, params: tuple = ()) -> None: ...


GOLANG_MIGRATE = {
    "postgresql": ['CREATE TABLE IF NOT EXISTS "schema_migrations"'
                   " (version bigint not null primary key, dirty boolean not null)"],
    "sqlite": ["CREATE TABLE IF NOT EXISTS schema_migrations (version uint64,dirty bool)",
               "CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version)"],
}
GOOSE = {
    "postgresql": ["""CREATE TABLE goose_db_version (
		id serial NOT NULL,
		version_id bigint NOT NULL,
		is_applied boolean NOT NULL,
		tstamp timestamp NULL default now(),
		PRIMARY KEY(id)
	)"""],
    "sqlite": ["""CREATE TABLE goose_db_version (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		version_id INTEGER NOT NULL,
		is_applied INTEGER NOT NULL,
		tstamp TIMESTAMP DEFAULT (datetime('now'))
	)"""],
}
FLYWAY = {
    "postgresql": ["""CREATE TABLE "public"."flyway_schema_history" (
    "installed_rank" INT NOT NULL,
    "version" VARCHAR(50),
    "description" VARCHAR(200) NOT NULL,
    "type" VARCHAR(20) NOT NULL,
    "script" VARCHAR(1000) NOT NULL,
    "checksum" INTEGER,
    "installed_by" VARCHAR(100) NOT NULL,
    "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
    "execution_time" INTEGER NOT NULL,
    "success" BOOLEAN NOT NULL
)""",
                   'ALTER TABLE "public"."flyway_schema_history" ADD CONSTRAINT'
                   ' "flyway_schema_history_pk" PRIMARY KEY ("installed_rank")',
                   'CREATE INDEX "flyway_schema_history_s_idx" ON'
                   ' "public"."flyway_schema_history" ("success")'],
    "sqlite": ["""CREATE TABLE "main"."flyway_schema_history" (
    "installed_rank" INT NOT NULL PRIMARY KEY,
    "version" VARCHAR(50),
    "description" VARCHAR(200) NOT NULL,
    "type" VARCHAR(20) NOT NULL,
    "script" VARCHAR(1000) NOT NULL,
    "checksum" INT,
    "installed_by" VARCHAR(100) NOT NULL,
    "installed_on" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')),
    "execution_time" INT NOT NULL,
    "success" BOOLEAN NOT NULL
)""",
               'CREATE INDEX "main"."flyway_schema_history_s_idx" ON "flyway_schema_history"'
               ' ("success")'],
}
SQL_MIGRATE = {
    "postgresql": ['create table if not exists "gorp_migrations" ("id" text not null primary'
                   ' key, "applied_at" timestamp with time zone) '],
    "sqlite": ['create table if not exists "gorp_migrations" ("id" varchar(255) not null'
               ' primary key, "applied_at" datetime) '],
}
DBMATE = {
    "postgresql": ['create table if not exists "public"."schema_migrations"'
                   " (version varchar primary key)"],
    "sqlite": ['create table if not exists "schema_migrations" (version varchar(128)'
               " primary key)"],
}


def golang_migrate(db: ToolDatabase, version: int | None, dirty: bool = False) -> None:
    """golang-migrate's table at `version` (None: its table as `migrate` leaves it before
    any migration: empty), dirty or not; SetVersion deletes, then inserts one row."""
    _create(db, GOLANG_MIGRATE)
    db.execute("DELETE FROM schema_migrations")
    if version is not None:
        # go-sqlite3 stores a Go bool as the integer 1 or 0.
        flag: Any = dirty if db.kind == "postgresql" else int(dirty)
        db.execute("INSERT INTO schema_migrations (version, dirty) VALUES (?, ?)",
                   (version, flag))


def goose(db: ToolDatabase, rows: Iterable[tuple[int, bool]] = (),
          tstamp: str | None = None) -> None:
    """goose's table with its own row (version_id 0) and then `rows` of (version_id,
    is_applied), in that order; `tstamp` for each instead of now()."""
    _create(db, GOOSE)
    for version_id, applied in [(0, True), *rows]:
        flag: Any = applied if db.kind == "postgresql" else int(applied)
        if tstamp is None:
            db.execute("INSERT INTO goose_db_version (version_id, is_applied) VALUES (?, ?)",
                       (version_id, flag))
        else:
            db.execute("INSERT INTO goose_db_version (version_id, is_applied, tstamp)"
                       " VALUES (?, ?, ?)", (version_id, flag, tstamp))


def flyway(db: ToolDatabase, rows: Iterable[tuple[str | None, str, str, bool]]) -> None:
    """Flyway's history with a row per (version, type, script, success), installed_rank
    counting from 1, as Flyway inserts them (installed_on by default)."""
    _create(db, FLYWAY)
    for rank, (version, kind, script, success) in enumerate(rows, start=1):
        flag: Any = success if db.kind == "postgresql" else int(success)
        description = script.partition("__")[2].removesuffix(".sql").replace("_", " ")
        db.execute(
            "INSERT INTO flyway_schema_history (installed_rank, version, description, type,"
            " script, checksum, installed_by, execution_time, success)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rank, version, description or script, kind, script, 12345, "flyway", 7, flag))


def sql_migrate(db: ToolDatabase, ids: Iterable[str], applied_at: str) -> None:
    """sql-migrate's table with a row per file name in `ids`, applied at `applied_at`."""
    _create(db, SQL_MIGRATE)
    for name in ids:
        db.execute('insert into "gorp_migrations" ("id","applied_at") values (?,?)',
                   (name, applied_at))


def dbmate(db: ToolDatabase, versions: Iterable[str]) -> None:
    """dbmate's table with a row per version, as the file names spell them ("0001")."""
    _create(db, DBMATE)
    for version in versions:
        db.execute("insert into schema_migrations (version) values (?)", (version,))


def _create(db: ToolDatabase, statements: dict[str, list[str]]) -> None:
    for statement in statements[db.kind]:
        db.execute(statement)
