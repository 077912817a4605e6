"""Read a PostgreSQL database's schema into a Schema, from nine catalog queries (psycopg 3).

    pg_class + pg_attribute + pg_attrdef    tables and their live columns, in attnum order
                                            (the position among live columns is kept, never
                                            attnum: a dropped column leaves a gap in it)
    pg_constraint                           pg_get_constraintdef(): keys, checks, foreign
                                            keys with their target and actions, exclusions
    pg_index                                pg_get_indexdef() of indexes no constraint owns
    pg_class (views)                        pg_get_viewdef(), views and materialized views
    pg_proc                                 pg_get_functiondef(), functions and procedures
    pg_trigger                              pg_get_triggerdef(), user triggers only
    pg_sequence                             type, start, increment, bounds, cache, cycle
    pg_enum                                 labels in their order

Only the non-system schemas (not pg_catalog, information_schema, pg_toast*, pg_temp*), and
nothing an extension owns. Nothing that changes with the data is read: no row counts, no
sequence values, no storage details, no OIDs. Names are qualified with their schema
("public.users"), and the catalog functions print every name qualified (the queries run
with search_path = pg_catalog), so the text does not depend on the session's search_path.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from worker.schema.shape import Schema, canonical

# A schema of the database's own: neither the system's nor a session's temporary one.
_USER_SCHEMA = (
    "{n}.nspname <> 'information_schema' AND {n}.nspname NOT LIKE 'pg\\_%'"
)
# Not created by an extension (CREATE EXTENSION owns its objects; DROP EXTENSION drops them).
_NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend AS e WHERE e.classid = {catalog}::regclass"
    " AND e.objid = {oid} AND e.deptype = 'e')"
)

_TABLES = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relpersistence,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
       pg_get_expr(c.relpartbound, c.oid)
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMA.format(n="n")}
  AND {_NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")} /*c*/
"""

_COLUMNS = f"""
SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
LEFT JOIN pg_collation AS co ON co.oid = a.attcollation
WHERE c.relkind IN ('r', 'p') AND {_USER_SCHEMA.format(n="n")} /*c*/
ORDER BY n.nspname, c.relname, a.attnum
"""

_CONSTRAINTS = f"""
SELECT n.nspname, c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid, true),
       k.condeferrable, k.condeferred
FROM pg_constraint AS k
JOIN pg_class AS c ON c.oid = k.conrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE {_USER_SCHEMA.format(n="n")} /*c*/
"""

_INDEXES = f"""
SELECT t.oid, n.nspname, i.relname, t.relname, x.indisunique, pg_get_expr(x.indpred, x.indrelid),
       pg_get_indexdef(x.indexrelid)
FROM pg_index AS x
JOIN pg_class AS i ON i.oid = x.indexrelid
JOIN pg_class AS t ON t.oid = x.indrelid
JOIN pg_namespace AS n ON n.oid = i.relnamespace
WHERE {_USER_SCHEMA.format(n="n")}
  AND {_NOT_EXTENSION.format(catalog="'pg_class'", oid="t.oid")}
  AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k
                  WHERE k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x')) /*t*/
"""  # an index a constraint owns is described by the constraint

_VIEWS = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_viewdef(c.oid, true)
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND {_USER_SCHEMA.format(n="n")}
  AND {_NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")} /*c*/
"""

_FUNCTIONS = f"""
SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind,
       pg_get_functiondef(p.oid)
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE p.prokind IN ('f', 'p', 'w') AND {_USER_SCHEMA.format(n="n")}
  AND {_NOT_EXTENSION.format(catalog="'pg_proc'", oid="p.oid")}
"""  # aggregates ('a') have no pg_get_functiondef()

_TRIGGERS = f"""
SELECT c.oid, n.nspname, c.relname, g.tgname, pg_get_triggerdef(g.oid, true), g.tgenabled
FROM pg_trigger AS g
JOIN pg_class AS c ON c.oid = g.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE NOT g.tgisinternal AND {_USER_SCHEMA.format(n="n")} /*c*/
"""

_SEQUENCES = f"""
SELECT c.oid, n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       s.seqmin, s.seqmax, s.seqcache, s.seqcycle, o.relnamespace::regnamespace::text,
       o.relname, a.attname
FROM pg_sequence AS s
JOIN pg_class AS c ON c.oid = s.seqrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_depend AS d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
LEFT JOIN pg_class AS o ON o.oid = d.refobjid
LEFT JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE {_USER_SCHEMA.format(n="n")}
  AND {_NOT_EXTENSION.format(catalog="'pg_class'", oid="c.oid")} /*c*/
"""  # never last_value: nextval() moves it, and only data changes call nextval()

_ENUMS = f"""
SELECT n.nspname, t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
FROM pg_type AS t
JOIN pg_namespace AS n ON n.oid = t.typnamespace
JOIN pg_enum AS e ON e.enumtypid = t.oid
WHERE {_USER_SCHEMA.format(n="n")}
  AND {_NOT_EXTENSION.format(catalog="'pg_type'", oid="t.oid")}
GROUP BY n.nspname, t.typname
"""

_CONSTRAINT_TYPES = {"p": "primary key", "u": "unique", "c": "check", "f": "foreign key",
                     "x": "exclusion", "t": "trigger"}
_IDENTITY = {"a": "always", "d": "by default"}
_GENERATED = {"s": "stored"}
_TRIGGER_ENABLED = {"O": "origin", "D": "disabled", "R": "replica", "A": "always"}
_FUNCTION_KINDS = {"f": "function", "p": "procedure", "w": "function"}


def catalog_stamp(connection: Any) -> None:
    """None: PostgreSQL has no cheap number that every change to the catalog moves (no
    schema_version, and pg_class's xmin values move with VACUUM and ANALYZE too), so a
    caller must read() to know what another session did; catalog_changed() knows what
    this session's transaction did."""
    return None


# The catalogs read() reads, in the order of the stamp's counts of updated rows.
_CATALOGS = ("pg_class", "pg_attribute", "pg_attrdef", "pg_constraint", "pg_index",
             "pg_trigger", "pg_rewrite", "pg_sequence", "pg_proc", "pg_type", "pg_enum",
             "pg_namespace")
# The rows this session wrote to those catalogs, of them the rows it deleted, and the rows
# it updated in each, not yet reported to the statistics system, which it does only
# between transactions: inside one, the counts move with each catalog write. NULL
# (no stamp) with the counts off.
_CATALOG_WRITES = f"""
SELECT CASE WHEN pg_catalog.current_setting('track_counts')::boolean
            THEN sum(pg_catalog.pg_stat_get_xact_tuples_inserted(c)
                     + pg_catalog.pg_stat_get_xact_tuples_updated(c)
                     + pg_catalog.pg_stat_get_xact_tuples_deleted(c))::bigint END,
       sum(pg_catalog.pg_stat_get_xact_tuples_deleted(c))::bigint,
       array_agg(pg_catalog.pg_stat_get_xact_tuples_updated(c) ORDER BY n)
FROM unnest('{{{", ".join(_CATALOGS)}}}'::pg_catalog.regclass[]) WITH ORDINALITY AS u(c, n)
"""


def catalog_changed(connection: Any, previous: Any) -> tuple[bool, Any]:
    """Whether this session may have changed the schema since the stamp was `previous`,
    taken in the same transaction, and the stamp now: the counts of catalog rows written,
    deleted and updated in each catalog (not what other sessions did)."""
    writes, deletes, updates = connection.execute(_CATALOG_WRITES).fetchone()
    stamp = (writes, deletes, tuple(updates))
    return writes is None or previous is None or stamp != previous, stamp


# catalog_stamp() and catalog_changed() see what another session did: no.
STAMP_SEES_OTHERS = False
READS_IN_PART = True  # read_objects() reads again what this transaction wrote

# Where a step's rows are, in each catalog: a row it inserted has an oid above every oid
# there was at the last read (the OID counter only grows, but for its wraparound after four
# billion objects, which can hide a new object until the next whole read); a row it updated
# has its transaction's xmin (age() of ours, or of a savepoint's, is 0 or below), which
# takes reading the whole catalog, so only a catalog the step updated rows of is read so.
# Each gives the relation the row belongs to; pg_attribute's inserts belong to a new
# relation, or to one whose pg_class row ADD COLUMN updated.
# Of each catalog whose rows belong to a relation: the column naming that relation, and
# the column holding a new row's oid (None: its rows have none of their own).
_RELATION_ROWS = {
    "pg_class": ("oid", "oid"),
    "pg_attribute": ("attrelid", None),
    "pg_attrdef": ("adrelid", "oid"),
    "pg_constraint": ("conrelid", "oid"),
    "pg_index": ("indrelid", "indexrelid"),
    "pg_trigger": ("tgrelid", "oid"),
    "pg_rewrite": ("ev_class", "oid"),
    "pg_sequence": ("seqrelid", "seqrelid"),
}
# Of each catalog of functions and enums: which of its rows read() reads.
_TYPE_ROWS = {"pg_proc": "true", "pg_type": "typtype = 'e'", "pg_enum": "true"}
_UPDATED = "age(xmin) <= 0"
# The highest oid of every catalog with oids: the `last` of the next step.
_LAST_OID = "SELECT GREATEST({})".format(", ".join(
    f"(SELECT max(oid) FROM {catalog})"
    for catalog in [*(c for c, (_, key) in _RELATION_ROWS.items() if key == "oid"),
                    *_TYPE_ROWS]))
_KINDS = "SELECT oid, relkind FROM pg_class WHERE oid = ANY(%(scope)s)"
# The relations whose description names one of %(scope)s: views that read it, tables
# whose foreign keys point at it, sequences it owns, triggers on it; with their kind.
_DEPENDENTS = """
SELECT c.oid, c.relkind FROM pg_class AS c WHERE c.oid IN (
SELECT CASE d.classid WHEN 'pg_class'::regclass THEN d.objid
                      WHEN 'pg_rewrite'::regclass THEN r.ev_class
                      WHEN 'pg_constraint'::regclass THEN k.conrelid
                      WHEN 'pg_trigger'::regclass THEN g.tgrelid END
FROM pg_depend AS d
LEFT JOIN pg_rewrite AS r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
LEFT JOIN pg_constraint AS k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid
LEFT JOIN pg_trigger AS g ON d.classid = 'pg_trigger'::regclass AND g.oid = d.objid
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY(%(scope)s))
"""


def _written_rows(catalog: str, updated: bool) -> str | None:
    """The query of the relations a step's rows of `catalog` belong to: rows it updated
    there, or only its new rows; None when new rows there always come with new rows of
    another catalog (pg_attribute's with pg_class's)."""
    relation, key = _RELATION_ROWS[catalog]
    if updated:
        return f"SELECT {relation} FROM {catalog} WHERE {_UPDATED}"
    return None if key is None else f"SELECT {relation} FROM {catalog} WHERE {key} > %(last)s"


def _types_written(updated: bool) -> str:
    """Whether a step wrote a function or an enum: any row it updated in those catalogs,
    or only new ones."""
    written = _UPDATED if updated else "oid > %(last)s"
    return "SELECT " + " OR ".join(
        f"EXISTS (SELECT 1 FROM {catalog} WHERE {rows} AND {written})"
        for catalog, rows in _TYPE_ROWS.items())


def read(connection: Any, exclude: Collection[str]) -> Schema:
    """The schema of the connection's database, as described in the module's docstring,
    without the tables named in `exclude` (a bare name matches that table in any schema,
    "schema.table" only there) nor the constraints, indexes, triggers and owned sequences
    of those tables. Reads only, in a transaction (a savepoint, inside the caller's) that
    is rolled back, so the session is left as it was.

    Raises psycopg.Error when the catalog cannot be read.
    """
    found, _ = _read(connection, exclude, None, True)
    return Schema(found)


class _Seen:
    """What read_objects() saw: the keys each relation's rows gave, by its oid, the
    functions' and enums' keys, and the highest oid there was."""

    def __init__(self) -> None:
        self.by_relation: dict[int, set[tuple[str, str]]] = {}
        self.types: set[tuple[str, str]] = set()
        self.last = 0


def read_objects(connection: Any, exclude: Collection[str], memo: dict[Any, Any],
                 scope: Any = None
                 ) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]] | None]:
    """(kind, name) -> canonical description of the objects read() gives, and the objects
    gone: with no `scope`, of every object, and None for what is gone (whatever is not
    there); with `scope`, two stamps of catalog_changed() taken in this transaction (at
    the step's start, and now), of the objects on the relations whose catalog rows the
    transaction wrote since (found by their xmin), those whose descriptions name them,
    and the functions and enums when one of them was written, with those of them `memo`
    saw before that are gone.

    A transaction that deleted catalog rows since the stamp (a DROP) is read whole: what
    it dropped left no row to find. `memo` keeps what earlier calls saw, by relation."""
    seen = memo.get("seen")
    if scope is not None and seen is not None:
        (_, deleted_before, updated_before), (writes, deleted, updated) = scope
        if writes is not None and deleted == deleted_before:
            changed = {catalog for catalog, before, now
                       in zip(_CATALOGS, updated_before, updated, strict=True) if now != before}
            return _read_part(connection, exclude, seen, changed)
    fresh = _Seen()
    found, owners = _read(connection, exclude, None, True)
    _note(fresh, owners)
    fresh.last = connection.execute(_LAST_OID).fetchone()[0] or 0
    memo["seen"] = fresh
    return {key: canonical(found[key[0]][key[1]]) for key in owners}, None


def _read_part(connection: Any, exclude: Collection[str], seen: _Seen, updated: set[str]
               ) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
    """read_objects() of what the step wrote: its new rows in every catalog, and its
    updated rows in the catalogs of `updated`."""
    last = {"last": seen.last}
    with connection.cursor() as cursor:
        touched: set[int] = set()
        for catalog in _RELATION_ROWS:
            sql = _written_rows(catalog, catalog in updated)
            if sql is not None:
                touched.update(oid for (oid,) in cursor.execute(sql, last) if oid)
        types = bool(cursor.execute(_types_written(bool(updated & set(_TYPE_ROWS))),
                                    last).fetchone()[0])
        kinds = dict(cursor.execute(_KINDS, {"scope": sorted(touched)}).fetchall())
        # What names a relation that was there before may have to say its new name.
        named = [oid for oid in kinds if oid in seen.by_relation]
        while named:
            dependents = {oid: kind for oid, kind
                          in cursor.execute(_DEPENDENTS, {"scope": named}) if oid not in kinds}
            kinds.update(dependents)
            named = list(dependents)
    scope = sorted(kinds)
    found, owners = _read(connection, exclude, scope, types, set(kinds.values()))
    before = set().union(*(seen.by_relation.pop(oid, set()) for oid in scope))
    if types:
        before |= seen.types
        seen.types = set()
    _note(seen, owners)
    seen.last = connection.execute(_LAST_OID).fetchone()[0] or 0
    texts = {key: canonical(found[key[0]][key[1]]) for key in owners}
    return texts, before - set(texts)


def _note(seen: _Seen, owners: dict[tuple[str, str], int | None]) -> None:
    for key, oid in owners.items():
        if oid is None:
            seen.types.add(key)
        else:
            seen.by_relation.setdefault(oid, set()).add(key)


def _read(connection: Any, exclude: Collection[str], scope: list[int] | None, types: bool,
          relkinds: Collection[str] = "rpvmS"
          ) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], int | None]]:
    """The descriptions read() gives, by kind and name, of the relations of `scope` (all
    when None) and, with `types`, of the functions and enums; and the oid of the relation
    each object was read from (None for a function or an enum). Views and sequences are
    read only when `relkinds` (pg_class.relkind) has theirs."""
    skip = set(exclude)

    def excluded(schema: str, table: str | None) -> bool:
        return table is not None and (table in skip or f"{schema}.{table}" in skip)

    owners: dict[tuple[str, str], int | None] = {}

    def owned(kind: str, name: str, oid: int | None) -> str:
        owners[(kind, name)] = oid
        return name

    with connection.transaction(force_rollback=True), connection.cursor() as cursor:
        # Every name printed qualified, whatever search_path the caller's session has.
        cursor.execute("SELECT set_config('search_path', 'pg_catalog', true)")

        def rows(sql: str) -> list[tuple]:
            """The rows of one query, of the relations of `scope` when it has one."""
            params = None
            for alias in ("c", "t"):
                marker = f"/*{alias}*/"
                if scope is None or marker not in sql:
                    sql = sql.replace(marker, "")
                else:
                    params = {"scope": scope}
                    sql = sql.replace("%", "%%").replace(
                        marker, f"AND {alias}.oid = ANY(%(scope)s)")
            cursor.execute(sql, params)
            return cursor.fetchall()

        tables: dict[str, dict[str, Any]] = {}
        for oid, schema, name, kind, persistence, key, bound in rows(_TABLES):
            if not excluded(schema, name):
                table: dict[str, Any] = {"columns": [], "constraints": {}}
                if kind == "p":
                    table["partition_key"] = key
                if bound is not None:
                    table["partition_bound"] = bound
                if persistence == "u":
                    table["unlogged"] = True
                tables[owned("table", f"{schema}.{name}", oid)] = table
        for (schema, name, column, type_, notnull, default, identity, generated,
             collation) in rows(_COLUMNS):
            if (table := tables.get(f"{schema}.{name}")) is None:
                continue
            described = {"name": column, "type": type_, "nullable": not notnull,
                         "default": default}
            if identity:
                described["identity"] = _IDENTITY.get(identity, identity)
            if generated:
                described["generated"] = _GENERATED.get(generated, generated)
            if collation is not None:
                described["collation"] = collation
            table["columns"].append(described)
        for (schema, name, constraint, kind, definition, deferrable,
             deferred) in rows(_CONSTRAINTS):
            if (table := tables.get(f"{schema}.{name}")) is not None:
                described = {"type": _CONSTRAINT_TYPES.get(kind, kind),
                             "definition": definition}
                if deferrable:
                    described["deferrable"] = "initially deferred" if deferred else "immediate"
                table["constraints"][constraint] = described

        found: dict[str, dict[str, Any]] = {"table": tables}
        found["index"] = {
            owned("index", f"{schema}.{name}", oid): {
                "table": f"{schema}.{table}", "unique": unique, "predicate": predicate,
                "definition": definition}
            for oid, schema, name, table, unique, predicate, definition in rows(_INDEXES)
            if not excluded(schema, table)
        }
        found["view"], found["materialized view"] = {}, {}
        for oid, schema, name, kind, definition in (
                rows(_VIEWS) if {"v", "m"} & set(relkinds) else ()):
            if not excluded(schema, name):
                kind_name = "view" if kind == "v" else "materialized view"
                found[kind_name][owned(kind_name, f"{schema}.{name}", oid)] = {
                    "definition": definition}
        found["trigger"] = {
            owned("trigger", f"{schema}.{table}.{name}", oid): {
                "table": f"{schema}.{table}", "definition": definition,
                "enabled": _TRIGGER_ENABLED.get(enabled, enabled)}
            for oid, schema, table, name, definition, enabled in rows(_TRIGGERS)
            if not excluded(schema, table)
        }
        found["sequence"] = {
            owned("sequence", f"{schema}.{name}", oid): {
                "type": type_, "start": start, "increment": increment, "min": low,
                "max": high, "cache": cache, "cycle": cycle,
                "owned_by": None if owner is None else f"{owner_schema}.{owner}.{column}"}
            for (oid, schema, name, type_, start, increment, low, high, cache, cycle,
                 owner_schema, owner, column) in (rows(_SEQUENCES) if "S" in relkinds else ())
            if not excluded(owner_schema, owner) and not excluded(schema, name)
        }
        if types:
            found["function"] = {
                owned("function", f"{schema}.{name}({arguments})", None): {
                    "kind": _FUNCTION_KINDS[kind], "definition": definition}
                for schema, name, arguments, kind, definition in rows(_FUNCTIONS)
            }
            found["enum"] = {owned("enum", f"{schema}.{name}", None): {"labels": list(labels)}
                             for schema, name, labels in rows(_ENUMS)}
    return found, owners
