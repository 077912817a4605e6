"""The crash journal: death counts per request, across workers, in a record of bounded size.

A new CrashJournal on the same path is a new worker; dropping the old one without finished()
is its death while running.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from tests.support import request, table_migrations, write_migration
from worker import journal
from worker.journal import CrashJournal

R1, R2 = b"\x01" * 16, b"\x02" * 16


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "db.running"


@pytest.fixture
def start(path: Path):
    """Start a worker's journal on `path`; all are closed at teardown."""
    opened: list[CrashJournal] = []

    def start_one() -> CrashJournal:
        opened.append(CrashJournal(path))
        return opened[-1]

    yield start_one
    for one in opened:
        os.close(one._fd)  # as the kernel does for a dead worker


def die_running(start, request_id: bytes, what: str) -> None:
    """A worker starts, runs `what` for the request, and dies."""
    start().running(request_id, what)


def test_counts_of_two_requests_survive_each_others_runs_across_restarts(start):
    for _ in range(journal.MAX_DEATHS):
        die_running(start, R1, "migration 2 suicide")
        die_running(start, R2, "migration 2 suicide")
    worker = start()
    assert worker.deaths(R1) == (3, "migration 2 suicide")
    assert worker.deaths(R2) == (3, "migration 2 suicide")


@pytest.mark.parametrize(
    "name",
    ["é" * 100, "\U0001f600" * 300, "\udcff" * 100],
    ids=["100 e-acute", "300 four-byte emoji", "100 undecodable bytes"],
)
def test_a_long_non_ascii_name_still_counts_to_three(start, name):
    what = f"migration 2 {name}"
    for _ in range(journal.MAX_DEATHS):
        die_running(start, R1, what)
    deaths, culprit = start().deaths(R1)
    assert deaths == 3
    assert culprit.startswith("migration 2 ")
    assert len(culprit.encode()) <= journal.MAX_WHAT_BYTES


def test_a_death_at_start_up_before_anything_runs_adds_no_death(start, path):
    die_running(start, R1, "migration 2 suicide")
    for _ in range(journal.MAX_DEATHS):
        start()  # dies at start-up: nothing is running
    assert start().deaths(R1) == (1, "migration 2 suicide")
    # The first of them rewrote the record at once, so no later one blamed R1 again.
    assert json.loads(path.read_bytes())["running"] is None


def test_finished_forgets_its_request_and_keeps_the_others(start):
    die_running(start, R1, "migration 2 suicide")
    die_running(start, R2, "migration 3 other")
    worker = start()
    worker.finished(R1)
    assert worker.deaths(R1) == (0, "")
    restarted = start()
    assert restarted.deaths(R1) == (0, "")
    assert restarted.deaths(R2) == (1, "migration 3 other")


@pytest.mark.parametrize(
    "char",
    ["\U0001f600", "é", '"', "\x01"],
    ids=["four-byte emoji", "e-acute", "quote", "control character"],
)
def test_the_record_never_exceeds_record_bytes_with_max_requests_requests(start, path, char):
    requests = [index.to_bytes(journal.MAX_REQUEST_ID_BYTES, "big") for index in range(12)]
    what = char * 300
    for request_id in requests:
        for _ in range(journal.MAX_DEATHS):
            die_running(start, request_id, what)
    last = start()
    last.running(requests[-1], what)
    record = path.read_bytes()
    assert len(record) == journal.RECORD_BYTES
    assert len(record.strip()) <= journal.RECORD_BYTES
    note = json.loads(record)
    assert len(note["deaths"]) == journal.MAX_REQUESTS
    # The oldest counts were dropped, the newest kept whole.
    assert last.deaths(requests[0]) == (0, "")
    assert last.deaths(requests[-1])[0] == 3
    assert len(journal._largest_record()) <= journal.RECORD_BYTES


def test_a_symbolic_link_in_place_of_the_journal_is_refused(tmp_path, path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    path.symlink_to(target)
    with pytest.raises(OSError):
        CrashJournal(path)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[" * 4096,
        b'{"request": "01", "running": "migration 2 x", "deaths": 0}',  # the former format
    ],
    ids=["not json", "nested too deep", "former format"],
)
def test_an_unreadable_record_is_ignored_with_a_warning(start, path, caplog, content):
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="worker.journal"):
        worker = start()
    assert "unreadable crash journal" in caplog.text
    assert worker.deaths(b"\x01") == (0, "")
    die_running(start, R1, "migration 2 suicide")
    assert start().deaths(R1) == (1, "migration 2 suicide")


# -- real processes ----------------------------------------------------------------------------


SUICIDE = 'db.execute("CREATE TABLE suicide (id INTEGER)")\nimport os\nos._exit(1)'


def test_three_nodes_whose_migration_kills_the_worker_each_get_error_13_after_three_deaths(
    workspace, folder
):
    table_migrations(folder, range(1, 2))
    write_migration(folder, "0002_suicide.py", SUICIDE)
    nodes = [workspace.live("--migrations", str(folder)) for _ in range(3)]
    for node in nodes:
        node.send(request("migrate", 1))
    replies = [node.replies(1)[0] for node in nodes]
    for reply in replies:
        assert reply["type"] == "error" and reply["code"] == 13, reply
        assert "migration 2 suicide" in reply["text"] and "3 times" in reply["text"], reply
    assert [node.finish() for node in nodes] == [0, 0, 0]
    assert workspace.recorded() == [(1, "t1")]
    assert "suicide" not in workspace.tables()


def test_a_migration_named_with_100_e_acute_that_kills_its_worker_is_refused_after_three_deaths(
    workspace, folder
):
    name = "é" * 100
    table_migrations(folder, range(1, 2))
    write_migration(folder, f"0002_{name}.py", SUICIDE)
    replies, completed = workspace.run([request("migrate", 1)], "--migrations", str(folder))
    assert completed.returncode == 0
    (refused,) = replies
    assert refused["type"] == "error" and refused["code"] == 13, refused
    assert f"migration 2 {name}" in refused["text"] and "3 times" in refused["text"], refused
    assert workspace.recorded() == [(1, "t1")]
