"""The other tools themselves, where they can be had: dbmate (npm's package ships a static
binary) and sql-migrate (a Debian package). .ci/run installs them when it can; a test that
does not find one skips, saying where it looked and how to install it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import PROJECT

# Where `.ci/run` puts npm's dbmate: `npm install --prefix .ci/tools dbmate`.
NPM_PREFIX = PROJECT / ".ci" / "tools"
DBMATE_IN_PREFIX = NPM_PREFIX / "node_modules" / ".bin" / "dbmate"


def dbmate() -> Path:
    """dbmate on the PATH or in .ci/tools; skips the test when it is in neither."""
    found = shutil.which("dbmate") or shutil.which("dbmate", path=str(DBMATE_IN_PREFIX.parent))
    if found is None:
        pytest.skip(f"dbmate is not installed (not on the PATH, not in {DBMATE_IN_PREFIX}):"
                    f" npm install --prefix {NPM_PREFIX} dbmate")
    return Path(found)


def sql_migrate() -> Path:
    """sql-migrate on the PATH; skips the test when it is not there."""
    found = shutil.which("sql-migrate")
    if found is None:
        pytest.skip("sql-migrate is not installed (not on the PATH): apt-get install -y"
                    " sql-migrate (Debian's package)")
    return Path(found)
