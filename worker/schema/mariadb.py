"""Read a MariaDB (or MySQL) database's schema into a Schema, from information_schema (PyMySQL).

    TABLES                      base tables (engine, collation) and sequences
    COLUMNS                     in ORDINAL_POSITION order: COLUMN_TYPE, IS_NULLABLE,
                                COLUMN_DEFAULT, EXTRA, collation, generation expression
    STATISTICS                  indexes: unique, type, columns with prefix length and order
    TABLE_CONSTRAINTS           primary keys, unique keys, foreign keys, checks, with
    + KEY_COLUMN_USAGE          their columns, targets,
    + REFERENTIAL_CONSTRAINTS   ON UPDATE / ON DELETE rules,
    + CHECK_CONSTRAINTS         and check clauses
    VIEWS                       VIEW_DEFINITION, check option, security
    TRIGGERS                    timing, event, table, order, statement
    ROUTINES + PARAMETERS       functions and procedures: signature, body, characteristics
    SHOW CREATE SEQUENCE        one statement per sequence (MariaDB keeps no catalog of them)

Only the connection's current database (SELECT DATABASE()). Never AUTO_INCREMENT, TABLE_ROWS,
DATA_LENGTH, CARDINALITY, UPDATE_TIME, CREATED or DEFINER: they change with the data, the
clock or the user who ran the migration, not with the schema. The server writes the
database's own name into view definitions (`db`.`t`.`a`); it is taken out, so that the same
schema in two databases reads the same.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pymysql.cursors

from worker.schema.shape import Schema, objects_of

_TABLES = (
    "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, TABLE_COLLATION FROM information_schema.TABLES"
    " WHERE TABLE_SCHEMA = %s AND TABLE_TYPE <> 'VIEW'"
)
_COLUMNS = (
    "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA,"
    " COLLATION_NAME, GENERATION_EXPRESSION FROM information_schema.COLUMNS"
    " WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION"
)
_INDEXES = (
    "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, INDEX_TYPE, COLUMN_NAME, SUB_PART, COLLATION"
    " FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
    " ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
)  # never CARDINALITY: ANALYZE TABLE and the data move it
_CONSTRAINTS = (
    "SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE FROM information_schema.TABLE_CONSTRAINTS"
    " WHERE TABLE_SCHEMA = %s"
)
_KEY_COLUMNS = (
    "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_SCHEMA,"
    " REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
    " WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION"
)
_RULES = (
    "SELECT TABLE_NAME, CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE"
    " FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s"
)
# MariaDB scopes a check's name to its table, and says which; MySQL to the schema, and
# does not.
_CHECKS_MARIADB = (
    "SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
    " WHERE CONSTRAINT_SCHEMA = %s"
)
_CHECKS_MYSQL = (
    "SELECT t.TABLE_NAME, c.CONSTRAINT_NAME, c.CHECK_CLAUSE"
    " FROM information_schema.CHECK_CONSTRAINTS AS c"
    " JOIN information_schema.TABLE_CONSTRAINTS AS t"
    " ON t.CONSTRAINT_SCHEMA = c.CONSTRAINT_SCHEMA AND t.CONSTRAINT_NAME = c.CONSTRAINT_NAME"
    " AND t.CONSTRAINT_TYPE = 'CHECK' WHERE c.CONSTRAINT_SCHEMA = %s"
)
_VIEWS = (
    "SELECT TABLE_NAME, VIEW_DEFINITION, CHECK_OPTION, SECURITY_TYPE"
    " FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"
)
_TRIGGERS = (
    "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION,"
    " ACTION_ORDER, ACTION_STATEMENT FROM information_schema.TRIGGERS"
    " WHERE TRIGGER_SCHEMA = %s"
)
_ROUTINES = (
    "SELECT SPECIFIC_NAME, ROUTINE_TYPE, DTD_IDENTIFIER, ROUTINE_BODY, ROUTINE_DEFINITION,"
    " IS_DETERMINISTIC, SQL_DATA_ACCESS, SECURITY_TYPE FROM information_schema.ROUTINES"
    " WHERE ROUTINE_SCHEMA = %s"
)
_PARAMETERS = (
    "SELECT SPECIFIC_NAME, ROUTINE_TYPE, PARAMETER_MODE, PARAMETER_NAME, DTD_IDENTIFIER"
    " FROM information_schema.PARAMETERS WHERE SPECIFIC_SCHEMA = %s AND ORDINAL_POSITION > 0"
    " ORDER BY SPECIFIC_NAME, ORDINAL_POSITION"
)  # position 0 is a function's return type, which ROUTINES gives


def catalog_stamp(connection: Any) -> None:
    """None: MariaDB keeps no number that every change to the schema moves (TABLES'
    UPDATE_TIME and CREATE_TIME follow the data and the storage), so a caller must read()
    to know what another session did; catalog_changed() knows what this session did."""
    return None


# The session's counts of statements that can change the schema: every CREATE, ALTER,
# DROP and RENAME, and the ways to run a statement the counts would not name (prepared,
# EXECUTE IMMEDIATE, CALL).
_SCHEMA_STATEMENTS = (
    "SHOW SESSION STATUS WHERE Variable_name LIKE 'Com\\_create\\_%'"
    " OR Variable_name LIKE 'Com\\_alter\\_%' OR Variable_name LIKE 'Com\\_drop\\_%'"
    " OR Variable_name IN ('Com_rename_table', 'Com_stmt_execute', 'Com_execute_sql',"
    " 'Com_execute_immediate', 'Com_call_procedure')"
)


def catalog_changed(connection: Any, previous: Any) -> tuple[bool, Any]:
    """Whether this session may have changed the schema since the stamp was `previous`,
    and the stamp now: the session's id and its counts of statements that can (a new
    session's counts start again, so its id is part of the stamp)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (session,) = cursor.fetchone()
        cursor.execute(_SCHEMA_STATEMENTS)
        counts = sum(int(value) for _, value in cursor.fetchall())
    stamp = (session, counts)
    return stamp != previous, stamp


# catalog_stamp() and catalog_changed() see what another session did: no.
STAMP_SEES_OTHERS = False
READS_IN_PART = True  # read_objects() reads the tables a step's statements named
# The column each per-table query names its table by (see read()'s `only`).
_TABLE_COLUMN = {_TABLES: "TABLE_NAME", _COLUMNS: "TABLE_NAME", _INDEXES: "TABLE_NAME",
                 _CONSTRAINTS: "TABLE_NAME", _KEY_COLUMNS: "TABLE_NAME", _RULES: "TABLE_NAME",
                 _CHECKS_MARIADB: "TABLE_NAME", _CHECKS_MYSQL: "t.TABLE_NAME",
                 _TRIGGERS: "EVENT_OBJECT_TABLE"}


def read_objects(connection: Any, exclude: Collection[str], memo: dict[Any, Any],
                 scope: Collection[str] | None = None
                 ) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]] | None]:
    """(kind, name) -> canonical description of the objects read() gives, and the objects
    gone: with no `scope`, of every object, and None for what is gone (whatever is not
    there); with `scope`, table names, of those tables, their indexes and triggers alone,
    with those of them `memo` saw before that are gone. `memo` keeps, by table, the
    objects earlier calls saw."""
    seen: dict[str, set[tuple[str, str]]] | None = memo.get("by_table")
    if scope is None or seen is None:
        found = read(connection, exclude)
        memo["by_table"] = _by_table(found)
        return objects_of(found), None
    part = read(connection, exclude, only=set(scope))
    before = set().union(*(seen.pop(table, set()) for table in scope))
    for table, keys in _by_table(part).items():
        seen.setdefault(table, set()).update(keys)
    texts = objects_of(part)
    return texts, before - set(texts)


def _by_table(schema: Schema) -> dict[str, set[tuple[str, str]]]:
    """The keys of each table's objects: itself, its indexes, its triggers."""
    owners: dict[str, set[tuple[str, str]]] = {}
    for kind, named in schema.items():
        for name, description in named.items():
            table = name if kind in ("table", "sequence") else description.get("table")
            if kind in ("table", "sequence", "index", "trigger") and table is not None:
                owners.setdefault(table, set()).add((kind, name))
    return owners


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def read(connection: Any, exclude: Collection[str], only: Collection[str] | None = None
         ) -> Schema:
    """The schema of the connection's current database, as the module's docstring lists
    it, without the tables named in `exclude` nor their columns, indexes, constraints and
    triggers; with `only`, of the tables (or sequences) it names, their indexes and
    triggers alone. Reads only.

    Raises pymysql.Error when the catalog cannot be read, and ValueError when the
    connection has no current database.
    """
    skip = set(exclude)
    with connection.cursor(pymysql.cursors.Cursor) as cursor:

        def rows(sql: str, *params: Any) -> list[tuple]:
            column = _TABLE_COLUMN.get(sql)
            if only is not None and column is not None:
                head, order, tail = sql.partition(" ORDER BY")
                marks = ", ".join(["%s"] * len(only))
                sql = f"{head} AND {column} IN ({marks}){order}{tail}"
                params = (*params, *sorted(only))
            cursor.execute(sql, params or None)
            return list(cursor.fetchall())

        ((database, version),) = rows("SELECT DATABASE(), VERSION()")
        if database is None:
            raise ValueError("the connection has no current database to read the schema of")

        def here(table: str | None) -> bool:
            return table is not None and table not in skip

        tables: dict[str, dict[str, Any]] = {}
        sequences: list[str] = []
        for name, kind, engine, collation in rows(_TABLES, database):
            if not here(name):
                continue
            if kind == "SEQUENCE":
                sequences.append(name)
            else:
                tables[name] = {"engine": engine, "collation": collation, "columns": [],
                                "constraints": {}}
                if kind != "BASE TABLE":
                    tables[name]["table_type"] = kind  # SYSTEM VERSIONED
        for (table, name, type_, nullable, default, extra, collation,
             generation) in rows(_COLUMNS, database):
            if table in tables:
                # The server says NULL, unquoted, for no default; a string 'NULL' is quoted.
                column = {"name": name, "type": type_, "nullable": nullable == "YES",
                          "default": None if default == "NULL" else default,
                          "extra": " ".join(extra.lower().split()), "collation": collation}
                if generation:
                    column["generated"] = generation
                tables[table]["columns"].append(column)
        _add_constraints(rows, database, version, tables)

        found: dict[str, dict[str, Any]] = {"table": tables, "index": {}}
        for table, name, non_unique, type_, column, part, collation in rows(_INDEXES, database):
            if table in tables:
                index = found["index"].setdefault(f"{table}.{name}", {
                    "table": table, "unique": not int(non_unique), "type": type_,
                    "columns": []})
                index["columns"].append({"name": column, "length": part,
                                         "descending": collation == "D"})
        if only is not None:
            found["trigger"] = _triggers(rows, database, here)
            found["sequence"] = _sequences(rows, sequences)
            return Schema(found)
        own_name = _quote(database) + "."
        found["view"] = {
            name: {"definition": definition.replace(own_name, ""), "check_option": check,
                   "security": security}
            for name, definition, check, security in rows(_VIEWS, database) if here(name)
        }
        found["trigger"] = _triggers(rows, database, here)
        parameters: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for name, kind, mode, parameter, type_ in rows(_PARAMETERS, database):
            parameters.setdefault((kind, name), []).append(
                {"name": parameter, "mode": mode, "type": type_})
        for (name, kind, returns, language, body, deterministic, access,
             security) in rows(_ROUTINES, database):
            found.setdefault(kind.lower(), {})[name] = {
                "parameters": parameters.get((kind, name), []), "returns": returns,
                "language": language, "body": body, "deterministic": deterministic == "YES",
                "data_access": access, "security": security}
        found["sequence"] = _sequences(rows, sequences)
    return Schema(found)


def _triggers(rows: Any, database: str, here: Any) -> dict[str, Any]:
    return {name: {"table": table, "timing": timing, "event": event, "order": order,
                   "statement": statement}
            for name, table, timing, event, order, statement in rows(_TRIGGERS, database)
            if here(table)}


def _sequences(rows: Any, sequences: list[str]) -> dict[str, Any]:
    # The statement holds the sequence's settings, never its next value.
    return {name: {"definition": rows(f"SHOW CREATE SEQUENCE {_quote(name)}")[0][1]}
            for name in sequences}


def _add_constraints(rows: Any, database: str, version: str,
                     tables: dict[str, dict[str, Any]]) -> None:
    """Each table's constraints into its "constraints", by name: type, columns, and a
    foreign key's target (its schema only when another database's) and rules, a check's
    clause."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for table, name, kind in rows(_CONSTRAINTS, database):
        if table in tables:
            found[(table, name)] = {"type": kind.lower()}
    for table, name, column, schema, target, target_column in rows(_KEY_COLUMNS, database):
        if (constraint := found.get((table, name))) is None:
            continue
        constraint.setdefault("columns", []).append(column)
        if target is not None:
            constraint["references"] = target if schema == database else f"{schema}.{target}"
            constraint.setdefault("referenced_columns", []).append(target_column)
    for table, name, on_update, on_delete in rows(_RULES, database):
        if (constraint := found.get((table, name))) is not None:
            constraint.update(on_update=on_update, on_delete=on_delete)
    checks = _CHECKS_MARIADB if "mariadb" in version.lower() else _CHECKS_MYSQL
    for table, name, clause in rows(checks, database):
        if (constraint := found.get((table, name))) is not None:
            constraint["clause"] = clause
    for (table, name), constraint in sorted(found.items()):
        named = tables[table]["constraints"]
        # A unique key and a foreign key may share a name; neither hides the other.
        key = name if name not in named else f"{name} ({constraint['type']})"
        named[key] = constraint
