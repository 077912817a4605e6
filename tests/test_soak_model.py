"""The soak's judge on hand-made histories: what it must pass and what it must catch."""

from __future__ import annotations

from pathlib import Path

from tests.soak_model import (
    CANCELLED_BEFORE_START,
    Event,
    Findings,
    Judge,
    Request,
    Snapshot,
    Timeline,
    check_node,
    write_folder,
)


def timeline_with(tmp_path: Path, *steps: tuple[int, str, str]) -> Timeline:
    """Two migrations, and a history of (version, action, src) steps."""
    folder = write_folder(tmp_path / "migrations", 2, slow_rows=0)
    timeline = Timeline(folder)
    requests = {src: Request(9, {"type": "migrate" if action == "apply" else "rollback",
                                 "msg_id": 1}, src) for _, action, src in steps}
    found = Findings()
    timeline.replay([Event(seq, version, f"t{version}", action, folder.checksums[version],
                           "2026-12-05T00:00:00.000Z", 1.0, src)
                     for seq, (version, action, src) in enumerate(steps, 1)], requests, found)
    assert not found, found.notes
    return timeline


def status(*applied: bool) -> dict:
    return {"type": "migration_status", "migrations": [
        {"version": v, "name": f"t{v}", "applied": flag} for v, flag in enumerate(applied, 1)]}


def request(msg_id: int, kind: str, reply: dict, **fields) -> Request:
    return Request(0, {"type": kind, "msg_id": msg_id, **fields}, f"n0m{msg_id}",
                   cancellable=kind in ("migrate", "rollback"), reply=reply)


def judged(timeline: Timeline, requests: list[Request]) -> Findings:
    found = Findings()
    check_node(Judge(timeline), requests, 0, found, killed=False)
    return found


def history_of(timeline: Timeline) -> dict:
    return {"type": "migration_history", "events": [e.as_reply() for e in timeline.events]}


def test_reads_behind_a_write_the_node_cancelled_unsent_may_be_older_than_reads_before_it(
    tmp_path,
):
    # The node held the migrate behind the history (a write waits for the reads before
    # it), answered it itself on the cancel, and sent the status at once: the status may
    # be answered before the history, from the state before another node's step.
    timeline = timeline_with(tmp_path, (1, "apply", "other"))
    found = judged(timeline, [
        request(1, "history", history_of(timeline)),
        request(2, "migrate", CANCELLED_BEFORE_START),
        request(3, "status", status(False, False)),
        request(4, "cancel", {"type": "cancel_ok", "cancelled": 1}),
    ])
    assert not found, found.notes


def test_a_read_behind_a_write_that_ran_must_see_its_step(tmp_path):
    timeline = timeline_with(tmp_path, (1, "apply", "n0m2"))
    found = judged(timeline, [
        request(1, "status", status(False, False)),
        request(2, "migrate", {"type": "migrations_applied", "count": 1, "migrations": [
            {"version": 1, "name": "t1", "status": "applied"}]}, to=1),
        request(3, "status", status(False, False)),
    ])
    assert found.counts == {"wrong": 1}, found.notes
    assert "n0m3" in found.notes[0]


def test_with_tables_made_beforehand_every_table_is_checked_empty_or_whole(tmp_path):
    # MariaDB's soak: migrations only fill tables that exist; one applied holds its rows,
    # one not applied holds none, and any other count is half-applied.
    folder = write_folder(tmp_path / "migrations", 3, slow_rows=5, tables_exist=True)
    assert folder.rows == {1: 1, 2: 1, 3: 5}
    assert "CREATE" not in (tmp_path / "migrations" / "0003_t3.py").read_text()
    timeline = Timeline(folder)
    found = Findings()
    timeline.replay([Event(1, 1, "t1", "apply", folder.checksums[1], "2026-12-05T00:00:00Z",
                           1.0, "a")], {"a": Request(0, {"type": "migrate", "msg_id": 1}, "a")},
                    found)
    records = [(1, "t1", folder.checksums[1])]
    timeline.check_database(Snapshot(records, [], {"t1": 1, "t2": 0, "t3": 0}), found)
    assert not found, found.notes
    timeline.check_database(Snapshot(records, [], {"t1": 1, "t2": 0, "t3": 2}), found)
    assert found.counts == {"half_applied": 1}, found.notes
