"""The command line for people: `python node.py COMMAND` (or `migrations-node COMMAND`).

    status, migrate, rollback, baseline, adopt, validate, lint, history, health
        -> the same requests a program sends -> WorkerClient -> the database's one worker
        <- replies, drawn as tables and lines (or printed as JSON lines with --json)
    new NAME [--sql]
        -> the next-numbered migration file in the migrations folder (no worker)
    dump [--output FILE]
        -> the `dump` request -> its SQL on stdout, or in FILE (and, with the dump
           setting, migrate and rollback rewrite that file after a run that changed something)

Exit status: 0 done, 1 a migration failed, validation found problems, lint found what it
warns of (or could not lint a migration) or `status --exit-code` found migrations pending,
2 bad usage (or a worker that cannot start with this configuration, or lint without its
parser or given a version no file has), 3 the database or worker could not be reached
(error 11 or 13), 130 cancelled by Ctrl-C, 141 stdout closed before every line was written
(as a program killed by SIGPIPE). Errors go to stderr as one sentence.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import database_url, endpoint
from broker.cli import settings
from broker.cli.lock_table import lock_table
from broker.cli.terminal import Lines, ProgressLine, Style, escape_what_cannot_be_shown, table
from broker.errors import LASTING, PRECONDITION_FAILED, TEMPORARILY_UNAVAILABLE, ReplyError
from broker.kinds import ADOPT_FROM, COMMANDS, WAITING, before_reply
from broker.replies import OrderedReplies
from broker.requests import parse_request
from broker.spawn import WorkerConfigError
from broker.stopping import Stopped, StopRequest

if TYPE_CHECKING:
    from broker.client import WorkerClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_CANCELLED = 0, 1, 2, 3, 130
EXIT_STDOUT_CLOSED = 128 + 13  # as the stdio node, and a shell for a program SIGPIPE ended
EXIT_FOR_CODE = {10: EXIT_USAGE, 12: EXIT_USAGE, 11: EXIT_UNREACHABLE, 13: EXIT_UNREACHABLE}
LINT_RESULT = "lint_result"  # a lint reply's type: not ok while a finding remains
VERIFICATION = "verification"  # a verify reply's type: not ok while a problem remains
DUMP = "schema_dump"  # a dump reply's type
MSG_ID = 1  # what --json replies answer, as a stdio node answers a request of msg_id 1
VERSION_DIGITS = 4  # NNNN_name for a new migration in a folder of small versions
REPEATABLE_MARK = "R"  # a repeatable migration's version cell: Flyway's prefix, R__name
DUE_STATES = ("pending", "outdated")  # repeatable migrations that a migrate applies
STATE_COLOURS = {"applied": "green", "pending": "yellow", "outdated": "yellow",
                 "missing": None}  # a repeatable's file deleted is no problem
TIMESTAMP_VERSION = 10**10  # versions at least this big are dbmate-style timestamps
# The largest integer a request field takes (worker/params.py): the stdio node answers
# error 12 above it; a command refuses it as bad usage, before anything is sent.
MAX_INTEGER = 2**63 - 1
# What argparse's error() says about a word that is no command (see misspelt_command).
INVALID_COMMAND = re.compile(r"argument COMMAND: invalid choice: (.+?) \(choose from ")
UNRECOGNIZED = "unrecognized arguments: "

EXAMPLES = {
    "migrate": "examples:\n  migrations-node migrate\n  migrations-node migrate --to 3 --dry-run",
    "rollback": "examples:\n  migrations-node rollback\n  migrations-node rollback --steps 2"
                "\n  migrations-node rollback --to 0 --dry-run",
    "baseline": "example, for a database that already has the schema of versions 1 to 3:\n"
                "  migrations-node baseline --to 3",
    "adopt": "examples, for a database golang-migrate (or another tool) has migrated:\n"
             "  migrations-node adopt --from golang-migrate --dry-run\n"
             "  migrations-node adopt --from golang-migrate",
    "resolve": "examples, after repairing by hand a migration that stopped partway on MariaDB:\n"
               "  migrations-node resolve 3 --applied\n  migrations-node resolve 3 --not-applied",
    "status": "examples:\n  migrations-node --db app.db status\n"
              "  migrations-node status --exit-code || migrations-node migrate",
    "validate": "example:\n  migrations-node validate || echo 'applied files were edited'",
    "verify": "example, in CI:\n  migrations-node verify || exit 1",
    "lint": "examples:\n  migrations-node lint\n  migrations-node lint 3 4 --json\n\n"
            "a finding is silenced by a comment on the line before its statement:\n"
            "  -- lint:ignore RULE[,RULE] the reason   (# lint:ignore ... in a .py file)",
    "history": "example:\n  migrations-node history --limit 10",
    "new": "examples:\n  migrations-node new add_user_email\n  migrations-node new audit_log --sql",
    "health": "example:\n  migrations-node health --json",
    "stop": "example, to restore a backup:\n  migrations-node --db app.db stop &&"
            " cp backup.db app.db",
    "config": "example:\n  migrations-node --db postgresql://app@db/appdb config",
    "dump": "examples:\n  migrations-node dump --output db/schema.sql\n"
            "  migrations-node --db postgresql://app@db/appdb dump | less",
}
HELP = {
    "migrate": "apply every pending migration, each in its own transaction",
    "rollback": "revert the most recent migration (or the K most recent, or all above V)",
    "baseline": "record every migration up to V as applied without running it",
    "adopt": "record as applied, without running them, the migrations another tool applied"
             " (its table is read, never written)",
    "resolve": "say how a migration that stopped partway (MariaDB, MySQL) stands, once"
               " repaired by hand: applied, or not applied",
    "status": "list every migration: applied or pending, and when",
    "validate": "check applied files against their checksums, and the live schema against"
                " the recorded one (drift); exit 1 on problems",
    "verify": "test every down (and up again) on a scratch database, and compare what the"
              " folder builds with the live schema; exit 1 on problems",
    "lint": "check pending (or named) migrations for dangerous locks and breaking changes on"
            " PostgreSQL, exit 1 on findings",
    "history": "every apply, rollback and baseline, oldest first",
    "new": "create the next-numbered migration file with up and down stubs",
    "health": "the worker's pid, database, uptime and what runs now",
    "stop": "stop the database's worker cleanly (its migration in progress finishes first)",
    "config": "each effective setting and where it came from",
    "dump": "the schema as SQL that recreates it, then the INSERTs of the applied versions",
}


# After each command's examples: where the options every command takes are told.
GLOBAL_OPTIONS = ("options for every command (--db, --migrations, ...) go before or after it:"
                  " see migrations-node --help")


def add_commands(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """The commands, each with its options, `--json` and an example in its --help.

    `common` is the parent parser of the options every command also takes after its name
    (`status --db app.db`); give them help=argparse.SUPPRESS, and each command's --help
    lists its own options only, with a line sending to the program's --help for the rest.
    """
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", help="print the reply exactly as the stdio node does"
    )
    for name in COMMANDS:
        parents = [common] if name in ("new", "stop", "config") else [common, output]
        command = commands.add_parser(
            name, parents=parents, help=HELP[name], description=HELP[name],
            epilog=f"{EXAMPLES[name]}\n\n{GLOBAL_OPTIONS}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "migrate":
            command.add_argument("--to", type=_version, metavar="V",
                                 help="apply only up to and including version V"
                                 ).completer = _no_files
            command.add_argument("--dry-run", action="store_true",
                                 help="run every step for real, then roll it all back")
            command.add_argument("--accept-drift", action="store_true",
                                 help="go on when the live schema is not the recorded one,"
                                 " and record it as it is")
        elif name == "rollback":
            target = command.add_mutually_exclusive_group()
            target.add_argument("--steps", type=_positive, metavar="K",
                                help="revert the K most recent migrations"
                                ).completer = _no_files
            target.add_argument("--to", type=_version, metavar="V",
                                help="revert every migration above V (0: all)"
                                ).completer = _no_files
            command.add_argument("--dry-run", action="store_true",
                                 help="run every step for real, then roll it all back")
            command.add_argument("--accept-drift", action="store_true",
                                 help="go on when the live schema is not the recorded one,"
                                 " and record it as it is")
        elif name == "baseline":
            command.add_argument("--to", type=_positive, metavar="V", required=True,
                                 help="the newest version the database's schema already has"
                                 ).completer = _no_files
        elif name == "adopt":
            command.add_argument("--from", dest="tool", choices=ADOPT_FROM, required=True,
                                 metavar="TOOL", help=f"the tool whose tracking table to read:"
                                 f" {', '.join(ADOPT_FROM)}")
            command.add_argument("--dry-run", action="store_true",
                                 help="show what would be recorded, and record nothing")
        elif name == "resolve":
            command.add_argument("version", type=_positive, metavar="VERSION",
                                 help="the migration that stopped partway").completer = _no_files
            state = command.add_mutually_exclusive_group(required=True)
            state.add_argument("--applied", dest="resolved", action="store_true",
                               default=None, help="record it applied: its up was finished by"
                               " hand (or its down undone)")
            state.add_argument("--not-applied", dest="resolved", action="store_false",
                               help="record it not applied: its up was undone by hand (or"
                               " its down finished)")
        elif name == "status":
            command.add_argument("--exit-code", action="store_true",
                                 help="exit 1 when any migration is pending (as dbmate's flag)")
        elif name == "lint":
            command.add_argument("versions", nargs="*", type=_positive, metavar="VERSION",
                                 help="the migrations to lint (default: the pending ones)"
                                 ).completer = _no_files
        elif name == "history":
            command.add_argument("--limit", type=_positive, metavar="N",
                                 help="only the N most recent events").completer = _no_files
        elif name == "dump":
            command.add_argument("--output", type=Path, metavar="FILE",
                                 help="write it to FILE (replaced in one rename), not stdout")
        elif name == "new":
            command.add_argument("name", metavar="NAME", help="an identifier: add_user_email"
                                 ).completer = _no_files
            command.add_argument("--sql", action="store_true",
                                 help="a .sql file with -- migrate:up/down sections")


def offer_completions(parser: argparse.ArgumentParser) -> None:
    """When a shell asks for completions of a command line (argcomplete's protocol: the
    `_ARGCOMPLETE` environment variable, set by the function `register-python-argcomplete
    migrations-node` defines), write them for `parser` and exit the process; otherwise
    return at once. argcomplete is imported only then, so that no other start-up pays for it.
    """
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser)


def _no_files(**_context: object) -> tuple[str, ...]:
    """An argcomplete completer that offers nothing, for a value that is no file name
    (argcomplete would offer the files of the working directory)."""
    return ()


def misspelt_command(words: Sequence[str], message: str) -> str | None:
    """What to say when the word where a command goes is none: `'stauts' is not a command;
    did you mean 'status'? commands: migrate, ...`; None for any other usage error.

    `words` are the command line's (sys.argv[1:]), `message` what argparse's error() got:
    `invalid choice` about COMMAND when the commands were built, or `unrecognized
    arguments` when no word of the line was a command (the stdio node's parser).
    """
    word = None
    choice = INVALID_COMMAND.match(message)
    if choice is not None:
        import ast

        try:
            word = ast.literal_eval(choice[1])
        except (ValueError, SyntaxError):
            return None
    elif message.startswith(UNRECOGNIZED) and not set(words) & set(COMMANDS):
        extra = message[len(UNRECOGNIZED):]  # argparse joins the extra words with spaces
        word = next((w for w in words if extra == w or extra.startswith(w + " ")), None)
    if not isinstance(word, str) or not word or word.startswith("-") or word not in words:
        return None
    import difflib

    guess = difflib.get_close_matches(word.lower(), COMMANDS, n=1)
    mean = f" did you mean {guess[0]!r}?" if guess else ""
    return f"{word!r} is not a command;{mean} commands: {', '.join(COMMANDS)}"


def _positive(text: str) -> int:
    value = _version(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _version(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    digits = text.lstrip("0")
    # Length first: int() refuses strings of more than 4,300 digits with its own message.
    if len(digits) > len(str(MAX_INTEGER)) or int(digits or "0") > MAX_INTEGER:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INTEGER} (2^63 - 1)")
    return int(digits or "0")


def run(
    args: argparse.Namespace, stop: StopRequest, connect: Callable[[Any], WorkerClient]
) -> int:
    """Carry out one command; returns the exit status."""
    escape_what_cannot_be_shown()
    out = Lines(sys.stdout)
    status = _run_command(args, stop, connect, out)
    if out.lost and status != EXIT_STDOUT_CLOSED:  # a write has said what it did already
        return fail("stdout was closed before every line was written", EXIT_STDOUT_CLOSED)
    return status


def _run_command(
    args: argparse.Namespace, stop: StopRequest, connect: Callable[[Any], WorkerClient],
    out: Lines,
) -> int:
    if args.command == "new":
        return new_migration(args.migrations, args.name, args.sql, out)
    if args.command == "stop":
        return stop_worker(args.db, stop, out)
    if args.command == "config":
        return show_config(args.settings, out)
    if args.settings["migrations"].origin == settings.BUNDLED:
        say(f"using the bundled example migrations in {args.migrations}: there is no"
            " migrations/ here and none is configured (--migrations, $MIGRATIONS_DIR or"
            " [tool.migrations-node] migrations in pyproject.toml)")
    from broker.client import WorkerRefused

    try:
        client = connect(args)
    except WorkerConfigError as exc:
        return fail(f"the worker cannot start: {exc}", EXIT_USAGE)
    except (OSError, ValueError) as exc:
        return fail(f"cannot reach a worker: {exc}", EXIT_UNREACHABLE)
    session = Session(client, stop)
    try:
        if args.json:
            return print_json(session, args, out)
        return HANDLERS[args.command](session, args, out)
    except Abandoned:
        return EXIT_CANCELLED
    except WorkerConfigError as exc:
        return fail(f"the worker cannot start: {exc}", EXIT_USAGE)
    except WorkerRefused as exc:
        return fail(f"{exc}: add this node's public key to the worker's authorized/ folder",
                    EXIT_UNREACHABLE)
    finally:
        client.close()


def request_of(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The request a command sends, with the fields a program would give."""
    fields = {"to": getattr(args, "to", None), "steps": getattr(args, "steps", None),
              "limit": getattr(args, "limit", None)}
    params = {key: value for key, value in fields.items() if value is not None}
    if getattr(args, "tool", None) is not None:
        params["from"] = args.tool
    if getattr(args, "dry_run", False):
        params["dry_run"] = True
    if getattr(args, "accept_drift", False):
        params["accept_drift"] = True
    if getattr(args, "versions", None):
        params["versions"] = args.versions
    if args.command == "resolve":
        params.update(version=args.version, applied=args.resolved)
    return args.command, params


# -- talking to the worker -----------------------------------------------------------------


class Abandoned(Exception):
    """A second Ctrl-C: stop waiting at once (the worker finishes alone, atomically)."""


class Session:
    """Requests sent through the node's WorkerClient, waited for one batch at a time."""

    def __init__(self, client: WorkerClient, stop: StopRequest) -> None:
        self.client = client
        self.stop = stop
        self.src = f"cli:{_user()}"  # who applied it, as the history shows
        self.cancelled = False  # Ctrl-C asked the worker to cancel this command's write
        self._tokens = itertools.count()

    def ask(
        self, *requests: tuple[str, dict[str, Any]],
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        tick: Callable[[], None] | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Send `requests` together; return their replies, in order, once all are in.

        `on_progress` gets each progress body, `tick` runs about ten times a second, and
        `notice` writes what there is to say meanwhile on stderr (say() if None). A first
        Ctrl-C cancels the write among them (its reply then tells what committed); a second
        raises Abandoned.
        """
        tokens = [next(self._tokens) for _ in requests]
        for token, (kind, params) in zip(tokens, requests, strict=True):
            self.client.submit(token, kind, params, self.src)
        self.client.flush()
        replies: dict[int, dict[str, Any]] = {}
        while len(replies) < len(tokens):
            self._mind_signals(notice or say)
            events = dict(self.client.poller.poll(min(self.client.timeout_ms(), 100)))
            for token, body in self.client.process(events):
                if token is None:
                    continue  # the answer to our own cancel
                if before_reply(body):
                    if on_progress is not None:
                        on_progress(body)
                else:
                    replies[token] = body
            if tick is not None:
                tick()
        return [replies[token] for token in tokens]

    def _mind_signals(self, notice: Callable[[str], None]) -> None:
        if not self.stop.requested:
            return
        if self.stop.count > 1:
            raise Abandoned
        if self.cancelled:
            return  # what follows the cancelled write (its durations) is still asked
        if not self.client.has_writes():
            raise Abandoned
        if not self.cancelled:
            self.cancelled = True
            notice("cancelling: the migration in progress is rolled back, none after it starts"
                   " (Ctrl-C again to stop waiting)")
            for token, _ in self.client.cancel_writes(None, self.src):
                assert token is None, "only writes are cancelled, and they have no token here"
            self.client.flush()


def print_json(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """The reply as the stdio node writes it for the same request with msg_id 1."""
    kind, params = request_of(args)
    (body,) = session.ask((kind, params))
    line = io.BytesIO()
    replies = OrderedReplies(line)
    request = parse_request({"body": {"type": kind, "msg_id": MSG_ID, **params}})
    replies.fill(replies.reserve(request), body)
    replies.flush()
    out.raw(line.getvalue())
    if kind == "adopt" and body.get("renamed") and not args.dry_run:
        say(where_tracked(body))  # stdout holds the reply alone
    dumped = rewrite_dump(session, args, body, say) if kind in WORDS else None
    if kind == "dump" and args.output is not None and body["type"] == DUMP:
        dumped = save_dump(args.output, body, say)
    if out.lost and kind in WORDS:
        return stdout_closed(taken_steps(body), done_word(kind, args.dry_run))
    if kind == "lint" and body["type"] == "error" and body["code"] == PRECONDITION_FAILED:
        return EXIT_USAGE  # as run_lint: no such version, or no parser
    if body["type"] == "migration_status" and args.exit_code and pending(body):
        return EXIT_FAILED
    return exit_status(body, session) or dumped or EXIT_OK


def exit_status(body: dict[str, Any], session: Session) -> int:
    if session.stop.requested or body.get("cancelled"):
        return EXIT_CANCELLED
    if body["type"] == "error":
        if body["code"] == TEMPORARILY_UNAVAILABLE and LASTING in body["text"]:
            return EXIT_USAGE
        return EXIT_FOR_CODE.get(body["code"], EXIT_FAILED)
    if body["type"] in ("validation", LINT_RESULT, VERIFICATION) and not body["ok"]:
        return EXIT_FAILED
    return EXIT_OK


# -- the commands --------------------------------------------------------------------------


def show_status(session: Session, args: argparse.Namespace, out: Lines) -> int:
    status, history = session.ask(("status", {}), ("history", {}))
    if status["type"] == "error":
        return report_error(status, session)
    applied_at = {}
    if history["type"] == "migration_history":
        for event in history["events"]:  # oldest first: the last apply is the one that holds
            if event["action"] in ("apply", "baseline", "adopt", "resolved_applied"):
                applied_at[event["version"]] = event["started_at"]
    style = Style(sys.stdout)
    rows = [
        (str(m["version"]), m["name"],
         (partly(m["partial"]), "red") if "partial" in m else
         ("applied", "green") if m["applied"] else ("pending", "yellow"),
         applied_at.get(m["version"], "") if m["applied"] else "")
        for m in status["migrations"]
    ]
    repeatables = status.get("repeatables", [])
    rows += [(REPEATABLE_MARK, r["name"], (r["state"], STATE_COLOURS[r["state"]]),
              r["applied_at"] or "") for r in repeatables]
    if rows:
        out(table(("version", "name", "state", "applied at"), rows, style))
    waiting = sum(not m["applied"] for m in status["migrations"])
    summary = f"{len(status['migrations']) - waiting} applied, {waiting} pending"
    partial = sum("partial" in m for m in status["migrations"])
    if partial:
        summary += f" ({partial} stopped partway: see `migrations-node resolve --help`)"
    if repeatables:
        states = [r["state"] for r in repeatables]
        summary += (f"; repeatable: {states.count('applied')} applied,"
                    f" {len(due_repeatables(status))} to apply")
        if "missing" in states:
            summary += f", {states.count('missing')} without a file"
    out(summary)
    return EXIT_FAILED if args.exit_code and pending(status) else EXIT_OK


def pending(status: dict[str, Any]) -> int:
    """How many migrations a status reply lists as not applied, repeatable ones that a
    migrate would apply (new or changed since) included."""
    return sum(not m["applied"] for m in status["migrations"]) + len(due_repeatables(status))


def due_repeatables(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The repeatable migrations a status reply lists as new or changed since applied."""
    return [r for r in status.get("repeatables", []) if r["state"] in DUE_STATES]


def version_cell(entry: dict[str, Any]) -> str:
    """A step's version as lines and tables show it: `R` for a repeatable migration."""
    return REPEATABLE_MARK if entry.get("version") is None else str(entry["version"])


def taken_key(entry: dict[str, Any]) -> Any:
    """What tells a step from the others of its request: its version, a repeatable's name."""
    version = entry.get("version")
    return ("repeatable", entry["name"]) if version is None else version


WORDS = {"migrate": ("applied", "applying"), "rollback": ("rolled back", "rolling back")}


def run_write(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """migrate or rollback: a line per step as it commits, with the time it took, then a
    summary; progress on a terminal's stderr while it runs; Ctrl-C cancels it (exit 130)."""
    kind, params = request_of(args)
    (status,) = session.ask(("status", {}))
    if status["type"] == "error":
        return report_error(status, session)
    steps = planned_steps(status, kind, params)
    if not args.dry_run:  # a dry run commits nothing, so it has no progress to tell
        params = {**params, "progress": True}
    style = Style(sys.stdout)
    word = done_word(kind, args.dry_run)
    shown: set[Any] = set()

    def show(entry: dict[str, Any], took_ms: float | None) -> None:
        shown.add(taken_key(entry))
        took = "" if took_ms is None else f"  {took_ms:.1f} ms"
        out(f"{style(word, 'green')}  {version_cell(entry)}  {entry['name']}{took}")

    # Cleared before anything else is written to stderr, and at the end.
    with ProgressLine(sys.stderr, len(steps), WORDS[kind][1]) as progress:
        started = last_commit = time.monotonic()

        def committed(body: dict[str, Any]) -> None:
            if body["type"] == WAITING:
                progress.say(body["text"])
                return
            # A step's time is the wall time from the commit before it (the first: from the
            # request), as seen here: loading its file and its commit count too.
            nonlocal last_commit
            if taken_key(body) not in shown:  # a new worker may tell a step again
                now = time.monotonic()
                progress.clear()  # stdout may be the same terminal
                show(body, (now - last_commit) * 1000)
                last_commit = now
            following = steps[body["done"]] if body["done"] < len(steps) else ""
            progress.step(body["done"], following)

        progress.step(0, steps[0] if steps else "")
        (body,) = session.ask((kind, params), on_progress=committed, tick=progress.draw,
                              notice=progress.say)
    elapsed = time.monotonic() - started
    taken = taken_steps(body)
    for entry in taken:  # a dry run's steps, and any whose progress a killed worker never sent
        if taken_key(entry) not in shown:
            show(entry, None)
    if "locks" in body:  # a dry run on PostgreSQL: what it locked, its failure's too
        out(lock_table(body["locks"], style))
    if body["type"] == "error":
        status = report_error(body, session)
    else:
        if not taken:
            out("nothing to do: the database is already there")
        else:
            tail = " (dry run: all rolled back)" if args.dry_run else ""
            out(f"{counted(taken)} {word} in {elapsed:.2f} s{tail}")
        if session.stop.requested:
            say("interrupted: the request had finished before the cancel reached it")
        status = exit_status(body, session)
    dumped = rewrite_dump(session, args, body, out)  # whatever the status: it changed
    status = status or dumped or EXIT_OK
    if out.lost:  # the write went on to its end: say what it did, since stdout could not
        return stdout_closed(taken, word)
    return status


def done_word(kind: str, dry_run: bool) -> str:
    word = WORDS[kind][0]
    return f"would be {word}" if dry_run else word


def counted(steps: list[dict[str, Any]]) -> str:
    return f"{len(steps)} migration{'' if len(steps) == 1 else 's'}"


def planned_steps(status: dict[str, Any], kind: str, params: dict[str, Any]) -> list[str]:
    """What a migrate or rollback will take, for the progress line (`V name` each; `R
    name` for a repeatable migration, which a migrate to below the newest version leaves)."""
    migrations = status["migrations"]
    if kind == "migrate":
        chosen = [m for m in migrations if not m["applied"]
                  and ("to" not in params or m["version"] <= params["to"])]
        newest = max((m["version"] for m in migrations), default=0)
        if "to" not in params or params["to"] >= newest:
            chosen += [{"version": None, **r} for r in due_repeatables(status)]
    else:
        applied = [m for m in reversed(migrations) if m["applied"]]  # version order: close enough
        if "to" in params:
            chosen = [m for m in applied if m["version"] > params["to"]]
        else:
            chosen = applied[: params.get("steps", 1)]
    return [f"{version_cell(m)} {m['name']}" for m in chosen]


def taken_steps(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps a reply says were taken (an error's `applied` or `rolled_back` too), a
    migrate's repeatable migrations last, each with a version of None."""
    if body["type"] == "migration_rolled_back":
        return [{"version": body["version"], "name": body["name"]}]
    repeatables = [{"version": None, **r} for r in body.get("repeatables", [])]
    if body["type"] in ("migrations_applied", "migrations_rolled_back"):
        return body["migrations"] + repeatables
    return (body.get("applied") or body.get("rolled_back") or []) + repeatables


def run_validate(session: Session, args: argparse.Namespace, out: Lines) -> int:
    (body,) = session.ask(("validate", {}))
    if body["type"] == "error":
        return report_error(body, session)
    if body["ok"]:
        out("ok: every applied migration matches its file, none is missing or out of order,"
            " and the schema is the one recorded")
        return EXIT_OK
    style = Style(sys.stdout)
    files = [p for p in body["problems"] if "version" in p]
    if files:
        rows = [(str(p["version"]), p["name"], (p["kind"].replace("_", " "), "red"))
                for p in files]
        out(table(("version", "name", "problem"), rows, style))
    for drift in (p for p in body["problems"] if p["kind"] == "schema_drift"):
        out(f"{style('schema drift', 'red')}: the live schema is not the one recorded after"
            " the last step")
        for text in drift["differences"]:
            out(f"  {text}")
    problems = len(body["problems"])
    say(f"validation found {problems} problem{'s' if problems != 1 else ''}")
    return EXIT_FAILED


def run_verify(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """verify: a block per migration reported (what is wrong, then each difference), what
    differs between the folder's schema and the live one, then a summary; exit 1 on any."""
    (body,) = session.ask(request_of(args))
    if body["type"] == "error":
        if body["code"] == PRECONDITION_FAILED:  # no scratch database: lasting
            say(f"error {body['code']}: {body['text']}")
            return EXIT_USAGE
        return report_error(body, session)
    style = Style(sys.stdout)
    for problem in body["problems"]:
        where = ("the whole folder" if problem["version"] is None
                 else f"{problem['version']}  {problem['name']}")
        out(f"{style(problem['kind'].replace('_', ' '), 'red')}  {where}: {problem['text']}")
        for difference in problem["differences"]:
            out(f"  {difference}")
    live = body["live"]
    if live["differences"]:
        out(f"{style('live schema differs', 'red')} from what the folder builds:")
        for difference in live["differences"]:
            out(f"  {difference}")
    verified = body["verified"]
    said = {True: "the live schema is what the folder builds", False: "the live schema"
            " differs", None: "the live schema was not compared (the folder does not build)"}
    problems = len(body["problems"])
    out(f"{verified} migration{'' if verified == 1 else 's'} verified on a scratch database: "
        + ("every down gives back the schema before its up" if not problems else
           f"{problems} problem{'' if problems == 1 else 's'}") + f"; {said[live['matches']]}")
    return exit_status(body, session)


def run_lint(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """lint: a block per finding (`file:line rule`, the statement, why, fix), the migrations
    it could not lint and why, then a summary; exit 1 when any remains."""
    (body,) = session.ask(request_of(args))
    if body["type"] == "error":
        if body["code"] == PRECONDITION_FAILED:  # no such version, or no parser: lasting
            say(f"error {body['code']}: {body['text']}")
            return EXIT_USAGE
        return report_error(body, session)
    style = Style(sys.stdout)
    for finding in body["findings"]:
        where = f"{_shown_path(finding['file'])}:{finding['line']}"
        out(f"{style(where, 'bold')} {style(finding['rule'], 'red')}")
        statement = finding.get("statement", "").splitlines()
        if statement:
            out(f"  {style(_cut(statement[0]), 'dim')}")
        out(f"  why: {finding['why']}")
        out(f"  fix: {finding['fix']}")
        out("")
    for entry in body["not_linted"]:
        out(f"{style('not linted', 'yellow')}  {entry['version']}  {entry['name']}:"
            f" {entry['reason']}")
    if "note" in body:
        out(f"note: {body['note']}")
    count = len(body["findings"])
    linted = len(body["linted"])
    said = "no finding" if not count else f"{count} finding{'' if count == 1 else 's'}"
    out(f"{said} in {linted} migration{'' if linted == 1 else 's'} linted"
        + (f", {len(body['not_linted'])} not linted" if body["not_linted"] else ""))
    return exit_status(body, session)


def _shown_path(path: str) -> str:
    """A finding's file as a person types it here: relative to the working directory when
    it is below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _cut(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def show_history(session: Session, args: argparse.Namespace, out: Lines) -> int:
    (body,) = session.ask(request_of(args))
    if body["type"] == "error":
        return report_error(body, session)
    rows = [(e["started_at"], e["action"], version_cell(e), e["name"],
             f"{e['duration_ms']:.1f} ms", e["src"] or "") for e in body["events"]]
    if rows:
        out(table(("started at", "action", "version", "name", "took", "by"), rows,
                  Style(sys.stdout)))
    else:
        out("no history: nothing was ever applied")
    return EXIT_OK


def show_health(session: Session, args: argparse.Namespace, out: Lines) -> int:
    (body,) = session.ask(("health", {}))
    if body["type"] == "error":
        return report_error(body, session)
    fields = {key: value for key, value in body.items() if key != "type"}
    width = max(len(key) for key in fields)
    out("\n".join(f"{key.ljust(width)}  {'none' if value is None else value}"
                  for key, value in fields.items()))
    return EXIT_OK


def partly(partial: dict[str, Any]) -> str:
    """A migration that stopped partway, in status's state column."""
    part = "up" if partial["action"] == "apply" else "down"
    text = f"partial: {part} 1..{partial['statements_done']} done"
    uncertain = partial.get("uncertain")
    if uncertain is not None:
        text += f", {uncertain['statement']} uncertain"
    return text


def run_resolve(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """resolve: one line saying how the migration is now recorded."""
    (body,) = session.ask(request_of(args))
    if body["type"] == "error":
        return report_error(body, session)
    state = "applied" if body["applied"] else "not applied"
    out(f"resolved  {body['version']}  {body['name']}: recorded as {state}")
    return exit_status(body, session)


def run_baseline(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """baseline: a line per migration recorded (all in one transaction), then a summary."""
    (body,) = session.ask(request_of(args))
    if body["type"] == "error":
        return report_error(body, session)
    style = Style(sys.stdout)
    for entry in body["migrations"]:
        out(f"{style('baselined', 'green')}  {entry['version']}  {entry['name']}")
    out(f"{counted(body['migrations'])} baselined: recorded as applied, none of them run")
    return exit_status(body, session)


def run_adopt(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """adopt: a line per migration recorded (all in one transaction) with the other tool's
    time for it, a summary, then where this tool tracks when the other tool's table holds
    the default name (and the project file told so, when it can be)."""
    (body,) = session.ask(request_of(args))
    if body["type"] == "error":
        return report_error(body, session)
    style = Style(sys.stdout)
    word = "would be adopted" if args.dry_run else "adopted"
    for entry in body["migrations"]:
        when = f"  applied {entry['applied_at']}" if entry["applied_at"] else ""
        out(f"{style(word, 'green')}  {entry['version']}  {entry['name']}{when}")
    source = f"{body['from']}'s {body['from_table']}"
    if args.dry_run:
        out(f"{counted(body['migrations'])} would be adopted from {source} (dry run:"
            " nothing recorded)")
    else:
        out(f"{counted(body['migrations'])} adopted from {source}: recorded as applied, none"
            " of them run")
    if body["renamed"]:
        tracks = "would track" if args.dry_run else "tracking"
        out(f"{tracks} in {body['table']}: {body['from_table']} keeps {body['from']}'s"
            " records, never written by this tool")
        if not args.dry_run:
            out(where_tracked(body))
    return exit_status(body, session)


def where_tracked(body: dict[str, Any]) -> str:
    """After an adopt that gave our tracking table another name: the project file told so
    (see project_table), or how nodes find it without one."""
    try:
        found = settings.find_project(Path.cwd())
    except settings.SettingsError:
        found = None  # it was read at start, and has changed since: leave it alone
    if found is None:
        return (f"nodes given no --table find {body['table']} in the database by themselves;"
                f' to say it in pyproject.toml: table = "{body["table"]}" under'
                f" [tool.{settings.TABLE}]")
    from broker.cli.project_table import record_table

    return record_table(found[0], body["table"],
                        f"adopt: {body['from_table']} is {body['from']}'s")


def run_dump(session: Session, args: argparse.Namespace, out: Lines) -> int:
    """dump: the SQL on stdout, or written to --output FILE (in one rename) and where said."""
    (body,) = session.ask(("dump", {}))
    if body["type"] == "error":
        return report_error(body, session)
    if args.output is None:
        out(body["sql"].removesuffix("\n"))
        return EXIT_OK
    return save_dump(args.output, body, out) or EXIT_OK


def rewrite_dump(session: Session, args: argparse.Namespace, body: dict[str, Any],
                 tell: Callable[[str], None]) -> int | None:
    """With the dump setting, after a migrate or rollback that changed something (not a dry
    run): the file rewritten from a `dump` request, said with `tell`. Returns EXIT_FAILED
    when it could not be (said on stderr: the migrations stay as they are), else None."""
    if args.dump is None or args.dry_run or not taken_steps(body):
        return None
    if session.stop.requested:
        return fail(f"the schema dump {args.dump} was not rewritten (cancelled): run"
                    f" migrations-node dump --output {args.dump}", EXIT_FAILED)
    (dumped,) = session.ask(("dump", {}))
    if dumped["type"] == "error":
        say(f"error {dumped['code']}: {dumped['text']}")
        return fail(f"the schema dump {args.dump} was not rewritten", EXIT_FAILED)
    return save_dump(Path(args.dump), dumped, tell)


def save_dump(path: Path, body: dict[str, Any], tell: Callable[[str], None]) -> int | None:
    """A schema_dump reply's SQL written to `path`, and where said with `tell`; returns
    EXIT_FAILED when it cannot be written (said on stderr), else None."""
    from broker.cli.dump_file import write_dump

    try:
        write_dump(path, body["sql"])
    except OSError as exc:
        return fail(f"cannot write the schema dump {path}: {exc.strerror or exc}", EXIT_FAILED)
    tell(f"wrote the schema dump {path} ({body['fingerprint']})")
    return None


HANDLERS: dict[str, Callable[[Session, argparse.Namespace, Lines], int]] = {
    "status": show_status,
    "migrate": run_write,
    "rollback": run_write,
    "baseline": run_baseline,
    "resolve": run_resolve,
    "adopt": run_adopt,
    "validate": run_validate,
    "lint": run_lint,
    "verify": run_verify,
    "history": show_history,
    "health": show_health,
    "dump": run_dump,
}


# -- new -----------------------------------------------------------------------------------


PY_STUB = '''"""{name}."""


def up(db):
    raise NotImplementedError("{filename}: write the change, e.g. db.execute('CREATE TABLE ...')")


def down(db):
    raise NotImplementedError("{filename}: write how to undo it, or delete down()")
'''
# Each `-- migrate:stub` line makes its section refuse to run until it is deleted (see
# worker/sql_file.py): an unedited stub cannot be applied by mistake, as the .py one.
SQL_STUB = """-- migrate:up
-- migrate:stub (delete this line once this section holds the change, CREATE TABLE ...)

-- migrate:down
-- migrate:stub (delete this line once this section undoes it, or delete the section)
"""


def new_migration(folder: Path, name: str, sql: bool, out: Lines) -> int:
    """Create the next-numbered file in `folder`; refuse a name that is not an identifier,
    and never overwrite a file."""
    if not (name.isascii() and name.isidentifier()):
        return fail(f"{name!r} is not a name a migration can have: use letters, digits and _"
                    " (add_user_email)", EXIT_USAGE)
    from worker.catalog import scan

    try:
        folder.mkdir(parents=True, exist_ok=True)  # ./migrations, when none is configured
        versions = [migration.version for migration in scan(folder)]
    except (OSError, ReplyError) as exc:
        return fail(f"cannot read {folder}: {getattr(exc, 'text', exc)}", EXIT_USAGE)
    newest = max(versions, default=0)
    if newest >= TIMESTAMP_VERSION:
        stamp = int(time.strftime("%Y%m%d%H%M%S", time.gmtime()))
        version = str(max(stamp, newest + 1))
    else:
        version = str(newest + 1).zfill(VERSION_DIGITS)
    filename = f"{version}_{name}.{'sql' if sql else 'py'}"
    path = folder / filename
    text = (SQL_STUB if sql else PY_STUB).format(name=name, filename=filename)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return fail(f"{path} exists already; nothing was written", EXIT_USAGE)
    except OSError as exc:
        return fail(f"cannot create {path}: {exc.strerror}", EXIT_USAGE)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    out(str(path))
    return EXIT_OK


def stop_worker(database: str, stop: StopRequest, out: Lines) -> int:
    """Stop the worker that owns `database` (wherever its runtime directory is) and wait
    until it has exited; a database without one is not an error."""
    from broker.spawn import stop_owner

    try:
        where = endpoint.for_database(database)
    except (OSError, ValueError) as exc:
        return fail(f"cannot tell where the worker of {database} lives: {exc}", EXIT_USAGE)

    def waiting(pid: int) -> None:
        say(f"waiting for worker pid {pid} to finish its migration in progress (Ctrl-C stops"
            " waiting; the worker still stops after it)")

    try:
        with stop.interruptible():
            pid = stop_owner(where, waiting)
    except Stopped:
        return EXIT_CANCELLED
    except PermissionError as exc:
        return fail(f"cannot stop the worker of {where.database}: {exc}", EXIT_UNREACHABLE)
    if pid is None:
        out(f"no worker runs for {where.database}")
    else:
        out(f"stopped worker pid {pid} of {where.database}")
    return EXIT_OK


def show_config(resolved: dict[str, settings.Setting], out: Lines) -> int:
    """Each effective setting, its value (a URL without its secrets) and where it came from."""
    rows = []
    for key, setting in resolved.items():
        value = setting.value
        if key == "db" and database_url.is_url(str(value)):
            value = database_url.split_secrets(str(value))[0]
        shown = "" if value is None else str(value)
        origin = setting.origin
        if key == "table" and origin == settings.DEFAULT:  # the worker's to find (spawn.py)
            origin = (f"default; {endpoint.ALTERNATE_TABLE} where another tool's table has"
                      " this name (found in the database)")
        rows.append((key.replace("_", "-"), shown, origin))
    out(table(("setting", "value", "from"), rows, Style(sys.stdout)))
    return EXIT_OK


# -- saying things -------------------------------------------------------------------------


def report_error(body: dict[str, Any], session: Session) -> int:
    """An error reply as one sentence on stderr; returns its exit status."""
    status = exit_status(body, session)
    style = Style(sys.stderr)
    failed = body.get("failed")
    if body.get("cancelled"):
        text = body["text"]  # it says "cancelled..." itself
        say(text if text.startswith("cancelled") else f"cancelled: {text}")
        return status
    if failed:
        say(f"{style('failed', 'red')}  {version_cell(failed)}  {failed['name']}:"
            f" {failed['error']}")
    say(f"error {body['code']}: {body['text']}")
    return status


def stdout_closed(taken: list[dict[str, Any]], word: str) -> int:
    """Say what a write did when stdout closed before its lines were written: exit 141."""
    if not taken:
        return fail(f"stdout was closed before every line was written; no migration {word}",
                    EXIT_STDOUT_CLOSED)
    steps = ", ".join(f"{version_cell(entry)} {entry['name']}" for entry in taken)
    return fail(f"stdout was closed before every line was written; {counted(taken)} {word}:"
                f" {steps}", EXIT_STDOUT_CLOSED)


def fail(text: str, status: int) -> int:
    say(f"error: {text}")
    return status


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _user() -> str:
    import getpass  # only a command pays for it

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())

