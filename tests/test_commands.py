"""The commands people expect beyond the first ones, run as real processes: baseline,
status --exit-code, .sql stubs that refuse to apply, misspelt commands, each command's own
--help, and shell completion."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import commands
from broker.kinds import COMMANDS
from tests.support import NODE, PROCESS_TIMEOUT_S, PROJECT, table_migrations
from tests.test_cli import cli


def stdio(workspace, db: Path, folder: Path, line: str) -> str:
    """What the stdio node writes for one request line on database `db`."""
    return subprocess.run(
        [sys.executable, str(NODE), "--db", str(db), "--migrations", str(folder)],
        input=line + "\n", capture_output=True, text=True, env=workspace.env,
        timeout=PROCESS_TIMEOUT_S).stdout


def test_baseline_records_up_to_v_without_running_them_a_line_each(workspace, folder):
    table_migrations(folder, range(1, 4))
    done = cli(workspace, "baseline", "--to", "2", folder=folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "baselined  1  t1", "baselined  2  t2",
        "2 migrations baselined: recorded as applied, none of them run"]
    assert workspace.recorded() == [(1, "t1"), (2, "t2")]
    assert not {"t1", "t2"} & workspace.tables()  # recorded, not run
    status = cli(workspace, "status", folder=folder)
    assert status.stdout.splitlines()[-1] == "2 applied, 1 pending"


def test_baseline_on_a_database_with_records_is_error_22_and_exit_1(workspace, folder):
    table_migrations(folder, range(1, 3))
    assert cli(workspace, "migrate", "--to", "1", folder=folder).returncode == 0
    refused = cli(workspace, "baseline", "--to", "2", folder=folder)
    assert refused.returncode == 1
    assert refused.stderr == ("error 22: baseline is for a database with nothing recorded,"
                              " and 1 migrations are recorded here\n")
    assert refused.stdout == "" and workspace.recorded() == [(1, "t1")]


@pytest.mark.parametrize(
    ("arguments", "said"),
    [([], "the following arguments are required: --to"),
     (["--to", "0"], "argument --to: must be at least 1, not 0"),
     (["--to", "x"], "argument --to: 'x' is not a whole number")],
    ids=["no --to", "--to 0", "--to x"])
def test_baseline_without_a_version_from_1_is_bad_usage(workspace, folder, arguments, said):
    table_migrations(folder, range(1, 2))
    done = cli(workspace, "baseline", *arguments, folder=folder)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].endswith(f"error: {said}")
    assert not workspace.db.exists()  # nothing was sent


def test_baseline_json_is_what_the_stdio_node_writes_byte_for_byte(
    workspace, folder, tmp_path_factory
):
    table_migrations(folder, range(1, 3))
    twin = tmp_path_factory.mktemp("twin") / "test.db"
    from_cli = cli(workspace, "baseline", "--to", "2", "--json", folder=folder)
    assert from_cli.returncode == 0, from_cli.stderr
    line = '{"body": {"type": "baseline", "msg_id": 1, "to": 2}}'
    expected = stdio(workspace, twin, folder, line)
    assert from_cli.stdout == expected and expected.startswith('{"type": "migrations_baselined"')
    again = cli(workspace, "baseline", "--to", "2", "--json", folder=folder)
    assert again.returncode == 1
    assert again.stdout == stdio(workspace, twin, folder, line)
    assert '"code": 22' in again.stdout


@pytest.mark.parametrize("json", [[], ["--json"]], ids=["table", "--json"])
def test_status_exit_code_is_1_while_anything_is_pending_and_0_after(workspace, folder, json):
    table_migrations(folder, range(1, 3))
    assert cli(workspace, "status", *json, folder=folder).returncode == 0  # without the flag
    waiting = cli(workspace, "status", "--exit-code", *json, folder=folder)
    assert waiting.returncode == 1 and waiting.stderr == ""
    assert waiting.stdout == cli(workspace, "status", *json, folder=folder).stdout
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    done = cli(workspace, "status", "--exit-code", *json, folder=folder)
    assert done.returncode == 0, done.stderr


def test_an_unedited_sql_stub_fails_loudly_and_each_section_runs_once_written(workspace, folder):
    made = cli(workspace, "new", "audit", "--sql", folder=folder)
    assert made.returncode == 0, made.stderr
    stub = folder / "0001_audit.sql"
    unwritten = ("0001_audit.sql line 2: the up section is an unwritten stub; write its SQL,"
                 " then delete this '-- migrate:stub' line")
    for dry_run in (["--dry-run"], []):
        refused = cli(workspace, "migrate", *dry_run, folder=folder)
        assert refused.returncode == 1, refused.stdout
        assert refused.stderr.splitlines()[-1] == (
            "error 14: migration 1 audit failed and was rolled back, so it is not applied:"
            f" UnwrittenSection: {unwritten}"), refused.stderr
    assert workspace.recorded() == []

    # The up section written and its stub line deleted: it applies; the down stub refuses.
    lines = stub.read_text().splitlines()
    assert lines[1].startswith("-- migrate:stub ") and lines[4].startswith("-- migrate:stub ")
    stub.write_text("\n".join([lines[0], "CREATE TABLE audit (id INTEGER);", *lines[2:]]))
    assert cli(workspace, "migrate", folder=folder).returncode == 0
    assert "audit" in workspace.tables()
    refused = cli(workspace, "rollback", folder=folder)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        "error 14: rollback of migration 1 audit failed, so it stays applied and unchanged:"
        " UnwrittenSection: 0001_audit.sql line 5: the down section is an unwritten stub;"
        " write its SQL, then delete this '-- migrate:stub' line (or delete the whole section"
        " if the change cannot be undone)")
    assert workspace.recorded() == [(1, "audit")] and "audit" in workspace.tables()


class Refused(Exception):
    """What argparse's error() was called with."""


class CapturingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise Refused(message)


def argparse_message(words: list[str]) -> str:
    """What argparse says about `words`, on a parser built as node.py builds it: with the
    commands when a word is one (or -h), without them (the stdio node's) otherwise."""
    parser = CapturingParser(prog="migrations-node")
    parser.add_argument("--db")
    if set(words) & {*COMMANDS, "-h", "--help"}:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        commands.add_commands(parser, common)
    with pytest.raises(Refused) as refused:
        parser.parse_args(words)
    return str(refused.value)


@pytest.mark.parametrize(
    ("words", "said"),
    [(["stauts"], "'stauts' is not a command; did you mean 'status'?"),
     (["--db", "app.db", "migarte", "--to", "3"], "'migarte' is not a command;"
      " did you mean 'migrate'?"),
     (["Rollback"], "'Rollback' is not a command; did you mean 'rollback'?"),
     (["--db", "status", "stauts"], "'stauts' is not a command; did you mean 'status'?"),
     (["frobnicate"], "'frobnicate' is not a command;")],
    ids=" ".join)
def test_a_word_that_is_no_command_is_named_with_the_nearest_and_the_list(words, said):
    sentence = commands.misspelt_command(words, argparse_message(words))
    assert sentence == f"{said} commands: {', '.join(COMMANDS)}"


@pytest.mark.parametrize(
    "words", [["status", "extra"], ["--frob"], ["migrate", "--to", "x"], ["--db"]], ids=" ".join)
def test_other_usage_errors_keep_what_argparse_says(words):
    assert commands.misspelt_command(words, argparse_message(words)) is None


OWN_OPTIONS = {
    "migrate": {"--json", "--to", "--dry-run", "--accept-drift"},
    "rollback": {"--json", "--steps", "--to", "--dry-run", "--accept-drift"},
    "baseline": {"--json", "--to"},
    "adopt": {"--json", "--from", "--dry-run"},
    "resolve": {"--json", "--applied", "--not-applied"},
    "status": {"--json", "--exit-code"},
    "verify": {"--json"},
    "validate": {"--json"},
    "lint": {"--json"},
    "history": {"--json", "--limit"},
    "new": {"--sql"},
    "health": {"--json"},
    "stop": set(),
    "config": set(),
    "dump": {"--json", "--output"},
}


def test_with_hidden_common_options_each_command_help_lists_only_its_own():
    # As node.py builds it, its options for after the command hidden (help=SUPPRESS).
    parser = argparse.ArgumentParser(prog="migrations-node")
    common = argparse.ArgumentParser(add_help=False)
    for option in ("--db", "--migrations"):
        parser.add_argument(option)
        common.add_argument(option, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands.add_commands(parser, common)
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == set(OWN_OPTIONS)
    for name, command in subcommands.choices.items():
        shown = command.format_help()
        options = shown.partition("\noptions:\n")[2].partition("\n\n")[0]
        listed = {word.rstrip(",") for line in options.splitlines() if line.startswith("  -")
                  for word in line.split()[:2] if word.startswith("--")}
        assert listed == {"--help", *OWN_OPTIONS[name]}, name
        assert "--db" not in shown.partition("\n\n")[0], name  # nor in its usage line
        assert shown.endswith(f"{commands.GLOBAL_OPTIONS}\n"), name
    # Hidden, not gone: they still work after the command.
    args = parser.parse_args(["status", "--db", "app.db", "--exit-code"])
    assert args.db == "app.db" and args.exit_code


# The stdio node's start-up, as a program: whether argcomplete was imported on the way.
IMPORTS_ARGCOMPLETE = """
import sys, node
node.parse_args([])
print("argcomplete" in sys.modules)
"""


def complete(workspace, line: str, shell: str = "bash") -> list[str]:
    """What a shell's completion function gets for `line`, the cursor at its end: the
    program run as bash or zsh runs it (argcomplete's protocol), its answer in a file."""
    answer = workspace.root / "completions"
    env = {**workspace.env, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": shell,
           "COMP_LINE": line, "COMP_POINT": str(len(line.encode())),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(answer)}
    done = subprocess.run([sys.executable, str(NODE)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, cwd=PROJECT,
                          timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0 and done.stdout == "", done.stderr  # it exits before parsing
    # One completion comes with the space that ends its word; the shell adds it.
    return [word.rstrip(" ") for word in answer.read_text().split("\v")]


@pytest.mark.parametrize(
    ("line", "offered"),
    [("migrations-node sta", {"status"}),
     ("migrations-node st", {"status", "stop"}),
     ("migrations-node --db app.db mig", {"migrate"}),
     ("migrations-node migrate --", {"--to", "--dry-run", "--json", "--help"}),
     ("migrations-node rollback --s", {"--steps"}),
     ("migrations-node status --exit", {"--exit-code"}),
     ("migrations-node --mig", {"--migrations"})],
    ids=lambda value: value if isinstance(value, str) else "")
def test_the_shell_completes_commands_and_their_options(workspace, line, offered):
    assert offered <= set(complete(workspace, line))


def test_completion_of_a_new_name_or_a_number_offers_no_file_names(workspace):
    # Files of the working directory (the project's) would be argcomplete's default.
    for line in ("migrations-node new ", "migrations-node migrate --to ",
                 "migrations-node history --limit ", "migrations-node new n"):
        offered = complete(workspace, line)
        assert not [word for word in offered if word and not word.startswith("-")], line
    assert "node.py" in complete(workspace, "migrations-node --db n")  # where files fit


def test_zsh_gets_each_command_with_what_it_does(workspace):
    offered = complete(workspace, "migrations-node st", shell="zsh")
    assert sorted(offered) == [f"status:{commands.HELP['status']}",
                               f"stop:{commands.HELP['stop']}"]


def test_without_a_shell_asking_argcomplete_is_not_even_imported(workspace):
    done = subprocess.run([sys.executable, "-c", IMPORTS_ARGCOMPLETE], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=workspace.env, cwd=PROJECT,
                          timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0 and done.stdout == "False\n", done.stderr
