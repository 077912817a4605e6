"""What users of Flyway, golang-migrate and Alembic expect, end to end through real nodes:
SQL files, targets, drift checks, dry runs that really run, baseline, foreign keys, history."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from tests.support import request, table_migrations, write_migration

TRIGGER_SQL = """-- migrate:up
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY, -- the key; unique
    note TEXT DEFAULT 'a;b'
); -- a comment; with ;
CREATE TABLE audit (account INTEGER, what TEXT);
CREATE TRIGGER accounts_audit AFTER INSERT ON accounts
BEGIN
    INSERT INTO audit VALUES (NEW.id, 'created; ok');
END;
INSERT INTO accounts (id) VALUES (1);

-- migrate:down
DROP TRIGGER accounts_audit;
DROP TABLE audit;
DROP TABLE accounts;"""


def run(workspace, folder: Path, *bodies: dict) -> list[dict]:
    """Send requests (type first, then fields) through one node; return its replies."""
    requests = [request(body["type"], msg_id, **{k: v for k, v in body.items() if k != "type"})
                for msg_id, body in enumerate(bodies, start=1)]
    replies, completed = workspace.run(requests, "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    assert len(replies) == len(bodies)
    return replies


def versions(reply: dict) -> list[int]:
    return [entry["version"] for entry in reply["migrations"]]


def query(workspace, sql: str) -> list[tuple]:
    connection = sqlite3.connect(workspace.db)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


# -- 1. SQL migrations --------------------------------------------------------------------


def test_a_sql_migration_with_a_trigger_and_semicolons_in_strings_applies_and_reverts(
    workspace, folder
):
    (folder / "20240101120000_accounts.sql").write_text(TRIGGER_SQL)
    table_migrations(folder, range(1, 2))  # a .py file beside it
    migrated, _, rolled_back = run(
        workspace, folder, {"type": "migrate"}, {"type": "status"}, {"type": "rollback"}
    )
    assert versions(migrated) == [1, 20240101120000]
    assert rolled_back == {"type": "migration_rolled_back", "in_reply_to": 3,
                           "version": 20240101120000, "name": "accounts"}
    assert "accounts" not in workspace.tables()
    run(workspace, folder, {"type": "migrate"})
    assert query(workspace, "SELECT account, what FROM audit") == [(1, "created; ok")]
    assert query(workspace, "SELECT note FROM accounts") == [("a;b",)]
    sql = query(workspace, "SELECT sql FROM sqlite_master WHERE name = 'accounts'")[0][0]
    assert "-- the key; unique" in sql and "DEFAULT 'a;b'" in sql


def test_a_failing_statement_in_the_middle_of_a_sql_migration_leaves_nothing_of_it(
    workspace, folder
):
    (folder / "0001_half.sql").write_text(
        "-- migrate:up\nCREATE TABLE half (x);\nINSERT INTO nowhere VALUES (1);\n"
        "CREATE TABLE never (x);\n-- migrate:down\nDROP TABLE half;\n"
    )
    (failed,) = run(workspace, folder, {"type": "migrate"})
    assert failed["code"] == 14 and failed["applied"] == []
    assert failed["failed"]["version"] == 1 and "no such table" in failed["failed"]["error"]
    assert workspace.tables() & {"half", "never"} == set()


def test_a_sql_file_without_a_down_section_cannot_be_rolled_back(workspace, folder):
    (folder / "0001_oneway.sql").write_text("-- migrate:up\nCREATE TABLE oneway (x);")
    _, refused = run(workspace, folder, {"type": "migrate"}, {"type": "rollback"})
    assert refused["code"] == 22 and "-- migrate:down section" in refused["text"]
    assert workspace.recorded() == [(1, "oneway")]


# -- 2. targets ---------------------------------------------------------------------------


def test_migrate_to_a_version_and_rollback_to_one_move_both_ways(workspace, folder):
    table_migrations(folder, range(1, 6))
    up_to_3, rest, back_to_1, one_step, all_of_it = run(
        workspace, folder,
        {"type": "migrate", "to": 3}, {"type": "migrate"},
        {"type": "rollback", "to": 2}, {"type": "rollback", "steps": 1},
        {"type": "rollback", "to": 0},
    )
    assert versions(up_to_3) == [1, 2, 3] and versions(rest) == [4, 5]
    assert back_to_1 == {
        "type": "migrations_rolled_back", "in_reply_to": 3, "count": 3,
        "migrations": [{"version": v, "name": f"t{v}", "status": "rolled_back"}
                       for v in (5, 4, 3)],
    }
    assert versions(one_step) == [2] and versions(all_of_it) == [1]
    assert workspace.recorded() == []


def test_a_target_that_names_no_version_is_error_22_and_changes_nothing(workspace, folder):
    table_migrations(folder, range(1, 3))
    to_nowhere, back_nowhere, too_many = run(
        workspace, folder, {"type": "migrate", "to": 7}, {"type": "rollback", "to": 9},
        {"type": "rollback", "steps": 3},
    )
    assert [to_nowhere["code"], back_nowhere["code"], too_many["code"]] == [22, 22, 22]
    assert "no migration has version 7" in to_nowhere["text"]


def test_a_failing_step_stops_a_series_of_rollbacks_with_the_steps_done(workspace, folder):
    write_migration(folder, "0001_stuck.py", 'db.execute("CREATE TABLE stuck (x)")',
                    down='raise RuntimeError("cannot go back")')
    table_migrations(folder, range(2, 4))
    _, stopped = run(workspace, folder, {"type": "migrate"}, {"type": "rollback", "to": 0})
    assert stopped["code"] == 14
    assert stopped["rolled_back"] == [{"version": 3, "name": "t3", "status": "rolled_back"},
                                      {"version": 2, "name": "t2", "status": "rolled_back"}]
    assert stopped["failed"] == {"version": 1, "name": "stuck",
                                 "error": "RuntimeError: cannot go back"}
    assert workspace.recorded() == [(1, "stuck")]


# -- 3. drift checks ----------------------------------------------------------------------


def test_an_edited_applied_file_fails_validation_and_migrate_refuses_to_run(workspace, folder):
    table_migrations(folder, range(1, 3))
    run(workspace, folder, {"type": "migrate"})
    write_migration(folder, "0002_t2.py", 'db.execute("CREATE TABLE t2 (id INTEGER, x)")')
    table_migrations(folder, range(3, 4))
    validation, refused = run(workspace, folder, {"type": "validate"}, {"type": "migrate"})
    assert validation == {"type": "validation", "in_reply_to": 1, "ok": False,
                          "problems": [{"version": 2, "name": "t2", "kind": "changed"}]}
    assert refused["code"] == 22 and refused["problems"] == validation["problems"]
    assert "t3" not in workspace.tables()


def test_line_endings_and_trailing_whitespace_do_not_count_as_an_edit(workspace, folder):
    table_migrations(folder, range(1, 2))
    run(workspace, folder, {"type": "migrate"})
    path = folder / "0001_t1.py"
    path.write_bytes(path.read_bytes().replace(b"\n", b"  \r\n"))
    (validation,) = run(workspace, folder, {"type": "validate"})
    assert validation["ok"] is True and validation["problems"] == []


def test_rows_written_with_a_raw_checksum_keep_validating_under_their_rule(workspace, folder):
    table_migrations(folder, range(1, 2))
    run(workspace, folder, {"type": "migrate"})
    path = folder / "0001_t1.py"
    raw = hashlib.sha256(path.read_bytes()).hexdigest()  # what rows held before this rule
    connection = sqlite3.connect(workspace.db)
    with connection:
        connection.execute("UPDATE schema_migrations SET checksum = ?", (raw,))
    connection.close()
    (still_ok,) = run(workspace, folder, {"type": "validate"})
    path.write_bytes(path.read_bytes() + b"  \n")  # raw bytes differ now
    (changed,) = run(workspace, folder, {"type": "validate"})
    assert still_ok["ok"] is True
    assert changed["problems"] == [{"version": 1, "name": "t1", "kind": "changed"}]


def test_missing_and_out_of_order_migrations_are_reported_and_only_the_latter_allowed(
    workspace, folder
):
    table_migrations(folder, [1, 3, 4])
    run(workspace, folder, {"type": "migrate"})
    table_migrations(folder, [2])
    (validation, refused, allowed) = run(
        workspace, folder, {"type": "validate"}, {"type": "migrate"},
        {"type": "migrate", "allow_out_of_order": True},
    )
    assert validation["problems"] == [{"version": 2, "name": "t2", "kind": "out_of_order"}]
    assert refused["code"] == 22 and versions(allowed) == [2]
    (folder / "0004_t4.py").unlink()
    (missing, still_refused) = run(
        workspace, folder, {"type": "validate"},
        {"type": "migrate", "allow_out_of_order": True},
    )
    assert missing["problems"] == [{"version": 4, "name": "t4", "kind": "missing"}]
    assert still_refused["code"] == 22 and "missing" in still_refused["text"]


# -- 4. dry runs that really run ----------------------------------------------------------


def test_a_dry_run_runs_every_migration_and_leaves_the_file_byte_identical(workspace, folder):
    table_migrations(folder, range(1, 2))
    run(workspace, folder, {"type": "migrate"})
    table_migrations(folder, range(2, 4))
    (folder / "0004_needs_t3.sql").write_text(
        "-- migrate:up\nINSERT INTO t3 VALUES (1);\n-- migrate:down\nDELETE FROM t3;\n")
    before = workspace.db.read_bytes()
    dry_migrate, dry_rollback, history = run(
        workspace, folder, {"type": "migrate", "dry_run": True},
        {"type": "rollback", "dry_run": True}, {"type": "history"},
    )
    assert dry_migrate == {
        "type": "migrations_applied", "in_reply_to": 1, "count": 3,
        "migrations": [{"version": v, "name": n, "status": "applied"}
                       for v, n in ((2, "t2"), (3, "t3"), (4, "needs_t3"))],
        "dry_run": True,
    }
    assert dry_rollback == {"type": "migration_rolled_back", "in_reply_to": 2, "version": 1,
                            "name": "t1", "dry_run": True}
    assert [event["action"] for event in history["events"]] == ["apply"]
    assert workspace.db.read_bytes() == before


def test_a_dry_run_of_a_failing_migration_is_error_14_marked_dry_and_changes_nothing(
    workspace, folder
):
    table_migrations(folder, range(1, 2))
    write_migration(folder, "0002_broken.py", 'db.execute("INSERT INTO t1 VALUES (1)")\n'
                    'raise ValueError("boom")')
    run(workspace, folder, {"type": "status"})  # the worker creates the file
    before = workspace.db.read_bytes()
    (failed,) = run(workspace, folder, {"type": "migrate", "dry_run": True})
    assert failed["code"] == 14 and failed["dry_run"] is True
    assert failed["applied"] == [{"version": 1, "name": "t1", "status": "applied"}]
    assert failed["failed"] == {"version": 2, "name": "broken", "error": "ValueError: boom"}
    assert workspace.db.read_bytes() == before


# -- 5. baseline --------------------------------------------------------------------------


def test_baseline_records_without_running_and_is_refused_once_anything_is_recorded(
    workspace, folder
):
    table_migrations(folder, range(1, 4))
    baselined, again, migrated, history = run(
        workspace, folder, {"type": "baseline", "to": 2}, {"type": "baseline", "to": 2},
        {"type": "migrate"}, {"type": "history"},
    )
    assert baselined == {
        "type": "migrations_baselined", "in_reply_to": 1, "count": 2,
        "migrations": [{"version": v, "name": f"t{v}", "status": "baselined"} for v in (1, 2)],
    }
    assert again["code"] == 22 and versions(migrated) == [3]
    assert workspace.tables() & {"t1", "t2", "t3"} == {"t3"}
    assert [e["action"] for e in history["events"]] == ["baseline", "baseline", "apply"]


# -- 6. foreign keys off for a table rebuild ----------------------------------------------

REBUILD = """-- migrate:up
-- migrate:foreign_keys off
CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO parent_new SELECT id, name FROM parent {keep};
DROP TABLE parent;
ALTER TABLE parent_new RENAME TO parent;
-- migrate:down
SELECT 1;
"""


@pytest.mark.parametrize(("keep", "applied"), [("", True), ("WHERE id = 2", False)])
def test_a_table_rebuild_with_foreign_keys_off_is_checked_before_it_commits(
    workspace, folder, keep, applied
):
    (folder / "0001_tables.sql").write_text(
        "-- migrate:up\nCREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);\n"
        "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id));\n"
        "INSERT INTO parent VALUES (1, 'one'), (2, 'two');\n"
        "INSERT INTO child VALUES (10, 1), (20, 2);\n-- migrate:down\nSELECT 1;\n")
    (folder / "0002_rebuild.sql").write_text(REBUILD.format(keep=keep))
    (migrated, checked) = run(workspace, folder, {"type": "migrate"},
                              {"type": "validate"})
    if applied:
        assert versions(migrated) == [1, 2]
    else:
        assert migrated["code"] == 14 and migrated["failed"]["version"] == 2
        assert "child" in migrated["failed"]["error"]
        assert query(workspace, "SELECT id FROM parent") == [(1,), (2,)]
    assert query(workspace, "PRAGMA foreign_key_check") == []
    assert checked["ok"] is True


# -- 7. history ---------------------------------------------------------------------------


def test_history_lists_every_apply_and_rollback_oldest_first_with_who_and_when(
    workspace, folder
):
    table_migrations(folder, range(1, 3))
    *_, history, last_two = run(
        workspace, folder, {"type": "migrate"}, {"type": "rollback"}, {"type": "migrate"},
        {"type": "history"}, {"type": "history", "limit": 2},
    )
    events = history["events"]
    assert [(e["version"], e["action"]) for e in events] == [
        (1, "apply"), (2, "apply"), (2, "rollback"), (2, "apply")]
    assert all(e["src"] == "c1" and e["name"] == f"t{e['version']}" for e in events)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["started_at"])
               for e in events)
    assert all(e["checksum"].startswith("norm-sha256:") and e["duration_ms"] >= 0
               for e in events)
    assert last_two["events"] == events[-2:]


# -- 8. every new field is validated ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"type": "migrate", "to": "3"}, "to must be an integer, not a string"),
        ({"type": "migrate", "to": 0}, "to must be at least 1"),
        ({"type": "migrate", "dry_run": "yes"}, "dry_run must be true or false"),
        ({"type": "migrate", "allow_out_of_order": 1}, "allow_out_of_order must be true or"),
        ({"type": "rollback", "steps": 0}, "steps must be at least 1"),
        ({"type": "rollback", "steps": 1, "to": 0}, "give steps or to, not both"),
        ({"type": "rollback", "to": 1.5}, "to must be an integer, not a number"),
        ({"type": "baseline"}, "baseline needs to"),
        ({"type": "baseline", "to": True}, "to must be an integer, not a boolean"),
        ({"type": "history", "limit": -1}, "limit must be at least 1"),
        ({"type": "migrate", "to": 2**64}, "to cannot be sent to the worker"),
    ],
)
def test_a_new_field_of_the_wrong_type_is_error_12_naming_it(workspace, folder, body, named):
    table_migrations(folder, range(1, 2))
    (refused,) = run(workspace, folder, body)
    assert refused["type"] == "error" and refused["code"] == 12, refused
    assert named in refused["text"]
    assert not (workspace.db.exists() and "t1" in workspace.tables())


# -- what a kill in the middle of a series costs: nothing ---------------------------------


def test_a_series_of_rollbacks_killed_after_its_first_step_is_completed_and_told_once(
    workspace, folder
):
    table_migrations(folder, range(1, 5))
    trigger = workspace.root / "crash-now"
    workspace.env["MIGRATIONS_TEST_CRASH_AFTER_COMMIT"] = str(trigger)
    node = workspace.live("--migrations", str(folder))
    node.send(request("migrate", 1))
    assert node.replies(1)[0]["count"] == 4
    trigger.touch()  # the first step's commit kills the worker before it answers
    node.send(request("rollback", 2, steps=3), request("health", 3))
    rolled_back, health = node.replies(2)
    assert not trigger.exists() and health["worker_restarts"] == 1
    assert versions(rolled_back) == [4, 3, 2]
    assert node.finish() == 0
    assert workspace.recorded() == [(1, "t1")]


# -- migrations that cannot run in a transaction -----------------------------------------


def test_a_sql_migration_marked_transaction_false_runs_outside_one(workspace, folder):
    (folder / "0001_vacuum.sql").write_text(
        "-- migrate:up transaction:false\nCREATE TABLE kept (x);\nVACUUM;\n"
        "-- migrate:down\nDROP TABLE kept;\n"
    )
    dry, migrated = run(workspace, folder, {"type": "migrate", "dry_run": True},
                        {"type": "migrate"})
    assert dry["code"] == 14 and "VACUUM" in dry["failed"]["error"]  # a dry run is one
    assert versions(migrated) == [1]
    assert workspace.recorded() == [(1, "vacuum")] and "kept" in workspace.tables()
