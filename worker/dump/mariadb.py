"""A MariaDB (or MySQL) database's schema as the SQL that recreates it: mysqldump --no-data.

    mariadb-dump (or mysqldump) --no-defaults --no-data --skip-comments --routines --triggers
        --skip-add-drop-table --host --port --user [--socket] [--ssl-*] DATABASE
        env MYSQL_PWD (the worker's, the URL's or ~/.my.cnf's password, as the store uses)

`--no-defaults`: the URL alone says where to connect, as for the store. The tables'
AUTO_INCREMENT=N follows the data, not the schema, and is taken out, so that an unchanged
schema gives the same text; DEFINER clauses stay as the server wrote them.
"""

from __future__ import annotations

import re

from broker import mysql_url
from worker.dump.tools import find_tool, run_tool

PACKAGE = "mariadb-client"
TOOLS = ("mariadb-dump", "mysqldump")
OPTIONS = ("--no-defaults", "--no-data", "--skip-comments", "--routines", "--triggers",
           "--skip-add-drop-table", "--single-transaction")
_AUTO_INCREMENT = re.compile(r"^(\) ENGINE=.*?) AUTO_INCREMENT=\d+", re.MULTILINE)
_PLAIN = re.compile(r"[^\\\x00-\x1f\x7f]*")  # a string that means the same in every sql_mode


def schema_sql(url: str) -> str:
    """mysqldump's schema-only SQL of the URL's database, routines and triggers included.

    Raises error 22 when neither mariadb-dump nor mysqldump is on PATH (naming PACKAGE), or
    it fails.
    """
    tool = find_tool(TOOLS, PACKAGE)
    args = mysql_url.connect_args(url)
    argv = [tool, *OPTIONS, f"--user={args['user']}"]
    if args["unix_socket"]:
        argv += ["--protocol=SOCKET", f"--socket={args['unix_socket']}"]
    else:
        argv += ["--protocol=TCP", f"--host={args['host']}", f"--port={args['port']}"]
    argv.append(f"--default-character-set={args['charset']}")
    ssl = args.get("ssl") or {}
    for key in ("ca", "cert", "key"):
        if key in ssl:
            argv.append(f"--ssl-{key}={ssl[key]}")
    if args.get("ssl") and ssl.get("verify_mode"):
        argv.append("--ssl-verify-server-cert")
    argv += ["--", args["database"]]
    environment = {"MYSQL_PWD": args["password"]} if args["password"] else {}
    return _AUTO_INCREMENT.sub(r"\1", run_tool(argv, environment))


def literal(value: object) -> str:
    """A value as a MySQL literal that reads the same whatever the sql_mode (with or
    without NO_BACKSLASH_ESCAPES): a string holding a backslash or a control character is
    written in hexadecimal."""
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if _PLAIN.fullmatch(text):
        return "'" + text.replace("'", "''") + "'"
    return "_utf8mb4 X'" + text.encode().hex() + "'"


def quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
