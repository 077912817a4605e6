"""pglast, the PostgreSQL parser lint reads statements with, and what to say without it."""

from __future__ import annotations

import sys
from types import ModuleType

from broker.errors import PRECONDITION_FAILED, ReplyError

INSTALL = "pip install 'migrations-node[postgres]'"  # pglast comes with the postgres extra


class ParserMissing(ReplyError):
    """Error 22: lint needs pglast, and it cannot be imported here."""

    def __init__(self, cause: str) -> None:
        super().__init__(
            PRECONDITION_FAILED,
            f"lint reads SQL with pglast (PostgreSQL's own parser), {cause} for"
            f" {sys.executable}, so nothing was linted: {INSTALL}",
        )


def require() -> ModuleType:
    """The pglast module; raises ParserMissing naming the command that installs it."""
    try:
        import pglast
    except ImportError as exc:
        cause = ("which is not installed" if exc.name == "pglast"
                 else f"which cannot be loaded ({exc})")
        raise ParserMissing(cause) from None
    return pglast


def version() -> str:
    """pglast's version and the PostgreSQL grammar it parses, for error texts."""
    import pglast

    return f"pglast {pglast.__version__.lstrip('v')}"
