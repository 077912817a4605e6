"""Input no caller should send, and folders no one should keep, refused as error replies.

Strings that UTF-8 cannot encode (lone surrogates from JSON's `\\ud800` escape), migration
versions beyond SQLite's INTEGER, file names that are not UTF-8, and names that only look
like migrations must each get an answer naming the culprit, never kill a process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from broker.errors import MALFORMED_REQUEST, PRECONDITION_FAILED, ReplyError
from tests.support import request, write_migration
from worker.catalog import Catalog

NOT_UTF8_NAME = b"0004_caf\xe9.py"
NOT_UTF8_SHOWN = "0004_caf\\xe9.py"  # how error texts show it


def create_not_utf8_migration(folder: Path) -> None:
    with open(os.path.join(os.fsencode(folder), NOT_UTF8_NAME), "w") as file:
        file.write("def up(db):\n    pass\n")


def refusal(folder: Path) -> ReplyError:
    with pytest.raises(ReplyError) as caught:
        Catalog(folder).migrations()
    assert caught.value.code == PRECONDITION_FAILED
    return caught.value


# -- the catalog -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2**64, 2**63])
def test_a_version_above_the_sqlite_integer_range_is_refused_naming_the_file(tmp_path, version):
    write_migration(tmp_path, "0001_ok.py", "pass")
    write_migration(tmp_path, f"{version}_big.py", "pass")
    assert refusal(tmp_path).text == (
        f"migration file {version}_big.py has version {version},"
        f" above the largest allowed 9223372036854775807"
    )


def test_the_largest_sqlite_integer_is_a_valid_version_and_one_more_is_not(tmp_path):
    largest, above = tmp_path / "largest", tmp_path / "above"
    largest.mkdir()
    above.mkdir()
    write_migration(largest, f"{2**63 - 1}_last.py", "pass")
    write_migration(above, f"{2**63}_beyond.py", "pass")
    assert [(m.version, m.name) for m in Catalog(largest).migrations()] == [(2**63 - 1, "last")]
    assert f"{2**63}_beyond.py" in refusal(above).text


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(tmp_path):
    write_migration(tmp_path, "0001_ok.py", "pass")
    create_not_utf8_migration(tmp_path)
    assert refusal(tmp_path).text == (
        f"migration file name {NOT_UTF8_SHOWN} is not valid UTF-8; rename it"
    )


@pytest.mark.parametrize("filename", ["0003_x.py\n", "\u0663_x.py"])
def test_a_name_ending_in_a_newline_or_using_unicode_digits_is_not_a_migration(
    tmp_path, filename
):
    write_migration(tmp_path, "0001_ok.py", "pass")
    write_migration(tmp_path, filename, "pass")
    assert [(m.version, m.name) for m in Catalog(tmp_path).migrations()] == [(1, "ok")]


# -- real processes --------------------------------------------------------------------------


def test_lone_surrogates_in_type_and_src_get_error_12_and_the_node_goes_on(workspace):
    lines = (
        b'{"body": {"type": "\\ud800", "msg_id": 1}}\n'
        b'{"src": "\\ud800", "dest": "migrations", "body": {"type": "status", "msg_id": 2}}\n'
        + json.dumps(request("status", 3)).encode()
        + b"\n"
    )
    replies, completed = workspace.run(lines)
    assert completed.returncode == 0, completed.stderr.decode()
    assert replies[:2] == [
        {"type": "error", "in_reply_to": 1, "code": MALFORMED_REQUEST,
         "text": "type is not valid Unicode text (it holds a lone surrogate)"},
        {"type": "error", "in_reply_to": 2, "code": MALFORMED_REQUEST,
         "text": "src is not valid Unicode text (it holds a lone surrogate)"},
    ]
    assert len(replies) == 3
    assert replies[2]["type"] == "migration_status" and replies[2]["in_reply_to"] == 3


def test_a_version_beyond_two_to_the_64_stops_the_node_at_startup_naming_the_file(workspace):
    folder = workspace.root / "custom"
    folder.mkdir()
    write_migration(folder, "0001_ok.py", "pass")
    write_migration(folder, "18446744073709551616_big.py", "pass")
    replies, completed = workspace.run([request("status", 1)], "--migrations", str(folder))
    assert completed.returncode == 2
    assert replies == []
    assert "18446744073709551616_big.py" in completed.stderr.decode()


def test_a_not_utf8_file_appearing_while_the_worker_runs_gets_error_22_without_a_restart(
    workspace,
):
    folder = workspace.root / "custom"
    folder.mkdir()
    write_migration(folder, "0001_ok.py", "pass")
    node = workspace.live("--migrations", str(folder))
    node.send(request("status", 1), request("health", 2))
    status, health = node.replies(2)
    assert status["type"] == "migration_status" and health["type"] == "health_ok"

    create_not_utf8_migration(folder)
    node.send(request("status", 3), request("health", 4))
    status, after = node.replies(2)
    assert status == {
        "type": "error", "in_reply_to": 3, "code": PRECONDITION_FAILED,
        "text": f"migration file name {NOT_UTF8_SHOWN} is not valid UTF-8; rename it",
    }
    assert after["type"] == "health_ok" and after["in_reply_to"] == 4
    assert after["worker_pid"] == health["worker_pid"] and after["worker_restarts"] == 0
    assert node.finish() == 0
