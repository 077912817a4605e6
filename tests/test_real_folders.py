"""Folders shaped like real projects' (issue 22 item 5), end to end through real nodes.

A golang-migrate folder for PostgreSQL of more than a hundred pairs, written here (none is
copied from a project): plpgsql functions, DO blocks, dollar quotes inside dollar quotes,
statements without a final `;`, files wrapped in their own BEGIN/COMMIT, concurrent index
builds alone in their files, and down files that are empty or hold only comments. It
applies, rolls back to zero and applies again, the schema the same each time. Then one
folder of all five formats, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.support import Workspace, request
from tests.test_postgres_node import database  # noqa: F401 (a fixture)

TABLES = 14  # each gets the GROUP's migrations below: 126 pairs
# The tracking tables' names all begin so; the schema compared is the migrations' own.
TRACKING_PREFIX = "schema_migration"


def group(n: int) -> list[tuple[str, str, str]]:
    """(title, up, down) of the migrations that build and dress table `item_{n}`."""
    t = f"item_{n}"
    return [
        (f"create_{t}",
         f"CREATE TABLE {t} (\n    id bigserial PRIMARY KEY,\n    label text NOT NULL,\n"
         f"    created_at timestamptz\n);\nCREATE INDEX {t}_label ON {t} (label);\n",
         f"DROP TABLE {t};\n"),
        # A function whose body holds a dollar quote inside its own, and `;` in a string.
        (f"count_{t}",
         f"CREATE FUNCTION count_{t}(skip text DEFAULT ';') RETURNS bigint\n"
         "LANGUAGE plpgsql STABLE AS $fn$\nDECLARE\n    total bigint;\nBEGIN\n"
         f"    EXECUTE $sql$SELECT count(*) FROM {t} WHERE label <> $1$sql$\n"
         "        INTO total USING skip;\n    RETURN total;\nEND\n$fn$;\n",
         f"DROP FUNCTION count_{t}(text)\n"),  # no final `;`
        # A DO block, then a statement without its final `;`.
        (f"state_of_{t}",
         "DO $$\nBEGIN\n"
         f"    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'state_{n}') THEN\n"
         f"        CREATE TYPE state_{n} AS ENUM ('new', 'done; really');\n"
         "    END IF;\nEND\n$$;\n\n"
         f"ALTER TABLE {t} ADD COLUMN state state_{n} NOT NULL DEFAULT 'new'",
         f"ALTER TABLE {t} DROP COLUMN state;\nDROP TYPE state_{n};\n"),
        # Three levels of dollar quotes: a DO block builds a function with format().
        (f"stamp_{t}",
         "DO $do$\nBEGIN\n    EXECUTE format($f$\n"
         "        CREATE FUNCTION stamp_%s() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
         "        BEGIN\n            NEW.created_at := coalesce(NEW.created_at, now());\n"
         "            RETURN NEW;\n        END\n        $body$\n"
         f"    $f$, '{t}');\nEND\n$do$;\n"
         f"CREATE TRIGGER stamp_{t} BEFORE INSERT ON {t}\n"
         f"    FOR EACH ROW EXECUTE FUNCTION stamp_{t}();\n",
         f"DROP TRIGGER stamp_{t} ON {t};\nDROP FUNCTION stamp_{t}();\n"),
        # Built concurrently, alone in its file as golang-migrate needs it, said in a comment.
        (f"index_{t}_created",
         "-- Alone in its file: built concurrently, outside a transaction, so that writes\n"
         "-- to the table go on meanwhile.\n"
         f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {t}_created ON {t} (created_at);\n",
         f"DROP INDEX CONCURRENTLY IF EXISTS {t}_created;\n"),
        # Data: its down is empty, as golang-migrate's template leaves it.
        (f"seed_{t}",
         f"INSERT INTO {t} (label) VALUES ('first; of many'), ('second')",
         ""),
        (f"describe_{t}",
         f"COMMENT ON TABLE {t} IS 'what; the {t} holds';\n",
         "-- The comment goes with the table; nothing to undo here.\n\n"),
        # Wrapped in its own transaction, as many golang-migrate files are.
        (f"note_on_{t}",
         f"BEGIN;\nALTER TABLE {t} ADD COLUMN note text;\n"
         f"CREATE INDEX {t}_note ON {t} (note) WHERE note IS NOT NULL;\nCOMMIT;\n",
         f"BEGIN;\nDROP INDEX {t}_note;\nALTER TABLE {t} DROP COLUMN note;\nCOMMIT;\n"),
        (f"view_{t}",
         f"CREATE VIEW {t}_labels AS\n    SELECT id, upper(label) AS label FROM {t}\n"
         "    WHERE label NOT LIKE '%;%'",
         f"DROP VIEW {t}_labels;\n"),
    ]


def write_golang_migrate_folder(folder: Path) -> list[int]:
    """The folder's pairs, numbered as `migrate create -seq` numbers them; their versions."""
    folder.mkdir()
    versions = []
    migrations = [m for n in range(1, TABLES + 1) for m in group(n)]
    for version, (title, up, down) in enumerate(migrations, 1):
        (folder / f"{version:06d}_{title}.up.sql").write_text(up)
        (folder / f"{version:06d}_{title}.down.sql").write_text(down)
        versions.append(version)
    return versions


# Each part of the schema a migration can change, as PostgreSQL describes it.
SCHEMA_QUERIES = [
    "SELECT c.relname, c.relkind::text FROM pg_class c"
    " WHERE c.relnamespace = 'public'::regnamespace",
    "SELECT table_name::text, column_name::text, data_type::text, udt_name::text,"
    " is_nullable::text, column_default FROM information_schema.columns"
    " WHERE table_schema = 'public'",
    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisvalid::text"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE c.relnamespace = 'public'::regnamespace",
    "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)"
    " FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
    "SELECT pg_get_functiondef(oid) FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
    "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal",
    "SELECT viewname::text, definition FROM pg_views WHERE schemaname = 'public'",
    "SELECT t.typname::text, e.enumlabel::text, e.enumsortorder::text FROM pg_enum e"
    " JOIN pg_type t ON t.oid = e.enumtypid",
    "SELECT c.relname::text, obj_description(c.oid, 'pg_class') FROM pg_class c"
    " WHERE c.relnamespace = 'public'::regnamespace"
    " AND obj_description(c.oid, 'pg_class') IS NOT NULL",
]


def schema(url: str) -> list[list[tuple]]:
    """The migrations' schema (the tracking tables left out), each part sorted."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        return [
            sorted(row for row in connection.execute(query).fetchall()
                   if TRACKING_PREFIX not in str(row))
            for query in SCHEMA_QUERIES
        ]


def test_a_large_golang_migrate_folder_applies_rolls_back_to_zero_and_applies_again(
    workspace: Workspace, database: str  # noqa: F811 (the fixture imported above)
) -> None:
    folder = workspace.root / "migrations"
    versions = write_golang_migrate_folder(folder)
    empty = schema(database)
    args = ("--migrations", str(folder))

    (first,), completed = workspace.run([request("migrate", 1)], *args)
    assert first.get("count") == len(versions) > 100, (first, completed.stderr)
    applied = schema(database)
    (rolled_back,), _ = workspace.run([request("rollback", 2, to=0)], *args)
    reverted = schema(database)
    (again, validated, status), _ = workspace.run(
        [request("migrate", 3), request("validate", 4), request("status", 5)], *args)

    assert [m["version"] for m in rolled_back["migrations"]] == versions[::-1]
    assert reverted == empty
    assert again["count"] == len(versions)
    assert schema(database) == applied
    assert validated["ok"] is True, validated
    assert all(m["applied"] for m in status["migrations"])
    functions, triggers = applied[4], applied[5]
    assert len(functions) == 2 * TABLES and len(triggers) == TABLES
    indexes = {name: valid for name, _, valid in applied[2]}
    assert indexes["item_1_created"] == "true"  # built concurrently, and valid


# -- all five formats in one folder ------------------------------------------------------

# What a block holds that must run as one statement, on each database.
BLOCK = {
    "sqlite": ("CREATE TRIGGER posts_count AFTER INSERT ON posts BEGIN\n"
               "    UPDATE users SET posts = posts + 1 WHERE id = NEW.user_id;\nEND;\n",
               "DROP TRIGGER posts_count;\n"),
    "postgresql": ("CREATE FUNCTION posts_count() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                   "BEGIN\n    UPDATE users SET posts = posts + 1 WHERE id = NEW.user_id;\n"
                   "    RETURN NEW;\nEND\n$$;\n"
                   "CREATE TRIGGER posts_count AFTER INSERT ON posts\n"
                   "    FOR EACH ROW EXECUTE FUNCTION posts_count();\n",
                   "DROP TRIGGER posts_count ON posts;\nDROP FUNCTION posts_count();\n"),
}


def mixed_folder(folder: Path, dialect: str) -> dict[int, str]:
    """One folder of every format; the name of each version."""
    block, unblock = BLOCK[dialect]
    files = {
        "0001_create_users.sql": (
            "-- migrate:up\n"
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " posts INTEGER NOT NULL DEFAULT 0);\n\n"
            "-- migrate:down\nDROP TABLE users;\n"),
        "0002_create_posts.sql": (
            "-- +goose Up\n"
            "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, body TEXT);\n"
            "-- +goose StatementBegin\n" + block + "-- +goose StatementEnd\n\n"
            "-- +goose Down\n"
            "-- +goose StatementBegin\n" + unblock + "-- +goose StatementEnd\n"
            "DROP TABLE posts;\n"),
        "3_create_tags.up.sql": (
            "BEGIN;\nCREATE TABLE tags (name TEXT PRIMARY KEY);\n"
            "INSERT INTO tags VALUES ('news; and more');\nCOMMIT;\n"),
        "3_create_tags.down.sql": "DROP TABLE tags",
        "V4__add_post_tags.sql": (
            "CREATE TABLE post_tags (post_id INTEGER NOT NULL, tag TEXT NOT NULL);\n"
            "CREATE INDEX post_tags_tag ON post_tags (tag)"),
        "U4__drop_post_tags.sql": "DROP TABLE post_tags;\n",
        "0005_name_index.sql": (
            "-- +migrate Up\nCREATE INDEX users_name ON users (name);\n"
            "-- +migrate StatementBegin\nCREATE VIEW named AS SELECT name FROM users"
            " WHERE name <> ';';\n-- +migrate StatementEnd\n\n"
            "-- +migrate Down\nDROP VIEW named;\nDROP INDEX users_name;\n"),
        "6_seed_users.up.sql": (
            "INSERT INTO users (id, name) VALUES (1, 'ada');\n"
            "INSERT INTO posts (id, user_id, body) VALUES (1, 1, 'hello; world');\n"),
        "6_seed_users.down.sql": "-- the rows go with their tables\n",
    }
    folder.mkdir()
    for filename, text in files.items():
        (folder / filename).write_text(text)
    return {1: "create_users", 2: "create_posts", 3: "create_tags", 4: "add_post_tags",
            5: "name_index", 6: "seed_users"}


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect_db(request: pytest.FixtureRequest, workspace: Workspace) -> tuple[str, str]:
    """The database's kind and the workspace's --db: its SQLite file, or a fresh
    PostgreSQL database (see tests/test_postgres_node.py)."""
    if request.param == "postgresql":
        return "postgresql", request.getfixturevalue("database")
    return "sqlite", str(workspace.db)


def tables_of(url: str) -> set[str]:
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as connection:
            rows = connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    else:
        with closing(sqlite3.connect(url)) as connection:
            rows = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows if not name.startswith(TRACKING_PREFIX)}


def test_a_folder_of_all_five_formats_applies_rolls_back_and_applies_again(
    workspace: Workspace, dialect_db: tuple[str, str]
) -> None:
    dialect, url = dialect_db
    folder = workspace.root / "migrations"
    named = mixed_folder(folder, dialect)
    args = ("--migrations", str(folder))
    everything = {"users", "posts", "tags", "post_tags"}

    (migrated, status, validated), completed = workspace.run(
        [request("migrate", 1), request("status", 2), request("validate", 3)], *args)
    assert migrated.get("count") == 6, (migrated, completed.stderr)
    assert tables_of(url) == everything
    (rolled_back,), _ = workspace.run([request("rollback", 4, to=0)], *args)
    assert tables_of(url) == set()
    (again, posts), _ = workspace.run(
        [request("migrate", 5), request("status", 6)], *args)

    assert [(m["version"], m["name"]) for m in status["migrations"]] == sorted(named.items())
    assert validated["ok"] is True, validated
    assert [m["version"] for m in rolled_back["migrations"]] == [6, 5, 4, 3, 2, 1]
    assert again["count"] == 6 and tables_of(url) == everything
    assert all(m["applied"] for m in posts["migrations"])
    # The block ran as one statement: its trigger counted the seeded post.
    assert count_posts_of_ada(url) == 1


def count_posts_of_ada(url: str) -> int:
    query = "SELECT posts FROM users WHERE name = 'ada'"
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as connection:
            return connection.execute(query).fetchone()[0]
    with closing(sqlite3.connect(url)) as connection:
        return connection.execute(query).fetchone()[0]
