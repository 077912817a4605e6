"""Errors that say what to do, with real processes: a PostgreSQL URL without the driver, a
server that refuses us for good or only for now, a SQLite path that cannot be opened, and
the stdio node started by a person on a terminal."""

from __future__ import annotations

import json
import os
import pty
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.backends import PG_HOST, PG_PORT, PG_SERVER, postgres_answers
from tests.support import NODE, PROCESS_TIMEOUT_S, PROJECT, free_port, request

INSTALL = "pip install 'migrations-node[postgres]'"
TRANSIENT = "nothing ran, try again"
LASTING = "nothing ran, and nothing will until"  # error 11 for good: README, PostgreSQL
HINT = ("migrations-node: reading JSON requests on stdin (the stdio node); type Ctrl-D to end,"
        " or run 'migrations-node --help' for the commands")


def here(workspace) -> Path:
    """The test's folder, with a migrations/ of its own (empty), so that a command says
    nothing of the bundled examples and stderr holds the error alone."""
    (workspace.root / "migrations").mkdir(exist_ok=True)
    return workspace.root


def cli(workspace, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """`python node.py ARGS` in the test's folder, run to its end."""
    return subprocess.run(
        [python, str(NODE), *args], capture_output=True, text=True, env=workspace.env,
        cwd=here(workspace), timeout=PROCESS_TIMEOUT_S,
    )


def stdio(workspace, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """The stdio node with one status request on stdin, run to its end."""
    return subprocess.run(
        [python, str(NODE), *args], input=json.dumps(request("status", 1)) + "\n",
        capture_output=True, text=True, env=workspace.env, cwd=here(workspace),
        timeout=PROCESS_TIMEOUT_S,
    )


# -- a PostgreSQL URL without the postgres extra -------------------------------------------


@pytest.fixture(scope="module")
def python_without_psycopg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The interpreter of a real virtual environment that holds what the node and its
    worker need (pyzmq and msgpack) and not psycopg: `import psycopg` fails there as it
    does for anyone who installed migrations-node without its `postgres` extra.

    pyzmq and msgpack are linked in from this interpreter's own installation, rather than
    installed from the package index: the same files, without a network or the seconds a
    download takes.
    """
    home = tmp_path_factory.mktemp("without-psycopg")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home / "venv")],
                   check=True, timeout=PROCESS_TIMEOUT_S)
    python = home / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S,
    ).stdout.strip()
    for module in (zmq, msgpack):
        package = Path(module.__file__).parent
        (Path(site) / package.name).symlink_to(package)
        libs = package.parent / f"py{package.name}.libs"  # libzmq, for zmq's extension
        if libs.exists():
            (Path(site) / libs.name).symlink_to(libs)
    lacking = subprocess.run([python, "-c", "import psycopg"], capture_output=True, text=True,
                             timeout=PROCESS_TIMEOUT_S)
    assert "No module named 'psycopg'" in lacking.stderr
    subprocess.run([python, "-c", "import zmq, msgpack"], check=True, timeout=PROCESS_TIMEOUT_S)
    return str(python)


def test_a_postgresql_url_without_the_extra_stops_at_once_with_the_pip_command(
    workspace, python_without_psycopg
):
    url = f"{PG_SERVER}/postgres"
    done = cli(workspace, "--db", url, "status", python=python_without_psycopg)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: the worker cannot start: a PostgreSQL URL needs"
                                  " psycopg 3, which is not installed"), done.stderr
    assert done.stderr.rstrip().endswith(f": {INSTALL}"), done.stderr
    assert "restarting" not in done.stderr

    node = stdio(workspace, "--db", url, python=python_without_psycopg)
    assert node.returncode == 2, node.stderr
    assert node.stdout == ""
    assert INSTALL in node.stderr and "restarting" not in node.stderr, node.stderr
    assert "worker[" not in node.stderr, "the worker's log line is not pasted in"


# -- a server that refuses us: for good (exit 2) or for now (exit 3) ------------------------


@pytest.fixture(scope="module")
def server() -> str:
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (extra: postgres)")
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {PG_HOST}:{PG_PORT}")
    return PG_SERVER


@pytest.fixture
def role_without_login(server: str) -> Iterator[str]:
    """A role that exists on the real server but may not log in."""
    import psycopg

    name = f"mn_nologin_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE ROLE {name} NOLOGIN")
        try:
            yield name
        finally:
            admin.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.mark.parametrize(
    ("url", "wrong"),
    [
        (f"{PG_SERVER}/mn_no_such_database", "the database does not exist"),
        (f"postgresql://mn_no_such_role@{PG_HOST}:{PG_PORT}/postgres",
         "the role does not exist"),
    ],
    ids=["database", "role"],
)
def test_a_database_or_role_that_does_not_exist_is_exit_2_while_a_server_down_stays_3(
    workspace, server, url, wrong
):
    refused = cli(workspace, "--db", url, "status")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error 11: cannot connect to {url}: {wrong} ("), \
        refused.stderr
    assert LASTING in refused.stderr and "try again" not in refused.stderr
    assert refused.stderr.count("\n") == 1

    (reply,) = [json.loads(line) for line in stdio(workspace, "--db", url).stdout.splitlines()]
    assert reply["code"] == 11 and reply["text"] == refused.stderr[len("error 11: "):].rstrip()

    # The contrast, on the same server: nothing listens on this port, which may change.
    down = f"postgresql://postgres@{PG_HOST}:{free_port()}/postgres"
    unreachable = cli(workspace, "--db", down, "status")
    assert unreachable.returncode == 3, unreachable.stderr
    assert unreachable.stderr.startswith(f"error 11: cannot connect to {down}: ")
    assert unreachable.stderr.rstrip().endswith(TRANSIENT) and LASTING not in unreachable.stderr


def test_a_role_that_may_not_log_in_is_exit_2_and_says_so(workspace, role_without_login):
    url = f"postgresql://{role_without_login}@{PG_HOST}:{PG_PORT}/postgres"
    refused = cli(workspace, "--db", url, "status")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error 11: cannot connect to {url}: the role may not"
                                     " log in ("), refused.stderr
    assert f'role "{role_without_login}" is not permitted to log in' in refused.stderr
    assert LASTING in refused.stderr and "try again" not in refused.stderr


# -- a SQLite path that cannot be opened ----------------------------------------------------


def sqlite_paths(root: Path) -> dict[str, tuple[Path, str]]:
    """--db paths that cannot be opened, each with the reason the node must give."""
    (root / "a-folder").mkdir()
    (root / "a-file").write_text("plain text\n")
    (root / "not-a-database").write_bytes(b"not a database, whatever its name says\n" * 100)
    return {
        "missing folder": (root / "missing" / "app.db", f"its folder {root / 'missing'} does"
                           " not exist"),
        "a folder": (root / "a-folder", "it is a folder"),
        "under a file": (root / "a-file" / "app.db", f"{root / 'a-file'} is not a folder"),
        "not a database": (root / "not-a-database", "file is not a database"),
    }


@pytest.mark.parametrize("case", ["missing folder", "a folder", "under a file", "not a database"])
def test_a_sqlite_path_that_cannot_be_opened_is_named_with_the_reason(workspace, case):
    path, reason = sqlite_paths(workspace.root)[case]
    sentence = f"the worker cannot start: cannot open {path} as a SQLite database: {reason}"
    done = cli(workspace, "--db", str(path), "status")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {sentence}\n"

    node = stdio(workspace, "--db", str(path))
    assert node.returncode == 2 and node.stdout == ""
    (line,) = node.stderr.splitlines()
    assert line.endswith(f" ERROR node: {sentence}"), line
    assert "worker[" not in line, "the worker's log line is not pasted in"


def without_permission_override() -> None:
    """In the child, before it runs: give up root's power to read and write what file
    permissions refuse (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), for it and its children."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_sqlite_file_without_permission_is_named_with_the_reason(workspace):
    """A file nobody may read or write (mode 000); a node run by root gives up the
    capabilities that ignore file permissions, so that they apply to it as to anyone."""
    path = workspace.root / "secret.db"
    path.write_bytes(b"")
    path.chmod(0)
    done = subprocess.run(
        [sys.executable, str(NODE), "--db", str(path), "status"], capture_output=True,
        text=True, env=workspace.env, cwd=here(workspace), timeout=PROCESS_TIMEOUT_S,
        preexec_fn=without_permission_override if os.geteuid() == 0 else None,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: the worker cannot start: cannot open"
                           f" {path} as a SQLite database: permission denied\n")


# -- the stdio node on a terminal -----------------------------------------------------------


def run_on_terminal(command: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run `command` with a real terminal (a pty) as its stdin and a pipe as stderr; type
    Ctrl-D at once (the end of input, whenever it reads); returns its status and stderr."""
    main, terminal = pty.openpty()
    try:
        process = subprocess.Popen(command, stdin=terminal, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=cwd, env=env)
        os.close(terminal)
        terminal = -1
        os.write(main, b"\x04")  # Ctrl-D on an empty line: end of input
        _, said = process.communicate(timeout=PROCESS_TIMEOUT_S)
        return process.returncode, said.decode()
    finally:
        os.close(main)
        if terminal != -1:
            os.close(terminal)


def test_the_hint_is_one_line_on_stderr_when_stdin_is_a_terminal_and_nothing_otherwise(tmp_path):
    say = [sys.executable, "-c",
           "from broker.cli.hints import hint_on_terminal; hint_on_terminal()"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    status, said = run_on_terminal(say, cwd=tmp_path, env=env)
    assert status == 0 and said == HINT + "\n"
    piped = subprocess.run(say, input="", capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=PROCESS_TIMEOUT_S)
    assert piped.returncode == 0 and piped.stderr == ""


def test_the_stdio_node_on_a_terminal_says_what_it_reads_instead_of_waiting_silently(workspace):
    status, said = run_on_terminal([sys.executable, str(NODE), "--db", str(workspace.db)],
                                   cwd=workspace.root, env=workspace.env)
    assert status == 0
    assert said == HINT + "\n"
