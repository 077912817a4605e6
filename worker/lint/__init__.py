"""Lint: rules that catch, before a migration runs, what takes dangerous locks or breaks the
running application on PostgreSQL.

    a .sql migration  --> sources.sql_source      its up section's statements, with lines
    a .py migration   --> recording.Recorder      what its dry run executes, with the line
                          sources.python_source     of its file that executed each
                      --> runner.lint             each statement parsed by pglast (the
                                                    PostgreSQL parser, libpg_query), handed
                                                    to every rule of rules/ with the facts
                                                    learnt from the statements before it
                                                    (facts.py); `-- lint:ignore` applied
                      --> Finding(rule, file, line, why, fix, version, statement)

Only the lint request imports this package: pglast takes tens of milliseconds to import
(BENCHMARKS.md), which no other request pays. parser.require() says how to install it when
it is missing.
"""
