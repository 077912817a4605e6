from pglast import ast

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    if not facts.transactional or facts.lock_timeout:
        return False
    locks = any(facts.existing(table) for table in tree.access_exclusive_tables(node))
    return (tree.changes_rows(node) and facts.exclusive_lock) or (locks and facts.rows_changed)


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
