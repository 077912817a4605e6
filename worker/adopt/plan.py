"""Match what another tool applied against the migration files here: what adopt records.

    plan_adoption(store, tool, migrations)
        find the tool's table (refused: none there, or another shape)
        tool.read(rows)  ->  Reading(applied, covers, problems)
        match            ->  Plan(adoptions)   or AdoptRefused naming every problem:
                             the tool's state not clean (dirty, failed rows), a version it
                             applied that no file here has (missing), a file here it never
                             applied below one it did (out of order)
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from broker.errors import PRECONDITION_FAILED
from worker.adopt.reading import Applied, Problem, Reading
from worker.adopt.tools import recognize
from worker.catalog import Migration
from worker.stores.interface import MomentaryRefusal

if TYPE_CHECKING:
    from worker.stores.interface import Store


class AdoptRefused(MomentaryRefusal):
    """Error 22: adopt found something wrong, so nothing was recorded and the other tool's
    table is as it was. Not stored for resends: it depends on the moment, and a resend that
    finds the same state is refused the same way."""

    def __init__(self, tool: str, text: str, problems: list[Problem] | None = None) -> None:
        extra = {} if problems is None else {"problems": [p.entry() for p in problems]}
        super().__init__(PRECONDITION_FAILED,
                         f"adopt from {tool} refused, so nothing was recorded: {text}", **extra)


class Adoption(NamedTuple):
    """A migration file here to record as applied, and when the tool applied it."""

    migration: Migration
    applied_at: str | None  # ISO 8601 in UTC; None when the tool keeps no time

    def entry(self) -> dict[str, object]:
        return self.migration.entry(status="adopted", applied_at=self.applied_at)


class Plan(NamedTuple):
    table: str  # the tool's table, as the store names it ("public.schema_migrations")
    adoptions: list[Adoption]  # in version order


def plan_adoption(store: Store, tool: ModuleType, migrations: list[Migration]) -> Plan:
    """What adopting from `tool` records, read from its table through `store` (never
    written). Raises AdoptRefused when its table is not there or is not the tool's, or
    when matching it finds problems (see match)."""
    table = store.label(tool.TABLE)
    # (Where our tracking table has the tool's table's name, store.applied() refused
    # already: see ForeignTable.)
    columns = store.columns_of(tool.TABLE)
    if columns is None:
        raise AdoptRefused(tool.NAME, f"{table} does not exist, so {tool.NAME} applied"
                                      " nothing here")
    if not tool.recognizes(frozenset(column.lower() for column in columns)):
        other = recognize(tool.TABLE, columns)
        hint = "" if other is None else f"; it is {other.NAME}'s: adopt --from {other.NAME}"
        raise AdoptRefused(tool.NAME, (
            f"{table} is not {tool.NAME}'s table {tool.SHAPE}: its columns are"
            f" {', '.join(columns)}{hint}"))
    reading = tool.read(lambda query: store.foreign_rows(tool.TABLE, query))
    return Plan(table, match(tool.NAME, table, reading, migrations))


def match(tool: str, table: str, reading: Reading, migrations: list[Migration]
          ) -> list[Adoption]:
    """Each migration file the tool applied, with its time; raises AdoptRefused naming
    every problem of `reading` and every version that does not match (a version it applied
    with no file here, a file here it never applied below the newest it did)."""
    files = {m.version: m for m in migrations}
    mismatches = []
    applied: dict[int, Applied] = {entry.version: entry for entry in reading.applied}
    for entry in reading.applied:
        if entry.version not in files:
            mismatches.append(Problem("missing", entry.version, (
                f"{entry.said} is applied in {tool}'s {table}, but no migration file here"
                " has that version")))
    covers = reading.covers
    newest = max([*applied, covers.version if covers else 0])
    adoptions = []
    for migration in migrations:
        entry = applied.get(migration.version)
        if entry is None and covers is not None and migration.version <= covers.version:
            entry = covers
        if entry is not None:
            adoptions.append(Adoption(migration, entry.applied_at))
        elif migration.version < newest:
            mismatches.append(Problem("out_of_order", migration.version, (
                f"migration {migration.version} {migration.name} here was never applied by"
                f" {tool} although version {newest} was (out of order)")))
    # The tool's own state first, then what does not match, in version order.
    problems = [*reading.problems, *sorted(mismatches, key=lambda p: p.version or 0)]
    if problems:
        raise AdoptRefused(tool, "; ".join(p.text for p in problems), problems)
    return adoptions
