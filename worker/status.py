"""A kept status reply patched with the tracking rows changed since, instead of read anew.

    full status:  every row, file and partial -> entries, and a StatusBasis (the history's
                  newest event, the rows' count and version sum, each entry's position)
    next status:  store.tracking_changes(basis.mark) -> the rows of the versions the
                  events since name, and the count and sum of all rows now
                  -> patched(entries, basis, changes): a copy with those entries replaced,
                     or None (the caller reads everything) whenever the patch could differ
                     from a full read

Every change this tool makes to a tracking row comes with a history event naming its
version, in the same transaction; what a person changes by hand comes with none, and the
rows' count and version sum, read in the same snapshot, tell a row added or deleted that
no event named. Where the patch cannot be sure it equals what a full read would give, it
gives up: then the caller computes the reply in full.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from worker.catalog import Migration
from worker.stores.interface import (
    VERSION_SUM_MASK,
    AppliedMigration,
    HistoryMark,
    TrackingChanges,
)

Entry = dict[str, Any]
MOST_PATCHED_EVENTS = 1000  # events since the kept reply beyond which a full read is cheaper


class StatusBasis(NamedTuple):
    """What a status reply's entries were computed from, to patch them later."""

    mark: HistoryMark  # the history's newest event in that snapshot
    files: dict[int, Migration]  # the folder's migrations by version, as listed then
    positions: dict[int, int]  # each entry's index, by version
    count: int  # tracking rows
    version_sum: int  # the sum of their versions' low 32 bits


def basis_of(
    entries: list[Entry], files: dict[int, Migration], applied: list[AppliedMigration],
    mark: HistoryMark,
) -> StatusBasis:
    """The basis of entries just computed in full from `files` and the `applied` rows."""
    return StatusBasis(
        mark, files, {entry["version"]: index for index, entry in enumerate(entries)},
        len(applied), version_sum(row.version for row in applied))


def version_sum(versions: Any) -> int:
    """The sum a store reads of the tracking rows' versions (see TrackingChanges)."""
    return sum(version & VERSION_SUM_MASK for version in versions)


def patched(
    entries: list[Entry], basis: StatusBasis, changes: TrackingChanges
) -> tuple[list[Entry], StatusBasis] | None:
    """A copy of `entries` with each version the changes name as it is recorded now, and
    its basis; None when a full read is needed: no event came since (what committed was
    not this tool's), a version is to be listed or unlisted (the positions move), or the
    rows' count or sum is not what the events account for (rows changed by hand).

    Unchanged entries are the same objects as before: a packer may keep their bytes.
    """
    if not changes.recorded and changes.mark == basis.mark:
        return None
    entries = list(entries)
    count, total = basis.count, basis.version_sum
    for version, name in changes.recorded.items():
        position = basis.positions.get(version)
        if position is None:
            if name is None:
                continue  # never listed, not recorded: a repeatable's event, say
            return None
        entry = entries[position]
        if "partial" in entry:
            return None  # a step record moves too; no store that tells changes has them
        if entry["applied"]:
            count, total = count - 1, total - (version & VERSION_SUM_MASK)
        if name is not None:
            count, total = count + 1, total + (version & VERSION_SUM_MASK)
        replacement = _entry(version, name, basis.files.get(version))
        if replacement is None:
            return None
        if replacement != entry:
            entries[position] = replacement
    if (count, total) != (changes.count, changes.version_sum):
        return None
    return entries, basis._replace(mark=changes.mark, count=count, version_sum=total)


def _entry(version: int, recorded_name: str | None, file: Migration | None) -> Entry | None:
    """The entry of `version` as a full read lists it; None when it is not listed (no
    file, and not recorded)."""
    if file is not None:
        return {"version": version, "name": file.name, "applied": recorded_name is not None}
    if recorded_name is None:
        return None
    # An applied migration whose file is gone is listed under its recorded name.
    return {"version": version, "name": recorded_name, "applied": True}
