"""Shared fixtures: real node processes on a temporary database, and the databases the
engine tests run on (SQLite, PostgreSQL, MariaDB), cleaned up whatever happens."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import endpoint
from broker.spawn import IDLE_EXIT_ENV
from tests.backends import (
    MARIADB_HOST,
    MARIADB_PORT,
    PG_HOST,
    PG_PORT,
    PG_SERVER,
    Backend,
    MariaDbBackend,
    PostgresBackend,
    SqliteBackend,
    mariadb_problem,
    postgres_answers,
)
from tests.processes import alive_owner, gone, started_with
from tests.support import PROCESS_TIMEOUT_S, TEST_IDLE_EXIT_S, Workspace

LOG_LINES_ON_FAILURE = 80  # of each worker log and node's stderr, printed for a failed test


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test, so that a fixture can tell it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def print_what_processes_said(space: Workspace) -> None:
    """The end of every worker log and node stderr of a failed test: a test that timed out
    waiting for a reply then shows what the processes were doing."""
    for log in sorted(space.runtime.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_LINES_ON_FAILURE:]
        print(f"--- worker log {log.name} (last {len(lines)} lines)", *lines, sep="\n")
    for process in space.started:
        if process.stderr is not None and not process.stderr.closed:
            lines = process.stderr.read().decode(errors="replace").splitlines()
            print(f"--- node pid {process.pid} stderr, status {process.returncode}",
                  *lines[-LOG_LINES_ON_FAILURE:], sep="\n")


@pytest.fixture
def workspace(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    # A short runtime directory: unix socket paths hold about 100 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="mn-", dir="/tmp"))
    env = {**os.environ, "MIGRATIONS_RUNTIME_DIR": str(runtime)}
    env.pop("MIGRATIONS_TEST_CRASH_AFTER_COMMIT", None)
    # Each test says what it means.
    for setting in ("DATABASE_URL", "MIGRATIONS_DIR", "MIGRATIONS_DUMP"):
        env.pop(setting, None)
    # A spawned worker outlives its nodes until teardown kills it, so that no test depends
    # on a next node arriving within the 3 s idle exit, however busy the machine is.
    env[IDLE_EXIT_ENV] = str(TEST_IDLE_EXIT_S)
    space = Workspace(root=tmp_path, runtime=runtime, db=tmp_path / "test.db", env=env)
    try:
        yield space
    finally:
        try:
            stop_nodes(space, getattr(request.node, "report_call", None))
        finally:
            kill_workers(space)


@pytest.fixture
def folder(workspace: Workspace) -> Path:
    """An empty migrations folder in the workspace, for the test to fill."""
    path = workspace.root / "migrations"
    path.mkdir()
    return path


def stop_nodes(space: Workspace, report: pytest.TestReport | None) -> None:
    """Kill the test's nodes; for a failed test, print what its processes said."""
    for process in space.started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=PROCESS_TIMEOUT_S)
    if report is not None and report.failed:
        print_what_processes_said(space)
    for process in space.started:
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def kill_workers(space: Workspace) -> None:
    """Kill every worker the test's nodes started and remove its runtime directory, even
    after a teardown step that failed: a worker left running an endless statement would
    take a core from every later test."""
    runtime = space.runtime
    try:
        # Every worker this test's nodes started, whether or not it got as far as its lock
        # (one still starting when the test ended would otherwise idle for an hour).
        leftovers = set(started_with("MIGRATIONS_RUNTIME_DIR", str(runtime)))
        owner = alive_owner(space.db)
        if owner is not None:
            leftovers.add(owner)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """The URL of a fresh database on the machine's PostgreSQL server, one per test module,
    dropped (sessions and all) after it. Skips only when no server answers; a server that
    answers but refuses us is an error."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (extra: postgres)")
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {PG_HOST}:{PG_PORT}")
    admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
    name = f"mn_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin.execute(f"CREATE DATABASE {name}")
        yield f"{PG_SERVER}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session")
def mariadb_server() -> None:
    """Skips, saying why, when PyMySQL is missing or no MariaDB server answers (asked once
    per session); a server that answers is used by each test's own database."""
    problem = mariadb_problem()
    if problem is not None:
        pytest.skip(problem)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The test's database, once on SQLite (a file in tmp_path), once on PostgreSQL (a
    schema of its own in the module's database) and once on MariaDB (a fresh database of
    its own on the server)."""
    if request.param == "sqlite":
        db: Backend = SqliteBackend(tmp_path / "db.sqlite")
    elif request.param == "postgresql":
        db = PostgresBackend(request.getfixturevalue("pg_database"))
    else:
        request.getfixturevalue("mariadb_server")
        db = MariaDbBackend()
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[Any]:
    """A migrations folder and a SQLite file in tmp_path (tests/test_engine.py's Node), for
    the engine tests about SQLite alone."""
    from tests.test_engine import Node  # a test module's class: not loaded before it is needed

    db = SqliteBackend(tmp_path / "db.sqlite")
    try:
        yield Node(tmp_path, db)
    finally:
        db.close()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database(request: pytest.FixtureRequest, workspace, monkeypatch) -> Iterator[str]:
    """The workspace's --db on each backend, one test case each: its SQLite file, or a
    fresh database on the machine's PostgreSQL or MariaDB server (skipped, saying why,
    only when none answers), dropped afterwards with its worker killed first."""
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, workspace.env[endpoint.RUNTIME_DIR_ENV])
    if request.param == "sqlite":
        yield str(workspace.db)
        return
    name = f"mn_verify_test_{secrets.token_hex(4)}"
    if request.param == "postgresql":
        psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
        try:
            admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432: {exc}")
        admin.execute(f"CREATE DATABASE {name}")
        url = f"{PG_SERVER}/{name}"
        drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    else:
        pymysql = pytest.importorskip("pymysql", reason="PyMySQL is not installed")
        try:
            admin = pymysql.connect(host=MARIADB_HOST, port=MARIADB_PORT, user="root",
                                    password="", autocommit=True, connect_timeout=5)
        except pymysql.Error as exc:
            pytest.skip(f"no MariaDB server at 127.0.0.1:3306: {exc}")
        admin.cursor().execute(f"CREATE DATABASE {name}")
        url = f"mysql://root@127.0.0.1:3306/{name}"
        drop = f"DROP DATABASE IF EXISTS {name}"
    workspace.db = url
    try:
        yield url
    finally:
        pid = endpoint.read_owner(endpoint.for_database(url).lock_path).pid
        if pid is not None and not gone(pid):
            os.kill(pid, signal.SIGKILL)
        if request.param == "postgresql":
            admin.execute(drop)
        else:
            admin.cursor().execute(drop)
        admin.close()
