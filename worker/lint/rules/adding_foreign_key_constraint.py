from pglast import ast
from pglast.enums import ConstrType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule


def check(node: ast.Node, facts: Facts) -> bool:
    return any(
        constraint.contype == ConstrType.CONSTR_FOREIGN and not constraint.skip_validation
        and facts.existing(table)
        for table, constraint in tree.added_constraints(node)
    )


RULE = Rule(
    id="adding-foreign-key-constraint",
    why="Adding a foreign key checks every existing row while it holds a SHARE ROW EXCLUSIVE"
        " lock on both tables, blocking their writes for the whole scan.",
    fix="Add it NOT VALID (new rows are checked at once, and no scan runs), then VALIDATE"
        " CONSTRAINT in a later migration: validating takes a lock that lets writes go on.",
    check=check,
)
