from pglast import ast
from pglast.enums import ConstrType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return any(
        constraint.contype == ConstrType.CONSTR_CHECK and not constraint.skip_validation
        and facts.existing(table)
        for table, constraint in tree.added_constraints(node)
    )


RULE = Rule(
    id="adding-check-constraint",
    why="Adding a CHECK constraint scans every existing row while it holds an ACCESS EXCLUSIVE"
        " lock: no query can read or write the table until the scan ends.",
    fix="Add it NOT VALID (new rows are checked at once, and no scan runs), then VALIDATE"
        " CONSTRAINT in a later migration, which lets reads and writes go on.",
    check=check,
)
