"""Helpers for tests that run node.py and its worker as real processes."""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import alive_owner, lock_owner
from worker.stores.interface import tracking_tables

PROJECT = Path(__file__).resolve().parent.parent
NODE = PROJECT / "node.py"
PROCESS_TIMEOUT_S = 60  # a stuck process fails its test instead of hanging the suite
TRACKING_TABLES = frozenset(tracking_tables())
TEST_IDLE_EXIT_S = 3600  # spawned workers live until the test's teardown kills them


def wait_until(condition, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_migration(folder: Path, filename: str, up: str, down: str | None = "pass") -> Path:
    """Write a migration file whose up/down bodies are the given (indented) source lines."""
    source = "def up(db):\n" + _indent(up)
    if down is not None:
        source += "\n\ndef down(db):\n" + _indent(down)
    path = folder / filename
    path.write_text(source + "\n")
    return path


BLOCKING_UP = """
import os, time
open({started!r}, "w").close()
while os.path.exists({block!r}):
    time.sleep(0.01)
db.execute("CREATE TABLE {table} (id INTEGER)")
"""


def blocking_migration(folder: Path, filename: str, table: str) -> tuple[Path, Path]:
    """A migration that signals it started, then waits while a block file exists."""
    started, block = folder.parent / f"{table}.started", folder.parent / f"{table}.block"
    write_migration(
        folder,
        filename,
        BLOCKING_UP.format(started=str(started), block=str(block), table=table),
        down=f'db.execute("DROP TABLE {table}")',
    )
    block.touch()
    return started, block


def wait_for_stderr(process, text: bytes) -> bytes:
    """Read the process's stderr until `text` appears; fails the test if it does not."""
    seen = b""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    fd = process.stderr.fileno()
    while text not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            pytest.fail(f"the node never wrote {text!r} on stderr; it wrote {seen!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"the node closed stderr without writing {text!r}: {seen!r}")
        seen += chunk
    return seen


def table_migrations(folder: Path, versions: range) -> None:
    """Migrations that each create (and drop) one table named t<version>."""
    for version in versions:
        write_migration(folder, f"{version:04d}_t{version}.py",
                        f'db.execute("CREATE TABLE t{version} (id INTEGER)")',
                        down=f'db.execute("DROP TABLE t{version}")')


def _indent(body: str) -> str:
    return "".join(f"    {line}\n" for line in body.strip("\n").splitlines())


@dataclass
class Workspace:
    """A database, a runtime directory for its worker, and helpers to run nodes on it."""

    root: Path
    runtime: Path
    db: Path
    env: dict[str, str]
    started: list[subprocess.Popen] = field(default_factory=list)

    def node_command(self, *args: str) -> list[str]:
        return [sys.executable, str(NODE), "--db", str(self.db), *args]

    def run(self, lines: bytes | str | list, *args: str, timeout: float = PROCESS_TIMEOUT_S):
        """Run node.py to completion on `lines`; returns (replies as dicts, CompletedProcess)."""
        data = _as_bytes(lines)
        completed = subprocess.run(
            self.node_command(*args),
            input=data,
            capture_output=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
        )
        replies = [json.loads(line) for line in completed.stdout.splitlines()]
        return replies, completed

    def live(self, *args: str) -> LiveNode:
        """Start node.py to talk to it request by request."""
        return LiveNode(self.start(*args))

    def start(self, *args: str) -> subprocess.Popen:
        """Start node.py with pipes; the fixture kills it at teardown if still running."""
        process = subprocess.Popen(
            self.node_command(*args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.root,
        )
        self.started.append(process)
        return process

    def kill_worker(self, signum: int = signal.SIGKILL) -> int | None:
        """Signal the worker that owns the database now; returns its pid (None if none)."""
        pid = alive_owner(self.db)
        if pid is None:
            return None
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return None
        return pid

    def worker_pid(self) -> int | None:
        """The pid in the database's lock file (the owning worker, if any still runs)."""
        return lock_owner(self.db)

    def tables(self) -> set[str]:
        import sqlite3

        connection = sqlite3.connect(self.db)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {name for (name,) in rows}
        finally:
            connection.close()

    def recorded(self) -> list[tuple[int, str]]:
        import sqlite3

        connection = sqlite3.connect(self.db)
        try:
            rows = connection.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
            return list(rows)
        finally:
            connection.close()


def _as_bytes(lines: bytes | str | list) -> bytes:
    if isinstance(lines, bytes):
        return lines
    if isinstance(lines, str):
        return lines.encode()
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def run_requests(workspace, folder: Path, *requests: dict) -> list[dict]:
    """The replies of one node run on `folder`'s migrations, which must exit 0."""
    replies, completed = workspace.run(list(requests), "--migrations", str(folder))
    assert completed.returncode == 0, completed.stderr
    return replies


def request(kind: str, msg_id: int, **body) -> dict:
    return {"src": "c1", "dest": "migrations", "body": {"type": kind, "msg_id": msg_id, **body}}


class LiveNode:
    """A running node.py fed request by request; replies are read by a background thread."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self._lines: queue.Queue[bytes] = queue.Queue()
        self.received = 0  # reply lines read so far by the background thread
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.received += 1
            self._lines.put(line)

    def send(self, *requests: dict) -> None:
        try:
            self.process.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
            self.process.stdin.flush()
        except BrokenPipeError:
            # Say why the node went, rather than only that its stdin closed.
            status = self.process.wait(timeout=PROCESS_TIMEOUT_S)
            said = self.process.stderr.read().decode(errors="replace")
            pytest.fail(f"node.py exited with status {status} before reading its requests;"
                        f" it said: {said[-2000:]}")

    def replies(self, count: int, timeout: float = PROCESS_TIMEOUT_S) -> list[dict]:
        """The next `count` replies; fails the test if they do not come in time."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"got {len(got)} of {count} replies in {timeout} s: {got}")
            got.append(json.loads(line))
        return got

    def finish(self, timeout: float = PROCESS_TIMEOUT_S) -> int:
        """Close stdin and wait for the node to exit; returns its exit status."""
        self.process.stdin.close()
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return status

    def no_more_replies(self) -> bool:
        return self._lines.empty()
