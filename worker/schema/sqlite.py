"""Read a SQLite database's schema into a Schema, from five catalog queries.

    sqlite_master                     every table, index, view and trigger, and its SQL
    pragma_table_xinfo(table)         columns in order: type, NOT NULL, default, key, generated
    pragma_index_list(table)          UNIQUE constraints (their automatic indexes)
    pragma_index_xinfo(index)         the columns of every index
    pragma_foreign_key_list(table)    foreign keys: target, ON UPDATE / ON DELETE, MATCH

The pragmas are joined to sqlite_master as table-valued functions, so the number of queries
does not grow with the number of tables. Objects named sqlite_* are SQLite's own and left
out. CHECK constraints, COLLATE clauses, WITHOUT ROWID and STRICT appear in no pragma, so a
table's and an index's SQL is kept too, as "definition", with comments and insignificant
whitespace taken out (see normalise()), which is safe: they never change what SQL means.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Collection
from typing import Any

from worker.schema.shape import Schema, canonical

# Whitespace and comments, quoted strings and identifiers, and any other run of characters
# that holds neither; a lone quote, dash or slash that starts none of these is a token too.
_TOKEN = re.compile(
    r"""(?P<space>\s+|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z))
      |(?P<quoted>'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
      |(?P<other>[^\s'"`\[\-/(),;]+|.)""",
    re.DOTALL | re.VERBOSE,
)
_PUNCTUATION = frozenset("(),;")

_NOT_INTERNAL = r"name NOT LIKE 'sqlite\_%' ESCAPE '\'"
_OBJECTS = (f"SELECT m.type, m.name, m.tbl_name, m.sql FROM sqlite_master AS m"
            f" WHERE m.{_NOT_INTERNAL}")
_COLUMNS = (
    'SELECT m.name, p.name, p.type, p."notnull", p.dflt_value, p.pk, p.hidden'
    " FROM sqlite_master AS m JOIN pragma_table_xinfo(m.name) AS p"
    f" WHERE m.type = 'table' AND m.{_NOT_INTERNAL} ORDER BY m.name, p.cid"
)
_UNIQUES = (
    'SELECT m.name, l.name FROM sqlite_master AS m JOIN pragma_index_list(m.name) AS l'
    f" WHERE m.type = 'table' AND m.{_NOT_INTERNAL} AND l.origin = 'u'"
)
_INDEX_COLUMNS = (
    'SELECT m.name, x.name, x."desc", x.coll FROM sqlite_master AS m'
    " JOIN pragma_index_xinfo(m.name) AS x"
    " WHERE m.type = 'index' AND x.key = 1 ORDER BY m.name, x.seqno"
)
_INDEX_FLAGS = (
    'SELECT l.name, l."unique", l.partial FROM sqlite_master AS m'
    f" JOIN pragma_index_list(m.name) AS l WHERE m.type = 'table' AND m.{_NOT_INTERNAL}"
)
_FOREIGN_KEYS = (
    'SELECT m.name, f.id, f."table", f."from", f."to", f.on_update, f.on_delete, f."match"'
    " FROM sqlite_master AS m JOIN pragma_foreign_key_list(m.name) AS f"
    f" WHERE m.type = 'table' AND m.{_NOT_INTERNAL} ORDER BY m.name, f.id, f.seq"
)
_ONLY = " AND m.tbl_name IN (SELECT value FROM json_each(?))"  # see _rows
_GENERATED = {2: "virtual", 3: "stored"}  # pragma_table_xinfo's "hidden" for generated columns
EXPRESSION = "<expression>"  # an index key that is an expression, not a column


def normalise(sql: str) -> str:
    """`sql` without comments, with each run of whitespace one space, and no space next to
    a parenthesis, comma or semicolon; quoted strings and identifiers kept exactly. Two
    statements that differ only in layout give the same text."""
    out: list[str] = []
    pending_space = False
    for match in _TOKEN.finditer(sql):
        if match.lastgroup == "space":
            pending_space = True
            continue
        token = match.group()
        if pending_space and out and out[-1] not in _PUNCTUATION and token not in _PUNCTUATION:
            out.append(" ")
        out.append(token)
        pending_space = False
    return "".join(out)


def catalog_stamp(connection: sqlite3.Connection) -> int:
    """PRAGMA schema_version: SQLite moves it with every change to sqlite_master, so an
    unchanged stamp means an unchanged Schema; a moved one only may mean a changed one
    (the tracking tables, and sqlite_stat1 that a first ANALYZE creates, move it too)."""
    return connection.execute("PRAGMA schema_version").fetchone()[0]


def catalog_changed(connection: sqlite3.Connection, previous: Any) -> tuple[bool, int]:
    """Whether the schema may have changed since catalog_stamp() was `previous`, and the
    stamp now."""
    stamp = catalog_stamp(connection)
    return stamp != previous, stamp


# catalog_stamp() sees what another connection did: schema_version is the file's.
STAMP_SEES_OTHERS = True
READS_IN_PART = True  # read_objects() reads again only what changed


def _rows(connection: sqlite3.Connection, sql: str, only: Collection[str] | None
          ) -> list[tuple]:
    """The rows of one of the queries above, for the objects on the tables named in
    `only` alone when it is given (a filter on sqlite_master's tbl_name, which is the
    table an object is on, and a view's own name; put before any ORDER BY)."""
    if only is None:
        return connection.execute(sql).fetchall()
    head, order, tail = sql.partition(" ORDER BY")
    return connection.execute(head + _ONLY + order + tail,
                              (json.dumps(sorted(only)),)).fetchall()


_COMPLETE = ("complete",)  # in a memo once it holds every row (never a row: rows have 4)


def read_objects(connection: sqlite3.Connection, exclude: Collection[str],
                 memo: dict[Any, Any], scope: Collection[str] | None = None
                 ) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]] | None]:
    """(kind, name) -> canonical description of the objects read() would give, and the
    objects gone since the last call: of every object, with None for what is gone (the
    caller compares), or, with `scope`, of the objects on those tables (and views) alone,
    with the set of those `memo` saw there that are gone.

    Only the objects whose sqlite_master row `memo` has not seen in an earlier call (with
    the same `exclude`) are read again, and `memo` is brought up to date: an object's
    description follows from its row alone (its SQL and its table's name), which SQLite
    rewrites whenever the object changes, a rename of what it refers to included. A scope
    is taken only once `memo` has seen every row."""
    if scope is not None and memo.get(_COMPLETE):
        rows = _rows(connection, _OBJECTS, scope)
        before = {row for row in memo if row is not _COMPLETE and row[2] in scope}
    else:
        scope = None
        rows = connection.execute(_OBJECTS).fetchall()
        before = {row for row in memo if row is not _COMPLETE}
    stale = [row for row in rows if row not in memo]
    if stale:
        part = read(connection, exclude, on_tables={row[2] for row in stale})
        for row in stale:
            described = part.get(row[0], {}).get(row[1])
            memo[row] = None if described is None else (row[0], row[1], canonical(described))
    current = set(rows)
    gone = {(row[0], row[1]) for row in before - current if memo[row] is not None}
    for row in before - current:
        del memo[row]
    memo[_COMPLETE] = True
    found = {(memo[row][0], memo[row][1]): memo[row][2] for row in rows if memo[row] is not None}
    return found, (None if scope is None else gone - set(found))


def read(connection: sqlite3.Connection, exclude: Collection[str],
         on_tables: Collection[str] | None = None) -> Schema:
    """The schema of the connection's main database: every table, index, view and
    trigger but SQLite's own (sqlite_*), the tables named in `exclude`, and the indexes
    and triggers on those tables; with `on_tables`, only the objects on those tables (and
    the views of those names).
    Reads only; changes when and only when the schema does, never with the data.

    Raises sqlite3.Error when the catalog cannot be read.
    """
    skip = set(exclude)
    only = on_tables
    objects = [row for row in _rows(connection, _OBJECTS, only) if row[2] not in skip]
    tables = {name: sql for kind, name, _, sql in objects if kind == "table"}

    columns: dict[str, list[dict[str, Any]]] = {name: [] for name in tables}
    primary_keys: dict[str, list[tuple[int, str]]] = {name: [] for name in tables}
    for table, name, type_, notnull, default, pk, hidden in _rows(connection, _COLUMNS, only):
        if table not in tables:
            continue
        column = {"name": name, "type": type_, "nullable": not notnull, "default": default}
        if hidden in _GENERATED:
            column["generated"] = _GENERATED[hidden]
        columns[table].append(column)
        if pk:
            primary_keys[table].append((pk, name))

    index_columns: dict[str, list[Any]] = {}
    for index, name, descending, collation in _rows(connection, _INDEX_COLUMNS, only):
        index_columns.setdefault(index, []).append(
            {"name": EXPRESSION if name is None else name, "descending": bool(descending),
             "collation": collation})

    constraints: dict[str, dict[str, Any]] = {name: {} for name in tables}
    for table, keys in primary_keys.items():
        if keys:
            constraints[table]["primary key"] = {
                "type": "primary key", "columns": [name for _, name in sorted(keys)]}
    for table, index in _rows(connection, _UNIQUES, only):
        if table in tables:
            names = [key["name"] for key in index_columns.get(index, [])]
            constraints[table][f"unique ({', '.join(names)})"] = {
                "type": "unique", "columns": names}
    _add_foreign_keys(connection, tables, constraints, only)

    flags = {name: (bool(unique), bool(partial))
             for name, unique, partial in _rows(connection, _INDEX_FLAGS, only)}
    found: dict[str, dict[str, Any]] = {
        "table": {name: {"columns": columns[name], "constraints": constraints[name],
                         "definition": normalise(sql or "")} for name, sql in tables.items()},
        "index": {}, "view": {}, "trigger": {},
    }
    for kind, name, table, sql in objects:
        if kind == "index" and sql is not None:  # automatic indexes have none: see UNIQUE
            unique, partial = flags.get(name, (False, False))
            found["index"][name] = {"table": table, "unique": unique, "partial": partial,
                                    "columns": index_columns.get(name, []),
                                    "definition": normalise(sql)}
        elif kind == "view" and name not in skip:
            found["view"][name] = {"definition": normalise(sql)}
        elif kind == "trigger":
            found["trigger"][name] = {"table": table, "definition": normalise(sql)}
    return Schema(found)


def _add_foreign_keys(connection: sqlite3.Connection, tables: Collection[str],
                      constraints: dict[str, dict[str, Any]],
                      only: Collection[str] | None) -> None:
    """Each table's foreign keys into `constraints`, named by what they join (SQLite keeps
    no constraint names): "foreign key (user_id) -> users (id)"."""
    grouped: dict[tuple[str, int], dict[str, Any]] = {}
    for table, key, target, source, to, on_update, on_delete, match in _rows(
            connection, _FOREIGN_KEYS, only):
        if table not in tables:
            continue
        entry = grouped.setdefault((table, key), {
            "type": "foreign key", "columns": [], "references": target,
            "referenced_columns": [], "on_update": on_update, "on_delete": on_delete,
            "match": match})
        entry["columns"].append(source)
        entry["referenced_columns"].append(to)  # None: the target's primary key
    for (table, _), entry in grouped.items():
        targets = ", ".join(name or "" for name in entry["referenced_columns"])
        name = (f"foreign key ({', '.join(entry['columns'])}) -> {entry['references']}"
                + (f" ({targets})" if any(entry["referenced_columns"]) else ""))
        constraints[table][name] = entry
