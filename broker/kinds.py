"""The request types of the wire contract, and which of them only read.

Said once, here, for both ends: the worker serves exactly these (its handler table is
checked against them at start), and the node uses READS to order requests: a read changes
nothing and is not stored, so it may run again after a crash and is pipelined freely, while
every other request waits until everything before it is answered (broker/client.py).
`init` is the front node's own and never reaches the worker. `cancel` is neither: it is sent
at once, ahead of anything queued, and names the writes it cancels (see worker/server.py).
`lint` reads, but through a dry run: see DRY_RUNS.
"""

from __future__ import annotations

READS = frozenset({"status", "health", "validate", "history"})
WRITES = frozenset({"migrate", "rollback", "baseline", "adopt", "resolve"})
CONTROLS = frozenset({"cancel"})
# Change nothing of the database, yet run long or on the write connection (lint: a dry run,
# a rolled-back transaction; verify: scratch databases; dump: pg_dump or mysqldump), so the
# worker queues them with the writes, its socket thread free for reads and cancels, and
# the node orders them as writes; they are neither stored nor cancelled.
DRY_RUNS = frozenset({"lint", "verify", "dump"})
WORKER_KINDS = READS | WRITES | CONTROLS | DRY_RUNS
# The tools an `adopt` request's `from` names (worker/adopt/tools.py reads each one's table).
ADOPT_FROM = ("golang-migrate", "goose", "flyway", "sql-migrate", "dbmate")
PROGRESS = "migration_progress"  # a reply body that comes before a write's one reply
WAITING = "migration_waiting"  # another: a step waits for a lock, or will be tried again
BEFORE_REPLY = frozenset({PROGRESS, WAITING})  # the bodies that leave their request open

# What a person types (`node.py COMMAND`): the requests above, and `new`, `stop` and
# `config`, which send none (`stop` signals the database's worker).
COMMANDS = (
    "migrate", "rollback", "baseline", "adopt", "resolve", "status", "validate", "verify",
    "dump", "lint", "history", "new", "health", "stop", "config",
)


def before_reply(body: dict) -> bool:
    """Whether `body` comes before its request's one reply (its type is in BEFORE_REPLY);
    a type of any kind may arrive, hashable or not."""
    kind = body.get("type")
    return isinstance(kind, str) and kind in BEFORE_REPLY
