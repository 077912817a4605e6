from pglast import ast

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    """At the statement that makes a migration both hold the lock and change rows (once: an
    ignore there accepts the pair for the rest of the migration)."""
    if not facts.transactional or facts.lock_timeout:
        return False
    if facts.exclusive_lock and facts.rows_changed:
        return False  # said at the statement that brought them together
    locks = any(facts.existing(table) for table in tree.access_exclusive_tables(node))
    return ((facts.exclusive_lock or locks)
            and (facts.rows_changed or tree.changes_rows(node)))


RULE = Rule(
    id="exclusive-lock-while-updating",
    why="This migration holds an ACCESS EXCLUSIVE lock on an existing table (from an ALTER"
        " TABLE, DROP, RENAME, TRUNCATE or LOCK) in the same transaction as it changes rows"
        " (UPDATE, DELETE, MERGE, INSERT ... SELECT): every query on that table waits until the"
        " row changes are done and committed, and without a lock timeout of its own the"
        " migration may also wait long for the lock while queries queue behind it.",
    fix="Change the schema and the rows in separate migrations (the rows in batches, from a"
        " migration outside a transaction or a job); if they must be one, SET LOCAL"
        " lock_timeout = '2s' first, so that a lock it cannot get soon fails it instead of"
        " stalling the application, and retry it.",
    check=check,
)
