"""Read a SQLite database's schema into a Schema, from sqlite_master and four pragmas.

    sqlite_master                     every table, index, view and trigger, and its SQL
    pragma_table_xinfo(table)         columns in order: type, NOT NULL, default, key, generated
    pragma_index_list(table)          UNIQUE constraints (their automatic indexes), and each
                                      index's UNIQUE and partial flags
    pragma_index_xinfo(index)         the columns of an index
    pragma_foreign_key_list(table)    foreign keys: target, ON UPDATE / ON DELETE, MATCH

Each object is described from its sqlite_master row and the pragmas of its own name (which
SQLite answers from the schema it holds in memory), so describing a few objects costs the
same in a schema of ten tables or of ten thousand; read_objects() uses that to read again
only what a step changed. Objects named sqlite_* are SQLite's own and left out. CHECK
constraints, COLLATE clauses, WITHOUT ROWID and STRICT appear in no pragma, so a table's
and an index's SQL is kept too, as "definition", with comments and insignificant whitespace
taken out (see normalise()), which is safe: they never change what SQL means.
"""

from __future__ import annotations

import bisect
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

# SQLite's own objects (named sqlite_*, in any case, as LIKE compares) are left out in
# Python: a WHERE clause costs the statement's preparation, which a step's DDL makes anew.
_OBJECTS = "SELECT rowid, type, name, tbl_name, sql FROM sqlite_master"
_INTERNAL = "sqlite_"
# sqlite_master has no index but its rowid, and a new row takes the highest rowid there plus
# one: a step's new rows are above the highest rowid of the rows it did not touch, and the
# rows seen on the tables it touched are found again by their rowids (see _read_part).
_NEWER = f"{_OBJECTS} WHERE rowid > ?"
_BY_ROWID = f"{_OBJECTS} WHERE rowid IN (SELECT value FROM json_each(?))"
# The pragmas as statements of their own, not as table-valued functions in a SELECT: a
# step's statements after its DDL are all prepared anew, and a PRAGMA prepares in a third of
# the time. They take no parameters: the name is quoted into them (see _pragma).
_COLUMNS = "table_xinfo"  # cid, name, type, notnull, dflt_value, pk, hidden; by cid
_INDEXES_OF = "index_list"  # seq, name, unique, origin, partial
_KEYS = "index_xinfo"  # seqno, cid, name, desc, coll, key; by seqno
_FOREIGN_KEYS = "foreign_key_list"  # id, seq, table, from, to, on_update, on_delete, match
_GENERATED = {2: "virtual", 3: "stored"}  # pragma_table_xinfo's "hidden" for generated columns
EXPRESSION = "<expression>"  # an index key that is an expression, not a column
Row = tuple[int, str, str, str, str | None]  # sqlite_master's rowid, type, name, tbl_name, sql


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


def read(connection: sqlite3.Connection, exclude: Collection[str]) -> Schema:
    """The schema of the connection's main database: every table, index, view and
    trigger but SQLite's own (sqlite_*), the tables named in `exclude`, and the indexes
    and triggers on those tables. Reads only; changes when and only when the schema does,
    never with the data.

    Raises sqlite3.Error when the catalog cannot be read.
    """
    found: dict[str, dict[str, Any]] = {"table": {}, "index": {}, "view": {}, "trigger": {}}
    skip = set(exclude)
    for row in _objects(connection, _OBJECTS):
        described = _describe(connection, row, skip)
        if described is not None:
            found[row[1]][row[2]] = described
    return Schema(found)


class _Seen:
    """What read_objects() saw of sqlite_master: each row and its object's canonical
    description (None: an object read() leaves out), by rowid and by table."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.texts: dict[int, str | None] = {}
        self.by_table: dict[str, set[int]] = {}
        self.rowids: list[int] = []  # ascending

    def add(self, row: Row, text: str | None) -> None:
        rowid = row[0]
        if rowid not in self.rows:
            bisect.insort(self.rowids, rowid)
        self.rows[rowid], self.texts[rowid] = row, text
        self.by_table.setdefault(row[3], set()).add(rowid)

    def drop(self, rowid: int) -> None:
        row = self.rows.pop(rowid)
        self.texts.pop(rowid)
        self.by_table[row[3]].discard(rowid)
        del self.rowids[bisect.bisect_left(self.rowids, rowid)]

    def top_outside(self, scope: set[str]) -> int:
        """The highest rowid seen of a row on none of the tables in `scope` (0: none)."""
        for rowid in reversed(self.rowids):
            if self.rows[rowid][3] not in scope:
                return rowid
        return 0

    def found(self, rowids: Collection[int]) -> dict[tuple[str, str], str]:
        return {(self.rows[r][1], self.rows[r][2]): text for r in rowids
                if (text := self.texts[r]) is not None}


def read_objects(connection: sqlite3.Connection, exclude: Collection[str],
                 memo: dict[Any, Any], scope: Collection[str] | None = None
                 ) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]] | None]:
    """(kind, name) -> canonical description of the objects read() would give, and the
    objects gone: with no `scope`, of every object, and None for what is gone (whatever
    is not there); with `scope`, of the objects on those tables (and views of those
    names) alone, with those of them `memo` saw before that are gone.

    `memo` keeps what earlier calls (with the same `exclude`) saw, so that an object whose
    row did not change is not described again: its description follows from its row (its
    SQL and its table's name), which SQLite rewrites whenever the object changes, a rename
    of what it refers to included. A scope is read from the rows `memo` saw on those
    tables and the rows added since, found by rowid, without reading the others; anything
    there that is not on those tables (a VACUUM renumbers rows, and moves schema_version,
    so a caller that checked its stamp never gives a scope then) makes it read everything.
    """
    skip = set(exclude)
    seen = memo.get("seen")
    if scope is not None and seen is not None:
        part = _read_part(connection, seen, set(scope), skip)
        if part is not None:
            return part
    fresh = _Seen()
    texts = {} if seen is None else {seen.rows[r][1:]: seen.texts[r] for r in seen.rows}
    for row in _objects(connection, _OBJECTS):
        known = row[1:] in texts
        fresh.add(row, texts[row[1:]] if known else _text(connection, row, skip))
    memo["seen"] = fresh
    return fresh.found(fresh.rows), None


def _objects(connection: sqlite3.Connection, query: str, parameters: tuple = ()
             ) -> list[Row]:
    """The rows of a query of sqlite_master, but SQLite's own objects'."""
    return [row for row in connection.execute(query, parameters)
            if row[2][:len(_INTERNAL)].lower() != _INTERNAL]


def _read_part(connection: sqlite3.Connection, seen: _Seen, scope: set[str],
               skip: set[str]) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]] | None:
    """read_objects() of a scope, or None when a row found is on another table."""
    known = set().union(*(seen.by_table.get(table, ()) for table in scope))
    top = seen.top_outside(scope)
    rows = _objects(connection, _NEWER, (top,))
    below = sorted(rowid for rowid in known if rowid <= top)
    if below:
        rows += _objects(connection, _BY_ROWID, (json.dumps(below),))
    if any(row[3] not in scope for row in rows):
        return None
    before = seen.found(known)
    previous = {seen.rows[rowid]: seen.texts[rowid] for rowid in known}
    for rowid in known:
        seen.drop(rowid)
    for row in rows:
        seen.add(row, previous[row] if row in previous else _text(connection, row, skip))
    found = seen.found([row[0] for row in rows])
    return found, set(before) - set(found)


def _text(connection: sqlite3.Connection, row: Row, skip: set[str]) -> str | None:
    described = _describe(connection, row, skip)
    return None if described is None else canonical(described)


def _describe(connection: sqlite3.Connection, row: Row, skip: set[str]) -> Any:
    """The description of the object of one sqlite_master row; None for one read()
    leaves out (on a table in `skip`, or an index SQLite made for a constraint)."""
    _, kind, name, table, sql = row
    if table in skip:
        return None
    if kind == "table":
        return _table(connection, name, sql or "")
    if kind == "index":
        return None if sql is None else _index(connection, name, table, sql)
    if kind == "view":
        return {"definition": normalise(sql or "")}
    if kind == "trigger":
        return {"table": table, "definition": normalise(sql or "")}
    return None


def _table(connection: sqlite3.Connection, name: str, sql: str) -> dict[str, Any]:
    columns: list[dict[str, Any]] = []
    keys: list[tuple[int, str]] = []
    for _, column, type_, notnull, default, pk, hidden in _pragma(connection, _COLUMNS, name):
        described = {"name": column, "type": type_, "nullable": not notnull,
                     "default": default}
        if hidden in _GENERATED:
            described["generated"] = _GENERATED[hidden]
        columns.append(described)
        if pk:
            keys.append((pk, column))
    constraints: dict[str, dict[str, Any]] = {}
    if keys:
        constraints["primary key"] = {"type": "primary key",
                                      "columns": [column for _, column in sorted(keys)]}
    # Only a definition that says UNIQUE has UNIQUE constraints, and only one that says
    # REFERENCES has foreign keys (SQLite rewrites it for ALTER TABLE, and keywords are
    # ASCII); without the word, the pragma that would list none is not run, a statement
    # less to prepare after a step's DDL.
    definition = sql.lower()
    if "unique" in definition:
        for _, index, _, origin, _ in _pragma(connection, _INDEXES_OF, name):
            if origin == "u":
                names = [key["name"] for key in _keys(connection, index)]
                constraints[f"unique ({', '.join(names)})"] = {"type": "unique",
                                                               "columns": names}
    if "references" in definition:
        constraints.update(_foreign_keys(connection, name))
    return {"columns": columns, "constraints": constraints, "definition": normalise(sql)}


def _index(connection: sqlite3.Connection, name: str, table: str, sql: str
           ) -> dict[str, Any]:
    flags = {index: (bool(unique), bool(partial)) for _, index, unique, _, partial
             in _pragma(connection, _INDEXES_OF, table)}
    unique, partial = flags.get(name, (False, False))
    return {"table": table, "unique": unique, "partial": partial,
            "columns": _keys(connection, name), "definition": normalise(sql)}


def _keys(connection: sqlite3.Connection, index: str) -> list[dict[str, Any]]:
    return [{"name": EXPRESSION if column is None else column, "descending": bool(descending),
             "collation": collation}
            for _, _, column, descending, collation, key in _pragma(connection, _KEYS, index)
            if key]


def _foreign_keys(connection: sqlite3.Connection, table: str) -> dict[str, dict[str, Any]]:
    """A table's foreign keys, named by what they join (SQLite keeps no constraint
    names): "foreign key (user_id) -> users (id)"."""
    grouped: dict[int, dict[str, Any]] = {}
    for key, _, target, source, to, on_update, on_delete, match in sorted(
            _pragma(connection, _FOREIGN_KEYS, table), key=lambda row: row[:2]):
        entry = grouped.setdefault(key, {
            "type": "foreign key", "columns": [], "references": target,
            "referenced_columns": [], "on_update": on_update, "on_delete": on_delete,
            "match": match})
        entry["columns"].append(source)
        entry["referenced_columns"].append(to)  # None: the target's primary key
    named = {}
    for entry in grouped.values():
        targets = ", ".join(name or "" for name in entry["referenced_columns"])
        name = (f"foreign key ({', '.join(entry['columns'])}) -> {entry['references']}"
                + (f" ({targets})" if any(entry["referenced_columns"]) else ""))
        named[name] = entry
    return named


def _pragma(connection: sqlite3.Connection, pragma: str, name: str) -> list[tuple]:
    """The rows of `PRAGMA pragma("name")`, the name quoted as an identifier."""
    quoted = name.replace('"', '""')
    return connection.execute(f'PRAGMA {pragma}("{quoted}")').fetchall()
