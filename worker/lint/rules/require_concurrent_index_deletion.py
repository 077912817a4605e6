from pglast import ast

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    indexes = tree.dropped_indexes(node)
    return (bool(indexes) and not node.concurrent
            and any(index not in facts.created_indexes for index in indexes))


RULE = Rule(
    id="require-concurrent-index-deletion",
    why="DROP INDEX without CONCURRENTLY takes an ACCESS EXCLUSIVE lock on the index's table:"
        " every query on it waits, and queues behind it while it waits for its own turn.",
    fix="DROP INDEX CONCURRENTLY (IF EXISTS) in a migration of its own that runs outside a"
        " transaction (`-- migrate:up transaction:false`, TRANSACTION = False).",
    check=check,
)
