"""The node end to end: node.py and its worker as real processes, JSON over real pipes."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from broker.spawn import IDLE_EXIT_ENV
from tests.processes import gone
from tests.support import PROCESS_TIMEOUT_S, request, wait_until, write_migration

SEED_MIGRATE = b'{"src": "admin", "dest": "migrations", "body": {"type": "migrate", "msg_id": 1}}\n'
SEED_MIGRATE_REPLY = (
    b'{"type": "migrations_applied", "in_reply_to": 1, "count": 2, "migrations": '
    b'[{"version": 1, "name": "create_users", "status": "applied"}, '
    b'{"version": 2, "name": "add_posts_table", "status": "applied"}]}\n'
)
SEED_ROLLBACK = (
    b'{"src": "admin", "dest": "migrations", "body": {"type": "rollback", "msg_id": 1}}\n'
)
SEED_ROLLBACK_REPLY = (
    b'{"type": "migration_rolled_back", "in_reply_to": 1, "version": 2, '
    b'"name": "add_posts_table"}\n'
)


def test_seed_samples_are_answered_byte_for_byte_in_two_processes(workspace):
    _, first = workspace.run(SEED_MIGRATE)
    assert first.returncode == 0, first.stderr
    assert first.stdout == SEED_MIGRATE_REPLY
    _, second = workspace.run(SEED_ROLLBACK)
    assert second.stdout == SEED_ROLLBACK_REPLY
    assert workspace.recorded() == [(1, "create_users")]
    assert "users" in workspace.tables() and "posts" not in workspace.tables()


def test_seed_sample_pretty_printed_over_several_lines_is_one_request(workspace):
    pretty = b'{\n"src": "admin",\n"dest": "migrations",\n"body": {\n"type": "migrate",\n'
    pretty += b'"msg_id": 1\n}\n}\n'
    _, completed = workspace.run(pretty)
    assert completed.stdout == SEED_MIGRATE_REPLY


def test_status_after_rollback_shows_the_reverted_migration_pending(workspace):
    replies, _ = workspace.run(
        [request("migrate", 1), request("rollback", 2), request("status", 3)]
    )
    assert replies[2] == {
        "type": "migration_status",
        "in_reply_to": 3,
        "migrations": [
            {"version": 1, "name": "create_users", "applied": True},
            {"version": 2, "name": "add_posts_table", "applied": False},
        ],
    }


def test_status_key_order_matches_the_contract(workspace):
    _, completed = workspace.run([request("status", 7)])
    assert completed.stdout == (
        b'{"type": "migration_status", "in_reply_to": 7, "migrations": '
        b'[{"version": 1, "name": "create_users", "applied": false}, '
        b'{"version": 2, "name": "add_posts_table", "applied": false}]}\n'
    )


def test_applied_migrations_persist_across_runs(workspace):
    workspace.run([request("migrate", 1)])
    replies, _ = workspace.run([request("migrate", 2), request("status", 3)])
    assert replies[0] == {"type": "migrations_applied", "in_reply_to": 2, "count": 0,
                          "migrations": []}
    assert all(entry["applied"] for entry in replies[1]["migrations"])


def test_rollback_with_nothing_applied_is_error_22(workspace):
    replies, _ = workspace.run([request("rollback", 4)])
    assert replies == [{"type": "error", "in_reply_to": 4, "code": 22,
                        "text": "nothing to roll back: no migration is applied"}]


def test_init_turns_on_envelope_framing_including_init_ok(workspace):
    init = {"src": "c0", "dest": "n0", "body": {"type": "init", "msg_id": 1, "node_id": "n1",
                                                "node_ids": ["n1"]}}
    _, completed = workspace.run([request("status", 0), init, request("rollback", 2)])
    lines = completed.stdout.splitlines()
    assert json.loads(lines[0])["type"] == "migration_status"  # before init: bare body
    assert lines[1] == b'{"src": "n1", "dest": "c0", "body": {"type": "init_ok", "in_reply_to": 1}}'
    assert json.loads(lines[2]) == {
        "src": "n1", "dest": "c1",
        "body": {"type": "error", "in_reply_to": 2, "code": 22,
                 "text": "nothing to roll back: no migration is applied"},
    }


def test_envelope_flag_frames_replies_from_the_request_dest(workspace):
    _, completed = workspace.run(SEED_MIGRATE, "--envelope")
    assert completed.stdout == (
        b'{"src": "migrations", "dest": "admin", "body": ' + SEED_MIGRATE_REPLY.rstrip() + b"}\n"
    )


def test_two_hundred_pipelined_mixed_requests_are_answered_in_order(workspace):
    kinds = ["migrate", "status", "rollback", "health", "status"]
    requests = [request(kinds[i % len(kinds)], i) for i in range(200)]
    replies, completed = workspace.run(requests)
    assert completed.returncode == 0
    assert [reply["in_reply_to"] for reply in replies] == list(range(200))
    expected = {"migrate": "migrations_applied", "status": "migration_status",
                "rollback": "migration_rolled_back", "health": "health_ok"}
    assert [reply["type"] for reply in replies] == [expected[kinds[i % 5]] for i in range(200)]
    # Each round applies one migration back and rolls it back: version 2 flips each time.
    assert all(reply["count"] == 1 for reply in replies[5::5])


def test_twenty_thousand_status_requests_written_at_once_are_all_answered_in_order(workspace):
    data = b"".join(
        b'{"src": "c", "dest": "m", "body": {"type": "status", "msg_id": %d}}\n' % i
        for i in range(20_000)
    )
    replies, completed = workspace.run(data, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert len(replies) == 20_000
    assert [reply["in_reply_to"] for reply in replies] == list(range(20_000))
    assert all(reply["type"] == "migration_status" for reply in replies)


@pytest.mark.parametrize(
    ("line", "in_reply_to", "fragment"),
    [
        (b"this is not json", None, "not a JSON object"),
        (b'{"body": {"type": "status", "msg_id": 1}', None, "incomplete"),
        (b"[1, 2, 3]", None, "not a JSON object"),
        (b'{"src": "c", "dest": "m"}', None, "no body"),
        (b'{"src": "c", "dest": "m", "body": 5}', None, "body must be a JSON object"),
        (b'{"src": "c", "dest": "m", "body": {"msg_id": 3}}', 3, "no type"),
        (b'{"src": "c", "dest": "m", "body": {"type": 7, "msg_id": 3}}', 3, "type must be"),
        (b'{"src": "c", "dest": "m", "body": {"type": "status", "msg_id": "x"}}', None, "msg_id"),
        (b'{"src": 5, "dest": "m", "body": {"type": "status", "msg_id": 3}}', None, "src"),
        (b'{"src": "c", "dest": "m", "body": {"type": "st\xffatus", "msg_id": 3}}', None, "UTF-8"),
        (b'{"src": "c", "dest": "m", "body": {"type": "init", "msg_id": 3}}', 3, "node_id"),
    ],
)
def test_malformed_input_gets_error_12_and_the_next_request_is_still_served(
    workspace, line, in_reply_to, fragment
):
    # The last case is incomplete only at EOF, so it goes last; others are followed by status.
    data = line + b"\n" + b'{"body": {"type": "status", "msg_id": 99}}\n'
    if fragment == "incomplete":
        data = b'{"body": {"type": "status", "msg_id": 99}}\n' + line
    replies, completed = workspace.run(data)
    assert completed.returncode == 0
    errors = [reply for reply in replies if reply["type"] == "error"]
    assert len(replies) == 2 and len(errors) == 1
    error = errors[0]
    assert error["code"] == 12
    assert fragment in error["text"]
    assert error.get("in_reply_to") == in_reply_to
    assert ("in_reply_to" in error) == (in_reply_to is not None)
    second_key = "in_reply_to" if in_reply_to is not None else "code"
    assert list(error)[:2] == ["type", second_key]


def test_unknown_type_is_error_10_with_in_reply_to(workspace):
    replies, _ = workspace.run([request("teleport", 5)])
    assert replies[0]["type"] == "error" and replies[0]["code"] == 10
    assert replies[0]["in_reply_to"] == 5 and "teleport" in replies[0]["text"]


def test_request_over_one_mebibyte_is_refused_and_the_next_is_served(workspace):
    huge = b'{"body": {"type": "status", "msg_id": 1, "pad": "' + b"x" * (2 << 20) + b'"}}\n'
    replies, _ = workspace.run(huge + b'{"body": {"type": "status", "msg_id": 2}}\n')
    assert replies[0]["code"] == 12 and "1 MiB" in replies[0]["text"]
    assert replies[1]["in_reply_to"] == 2


def test_blank_lines_get_no_reply(workspace):
    replies, _ = workspace.run(b'\n\n   \n{"body": {"type": "status", "msg_id": 1}}\n\n')
    assert len(replies) == 1


def test_failing_second_migration_is_rolled_back_and_reported_as_error_14(workspace):
    folder = workspace.root / "custom"
    folder.mkdir()
    write_migration(folder, "0001_first.py", 'db.execute("CREATE TABLE first (id INTEGER)")')
    write_migration(
        folder,
        "0002_broken.py",
        'db.execute("CREATE TABLE broken (id INTEGER)")\n'
        'db.execute("INSERT INTO broken VALUES (1)")\n'
        'raise ValueError("boom")',
    )
    write_migration(folder, "0003_never.py", 'db.execute("CREATE TABLE never (id INTEGER)")')
    replies, _ = workspace.run([request("migrate", 1)], "--migrations", str(folder))
    assert replies == [{
        "type": "error", "in_reply_to": 1, "code": 14,
        "text": replies[0]["text"],
        "applied": [{"version": 1, "name": "first", "status": "applied"}],
        "failed": {"version": 2, "name": "broken", "error": "ValueError: boom"},
    }]
    assert "broken" in replies[0]["text"]
    tables = workspace.tables()
    assert "first" in tables and "broken" not in tables and "never" not in tables
    assert workspace.recorded() == [(1, "first")]


def test_failing_down_leaves_the_migration_applied_and_untouched(workspace):
    folder = workspace.root / "custom"
    folder.mkdir()
    write_migration(folder, "0001_keep.py", 'db.execute("CREATE TABLE keep (id INTEGER)")',
                    down='db.execute("DROP TABLE keep")\nraise RuntimeError("no way back")')
    write_migration(folder, "0002_oneway.py", 'db.execute("CREATE TABLE oneway (id INTEGER)")',
                    down=None)
    replies, _ = workspace.run(
        [request("migrate", 1), request("rollback", 2)], "--migrations", str(folder)
    )
    assert replies[1]["code"] == 22 and "no down()" in replies[1]["text"]
    (folder / "0002_oneway.py").unlink()
    replies, _ = workspace.run([request("rollback", 3)], "--migrations", str(folder))
    assert replies[0]["code"] == 22 and "file is missing" in replies[0]["text"]


def test_failing_down_reports_error_14_and_keeps_the_table(workspace):
    folder = workspace.root / "custom"
    folder.mkdir()
    write_migration(folder, "0001_keep.py", 'db.execute("CREATE TABLE keep (id INTEGER)")',
                    down='db.execute("DROP TABLE keep")\nraise RuntimeError("no way back")')
    replies, _ = workspace.run(
        [request("migrate", 1), request("rollback", 2)], "--migrations", str(folder)
    )
    assert replies[1]["code"] == 14
    assert replies[1]["failed"] == {"version": 1, "name": "keep",
                                    "error": "RuntimeError: no way back"}
    assert "keep" in workspace.tables() and workspace.recorded() == [(1, "keep")]


def test_duplicate_versions_stop_the_node_at_startup_naming_both_files(workspace):
    folder = workspace.root / "custom"
    folder.mkdir()
    write_migration(folder, "0001_one.py", "pass")
    write_migration(folder, "1_other.py", "pass")
    replies, completed = workspace.run([request("status", 1)], "--migrations", str(folder))
    assert completed.returncode == 2
    assert replies == []
    stderr = completed.stderr.decode()
    assert "0001_one.py" in stderr and "1_other.py" in stderr


def test_eof_answers_everything_then_exits_at_once_leaving_stdout_closed(workspace):
    node = workspace.start()
    # communicate() returns only at EOF on stdout and stderr: were the worker holding either
    # pipe, it would outlive the node (it idles until teardown) and this would time out.
    out, err = node.communicate(
        b'{"body": {"type": "migrate", "msg_id": 1}}\n'
        b'{"body": {"type": "health", "msg_id": 2}}\n',
        timeout=PROCESS_TIMEOUT_S,
    )
    assert node.returncode == 0
    replies = [json.loads(line) for line in out.splitlines()]
    assert [reply["in_reply_to"] for reply in replies] == [1, 2]
    worker = replies[1]["worker_pid"]
    assert not gone(worker), "the worker outlives its node"
    assert b"Traceback" not in err


def test_worker_exits_on_its_own_after_its_last_node_has_gone(workspace):
    workspace.env[IDLE_EXIT_ENV] = "1"
    replies, _ = workspace.run([request("health", 1)])
    worker = replies[0]["worker_pid"]
    assert replies[0]["database"] == str(workspace.db.resolve())
    wait_until(lambda: gone(worker), timeout=PROCESS_TIMEOUT_S, what="the idle worker to exit")


def test_a_second_node_reuses_the_running_worker(workspace):
    first, _ = workspace.run([request("health", 1)])
    second, _ = workspace.run([request("health", 1)])
    assert first[0]["worker_pid"] == second[0]["worker_pid"]
    assert second[0]["requests_served"] > first[0]["requests_served"]


def test_other_programs_can_read_the_database_while_the_worker_runs(workspace):
    node = workspace.start()
    node.stdin.write(b'{"body": {"type": "migrate", "msg_id": 1}}\n')
    node.stdin.flush()
    assert json.loads(node.stdout.readline())["count"] == 2
    reader = sqlite3.connect(workspace.db, timeout=0)
    try:
        assert reader.execute("SELECT count(*) FROM schema_migrations").fetchone() == (2,)
    finally:
        reader.close()
    node.stdin.close()
    assert node.wait(timeout=PROCESS_TIMEOUT_S) == 0


def test_stdout_carries_only_protocol_lines(workspace):
    _, completed = workspace.run([request("migrate", 1), request("status", 2)], "--log-level",
                                 "DEBUG")
    for line in completed.stdout.splitlines():
        assert isinstance(json.loads(line), dict)


def test_missing_migrations_folder_is_a_usage_error(workspace):
    completed = subprocess.run(
        workspace.node_command("--migrations", str(workspace.root / "nope")),
        input=b"", capture_output=True, env=workspace.env, timeout=PROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 2 and b"not a folder" in completed.stderr


def test_a_file_that_is_not_a_database_stops_the_node_with_the_reason(workspace):
    workspace.db.write_bytes(b"this is not a sqlite file, not even close" * 10)
    replies, completed = workspace.run([request("status", 1)])
    assert completed.returncode == 2 and replies == []
    assert b"file is not a database" in completed.stderr


def test_the_tracking_table_is_named_by_the_node_and_a_schema_needs_a_server(workspace):
    replies, completed = workspace.run([request("migrate", 1)], "--table", "app migrations")
    assert completed.returncode == 0 and replies[0]["count"] == 2, completed.stderr
    assert workspace.tables() == {
        "users", "posts", "app migrations", "app migrations_replies", "app migrations_history",
        "app migrations_evicted", "app migrations_repeats", "app migrations_schemas"}

    _, other = workspace.run([request("status", 1)])  # the running worker serves that table
    assert other.returncode == 2
    assert b"tracks migrations in the table app migrations, not schema_migrations" in other.stderr

    _, schema = workspace.run([request("status", 1)], "--schema", "deploy")
    assert schema.returncode == 2 and b"--schema is for a PostgreSQL database" in schema.stderr
