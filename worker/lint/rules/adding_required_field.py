from pglast import ast
from pglast.enums import ConstrType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule

# A column of these has a value for every existing row without a DEFAULT.
FILLED = (ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)


def check(node: ast.Node, facts: Facts) -> bool:
    for table, column in tree.added_columns(node):
        not_null = column.is_not_null or tree.column_constraints(
            column, ConstrType.CONSTR_NOTNULL)
        filled = any(tree.column_constraints(column, kind) for kind in FILLED)
        if not_null and not filled and facts.existing(table):
            return True
    return False


RULE = Rule(
    id="adding-required-field",
    why="ADD COLUMN ... NOT NULL without a default fails on a table that has rows, and once"
        " added, every INSERT of the running application, which does not know the column,"
        " fails.",
    fix="Add it with a constant DEFAULT (stored in the catalog, no rewrite since PostgreSQL 11),"
        " or add it nullable, backfill it, then set NOT NULL through a validated CHECK"
        " (see setting-not-null).",
    check=check,
)
