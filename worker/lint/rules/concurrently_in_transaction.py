from pglast import ast

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return facts.transactional and tree.concurrently(node)


RULE = Rule(
    id="concurrently-in-transaction",
    why="CONCURRENTLY cannot run inside a transaction block: PostgreSQL refuses the statement,"
        " and the migration fails every time it runs in one.",
    fix="Put the statement in a migration of its own marked to run outside a transaction:"
        " `-- migrate:up transaction:false` in a .sql file, TRANSACTION = False in a .py file;"
        " keep it to that one statement, safe to repeat (IF NOT EXISTS / IF EXISTS).",
    check=check,
)
