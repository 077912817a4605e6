"""What the statements before the one being linted established: the facts rules read.

Facts span the whole linted set, in version order (a table created by an earlier pending
migration is new, not an existing table that running code reads), and some the one
migration (its lock timeout, its ACCESS EXCLUSIVE locks and row changes, which last until
its transaction ends).
"""

from __future__ import annotations

from pglast import ast
from pglast.enums import AlterTableType, ObjectType

from worker.lint import tree


class Facts:
    def __init__(self) -> None:
        self.created_tables: set[str] = set()  # by a statement linted before this one
        self.created_indexes: set[str] = set()
        # (table, constraint) -> the column of each CHECK (column IS NOT NULL), and whether
        # it is validated (added without NOT VALID, or VALIDATE CONSTRAINT since)
        self.not_null_checks: dict[tuple[str, str], tuple[str, bool]] = {}
        self.begin_migration(transactional=True)

    def begin_migration(self, transactional: bool) -> None:
        """Forget what one migration's transaction held; the next runs as `transactional`
        says (False: `transaction:false`, `TRANSACTION = False`)."""
        self.transactional = transactional
        self.lock_timeout = False  # the migration set lock_timeout itself
        self.exclusive_lock = False  # it holds ACCESS EXCLUSIVE on an existing table
        self.rows_changed = False  # it ran UPDATE, DELETE, MERGE or INSERT ... SELECT

    def existing(self, table: str) -> bool:
        """Whether `table` is one running code may use: not created in the linted set."""
        return table not in self.created_tables

    def validated_not_null(self, table: str, column: str) -> bool:
        """Whether a validated CHECK (column IS NOT NULL) on `table` was seen."""
        return any(
            on == table and checked == column and valid
            for (on, _), (checked, valid) in self.not_null_checks.items()
        )

    def learn(self, node: ast.Node) -> None:
        """Take in what a statement did, once every rule has seen it."""
        if isinstance(node, ast.CreateStmt) and node.relation is not None:
            self.created_tables.add(tree.table_name(node.relation))
        elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
            self.created_tables.add(tree.table_name(node.into.rel))
        elif isinstance(node, ast.IndexStmt) and node.idxname:
            self.created_indexes.add(node.idxname)
        elif isinstance(node, ast.VariableSetStmt) and node.name == "lock_timeout":
            self.lock_timeout = True
        elif (isinstance(node, ast.RenameStmt) and node.renameType == ObjectType.OBJECT_TABLE
              and tree.table_name(node.relation) in self.created_tables):
            self.created_tables.add(node.newname)
        if tree.changes_rows(node):
            self.rows_changed = True
        if any(self.existing(table) for table in tree.access_exclusive_tables(node)):
            self.exclusive_lock = True
        for table, constraint in tree.added_constraints(node):
            column = tree.not_null_column(constraint)
            if column is not None and constraint.conname:
                self.not_null_checks[(table, constraint.conname)] = (
                    column, not constraint.skip_validation)
        for table, command in tree.alter_commands(node):
            key = (table, command.name or "")
            validates = command.subtype == AlterTableType.AT_ValidateConstraint
            if validates and key in self.not_null_checks:
                self.not_null_checks[key] = (self.not_null_checks[key][0], True)
