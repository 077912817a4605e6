"""The schema as the tracking tables record it: a row per step, kept up to date object by
object, and compared with the live catalog for drift.

    step's transaction:  mark = store.schema_mark()        before the migration's code
                         ... the step, its tracking row and its history event ...
                         store.record_schema(mark)         RecordedSchema.record
    validate, migrate:   store.schema_drift()              RecordedSchema.drift

Each row of the schemas table holds the fingerprint of the managed schema after one
history event and the objects that event changed (their descriptions, or null for one
that is gone): the rows folded in order give the latest recorded schema, which is what
drift is described against, and no row repeats an object it did not change. A step
whose catalog stamp did not move since its mark (SQLite: PRAGMA schema_version; a server:
what this session's statements can have changed) gets a row without reading the catalog.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from broker.errors import TEMPORARILY_UNAVAILABLE, ReplyError
from worker.schema.shape import (
    Difference,
    canonical,
    differences,
    fingerprint_of,
    object_digest,
    objects_of,
    schema_of,
)

Key = tuple[str, str]  # (kind, name)
DRIFT_TRIES = 10  # reads of the catalog drift() makes while steps commit beside it


class Reader(Protocol):
    """What a backend's module in worker/schema gives (sqlite.py, postgres.py, mariadb.py)."""

    STAMP_SEES_OTHERS: bool  # its stamp moves with what other sessions change
    READS_IN_PART: bool  # it has read_objects(); else read() gives the whole schema

    def catalog_stamp(self, connection: Any) -> Any: ...

    def catalog_changed(self, connection: Any, previous: Any) -> tuple[bool, Any]: ...

    def read(self, connection: Any, exclude: Any) -> Any: ...

    def read_objects(self, connection: Any, exclude: Any, memo: dict[Any, Any],
                     scope: Any = None) -> tuple[dict[Key, str], set[Key] | None]: ...


class SchemaRows(Protocol):
    """What a store gives the record: its schemas table, and a way to read the catalog."""

    def schema_reading(self) -> tuple[Reader, Any, Any]: ...

    def schema_scope(self, stamps: Any) -> Any:
        """What the reader needs to read only what the step changed, given the stamps at
        its mark and now (SQLite: the tables its authorizer saw; PostgreSQL: the stamps
        themselves), or None: read everything."""

    def schema_rows(self) -> tuple[int, list[str]]:
        """The newest row's seq (0: none), and the changes of every row that has any,
        oldest first."""

    def newest_schema_seq(self) -> int:
        """The newest row's seq; 0 when there is none."""

    def add_schema_row(self, fingerprint: str, changes: str) -> int: ...


class RecordedSchema:
    """The latest recorded schema of one store's database, as (kind, name) -> canonical
    description, with its fingerprint kept as a sum of digests (see shape.py)."""

    def __init__(self) -> None:
        self._objects: dict[Key, str] = {}
        self._digests: dict[Key, int] = {}
        self._total = 0
        self._seq: int | None = None  # the newest row folded in; None: not loaded yet
        self._memo: dict[Any, Any] = {}  # the reader's, across reads (SQLite's rows)
        # SQLite's stamp when the recorded schema was last seen equal to the live one.
        self._clean_stamp: Any = None

    def mark(self, store: SchemaRows) -> Any:
        """The catalog's stamp now, for record(): taken in a step's transaction before its
        migration code runs."""
        reader, connection, _ = store.schema_reading()
        return reader.catalog_changed(connection, None)[1]

    def record(self, store: SchemaRows, since: Any = None) -> None:
        """Add the row of the history event just recorded, in its transaction: the catalog
        is read when its stamp moved since `since` (a mark), or always when `since` is
        None (baseline, adopt, resolve, a migration run outside a transaction)."""
        self._current(store)
        if not self._seq:
            since = None  # the first row: the whole schema, whatever the step changed
        reader, connection, exclude = store.schema_reading()
        changes = "[]"
        moved, stamp = (True, None) if since is None else reader.catalog_changed(
            connection, since)
        if moved:
            # Only what the step touched; on SQLite, only when the record was the live
            # schema at its mark (nothing else writes meanwhile: the step holds the write
            # lock), as a VACUUM by hand renumbers what read_objects() remembers.
            scope = store.schema_scope((since, stamp))
            clean = since is not None and (
                since == self._clean_stamp or not reader.STAMP_SEES_OTHERS)
            if since is None:
                stamp = reader.catalog_stamp(connection)
            live, gone = self._read(reader, connection, exclude, scope if clean else None)
            changes = self._sync(live, gone)
            if reader.STAMP_SEES_OTHERS:
                self._clean_stamp = stamp  # reading moved nothing
        self._seq = store.add_schema_row(self.fingerprint(), changes)

    def drift(self, store: SchemaRows) -> list[Difference] | None:
        """How the live schema differs from the recorded one: [] when it does not, None
        when nothing is recorded yet (a database no step of this version recorded).

        A reader's session sees each commit as it lands, so a step that commits between
        the record's read and the catalog's would look like drift: the catalog is read
        again until no row was added meanwhile (a step's row commits with its changes).
        Raises ReplyError(TEMPORARILY_UNAVAILABLE) when steps kept committing."""
        for _ in range(DRIFT_TRIES):
            self._current(store)
            if not self._seq:
                return None
            reader, connection, exclude = store.schema_reading()
            if reader.STAMP_SEES_OTHERS and self._clean_stamp is not None and (
                    reader.catalog_stamp(connection) == self._clean_stamp):
                return []
            live, _ = self._read(reader, connection, exclude, None)
            if store.newest_schema_seq() == self._seq:
                break
        else:
            raise ReplyError(TEMPORARILY_UNAVAILABLE,
                             "migrations kept committing while the schema was compared with"
                             " the recorded one; try again")
        total = sum(self._digest(key, text) for key, text in live.items())
        if fingerprint_of(total) == self.fingerprint():
            if reader.STAMP_SEES_OTHERS:
                self._clean_stamp = reader.catalog_stamp(connection)
            return []
        return differences(schema_of(self._objects), schema_of(live))

    def _read(self, reader: Reader, connection: Any, exclude: Any, scope: Any
              ) -> tuple[dict[Key, str], set[Key] | None]:
        """The live objects (of `scope`, when the reader reads in part), and those gone
        (None: whatever the record has that is not there)."""
        if reader.READS_IN_PART:
            return reader.read_objects(connection, exclude, self._memo, scope)
        return objects_of(reader.read(connection, exclude)), None

    def fingerprint(self) -> str:
        return fingerprint_of(self._total)

    def _digest(self, key: Key, text: str) -> int:
        known = self._digests.get(key)
        if known is not None and self._objects.get(key) == text:
            return known
        return object_digest(key[0], key[1], text)

    def _current(self, store: SchemaRows) -> None:
        """Fold the stored rows again when the newest is not the one this record added
        last: another worker wrote since, or the transaction of the last one rolled back."""
        if self._seq is not None and store.newest_schema_seq() == self._seq:
            return
        newest, rows = store.schema_rows()
        self._objects, self._digests, self._total = {}, {}, 0
        # What the reader remembers of the live catalog may be of a rolled-back step.
        self._memo, self._clean_stamp = {}, None
        for changes in rows:
            self._apply((kind, name, None if description is None else canonical(description))
                        for kind, name, description in json.loads(changes))
        self._seq = newest

    def _sync(self, live: dict[Key, str], gone: set[Key] | None) -> str:
        """Make the record `live` (all of it when `gone` is None, else the objects read
        and the ones gone); the changes, as a row holds them: JSON, [[kind, name,
        description or null], ...] in order, the descriptions' canonical text as it is."""
        changed = [(key, text) for key, text in live.items() if self._objects.get(key) != text]
        if gone is None:
            gone = {key for key in self._objects if key not in live}
        removed = [(key, None) for key in sorted(gone) if key in self._objects]
        found = [(kind, name, text) for (kind, name), text in [*changed, *removed]]
        self._apply(found)
        return "[" + ",".join(
            f"[{json.dumps(kind)},{json.dumps(name)},{'null' if text is None else text}]"
            for kind, name, text in sorted(found, key=lambda item: item[:2])) + "]"

    def _apply(self, changes: Iterable[tuple[str, str, str | None]]) -> None:
        for kind, name, text in changes:
            key = (kind, name)
            self._total -= self._digests.pop(key, 0)
            self._objects.pop(key, None)
            if text is not None:
                digest = object_digest(kind, name, text)
                self._objects[key], self._digests[key] = text, digest
                self._total += digest
