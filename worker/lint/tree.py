"""Small readings of pglast parse trees that several rules and the facts share.

Table names are compared by their bare name (`relname`, as the parser folds it: unquoted
names in lower case), whatever the schema: migrations rarely create two tables of one name.
"""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast
from pglast.enums import AlterTableType, ConstrType, NullTestType, ObjectType

ACCESS_EXCLUSIVE = 8  # LockStmt.mode of ACCESS EXCLUSIVE (lockdefs.h AccessExclusiveLock)
# ALTER TABLE forms that take less than ACCESS EXCLUSIVE (the ALTER TABLE page's lock notes);
# adding a foreign key is SHARE ROW EXCLUSIVE, see takes_access_exclusive.
WEAKER_ALTERS = frozenset({
    AlterTableType.AT_ValidateConstraint,
    AlterTableType.AT_SetStatistics,
    AlterTableType.AT_SetOptions,
    AlterTableType.AT_ResetOptions,
    AlterTableType.AT_ClusterOn,
    AlterTableType.AT_DropCluster,
    AlterTableType.AT_SetRelOptions,
    AlterTableType.AT_ResetRelOptions,
    AlterTableType.AT_EnableTrig,
    AlterTableType.AT_EnableAlwaysTrig,
    AlterTableType.AT_EnableReplicaTrig,
    AlterTableType.AT_DisableTrig,
    AlterTableType.AT_EnableTrigAll,
    AlterTableType.AT_DisableTrigAll,
    AlterTableType.AT_EnableTrigUser,
    AlterTableType.AT_DisableTrigUser,
    AlterTableType.AT_AttachPartition,
    AlterTableType.AT_DetachPartition,
})


def table_name(relation: ast.RangeVar | None) -> str:
    return "" if relation is None else relation.relname


def alter_commands(node: ast.Node) -> Iterator[tuple[str, ast.AlterTableCmd]]:
    """(table, command) for each command of an ALTER TABLE; nothing for other statements."""
    if isinstance(node, ast.AlterTableStmt) and node.objtype == ObjectType.OBJECT_TABLE:
        for command in node.cmds or ():
            if isinstance(command, ast.AlterTableCmd):
                yield table_name(node.relation), command


def added_constraints(node: ast.Node) -> Iterator[tuple[str, ast.Constraint]]:
    """(table, constraint) for each ALTER TABLE ... ADD CONSTRAINT of a statement."""
    for table, command in alter_commands(node):
        if command.subtype == AlterTableType.AT_AddConstraint and isinstance(
            command.def_, ast.Constraint
        ):
            yield table, command.def_


def added_columns(node: ast.Node) -> Iterator[tuple[str, ast.ColumnDef]]:
    """(table, column) for each ALTER TABLE ... ADD COLUMN of a statement."""
    for table, command in alter_commands(node):
        if command.subtype == AlterTableType.AT_AddColumn and isinstance(
            command.def_, ast.ColumnDef
        ):
            yield table, command.def_


def column_constraints(column: ast.ColumnDef, kind: ConstrType) -> list[ast.Constraint]:
    return [c for c in column.constraints or () if isinstance(c, ast.Constraint)
            and c.contype == kind]


def not_null_column(constraint: ast.Constraint) -> str | None:
    """The column a CHECK (column IS NOT NULL) constraint is about; None for any other."""
    expression = constraint.raw_expr
    if constraint.contype != ConstrType.CONSTR_CHECK or not isinstance(expression, ast.NullTest):
        return None
    if (expression.nulltesttype != NullTestType.IS_NOT_NULL
            or not isinstance(expression.arg, ast.ColumnRef)):
        return None
    fields = expression.arg.fields or ()
    last = fields[-1] if fields else None
    return last.sval if isinstance(last, ast.String) else None


def concurrently(node: ast.Node) -> bool:
    """Whether the statement says CONCURRENTLY (CREATE, DROP or REINDEX of an index)."""
    if isinstance(node, ast.IndexStmt | ast.DropStmt):
        return bool(node.concurrent)
    if isinstance(node, ast.ReindexStmt):
        return any(isinstance(p, ast.DefElem) and p.defname == "concurrently"
                   for p in node.params or ())
    return False


def dropped_tables(node: ast.Node) -> list[str]:
    if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
        return [_last_name(names) for names in node.objects or ()]
    return []


def dropped_indexes(node: ast.Node) -> list[str]:
    if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_INDEX:
        return [_last_name(names) for names in node.objects or ()]
    return []


def _last_name(names: object) -> str:
    parts = names if isinstance(names, tuple | list) else (names,)
    last = parts[-1] if parts else None
    return last.sval if isinstance(last, ast.String) else ""


def changes_rows(node: ast.Node) -> bool:
    """UPDATE, DELETE, MERGE or INSERT ... SELECT: a statement whose time grows with the
    table (an INSERT of VALUES adds what it lists)."""
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
        return True
    if isinstance(node, ast.InsertStmt):
        select = node.selectStmt
        return isinstance(select, ast.SelectStmt) and select.valuesLists is None
    return False


def access_exclusive_tables(node: ast.Node) -> list[str]:
    """The tables the statement locks ACCESS EXCLUSIVE, blocking every read and write of
    them until the transaction ends."""
    if isinstance(node, ast.LockStmt):
        if node.mode == ACCESS_EXCLUSIVE:
            return [table_name(r) for r in node.relations or () if isinstance(r, ast.RangeVar)]
        return []
    if isinstance(node, ast.TruncateStmt):
        return [table_name(r) for r in node.relations or () if isinstance(r, ast.RangeVar)]
    if isinstance(node, ast.RenameStmt) and node.relation is not None:
        return [table_name(node.relation)]
    if isinstance(node, ast.ClusterStmt) and node.relation is not None:
        return [table_name(node.relation)]
    tables = dropped_tables(node)
    for table, command in alter_commands(node):
        if command.subtype in WEAKER_ALTERS:
            continue
        if (command.subtype == AlterTableType.AT_AddConstraint
                and isinstance(command.def_, ast.Constraint)
                and command.def_.contype == ConstrType.CONSTR_FOREIGN):
            continue
        tables.append(table)
    return tables
