from pglast import ast
from pglast.enums import ConstrType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule

UNIQUE_KINDS = (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY)


def check(node: ast.Node, facts: Facts) -> bool:
    return any(
        constraint.contype in UNIQUE_KINDS and not constraint.indexname and facts.existing(table)
        for table, constraint in tree.added_constraints(node)
    )


RULE = Rule(
    id="disallowed-unique-constraint",
    why="ADD CONSTRAINT ... UNIQUE (or PRIMARY KEY) builds its index while it holds an ACCESS"
        " EXCLUSIVE lock: no query can read or write the table for the whole build.",
    fix="CREATE UNIQUE INDEX CONCURRENTLY in a migration outside a transaction"
        " (`-- migrate:up transaction:false`), then ADD CONSTRAINT name UNIQUE USING INDEX"
        " index_name in a later one, which takes the lock only for a moment.",
    check=check,
)
