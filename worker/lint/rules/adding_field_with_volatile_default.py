from pglast import ast
from pglast.enums import ConstrType

from worker.lint import tree
from worker.lint.facts import Facts
from worker.lint.rule import Rule

# Functions of a default that PostgreSQL evaluates once for the whole table (not volatile),
# so that ADD COLUMN stores the value in the catalog and rewrites nothing (PostgreSQL 11+).
# Any other function call may be volatile: lint cannot ask the server, so it says so.
NOT_VOLATILE = frozenset({
    "now", "transaction_timestamp", "statement_timestamp", "current_date", "localtimestamp",
    "lower", "upper", "length", "concat", "coalesce", "nullif", "greatest", "least",
    "to_char", "to_date", "to_timestamp", "make_date", "make_timestamp", "make_timestamptz",
    "make_interval", "jsonb_build_object", "json_build_object", "jsonb_build_array",
    "json_build_array", "array_fill", "abs", "round",
})
SERIAL_TYPES = frozenset({"serial", "serial2", "serial4", "serial8", "smallserial",
                          "bigserial"})


def _volatile_calls(expression: object) -> bool:
    """Whether an expression calls a function not known to be non-volatile."""
    for node in _walk(expression):
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval if node.funcname else ""
            if name.lower() not in NOT_VOLATILE:
                return True
    return False


def _walk(value: object):
    if isinstance(value, ast.Node):
        yield value
        for attribute in value:
            yield from _walk(getattr(value, attribute))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _walk(item)


def _serial(column: ast.ColumnDef) -> bool:
    names = column.typeName.names if column.typeName is not None else ()
    return bool(names) and names[-1].sval in SERIAL_TYPES


def check(node: ast.Node, facts: Facts) -> bool:
    for table, column in tree.added_columns(node):
        if not facts.existing(table):
            continue
        defaults = tree.column_constraints(column, ConstrType.CONSTR_DEFAULT)
        if _serial(column) or any(_volatile_calls(d.raw_expr) for d in defaults):
            return True
    return False


RULE = Rule(
    id="adding-field-with-volatile-default",
    why="ADD COLUMN with a volatile default (random(), gen_random_uuid(), clock_timestamp(),"
        " nextval() of a serial, or a function lint cannot tell is not volatile) computes a"
        " value per row: it rewrites the whole table under an ACCESS EXCLUSIVE lock.",
    fix="Add the column without a default (or with a constant one), then SET DEFAULT for new"
        " rows, then backfill existing rows in batches from a migration outside a transaction"
        " (or a job).",
    check=check,
)
