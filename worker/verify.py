"""verify: every migration's down tested on a scratch database, before the day it matters.

    scratch database (Store.scratch(): a temporary file, or a database made and dropped)
      up each migration, oldest first          schema before[v], after[v]
      then newest first:
        down v      the schema must equal before[v]     else `down_leaves_changes`
        up v again  it must work, and equal after[v]    else `up_fails_again` / `up_differs`
        down v      to go on to the one below it
      up everything again (repeatables too)    the schema must equal the live database's
                                               (`live`: what the folder builds vs what runs)

Repeatable migrations have no down: the down/up checks run on the versioned ones alone,
and the last pass, which is compared with the live database, applies them too. The live
database is only read (its catalog, through the store's session), never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from broker.errors import ReplyError
from worker.catalog import Catalog, Migration
from worker.params import Params
from worker.schema.shape import Schema, differences
from worker.stores.interface import Store

VERIFICATION = "verification"  # the reply's type (broker/cli/commands.py reads it)

Reply = dict[str, Any]


class VersionedOnly(Catalog):
    """The folder's versioned migrations without its repeatable ones."""

    def repeatables(self) -> list:
        return []

    def repeatables_stamp(self) -> tuple[object, ...]:
        return ()


def verify(live: Store, catalog: Catalog, make_engine: Callable[[Store, Catalog], Any]
           ) -> Reply:
    """The verification reply: `ok` false when any migration is reported or the live
    schema differs from what the folder builds. `make_engine(store, catalog)` gives an
    engine (worker/engine.py's) on a scratch store.

    Raises ReplyError 22 when no scratch database can be made."""
    versioned = VersionedOnly(catalog.folder, split_statements=live.split_statements)
    with live.scratch() as scratch:
        verified, problems = _walk(make_engine(scratch, versioned), scratch,
                                   catalog.migrations())
    # On a scratch database of its own: the walk may have stopped anywhere.
    with live.scratch() as scratch:
        failure = _try(make_engine(scratch, catalog).migrate)
        builds = None if failure is not None else scratch.read_schema()
    if failure is not None and not problems:
        problems.append({"version": None, "name": None, "kind": "up_fails",
                         "text": f"applying the whole folder failed: {failure}",
                         "differences": []})
    live_differences = ([] if builds is None else
                        [d.text for d in differences(builds, live.read_schema())])
    matches = None if builds is None else not live_differences
    return {
        "type": VERIFICATION,
        "ok": not problems and matches is True,
        "verified": verified,
        "problems": problems,
        # matches: null when the folder does not build, so there is nothing to compare.
        "live": {"matches": matches, "differences": live_differences},
    }


def _walk(engine: Any, scratch: Store, migrations: list[Migration]) -> tuple[int, list[Reply]]:
    """Up each migration from zero, then down, up and down each, newest first: how many
    went up, and the first problem of each kind met (the walk stops at a problem, since
    the ones below it would be tested on a schema that is not theirs)."""
    before: dict[int, Schema] = {}
    after: dict[int, Schema] = {}
    applied: list[Migration] = []
    for migration in migrations:
        before[migration.version] = scratch.read_schema()
        failure = _try(engine.migrate, to=migration.version)
        if failure is not None:
            return len(applied), [_problem(migration, "up_fails", failure)]
        after[migration.version] = scratch.read_schema()
        applied.append(migration)
    for migration in reversed(applied):
        problem = _down_and_up(engine, scratch, migration, before, after)
        if problem is not None:
            return len(applied), [problem]
    return len(applied), []


def _down_and_up(engine: Any, scratch: Store, migration: Migration,
                 before: dict[int, Schema], after: dict[int, Schema]) -> Reply | None:
    """Down, compare, up, compare, down: the first thing wrong with `migration`, or None.
    A migration that cannot go down stops the walk: the ones below it stay untested."""
    version = migration.version
    failure = _try(engine.rollback)
    if failure is not None:
        kind = "no_down" if "cannot be rolled back" in failure else "down_fails"
        return _problem(migration, kind, failure)
    now = scratch.read_schema()
    if now != before[version]:
        return _problem(migration, "down_leaves_changes",
                        "its down does not give back the schema from before its up",
                        differences(before[version], now))
    failure = _try(engine.migrate, to=version)
    if failure is not None:
        return _problem(migration, "up_fails_again",
                        f"its up fails after its own down: {failure}")
    again = scratch.read_schema()
    if again != after[version]:
        return _problem(migration, "up_differs",
                        "its up, run again after its down, builds another schema",
                        differences(after[version], again))
    failure = _try(engine.rollback)
    if failure is not None:
        return _problem(migration, "down_fails", failure)
    return None


def _try(handler: Callable[..., Reply], **fields: Any) -> str | None:
    """Run one request on the scratch engine; the error's text when it failed. A cancel
    ends the whole verify (error 14, `cancelled`), raised as it came."""
    try:
        handler(os.urandom(16), Params(fields, src="verify"))
    except ReplyError as error:
        if error.extra.get("cancelled"):
            raise
        return error.text
    return None


def _problem(migration: Migration, kind: str, text: str,
             found: list | None = None) -> Reply:
    return {"version": migration.version, "name": migration.name, "kind": kind,
            "text": text, "differences": [d.text for d in found or ()]}
