"""Fuzzing with live processes: generated hostile input on a node's stdin and straight to the
worker's socket (see tests/fuzz.py for the targets and what each input must get), and the
regression corpus: every input that ever found a bug, replayed.

The counts here are modest so that the suite stays quick on a busy machine; `python -m
tests.fuzz --examples 30000` runs the same tests long. No test waits for a duration.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from broker import codec
from tests import fuzz
from tests.support import PROCESS_TIMEOUT_S, wait_until


@pytest.fixture
def folder(workspace) -> Path:
    path = workspace.root / "migrations"
    path.mkdir()
    fuzz.write_migrations(path)
    return path


@pytest.fixture
def stdin_target(workspace, folder, request):
    target = fuzz.StdinTarget(workspace, folder, request.node.name)
    yield target
    print(target.finish())


@pytest.fixture
def frame_target(workspace, folder, request):
    workspace.run([{"body": {"type": "health", "msg_id": 1}}], "--migrations", str(folder))
    target = fuzz.FrameTarget(workspace, request.node.name)
    yield target
    print(target.finish())


def test_hostile_bytes_on_stdin_each_get_their_reply_and_no_process_dies(stdin_target):
    fuzz.run(fuzz.stdin_bytes, 150, stdin_target.feed)


def test_requests_of_every_shape_on_stdin_each_get_their_reply(stdin_target):
    fuzz.run(fuzz.json_lines(), 150, stdin_target.feed)


def test_a_wrong_type_in_any_field_of_any_request_is_error_12_naming_it(
    workspace, stdin_target
):
    def feed(case: tuple[dict, str]) -> None:
        message, field = case
        text = json.dumps(message).encode()
        reply = stdin_target.feed(text)[0]
        assert reply["type"] == "error" and reply["code"] == 12, (message, reply)
        said = reply["text"]
        assert said.startswith(f"{field} ") or said.endswith(f" {field}") or (
            said == "init needs node_id as a string" and field == "node_id"
        ), (message, reply)

    fuzz.run(fuzz.wrong_field_requests(), 200, feed)
    assert not workspace.tables() & {"schema_migrations", "schema_migration_history"}, (
        "a refused request ran nothing, so nothing was ever written"
    )


def test_raw_frames_to_the_worker_each_get_their_reply_and_it_carries_on(frame_target):
    fuzz.run(fuzz.frame_messages, 200, frame_target.feed)


def test_a_frame_over_the_4_mib_bound_is_dropped_with_a_log_line_and_the_worker_carries_on(
    workspace, frame_target
):
    log = fuzz.endpoint_of(workspace).log_path
    frame_target.dealer.send_multipart([b"\x00" * (codec.MAX_REQUEST_BYTES + 1)])
    frame_target.counts["oversized frames"] += 1

    def logged() -> bool:
        # ZeroMQ closed the connection unanswered and the dealer connected again; each
        # request answered lets the worker write the info lines it holds.
        frame_target.feed([codec.pack_request(b"after", "health")])
        return f"a frame of more than {codec.MAX_REQUEST_BYTES} bytes".encode() in log.read_bytes()

    wait_until(logged, timeout=PROCESS_TIMEOUT_S, what="the worker to log the dropped frame")


def corpus(kind: str) -> list[Path]:
    return sorted((fuzz.CORPUS / kind).iterdir())


@pytest.mark.parametrize("path", corpus("stdin"), ids=lambda path: path.name)
def test_corpus_input_on_stdin_is_answered(stdin_target, path):
    stdin_target.feed(path.read_bytes())


@pytest.mark.parametrize("path", corpus("frames"), ids=lambda path: path.name)
def test_corpus_messages_to_the_worker_are_answered(frame_target, path):
    for message in msgpack.unpackb(path.read_bytes()):  # a list of messages of frames
        frame_target.feed(message)
