"""Exit statuses a worker reports to the node that started it (kept apart: both import it)."""

EXIT_OWNED = 75  # EX_TEMPFAIL: another worker owns the database; not a failure for a node
EXIT_CONFIG = 78  # EX_CONFIG: the worker cannot start with this configuration; no restart
