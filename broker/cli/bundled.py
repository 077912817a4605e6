"""Where the bundled example migrations are: the repository's migrations/ folder, which a
wheel or `pip install .` installs as the package data `migrations_node_examples`."""

from __future__ import annotations

from pathlib import Path

INSTALLED_NAME = "migrations_node_examples"  # pyproject.toml's package-dir maps migrations/ here
SOURCE_NAME = "migrations"
# The folder that holds the broker package: site-packages once installed, else the repository.
ROOT = Path(__file__).resolve().parent.parent.parent


def bundled_migrations() -> Path:
    """The folder of the example migrations that came with this copy of the code.

    Installed (a wheel, `pip install .`), it is `migrations_node_examples` beside the broker
    package in site-packages; in a source checkout or an editable install, whose broker
    package is the repository's own, it is the repository's `migrations/`. Found beside
    this file rather than on sys.path, so that another copy of the project, or another
    application's `migrations` package, is never taken for it. The folder returned may not
    exist (an install without its package data): the caller says so.
    """
    installed = ROOT / INSTALLED_NAME
    if installed.is_dir():
        return installed
    source = ROOT / SOURCE_NAME
    # A repository is known by its pyproject.toml: site-packages has none, and a
    # `migrations` folder there belongs to some other application.
    if (ROOT / "pyproject.toml").is_file() and source.is_dir():
        return source
    return installed
