"""The owner's connection lent to a status between a write's transactions (worker/stores/
turns.py, WorkerServer.status): the read gets it at once while no write runs, at the write's
next commit while one runs, never while a transaction is open; and every status answered
while a migrate runs is a committed state, exactly."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from broker import codec
from broker.stopping import StopRequest
from tests.support import PROCESS_TIMEOUT_S
from tests.test_engine import Node
from tests.test_status_incremental import fresh_status, migrations
from worker.catalog import Catalog
from worker.engine import Engine
from worker.params import Params
from worker.server import Job, WorkerServer
from worker.stores.turns import Turns

NO_WAIT_S = 0.0


def test_a_read_gets_the_connection_at_once_while_no_write_runs() -> None:
    with Turns().lend(NO_WAIT_S) as lent:
        assert lent


def test_a_read_does_not_get_the_connection_while_a_write_holds_it() -> None:
    turns = Turns()
    with turns.writing(), turns.lend(NO_WAIT_S) as lent:
        assert not lent


def test_a_write_lends_the_connection_between_two_transactions_and_waits_for_the_read() -> None:
    turns = Turns()
    writing, read_done = threading.Event(), threading.Event()
    said: list[str] = []

    def write() -> None:
        with turns.writing():
            writing.set()
            while not read_done.is_set():  # one transaction after another
                turns.between()
                said.append("commit")
            said.append("write done")

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert writing.wait(PROCESS_TIMEOUT_S)
        with turns.lend(PROCESS_TIMEOUT_S) as lent:
            assert lent
            commits = len(said)
            said.append("read")
        read_done.set()
    finally:
        read_done.set()
        thread.join(PROCESS_TIMEOUT_S)
    # The write took no step while the read had the connection, and then went on.
    assert said[commits] == "read" and said[-1] == "write done"


def test_a_write_that_starts_while_a_read_holds_the_connection_waits_for_it() -> None:
    turns = Turns()
    started = threading.Event()

    def write() -> None:
        with turns.writing():
            started.set()

    with turns.lend(NO_WAIT_S) as lent:
        assert lent
        thread = threading.Thread(target=write)
        thread.start()
        assert not started.is_set()
    thread.join(PROCESS_TIMEOUT_S)
    assert started.is_set()


@pytest.fixture
def server(sqlite_node: Node) -> Iterator[WorkerServer]:
    """A worker's two engines and writer thread, as worker/__main__.py wires them (no socket)."""
    write_engine = migrations(sqlite_node, 300)
    reader = sqlite_node.db.keep(write_engine.store.reader())
    read_engine = Engine(reader, Catalog(sqlite_node.folder))
    server = WorkerServer(read_engine, write_engine, "ipc://unused", {}, None, StopRequest())
    server.writer.start()
    try:
        yield server
    finally:
        server.writer.close()
        server.outbox.close()


def test_each_status_while_a_migrate_runs_is_a_committed_state(
    sqlite_node: Node, server: WorkerServer
) -> None:
    lent_while_writing = []
    write_status = server.writer.engine.status

    def counted(request_id: bytes, params: Params) -> dict:
        lent_while_writing.append(server.writer.engine.running is not None)
        return write_status(request_id, params)

    server.writer.engine.status = counted
    server.status(b"s0", Params({}))  # the reader has read the schema: it is stale after DDL
    server.writer.submit(Job(b"peer", b"m1", server.writer.engine.migrate, Params({})))
    flags = []
    while not server.writer.idle() or not flags:
        server.engine.new_batch()
        server.writer.engine.new_batch()
        reply = server.status(b"s1", Params({}))
        flags.append([entry["applied"] for entry in reply["migrations"]])

    # Migrations apply in version order, one commit each: a committed state is a prefix.
    for applied in flags:
        assert applied == sorted(applied, reverse=True)
    assert any(lent_while_writing), "no running write lent its connection to a status"
    server.engine.new_batch()
    server.writer.engine.new_batch()
    final = server.status(b"s2", Params({}))
    assert codec.pack(final) == codec.pack(fresh_status(sqlite_node))
    assert all(entry["applied"] for entry in final["migrations"])
