"""The partial-state soak: a short run on the machine's MariaDB server, and its judge on
hand-made database states (what it must pass and what it must catch)."""

from __future__ import annotations

import pytest

from broker import endpoint
from tests.soak_partial import (
    MIGRATIONS,
    OMITTED_STEPS,
    Findings,
    Partial,
    State,
    judge_reply,
    judge_state,
    parse_args,
    server_problem,
    soak,
)

COUNTS = {version: 3 for version in range(1, MIGRATIONS + 1)}


def findings(applied: list[int], partials: list[Partial], tables: dict[int, set[int]]) -> list:
    found = Findings()
    judge_state(State(applied, partials, tables), COUNTS, found)
    return found.notes


def test_a_short_soak_on_mariadb_finds_nothing(monkeypatch, capsys):
    problem = server_problem()
    if problem is not None:
        pytest.skip(problem)
    # The soak points this process at its runtime directory; put it back afterwards.
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, "unset by the soak")
    totals = soak(parse_args(["--kills", "5", "--seed", "20261206"]))
    said = capsys.readouterr().out
    assert totals.kills == 5
    assert not totals.checks, said


def test_the_judge_passes_a_statement_left_uncertain_either_way():
    for table in (set(), {2}):
        assert findings([1], [Partial(2, "apply", 1, 2)], {1: {1, 2, 3}, 2: {1} | table}) == []


def test_the_judge_catches_a_table_after_the_running_statement():
    notes = findings([1], [Partial(2, "apply", 1, 2)], {1: {1, 2, 3}, 2: {1, 3}})
    assert [kind for kind, _ in notes] == ["half-applied"]


def test_the_judge_catches_a_statement_said_done_whose_table_is_missing():
    notes = findings([], [Partial(1, "apply", 2, None)], {1: {1}})
    assert [kind for kind, _ in notes] == ["half-applied"]


def test_the_judge_reads_a_rollback_record_in_down_statements():
    # Down statement 1 dropped t1_3; down statement 2 (t1_2) may or may not have.
    assert findings([1], [Partial(1, "rollback", 1, 2)], {1: {1, 2}}) == []
    assert findings([1], [Partial(1, "rollback", 1, 2)], {1: {1}}) == []
    notes = findings([1], [Partial(1, "rollback", 1, None)], {1: {1, 2, 3}})
    assert [kind for kind, _ in notes] == ["half-applied"]


def test_the_judge_catches_an_applied_migration_without_its_tables():
    assert findings([1, 2], [], {1: {1, 2, 3}, 2: {1, 2}})


def test_the_judge_catches_a_migrate_reply_that_does_not_list_what_it_applied():
    everything = list(range(1, MIGRATIONS + 1))
    tables = {version: {1, 2, 3} for version in everything}
    before, after = State([1], [], {1: {1, 2, 3}}), State(everything, [], tables)
    found = Findings()
    reply = {"type": "migrations_applied", "migrations": [{"version": v} for v in everything]}
    judge_reply("migrate", reply, before, after, found)
    assert [kind for kind, _ in found.notes] == ["wrong"]


def test_the_judge_catches_an_uncertain_error_the_database_does_not_hold():
    found = Findings()
    reply = {"type": "error", "code": 22, "text": "... may or may not have taken effect ...",
             "partial": {"version": 2, "action": "apply", "statements_done": 1,
                         "uncertain": {"statement": 2, "line": "CREATE TABLE t2_2 (id INT);"}}}
    judge_reply("migrate", reply, State([1], [], {}), State([1], [], {}), found)
    assert [kind for kind, _ in found.notes] == ["wrong"]


def test_the_judge_wants_an_uncertain_error_to_list_what_its_request_applied():
    record = [Partial(3, "apply", 0, 1)]
    reply = {"type": "error", "code": 22, "text": "... may or may not have taken effect ...",
             "partial": {"version": 3, "action": "apply", "statements_done": 0,
                         "uncertain": {"statement": 1, "line": "CREATE TABLE t3_1 (id INT);"}}}
    before, after = State([], [], {}), State([1, 2], record, {})
    found = Findings()
    judge_reply("migrate", reply, before, after, found)
    assert found.checks == [OMITTED_STEPS]
    found = Findings()
    judge_reply("migrate", {**reply, "applied": [{"version": 1}, {"version": 2}]}, before,
                after, found)
    assert found.notes == []
