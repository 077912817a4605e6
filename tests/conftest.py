"""Shared fixtures: real node processes on a temporary database, cleaned up whatever happens."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.spawn import IDLE_EXIT_ENV
from tests.processes import alive_owner, started_with
from tests.support import PROCESS_TIMEOUT_S, TEST_IDLE_EXIT_S, Workspace


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    # A short runtime directory: unix socket paths hold about 100 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    env = {**os.environ, "MIGRATIONS_RUNTIME_DIR": str(runtime)}
    env.pop("MIGRATIONS_TEST_CRASH_AFTER_COMMIT", None)
    # A spawned worker outlives its nodes until teardown kills it, so that no test depends
    # on a next node arriving within the 3 s idle exit, however busy the machine is.
    env[IDLE_EXIT_ENV] = str(TEST_IDLE_EXIT_S)
    space = Workspace(root=tmp_path, runtime=runtime, db=tmp_path / "test.db", env=env)
    try:
        yield space
    finally:
        for process in space.started:
            if process.poll() is None:
                process.kill()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
            process.wait(timeout=PROCESS_TIMEOUT_S)
        # Every worker this test's nodes started, whether or not it got as far as its lock
        # (one still starting when the test ended would otherwise idle for an hour).
        leftovers = set(started_with("MIGRATIONS_RUNTIME_DIR", str(runtime)))
        owner = alive_owner(space.db)
        if owner is not None:
            leftovers.add(owner)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(runtime, ignore_errors=True)
