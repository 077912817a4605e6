"""The node's client against a stand-in worker (a real ROUTER socket): cancel bookkeeping,
progress bodies, and one write at a time with nothing sent behind it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from broker import codec
from broker.client import WorkerClient
from broker.errors import cancelled_before_start
from tests.support import PROCESS_TIMEOUT_S

POLL_MS = 50


class StandInWorker:
    """A ROUTER socket that receives the client's requests and answers what a test says."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)
        self.peer = b""

    def requests(self, count: int) -> list[dict[str, Any]]:
        """The next `count` requests the client sent; fails the test if they do not come."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while len(got) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"the stand-in worker got {len(got)} of {count} requests: {got}")
            if self.socket.poll(POLL_MS):
                self.peer, *frames = self.socket.recv_multipart()
                got += [codec.unpack(frame) for frame in frames]
        return got

    def reply(self, request_id: bytes, body: dict[str, Any]) -> None:
        self.socket.send_multipart([self.peer, request_id, codec.pack(body)])


@pytest.fixture
def pair() -> Iterator[tuple[WorkerClient, StandInWorker]]:
    folder = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))  # short: a unix socket path
    address = f"ipc://{folder}/worker.sock"
    context = zmq.Context()
    worker = StandInWorker(context, address)
    client = WorkerClient(address, supervisor=None)
    try:
        yield client, worker
    finally:
        client.close()
        worker.socket.close(linger=0)
        context.term()
        shutil.rmtree(folder, ignore_errors=True)


def answers(client: WorkerClient, count: int) -> list[tuple[Any, dict[str, Any]]]:
    """The next `count` (token, body) pairs process() hands back, bounded in time."""
    got: list[tuple[Any, dict[str, Any]]] = []
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while len(got) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the client handed back {len(got)} of {count} replies: {got}")
        got += client.process(dict(client.poller.poll(POLL_MS)))
    return got


def test_a_cancel_with_no_write_in_flight_is_answered_at_once_without_the_worker(pair):
    client, worker = pair
    assert client.cancel_writes("c") == [("c", {"type": "cancel_ok", "cancelled": 0})]
    client.submit("s", "status")
    client.flush()
    assert [request["type"] for request in worker.requests(1)] == ["status"]  # no cancel


def test_a_cancel_answers_queued_writes_and_overtakes_them_to_name_the_one_sent(pair):
    client, worker = pair
    client.submit("m1", "migrate", {"progress": True})
    client.flush()
    [sent] = worker.requests(1)
    client.submit("m2", "migrate")  # waits for m1
    client.submit("r3", "status")  # waits behind m2
    client.submit("b4", "baseline", {"to": 1})
    assert client.has_writes()
    assert client.cancel_writes("c5", src="c1") == [
        ("m2", cancelled_before_start().body()), ("b4", cancelled_before_start().body())]
    [cancel] = worker.requests(1)  # at once, while m1 is still in flight
    assert cancel["type"] == "cancel" and cancel["src"] == "c1"
    assert cancel["params"] == {"ids": [sent["id"]]}
    client.flush()
    assert [outstanding.token for outstanding in client.backlog] == ["r3"], (
        "nothing is sent behind the write in flight")
    worker.reply(cancel["id"], {"type": "cancel_ok", "cancelled": 1})
    worker.reply(sent["id"], {"type": "error", "code": 14, "cancelled": True})
    assert answers(client, 2) == [
        ("c5", {"type": "cancel_ok", "cancelled": 3}),
        ("m1", {"type": "error", "code": 14, "cancelled": True}),
    ]
    assert [request["type"] for request in worker.requests(1)] == ["status"]
    assert not client.has_writes()


def test_a_write_a_cancel_in_flight_names_already_is_not_named_again(pair):
    client, worker = pair
    client.submit("m1", "migrate")
    client.flush()
    worker.requests(1)
    assert client.cancel_writes("c2") == []
    [first] = worker.requests(1)
    assert client.cancel_writes("c3") == [("c3", {"type": "cancel_ok", "cancelled": 0})]
    assert len(client.in_flight) == 2, "the write and the first cancel only"
    worker.reply(first["id"], {"type": "cancel_ok", "cancelled": 1})
    assert answers(client, 1) == [("c2", {"type": "cancel_ok", "cancelled": 1})]


def test_a_cancel_the_worker_refuses_is_answered_with_the_workers_error(pair):
    client, worker = pair
    client.submit("m1", "migrate")
    client.flush()
    worker.requests(1)
    client.cancel_writes("c2")
    [cancel] = worker.requests(1)
    worker.reply(cancel["id"], {"type": "error", "code": 10, "text": "unknown type"})
    assert answers(client, 1) == [("c2", {"type": "error", "code": 10, "text": "unknown type"})]


def test_progress_bodies_are_handed_on_and_leave_the_request_in_flight(pair):
    client, worker = pair
    client.submit("m1", "migrate", {"progress": True})
    client.flush()
    [sent] = worker.requests(1)
    step = {"type": "migration_progress", "done": 1, "total": 2, "version": 1, "name": "a",
            "status": "applied"}
    worker.reply(sent["id"], step)
    worker.reply(b"no such request", step)
    assert answers(client, 1) == [("m1", step)]
    assert sent["id"] in client.in_flight
    worker.reply(sent["id"], {"type": "migrations_applied", "count": 2})
    worker.reply(sent["id"], step)  # too late: the request is answered
    assert answers(client, 1) == [("m1", {"type": "migrations_applied", "count": 2})]
    client.submit("s2", "status")
    client.flush()
    [read] = worker.requests(1)
    worker.reply(read["id"], {"type": "migration_status", "migrations": []})
    assert answers(client, 1) == [("s2", {"type": "migration_status", "migrations": []})]


def test_reads_behind_a_write_wait_until_it_is_answered(pair):
    client, worker = pair
    client.submit("r1", "status")
    client.submit("m2", "migrate")
    client.submit("r3", "status")
    client.flush()
    [read] = worker.requests(1)
    worker.reply(read["id"], {"type": "migration_status", "migrations": []})
    answers(client, 1)
    [write] = worker.requests(1)  # alone in its message: the read behind it waits
    assert write["type"] == "migrate"
    worker.reply(write["id"], {"type": "migrations_applied", "count": 0})
    answers(client, 1)
    assert [request["type"] for request in worker.requests(1)] == ["status"]
