"""broker/cli/project_table.py: the line adopt adds to a project's pyproject.toml, and the
files it leaves as they are, byte for byte, saying the line to add instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.cli.project_table import record_table

LINE = 'table = "migrations_node"  # adopt: schema_migrations is dbmate\'s'


def project(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def record(path: Path) -> str:
    return record_table(path, "migrations_node", "adopt: schema_migrations is dbmate's")


def test_the_line_goes_right_below_the_header_and_nothing_else_moves(tmp_path):
    before = ('[project]\nname = "app"\n\n[ tool . "migrations-node" ]  # ours\n'
              'db = "app.db"\n\n[tool.black]\nline-length = 100\n')
    path = project(tmp_path, before)
    os.chmod(path, 0o604)
    said = record(path)
    assert said == f'recorded table = "migrations_node" under [tool.migrations-node] in {path}'
    assert path.read_text() == before.replace("# ours\n", f"# ours\n{LINE}\n")
    assert os.stat(path).st_mode & 0o777 == 0o604
    assert [p.name for p in tmp_path.iterdir()] == ["pyproject.toml"]  # no file left beside


def test_windows_line_endings_and_a_header_on_the_last_line_are_kept(tmp_path):
    crlf = project(tmp_path, b'[project]\r\nname = "app"\r\n[tool.migrations-node]\r\n')
    record(crlf)
    assert crlf.read_bytes() == (b'[project]\r\nname = "app"\r\n[tool.migrations-node]\r\n'
                                 + LINE.encode() + b"\r\n")
    last = project(tmp_path, b"[tool.migrations-node]")
    record(last)
    assert last.read_bytes() == b"[tool.migrations-node]\n" + LINE.encode() + b"\n"


@pytest.mark.parametrize("text, why", [
    ('[tool]\nmigrations-node = { db = "app.db" }\n', "no single [tool.migrations-node] header"),
    ('[tool.migrations-node]\ntable = "mine"\n', "already names a table"),
    ('[project]\ndescription = """\n[tool.migrations-node]\n"""\n[tool.migrations-node]\n',
     "no single [tool.migrations-node] header"),
    ('x = """\n[tool.migrations-node]\n"""\n', "has no [tool.migrations-node] table"),
    ('[tool.migrations-node]\ndb = """\n[tool.migrations-node]\n"""\n',
     "no single [tool.migrations-node] header"),
    ("[tool.migrations-node\n", "does not read as TOML"),
])
def test_a_file_it_cannot_change_surely_is_left_as_it_is_with_the_line_to_add(
        tmp_path, text, why):
    path = project(tmp_path, text)
    said = record(path)
    assert path.read_text() == text
    assert why in said and said.endswith(
        'add table = "migrations_node" under [tool.migrations-node] to say it there (nodes'
        " find the table without it)")
    assert [p.name for p in tmp_path.iterdir()] == ["pyproject.toml"]


def test_a_file_whose_new_text_cannot_be_written_beside_it_is_left_as_it_is(tmp_path):
    path = project(tmp_path, "[tool.migrations-node]\n")
    in_the_way = tmp_path / f".pyproject.toml.migrations-node-{os.getpid()}"
    in_the_way.mkdir()  # where the new text would be written first
    said = record(path)
    assert path.read_text() == "[tool.migrations-node]\n" and in_the_way.is_dir()
    assert said.startswith(f"{path} was left as it is ([Errno 17] File exists")
