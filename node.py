#!/usr/bin/env python3
"""The stdio front node: JSON requests on stdin, JSON replies on stdout, in the same order.

    stdin --RequestFramer--> parse_request --> WorkerClient (ZeroMQ, msgpack) --> worker
    stdout <--OrderedReplies <-- replies matched by request id <--'

Requests are pipelined to the worker; `init` and malformed input are answered here but
still take their turn in the output, and a `cancel` overtakes the requests still queued.
The first SIGINT or SIGTERM cancels this node's writes and lets their replies out, the second
stops at once. Logs go to stderr: stdout carries replies only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from broker import database_url, endpoint
from broker.cli import hints, settings
from broker.cli.settings import LOCK_RETRIES, LOCK_TIMEOUT_S, OWNER_WAIT_S
from broker.errors import MALFORMED_REQUEST, ReplyError
from broker.framing import Malformed, RequestFramer
from broker.kinds import COMMANDS
from broker.replies import OrderedReplies
from broker.requests import parse_request
from broker.spawn import WorkerConfigError, WorkerSettings, WorkerSupervisor
from broker.stopping import StopRequest

if TYPE_CHECKING:
    from broker.client import WorkerClient

READ_BYTES = 1 << 16
EXIT_WORKER_CANNOT_START = 2
EXIT_REFUSED = 3
EXIT_STDOUT_CLOSED = 128 + 13  # what a shell reports for a program killed by SIGPIPE
ENVELOPE_FIELDS = frozenset({"type", "msg_id"})  # the body's own; the rest are the request's
USAGE_EXAMPLES = """examples:
  echo '{"body": {"type": "status", "msg_id": 1}}' | migrations-node   # the stdio JSON node
  migrations-node status                      # a table: applied or pending, and when
  migrations-node migrate --to 3 --dry-run    # run it all for real, then roll it back
  migrations-node --db postgresql://app@db/appdb migrate
  migrations-node config                      # each setting, and where it came from
  migrations-node COMMAND --help              # each command's options and an example
(in a source checkout, `python node.py` is the same program)"""

log = logging.getLogger("node")


def add_options(parser: argparse.ArgumentParser, hidden: bool = False) -> None:
    """The node's options, without defaults: an option not given stays unset, and
    settings.resolve() fills it in from the environment, the project file or a default.
    `hidden` ones are accepted but not listed (after a command: its --help lists its own)."""

    def helping(text: str) -> str:
        return argparse.SUPPRESS if hidden else text

    parser.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        help=helping("SQLite file, postgresql://user@host:port/dbname or"
                     " mysql://user@host:port/database (default: $DATABASE_URL, else the"
                     " project's, else ./migrations.db)"),
    )
    parser.add_argument(
        "--migrations",
        type=Path,
        default=argparse.SUPPRESS,
        help=helping("folder of migration files (default: $MIGRATIONS_DIR, else the project's,"
                     " else ./migrations, else the bundled examples)"),
    )
    parser.add_argument(
        "--table",
        default=argparse.SUPPRESS,
        help=helping("tracking table, created on first use (default: schema_migrations)"),
    )
    parser.add_argument(
        "--schema",
        default=argparse.SUPPRESS,
        help=helping("PostgreSQL schema of the tracking tables, created on first use"
                     " (default: public)"),
    )
    parser.add_argument(
        "--wal",
        action="store_true",
        default=argparse.SUPPRESS,
        help=helping("SQLite: have the worker turn an existing database's rollback journal into"
                     " WAL (a database it creates starts in WAL)"),
    )
    parser.add_argument(
        "--owner-wait",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=helping("PostgreSQL: how long a write waits while a worker on another host owns the"
                     f" database before error 11 names it (default: {OWNER_WAIT_S:g})"),
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=helping("PostgreSQL: how long each statement of a migration waits for a lock"
                     " before the migration is rolled back and tried again; 0: no limit"
                     f" (default: the URL's lock_timeout, else {LOCK_TIMEOUT_S:g})"),
    )
    parser.add_argument(
        "--lock-retries",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help=helping("PostgreSQL: how many more times a migration is tried after a lock"
                     f" timeout, each after a longer wait (default: {LOCK_RETRIES})"),
    )
    parser.add_argument(
        "--envelope",
        action="store_true",
        default=argparse.SUPPRESS,
        help=helping('wrap every reply as {"src", "dest", "body"} from the start, as after init'),
    )
    parser.add_argument(
        "--connect",
        metavar="ADDRESS",
        default=argparse.SUPPRESS,
        help=helping("use the standalone worker at ADDRESS (tcp://HOST:PORT) and never start"
                     " one"),
    )
    parser.add_argument(
        "--keys",
        type=Path,
        default=argparse.SUPPRESS,
        help=helping("CurveZMQ key folder (node.key_secret, worker.key); required for tcp://"),
    )
    parser.add_argument(
        "--dump",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=helping("the schema dump the migrate and rollback commands rewrite after a run"
                     " that changed something (default: $MIGRATIONS_DUMP, else the"
                     " project's, else none)"),
    )
    parser.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        help=helping("stderr log level (default: WARNING)"),
    )


class Parser(argparse.ArgumentParser):
    """argparse, except that a word where a command goes that is none gets `did you mean`."""

    words: tuple[str, ...] = ()  # the command line's words (only the top-level parser's)

    def error(self, message: str) -> NoReturn:
        from broker.cli import commands  # only a usage error pays for it

        sentence = commands.misspelt_command(self.words, message) if self.words else None
        if sentence is None:
            super().error(message)
        self.exit(2, f"{self.prog}: error: {sentence}\n")


class ShowVersion(argparse.Action):
    """--version: print `migrations-node X.Y.Z` on stdout and exit 0, as argparse's own
    "version" action does; the version is looked up only then, because importing
    importlib.metadata would cost every node's start-up about 50 ms."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        sys.stdout.write(f"migrations-node {installed_version()}\n")
        parser.exit()


def installed_version() -> str:
    """The installed distribution's version; in a source checkout without installed
    metadata, the one pyproject.toml beside node.py gives, said so."""
    from importlib import metadata

    try:
        return metadata.version("migrations-node")
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            with open(Path(__file__).with_name("pyproject.toml"), "rb") as file:
                version = tomllib.load(file)["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "(unknown: not installed, and no pyproject.toml beside node.py)"
        return f"{version} (source checkout, not installed)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with every setting it leaves out resolved (broker/cli/settings.py):
    `args.settings` says where each value came from."""
    line = sys.argv[1:] if argv is None else argv
    parser = Parser(
        prog="migrations-node",
        description=__doc__.splitlines()[0] + " With a COMMAND, a command line for people.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.words = tuple(line)
    parser.add_argument("--version", action=ShowVersion, help="print the version and exit")
    add_options(parser)
    # The same options after the command too (`status --db app.db`), hidden from its help.
    completing = "_ARGCOMPLETE" in os.environ  # a shell asking for tab completions
    if completing or set(line) & {*COMMANDS, "-h", "--help"}:
        # Only then are the commands loaded: the stdio node's start-up does not pay for them.
        from broker.cli import commands

        common = argparse.ArgumentParser(add_help=False)
        add_options(common, hidden=True)
        commands.add_commands(parser, common)
        commands.offer_completions(parser)  # answers a completing shell and exits
    else:
        parser.set_defaults(command=None)
    args = parser.parse_args(argv)
    try:
        args.settings = settings.resolve(vars(args), os.environ, Path.cwd())
    except settings.SettingsError as exc:
        parser.error(str(exc))
    for key, setting in args.settings.items():
        setattr(args, key, setting.value)
    if args.keys is not None:
        args.keys = Path(args.keys)
    if args.command == "new" and args.settings["migrations"].origin == settings.BUNDLED:
        args.migrations = Path.cwd() / settings.DEFAULT_FOLDER  # `new` writes here, never there
    elif not args.migrations.is_dir() and args.command != "new":
        origin = args.settings["migrations"].origin
        parser.error(f"the migrations folder {args.migrations} (from {origin}) is not a folder")
    args.migrations = args.migrations.resolve()
    backend = database_url.backend_of(args.db)
    if args.schema is not None and backend is None:
        parser.error("--schema is for a PostgreSQL database; a SQLite file has no schemas")
    if args.schema is not None and backend == database_url.MYSQL:
        parser.error("--schema is for a PostgreSQL database; on MySQL the tracking tables"
                     " live in the URL's database")
    if not args.table or "\x00" in args.table:
        parser.error("--table must be a non-empty name")
    for option, seconds in (("--owner-wait", args.owner_wait),
                            ("--lock-timeout", args.lock_timeout)):
        if seconds is not None and not 0 <= seconds < 2**63:
            parser.error(f"{option} must be 0 or more seconds")
    if not 0 <= args.lock_retries < 2**31:
        parser.error("--lock-retries must be 0 or more")
    remote = args.connect and not args.connect.startswith("ipc://")
    if remote and args.keys is None:
        parser.error(f"--connect {args.connect} leaves this machine: --keys is required")
    return args


def connect(args: argparse.Namespace) -> WorkerClient:
    """A client for the worker: the standalone one of --connect, or the database's own,
    started here first of all so that it starts while this node loads ZeroMQ.

    Raises WorkerConfigError, OSError or ValueError when no worker can be had.
    """
    supervisor = None
    if not args.connect:
        where = endpoint.for_database(args.db)
        secrets = None
        if database_url.is_url(args.db):
            secrets = database_url.split_secrets(args.db)[1]
        # A table nobody named is the worker's to find in the database (see WorkerSettings).
        table = None if args.settings["table"].origin == settings.DEFAULT else args.table
        worker = WorkerSettings(
            args.migrations, table, args.schema, args.owner_wait, wal=args.wal,
            lock_timeout_s=args.lock_timeout, lock_retries=args.lock_retries,
        )
        supervisor = WorkerSupervisor(where, worker, secrets)
        supervisor.ensure()
    # Imported only now (ZeroMQ is most of a node's start-up), so that it overlaps the
    # worker's own start-up on another core.
    from broker import keys
    from broker.client import WorkerClient

    if args.connect:
        if args.connect.startswith("ipc://"):
            endpoint.check_ipc_address(args.connect)
        curve = keys.for_node(args.keys) if args.keys else None
        return WorkerClient(args.connect, supervisor=None, curve=curve)
    return WorkerClient(where.address, supervisor, target=where.target)


def main(argv: list[str] | None = None) -> int:
    # First of all: SIGINT (Ctrl-C) and SIGTERM stop the node between two steps of its loop.
    stop = StopRequest()
    stop.install()
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s node[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    if args.command is not None:
        from broker.cli import commands

        return commands.run(args, stop, connect)
    hints.hint_on_terminal()  # a person at a terminal learns what the node waits for
    try:
        client = connect(args)
    except WorkerConfigError as exc:
        log.error("the worker cannot start: %s", exc)
        return EXIT_WORKER_CANNOT_START
    except (OSError, ValueError) as exc:
        log.error("cannot reach a worker: %s", exc)
        return EXIT_WORKER_CANNOT_START
    from broker.client import WorkerRefused  # loaded by connect() already

    try:
        serve(client, OrderedReplies(sys.stdout.buffer, envelope=args.envelope), stop)
    except WorkerConfigError as exc:
        log.error("the worker cannot start: %s", exc)
        return EXIT_WORKER_CANNOT_START
    except WorkerRefused as exc:
        log.error("%s: add this node's public key to the worker's authorized/ folder", exc)
        return EXIT_REFUSED
    except BrokenPipeError:
        log.error("stdout was closed before every reply was written; stopping")
        # Nothing more can be written there; keep the interpreter's exit flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED  # replies were lost: callers and `set -o pipefail` see it
    finally:
        client.close()
    if stop.requested:
        log.warning("stopped by signal %s", stop.signum)
        return 128 + stop.signum  # as a shell reports a program the signal ended
    return 0


def serve(client: WorkerClient, replies: OrderedReplies, stop: StopRequest) -> None:
    """Answer everything on stdin, then return once every reply is written.

    On a stop request with writes of this node in flight, stop reading, cancel them (a
    cancel answered to nobody), and return once every reply is written; with none, or on a
    second stop request, return at once (the worker finishes what it has, atomically, alone).
    """
    stdin = sys.stdin.fileno()
    framer = RequestFramer()
    reading, listening, stopping = True, False, False
    while reading or replies.waiting():
        if stop.requested:
            if stop.count > 1 or not (stopping or client.has_writes()):
                return
            if not stopping:
                reading, stopping = False, True
                cancel_on_signal(client, replies, stop.signum)
        # Stop reading while requests wait for the window, so input backs up, not memory.
        wanted = reading and client.has_room()
        if wanted != listening:
            client.watch(stdin, wanted)
            listening = wanted
        events = dict(client.poller.poll(client.timeout_ms()))
        deliver(client.process(events), replies)
        if stdin in events and not stop.requested:
            chunk = os.read(stdin, READ_BYTES)
            if not chunk:
                reading = False
            for item in framer.feed(chunk) if chunk else framer.close():
                accept(item, client, replies)
            client.flush()
        replies.flush()


def cancel_on_signal(client: WorkerClient, replies: OrderedReplies, signum: int) -> None:
    """Cancel this node's writes for a stop signal; the cancel's own reply goes nowhere."""
    log.warning("%s: cancelling this node's writes; stopping once their replies are written"
                " (a second signal stops at once)", signal.Signals(signum).name)
    deliver(client.cancel_writes(None), replies)
    client.flush()  # reads that waited behind a cancelled write may go now
    replies.flush()


def deliver(answered: list[tuple[Any, dict[str, Any]]], replies: OrderedReplies) -> None:
    """Put each reply in its slot; a reply to the node's own cancel (no slot) goes nowhere."""
    for slot, body in answered:
        if slot is not None:
            replies.fill(slot, body)


def accept(item: dict | Malformed, client: WorkerClient, replies: OrderedReplies) -> None:
    """Give one framed input its place in the output, and its answer or its way to the worker."""
    if isinstance(item, Malformed):
        replies.fill(replies.reserve(None), ReplyError(MALFORMED_REQUEST, item.text).body())
        return
    request = parse_request(item)
    if request.kind == "init" and request.problem is None:
        replies.adopt_identity(request.body["node_id"])
    slot = replies.reserve(request)
    if request.problem is not None:
        replies.fill(slot, request.problem.body())
    elif request.kind == "init":
        replies.fill(slot, {"type": "init_ok"})
    elif request.kind == "cancel":
        deliver(client.cancel_writes(slot, request.src), replies)
    else:
        params = {k: v for k, v in request.body.items() if k not in ENVELOPE_FIELDS}
        try:
            client.submit(slot, request.kind, params, request.src)
        except ValueError as exc:  # codec.CodecError: a field that cannot travel
            replies.fill(slot, ReplyError(MALFORMED_REQUEST, str(exc)).body())


if __name__ == "__main__":
    sys.exit(main())
