"""Adopt a database another migration tool kept: record what it applied, never write its table.

    tools.TOOLS[name]            one module per tool (golang_migrate, goose, flyway,
                                 sql_migrate, dbmate): its table's name and columns, and
      .read(rows) -> Reading     the versions it applied, their times, what is not clean
    plan.plan_adoption(store, tool, migrations)
                   -> Plan       each migration file here to record as applied, with the
                                 tool's time; AdoptRefused naming every problem otherwise
    engine.adopt                 records the plan in one transaction (history action
                                 `adopt`), or shows it (dry run)

The modules here read through the store's `columns_of` and `foreign_rows` only: they hold
no connection and write nothing.
"""
