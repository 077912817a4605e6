"""The command line for people, run as real processes: output facts, --json byte for byte
against the stdio node, exit codes, `new`, progress on a terminal only, Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.cli.terminal import CLEAR_LINE
from broker.kinds import COMMANDS
from tests.support import (
    NODE,
    PROCESS_TIMEOUT_S,
    PROJECT,
    request,
    table_migrations,
    wait_until,
    write_migration,
)


class Output:
    """What a command writes on one descriptor (a pipe, or a terminal's main side), read
    as it comes: each wait is for bytes to arrive, bounded by PROCESS_TIMEOUT_S."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""
        self.ended = False

    def until(self, marker: bytes) -> bytes:
        """Read until `marker` appears; returns everything seen so far."""
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while marker not in self.seen:
            assert not self.ended, f"{marker!r} never came; the command wrote {self.seen!r}"
            self._read(deadline)
        return self.seen

    def to_end(self) -> bytes:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while not self.ended:
            self._read(deadline)
        return self.seen

    def _read(self, deadline: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"nothing more came in {PROCESS_TIMEOUT_S} s after {self.seen!r}"
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: a terminal's last writer has gone
            chunk = b""
        self.ended = not chunk
        self.seen += chunk


def blocking_migrations(folder: Path, started: Path, block: Path, in_down: bool = False) -> None:
    """t1, then 0002_slow, whose up() (or down()) creates `started` and waits while `block`
    exists, then t3: the test decides when migration 2 may finish."""
    table_migrations(folder, range(1, 2))
    wait = ("import os, time\n"
            f"open({str(started)!r}, 'w').close()\n"
            f"while os.path.exists({str(block)!r}):\n    time.sleep(0.01)\n")
    create = "db.execute('CREATE TABLE slow (id INTEGER)')\n"
    if in_down:
        write_migration(folder, "0002_slow.py", create, down=wait + "db.execute('DROP TABLE slow')")
    else:
        write_migration(folder, "0002_slow.py",
                        create + wait + "db.execute('INSERT INTO slow VALUES (1)')",
                        down="db.execute('DROP TABLE slow')")
    table_migrations(folder, range(3, 4))


def cancel_reached(workspace) -> bool:
    """The worker logged that it took a cancel (warnings reach its log at once)."""
    return any("cancelled 1 write(s)" in log.read_text(errors="replace")
               for log in workspace.runtime.glob("*.log"))


def cli(workspace, *args: str, folder: Path | None = None, env: dict | None = None):
    """Run `python node.py [--migrations F] ARGS` to completion; returns CompletedProcess."""
    options = ("--migrations", str(folder)) if folder is not None else ()
    return subprocess.run(
        workspace.node_command(*options, *args), capture_output=True, text=True,
        env=env or workspace.env, cwd=workspace.root, timeout=PROCESS_TIMEOUT_S,
    )


def test_status_prints_every_migration_applied_or_pending_and_when(workspace, folder):
    table_migrations(folder, range(1, 4))
    assert cli(workspace, "migrate", "--to", "2", folder=folder).returncode == 0
    done = cli(workspace, "status", folder=folder)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["version", "name", "state", "applied", "at"]
    rows = [line.split() for line in lines[1:4]]
    assert [row[:3] for row in rows] == [["1", "t1", "applied"], ["2", "t2", "applied"],
                                         ["3", "t3", "pending"]]
    assert rows[0][3].startswith("20") and rows[0][3].endswith("Z") and len(rows[2]) == 3
    assert lines[-1] == "2 applied, 1 pending"
    assert "\x1b[" not in done.stdout  # no colour into a pipe


def test_migrate_prints_each_migration_with_its_duration_then_a_summary(workspace, folder):
    table_migrations(folder, range(1, 3))
    done = cli(workspace, "migrate", folder=folder)
    assert done.returncode == 0, done.stderr
    first, second, summary = done.stdout.splitlines()
    assert first.split()[:3] == ["applied", "1", "t1"] and first.endswith(" ms")
    assert second.split()[:3] == ["applied", "2", "t2"]
    assert summary.startswith("2 migrations applied in ")
    again = cli(workspace, "migrate", folder=folder)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    back = cli(workspace, "rollback", "--steps", "2", folder=folder)
    assert back.returncode == 0, back.stderr
    assert [line.split()[2] for line in back.stdout.splitlines()[:2]] == ["2", "1"]
    assert workspace.recorded() == []


@pytest.mark.parametrize(
    ("command", "body"),
    [
        (["migrate"], {}),
        (["migrate", "--to", "1", "--dry-run"], {"to": 1, "dry_run": True}),
        (["status"], {}),
        (["validate"], {}),
        (["rollback"], {}),
        (["rollback", "--to", "0"], {"to": 0}),
        (["history", "--limit", "5"], {"limit": 5}),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_json_prints_what_the_stdio_node_prints_byte_for_byte(
    workspace, folder, tmp_path_factory, command, body
):
    table_migrations(folder, range(1, 3))
    kind = command[0]
    if kind in ("rollback", "history"):
        assert cli(workspace, "migrate", folder=folder).returncode == 0
    # The same request on an identical copy of the database, through the stdio node.
    twin = tmp_path_factory.mktemp("twin") / "test.db"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{workspace.db}{suffix}").exists():
            shutil.copy(f"{workspace.db}{suffix}", f"{twin}{suffix}")
    from_cli = cli(workspace, *command, "--json", folder=folder)
    stdio = subprocess.run(
        [sys.executable, str(NODE), "--db", str(twin), "--migrations", str(folder)],
        input=(f'{{"body": {{"type": "{kind}", "msg_id": 1'
               + "".join(f', "{k}": {str(v).lower()}' for k, v in body.items()) + "}}\n"),
        capture_output=True, text=True, env=workspace.env, timeout=PROCESS_TIMEOUT_S)
    if kind == "history":  # times and durations differ between two real runs
        assert from_cli.stdout.count('"action": "apply"') == 2
        assert from_cli.stdout.startswith('{"type": "migration_history", "in_reply_to": 1, ')
        return
    assert from_cli.stdout == stdio.stdout, (from_cli.stderr, stdio.stderr)
    assert from_cli.stdout.count("\n") == 1


def test_exit_codes_say_failed_invalid_usage_and_unreachable(workspace, folder):
    table_migrations(folder, range(1, 2))
    write_migration(folder, "0002_broken.py", "raise ValueError('boom')")
    failed = cli(workspace, "migrate", folder=folder)
    assert failed.returncode == 1
    assert "applied  1  t1" in failed.stdout
    assert "error 14: migration 2 broken failed" in failed.stderr

    (folder / "0002_broken.py").unlink()
    (folder / "0001_t1.py").write_text("def up(db):\n    pass  # edited after it was applied\n")
    drift = cli(workspace, "validate", folder=folder)
    assert drift.returncode == 1 and "changed" in drift.stdout

    assert cli(workspace, "rollback", "--steps", "0", folder=folder).returncode == 2
    assert cli(workspace, "migrate", "--to", "x", folder=folder).returncode == 2
    assert cli(workspace, "frobnicate", folder=folder).returncode == 2

    unreachable = cli(workspace, "--db", "postgresql://postgres@127.0.0.1:1/nowhere", "status",
                      folder=folder)
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("error 11: cannot connect to ")
    assert unreachable.stderr.count("\n") == 1


def test_a_worker_that_never_answers_is_exit_3_not_a_wait_forever(workspace, folder):
    address = f"ipc://{workspace.runtime}/nobody-listens.sock"
    done = cli(workspace, "--connect", address, "status", folder=folder)
    assert done.returncode == 3, done.stderr
    assert "error 13:" in done.stderr and "unreachable for 10 s" in done.stderr


def test_new_numbers_the_next_file_refuses_bad_names_and_never_overwrites(workspace, folder):
    table_migrations(folder, range(1, 3))
    made = cli(workspace, "new", "add_email", folder=folder)
    assert made.returncode == 0 and made.stdout.strip() == str(folder / "0003_add_email.py")
    stub = (folder / "0003_add_email.py").read_text()
    assert "def up(db):" in stub and "def down(db):" in stub and "NotImplementedError" in stub
    sql = cli(workspace, "new", "audit", "--sql", folder=folder)
    text = (folder / "0004_audit.sql").read_text()
    assert sql.returncode == 0 and "-- migrate:up" in text and "-- migrate:down" in text

    assert cli(workspace, "new", "bad name", folder=folder).returncode == 2
    assert cli(workspace, "new", "1st", folder=folder).returncode == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "0001_t1.py", "0002_t2.py", "0003_add_email.py", "0004_audit.sql"]
    # A stub refuses to run: applying it fails, and nothing is recorded for it.
    failed = cli(workspace, "migrate", folder=folder)
    assert failed.returncode == 1 and "NotImplementedError" in failed.stderr


def test_new_never_overwrites_a_file_that_appears_at_its_name(workspace, folder):
    (folder / "0001_first.py").write_text("def up(db):\n    pass\n")
    target = folder / "0002_second.sql"
    target.symlink_to(folder / "elsewhere")  # a dangling link where the file would go
    done = cli(workspace, "new", "second", "--sql", folder=folder)
    assert done.returncode == 2 and "exists already" in done.stderr
    assert not (folder / "elsewhere").exists()


def test_every_command_has_help_with_an_example(workspace):
    for command in COMMANDS:
        done = cli(workspace, command, "--help")
        assert done.returncode == 0 and "example" in done.stdout, command
        examples = done.stdout.partition("\nexample")[2].partition("\n\n")[0].splitlines()[1:]
        assert examples and all(line.startswith("  migrations-node ") for line in examples)
        assert done.stdout.endswith("go before or after it: see migrations-node --help\n")
    top = cli(workspace, "--help")
    assert "examples:" in top.stdout and "migrate" in top.stdout


def test_progress_goes_to_a_terminal_and_never_into_a_pipe(workspace, folder):
    table_migrations(folder, range(1, 4))
    piped = cli(workspace, "migrate", "--to", "2", folder=folder)
    assert piped.returncode == 0 and piped.stderr == ""

    main, secondary = pty.openpty()
    process = subprocess.Popen(
        workspace.node_command("--migrations", str(folder), "rollback", "--to", "0"),
        stdout=subprocess.PIPE, stderr=secondary, env=workspace.env, cwd=workspace.root)
    os.close(secondary)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([main], [], [], PROCESS_TIMEOUT_S)
            assert ready, "the command wrote nothing on its terminal"
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        assert process.wait(timeout=PROCESS_TIMEOUT_S) == 0
        process.stdout.close()
    assert b"[0/2] rolling back 2 t2" in seen and b"[2/2]" in seen and b"elapsed" in seen
    assert seen.endswith(b"\r\x1b[K")  # the line is cleared at the end


def test_ctrl_c_during_migrate_rolls_back_the_running_one_and_exits_130(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    blocking_migrations(folder, started, block)
    process = subprocess.Popen(
        workspace.node_command("--migrations", str(folder), "migrate"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=workspace.env,
        cwd=workspace.root)
    workspace.started.append(process)
    wait_until(started.exists, what="migration 2 to start")
    process.send_signal(signal.SIGINT)
    assert process.stderr.readline().startswith("cancelling: ")  # the cancel went out
    wait_until(lambda: cancel_reached(workspace), what="the worker to take the cancel")
    block.unlink()
    out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
    assert process.returncode == 130, err
    assert out, err
    assert out.splitlines()[0].split()[:3] == ["applied", "1", "t1"]
    assert err.splitlines()[-1].startswith("cancelled: migration 2 slow was interrupted")
    assert "cancelled: cancelled" not in err
    assert workspace.recorded() == [(1, "t1")]
    assert "slow" not in workspace.tables() and "t3" not in workspace.tables()


def test_ctrl_c_on_a_terminal_clears_the_progress_line_before_saying_anything(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    blocking_migrations(folder, started, block)
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        workspace.node_command("--migrations", str(folder), "migrate"),
        stdout=subprocess.PIPE, stderr=secondary, env=workspace.env, cwd=workspace.root)
    workspace.started.append(process)
    os.close(secondary)
    terminal = Output(main)
    try:
        terminal.until(b"applying 2 slow")  # the progress line is on the terminal
        wait_until(started.exists, what="migration 2 to start")
        process.send_signal(signal.SIGINT)
        terminal.until(b"cancelling: ")
        wait_until(lambda: cancel_reached(workspace), what="the worker to take the cancel")
        block.unlink()
        seen = terminal.to_end()
    finally:
        os.close(main)
    assert process.wait(timeout=PROCESS_TIMEOUT_S) == 130, seen
    # Each sentence starts a line of its own: the progress line was cleared before it.
    for sentence in (b"cancelling: ", b"cancelled: "):
        assert seen[:seen.index(sentence)].endswith((CLEAR_LINE.encode(), b"\n")), seen
    assert b"cancelled: migration 2 slow was interrupted" in seen
    assert b"cancelled: cancelled" not in seen
    assert process.stdout.read().split()[:3] == [b"applied", b"1", b"t1"]
    assert workspace.recorded() == [(1, "t1")]


@pytest.mark.parametrize(
    "command",
    [["migrate", "--to"], ["history", "--limit"], ["rollback", "--steps"], ["rollback", "--to"]],
    ids=" ".join)
def test_integers_above_2_63_minus_1_are_bad_usage_naming_the_option(workspace, folder, command):
    for value in ("99999999999999999999", str(2**63), "9" * 5000):
        done = cli(workspace, *command, value, folder=folder)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines()[-1].endswith(
            f"error: argument {command[1]}: must be at most {2**63 - 1} (2^63 - 1)")
        assert "Traceback" not in done.stderr
    largest = cli(workspace, "history", "--limit", str(2**63 - 1), folder=folder)
    assert largest.returncode == 0, largest.stderr


def test_text_the_output_encoding_cannot_show_is_escaped_not_a_traceback(workspace, folder):
    write_migration(folder, "0001_ajout_café.py", "db.execute('CREATE TABLE café (id INTEGER)')",
                    down="db.execute('DROP TABLE café')")
    write_migration(folder, "0002_échec.py", "raise ValueError('déjà vu')")
    ascii_only = {**workspace.env, "PYTHONIOENCODING": "ascii"}
    failed = cli(workspace, "migrate", folder=folder, env=ascii_only)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stdout.startswith("applied  1  ajout_caf\\xe9  ")
    assert "migration 2 \\xe9chec failed" in failed.stderr and "d\\xe9j\\xe0 vu" in failed.stderr
    (folder / "0002_échec.py").unlink()
    for command in ("status", "history", "rollback"):
        done = cli(workspace, command, folder=folder, env=ascii_only)
        assert done.returncode == 0, done.stderr
        assert "ajout_caf\\xe9" in done.stdout and "Traceback" not in done.stderr, command
    header, row = cli(workspace, "status", folder=folder, env=ascii_only).stdout.splitlines()[:2]
    assert header.index("state") == row.index("pending")  # columns measured as written


def test_a_log_line_during_progress_starts_on_a_cleared_line(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    blocking_migrations(folder, started, block)
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        workspace.node_command("--migrations", str(folder), "migrate"),
        stdout=subprocess.PIPE, stderr=secondary, env=workspace.env, cwd=workspace.root)
    workspace.started.append(process)
    os.close(secondary)
    terminal = Output(main)
    try:
        terminal.until(b"applying 2 slow")
        wait_until(started.exists, what="migration 2 to start")
        started.unlink()
        assert workspace.kill_worker() is not None
        terminal.until(b"disconnected")  # the node logs it at warning
        wait_until(started.exists, what="migration 2 to start again in a new worker")
        block.unlink()
        seen = terminal.to_end()
    finally:
        os.close(main)
    assert process.wait(timeout=PROCESS_TIMEOUT_S) == 0, seen
    log_line = re.search(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ node\[\d+\] WARNING", seen)
    assert log_line, seen
    assert seen[:log_line.start()].endswith((CLEAR_LINE.encode(), b"\n")), seen
    assert workspace.recorded() == [(1, "t1"), (2, "slow"), (3, "t3")]
    # Each step once, whichever worker told it.
    lines = process.stdout.read().decode().splitlines()
    assert [line.split("  ")[:2] for line in lines[:3]] == [["applied", "1"], ["applied", "2"],
                                                           ["applied", "3"]]
    assert lines[3].startswith("3 migrations applied in ") and len(lines) == 4


@pytest.mark.parametrize("command", [["migrate"], ["rollback", "--steps", "3"]],
                         ids=["migrate", "rollback --steps 3"])
def test_each_step_is_printed_as_it_commits(workspace, folder, command):
    started, block = workspace.root / "started", workspace.root / "block"
    migrating = command[0] == "migrate"
    blocking_migrations(folder, started, block, in_down=not migrating)
    if not migrating:
        assert cli(workspace, "migrate", folder=folder).returncode == 0
    block.touch()
    process = subprocess.Popen(
        workspace.node_command("--migrations", str(folder), *command),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=workspace.env, cwd=workspace.root)
    workspace.started.append(process)
    stdout = Output(process.stdout.fileno())
    # The first step's line comes while migration 2 is still held, so before it commits.
    first = stdout.until(b"\n").decode()
    word, version = ("applied", "1") if migrating else ("rolled back", "3")
    assert first.startswith(f"{word}  {version}  t{version}  ") and first.endswith(" ms\n")
    assert block.exists()
    wait_until(started.exists, what="migration 2 to start")
    block.unlink()
    lines = stdout.to_end().decode().splitlines()
    assert process.wait(timeout=PROCESS_TIMEOUT_S) == 0, process.stderr.read()
    order = ["1", "2", "3"] if migrating else ["3", "2", "1"]
    assert [line.split("  ")[1] for line in lines[:3]] == order
    assert all(line.startswith(f"{word}  ") and line.endswith(" ms") for line in lines[:3])
    assert lines[3].startswith(f"3 migrations {word} in ") and len(lines) == 4


def test_a_closed_stdout_is_exit_141_and_stderr_says_what_was_applied(workspace, folder):
    table_migrations(folder, range(1, 3))
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: as `migrations-node migrate | true`
    try:
        done = subprocess.run(
            workspace.node_command("--migrations", str(folder), "migrate"), stdout=write_end,
            stderr=subprocess.PIPE, text=True, env=workspace.env, cwd=workspace.root,
            timeout=PROCESS_TIMEOUT_S)
        status = subprocess.run(
            workspace.node_command("--migrations", str(folder), "status"), stdout=write_end,
            stderr=subprocess.PIPE, text=True, env=workspace.env, cwd=workspace.root,
            timeout=PROCESS_TIMEOUT_S)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ("error: stdout was closed before every line was written;"
                           " 2 migrations applied: 1 t1, 2 t2\n")
    assert workspace.recorded() == [(1, "t1"), (2, "t2")]
    assert status.returncode == 141, status.stderr
    assert status.stderr == "error: stdout was closed before every line was written\n"


def test_a_reader_gone_after_the_first_line_loses_lines_not_the_migration(workspace, folder):
    started, block = workspace.root / "started", workspace.root / "block"
    block.touch()
    blocking_migrations(folder, started, block)
    process = subprocess.Popen(
        workspace.node_command("--migrations", str(folder), "migrate"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=workspace.env, cwd=workspace.root)
    workspace.started.append(process)
    # As `| head -1`: one line read, then the reader goes while migration 2 runs.
    assert Output(process.stdout.fileno()).until(b"\n").startswith(b"applied  1  t1  ")
    process.stdout.close()
    wait_until(started.exists, what="migration 2 to start")
    block.unlink()
    assert process.wait(timeout=PROCESS_TIMEOUT_S) == 141
    assert process.stderr.read().decode() == (
        "error: stdout was closed before every line was written;"
        " 3 migrations applied: 1 t1, 2 slow, 3 t3\n")
    assert workspace.recorded() == [(1, "t1"), (2, "slow"), (3, "t3")]


def test_the_console_script_is_python_node_py(workspace):
    script = Path(sys.executable).parent / "migrations-node"
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e . puts it there)")
    installed = subprocess.run(
        [sys.executable, "-c", "import node; print(node.__file__)"], capture_output=True,
        text=True, cwd=workspace.root, timeout=PROCESS_TIMEOUT_S).stdout.strip()
    if installed != str(NODE):  # another checkout (a git worktree) was installed
        pytest.skip(f"{script} runs {installed or 'no node.py'}, not {NODE}")
    done = subprocess.run([str(script), "--db", str(workspace.db), "status", "--json"],
                          capture_output=True, text=True, env=workspace.env,
                          cwd=workspace.root, timeout=PROCESS_TIMEOUT_S)
    direct = subprocess.run(
        [sys.executable, str(NODE), "--db", str(workspace.db)],
        input=request_line("status"), capture_output=True, text=True, env=workspace.env,
        cwd=PROJECT, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0 and done.stdout == direct.stdout


def request_line(kind: str) -> str:
    import json

    return json.dumps(request(kind, 1)) + "\n"
