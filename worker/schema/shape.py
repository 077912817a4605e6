"""The managed schema as a record: canonical, hashable, storable, and comparable in words.

    reader (sqlite.py, postgres.py, mariadb.py)
        -> Schema            kind -> name -> description ("table" -> "users" -> {...})
        -> fingerprint()     "schema-sha256:<hex>" of its objects' digests (see below)
        -> to_json()         bytes to store; from_json() gives the equal Schema back
        -> differences()     what a live Schema has that a recorded one has not, in words

A description is plain JSON data (objects, arrays, strings, numbers, booleans, null). A
table's description holds "columns", a list in the table's order of objects with at least
"name", "type", "nullable" and "default", and "constraints", an object from constraint name
to its description; readers may add other fields to any description. Indexes, views,
triggers, sequences, enums and functions are kinds of their own, each reader naming them as
its backend scopes them (a MariaDB index belongs to a table: "posts.posts_user_id").

The fingerprint is built from one digest per object, sha256 of its kind, name and canonical
description, added together modulo 2**256, so a record kept object by object (see
recorded.py) changes its fingerprint with the objects a step changed, without hashing the
others again. An adversary could make two schemas share it (a sum is not a collision-
resistant hash); what it guards against is drift made by people, not an attack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

FORMAT = 1  # the version of to_json()'s layout; from_json() refuses any other
FINGERPRINT_PREFIX = "schema-sha256:"
SHORT_VALUE = 60  # values longer than this are named, not quoted, in a difference's text


def _freeze(value: Any) -> Any:
    """`value` as immutable JSON data: objects as read-only mappings, arrays as tuples.

    Raises TypeError for anything JSON cannot hold."""
    if isinstance(value, Mapping):
        items = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"a description's keys are strings, not {key!r}")
            items[key] = _freeze(item)
        return MappingProxyType(items)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(f"a description holds JSON data, not {type(value).__name__}")


def _thaw(value: Any) -> Any:
    """The plain dicts and lists json.dumps() takes, from _freeze()'s form."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


class Schema(Mapping[str, Mapping[str, Any]]):
    """A read-only mapping: object kind -> object name -> description (JSON data).

    Two schemas are equal when their canonical JSON is; kinds with no objects are dropped,
    so a reader need not say which kinds its backend lacks.
    """

    __slots__ = ("_objects",)

    def __init__(self, objects: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Raises TypeError when a description is not JSON data."""
        frozen = _freeze({kind: named for kind, named in (objects or {}).items() if named})
        self._objects: Mapping[str, Mapping[str, Any]] = frozen

    def __getitem__(self, kind: str) -> Mapping[str, Any]:
        return self._objects[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return to_json(self) == to_json(other)

    def __hash__(self) -> int:
        return hash(to_json(self))

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}: {len(self[kind])}" for kind in sorted(self))
        return f"Schema({counts})"


def to_json(schema: Schema) -> bytes:
    """The canonical encoding: UTF-8 JSON, keys sorted, no whitespace; equal schemas give
    equal bytes."""
    document = {"format": FORMAT, "objects": _thaw(schema._objects)}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def from_json(data: bytes) -> Schema:
    """The Schema to_json() encoded.

    Raises ValueError when `data` is not JSON in to_json()'s layout (another format
    version included).
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"a stored schema is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"a stored schema is not in format {FORMAT}")
    objects = document.get("objects")
    if not isinstance(objects, dict) or not all(isinstance(v, dict) for v in objects.values()):
        raise ValueError("a stored schema's objects are not kind -> name -> description")
    return Schema(objects)


DIGEST_MODULUS = 1 << 256


def canonical(description: Any) -> str:
    """One object's description as canonical JSON text: keys sorted, no whitespace."""
    return json.dumps(_thaw(description), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def object_digest(kind: str, name: str, text: str) -> int:
    """The digest of one object (its description as canonical() gives it), as a number."""
    data = json.dumps([FORMAT, kind, name], ensure_ascii=False).encode() + b"\n" + text.encode()
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def fingerprint_of(total: int) -> str:
    """"schema-sha256:<hex>" for the sum of a schema's object digests."""
    return FINGERPRINT_PREFIX + hashlib.sha256(
        (total % DIGEST_MODULUS).to_bytes(32, "big")).hexdigest()


def objects_of(schema: Schema) -> dict[tuple[str, str], str]:
    """(kind, name) -> canonical() text, for every object of `schema`."""
    return {(kind, name): canonical(description)
            for kind, named in schema.items() for name, description in named.items()}


def schema_of(objects: Mapping[tuple[str, str], str]) -> Schema:
    """The Schema objects_of() was taken from."""
    found: dict[str, dict[str, Any]] = {}
    for (kind, name), text in objects.items():
        found.setdefault(kind, {})[name] = json.loads(text)
    return Schema(found)


def fingerprint(schema: Schema) -> str:
    """"schema-sha256:" and the hex SHA-256 of the sum of its objects' digests; equal
    schemas, however they were read, have equal fingerprints."""
    return fingerprint_of(sum(object_digest(kind, name, text)
                              for (kind, name), text in objects_of(schema).items()))


@dataclass(frozen=True)
class Difference:
    """One way a live schema differs from a recorded one.

    kind: "added", "removed" or "changed" (as seen from the recorded schema);
    object_kind: "table", "column", "constraint", "index", "view", ...;
    name: the object's qualified name ("users.email"); text: the whole sentence.
    """

    kind: str
    object_kind: str
    name: str
    text: str


def differences(recorded: Schema, live: Schema) -> list[Difference]:
    """Every difference between the two schemas, kinds and names in sorted order; inside a
    table, its columns first (in the live table's order, removed ones after), then its
    constraints, then its other fields. An empty list when the schemas are equal."""
    found: list[Difference] = []
    for kind in sorted(set(recorded) | set(live)):
        before, after = recorded.get(kind, {}), live.get(kind, {})
        for name in sorted(set(before) | set(after)):
            if name not in after:
                found.append(_whole("removed", kind, name))
            elif name not in before:
                found.append(_whole("added", kind, name))
            elif before[name] != after[name]:
                if kind == "table":
                    found.extend(_table_differences(name, before[name], after[name]))
                else:
                    found.append(_changed(kind, name, before[name], after[name]))
    return found


def _whole(how: str, kind: str, name: str) -> Difference:
    return Difference(how, kind, name, f"{kind} {name} {how}")


def _changed(kind: str, name: str, before: Any, after: Any, skip: tuple[str, ...] = ()
             ) -> Difference:
    return Difference("changed", kind, name,
                      f"{kind} {name} changed: {_fields_changed(before, after, skip)}")


def _fields_changed(before: Any, after: Any, skip: tuple[str, ...] = ()) -> str:
    """"type varchar(100) -> text, nullable true -> false": each field that differs."""
    if not (isinstance(before, Mapping) and isinstance(after, Mapping)):
        return _change("value", before, after)
    keys = sorted((set(before) | set(after)) - set(skip))
    return ", ".join(_change(key, before.get(key), after.get(key))
                     for key in keys if before.get(key) != after.get(key))


def _change(field: str, before: Any, after: Any) -> str:
    old, new = _show(before), _show(after)
    if len(old) > SHORT_VALUE or len(new) > SHORT_VALUE:
        return f"{field} differs"
    return f"{field} {old} -> {new}"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(_thaw(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _column_summary(column: Mapping[str, Any]) -> str:
    """"text, null" or "integer, not null, default 0"."""
    parts = [str(column.get("type")), "null" if column.get("nullable") else "not null"]
    if column.get("default") is not None:
        parts.append(f"default {column['default']}")
    return ", ".join(parts)


def _table_differences(table: str, before: Mapping[str, Any], after: Mapping[str, Any]
                       ) -> list[Difference]:
    found: list[Difference] = []
    old_columns = {column["name"]: column for column in before.get("columns", ())}
    new_columns = {column["name"]: column for column in after.get("columns", ())}
    for name, column in new_columns.items():
        qualified = f"{table}.{name}"
        if name not in old_columns:
            found.append(Difference("added", "column", qualified,
                                    f"column {qualified} added ({_column_summary(column)})"))
        elif old_columns[name] != column:
            found.append(_changed("column", qualified, old_columns[name], column))
    for name, column in old_columns.items():
        if name not in new_columns:
            qualified = f"{table}.{name}"
            found.append(Difference("removed", "column", qualified,
                                    f"column {qualified} removed ({_column_summary(column)})"))
    kept_before = [name for name in old_columns if name in new_columns]
    kept_after = [name for name in new_columns if name in old_columns]
    if kept_before != kept_after:
        found.append(Difference(
            "changed", "table", table,
            f"table {table} changed: column order {', '.join(kept_before)} -> "
            f"{', '.join(kept_after)}"))

    old_constraints = before.get("constraints", {})
    new_constraints = after.get("constraints", {})
    for name in sorted(set(old_constraints) | set(new_constraints)):
        qualified = f"{table}.{name}"
        if name not in new_constraints:
            found.append(_whole("removed", "constraint", qualified))
        elif name not in old_constraints:
            found.append(_whole("added", "constraint", qualified))
        elif old_constraints[name] != new_constraints[name]:
            found.append(_changed("constraint", qualified, old_constraints[name],
                                  new_constraints[name]))

    # A field such as SQLite's whole "definition" changes with any column or constraint;
    # it is worth a sentence of its own only when nothing more precise was said.
    rest = ("columns", "constraints")
    if not found and _fields_changed(before, after, rest):
        found.append(_changed("table", table, before, after, rest))
    return found
