from pglast import ast

from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return (isinstance(node, ast.IndexStmt) and not node.concurrent
            and facts.existing(node.relation.relname))


RULE = Rule(
    id="require-concurrent-index-creation",
    why="CREATE INDEX without CONCURRENTLY on an existing table holds a SHARE lock for the"
        " whole build, blocking every INSERT, UPDATE and DELETE on the table until it ends.",
    fix="CREATE INDEX CONCURRENTLY (with IF NOT EXISTS, so it can be run again) in a migration"
        " of its own that runs outside a transaction: `-- migrate:up transaction:false` in a"
        " .sql file, TRANSACTION = False in a .py file.",
    check=check,
)
