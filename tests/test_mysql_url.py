"""MySQL and MariaDB URLs as a node reads them (broker/mysql_url.py), and the one place that
tells a URL's kind (broker/database_url.py) handing them there while PostgreSQL's read as
before.

No server and no driver are needed: the node never loads one. Endpoints are compared as two
nodes would compare them (endpoint.for_database); the worker's argv and environment are the
lists and dicts spawn.py hands to Popen. No MySQL worker is started: its store is not here.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import database_url, endpoint, mysql_url, spawn
from tests.support import NODE, PROCESS_TIMEOUT_S

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(autouse=True)
def private_runtime(monkeypatch, tmp_path):
    """Endpoints in a runtime folder of the test's, and no MYSQL_PWD of the machine's."""
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.delenv("MYSQL_PWD", raising=False)


def worker_of(url: str) -> str:
    """The endpoint a node started with --db `url` finds (or spawns) its worker at."""
    return endpoint.for_database(url).address


# -- reading a URL -------------------------------------------------------------------------


def test_a_full_url_reads_part_by_part_each_decoded_once():
    url = ("mysql://app%40corp:p%40ss%2Bw0rd@Db.Example.com:3307/shop%2520db"
           "?charset=latin1&connect_timeout=5")
    assert database_url.split_secrets(url) == (
        "mysql://app%40corp@Db.Example.com:3307/shop%2520db?charset=latin1&connect_timeout=5",
        {"password": "p@ss+w0rd"},
    )
    assert mysql_url.resolve(url) == mysql_url.Target(
        user="app@corp", database="shop%20db", host="db.example.com", port=3307)
    assert mysql_url.connect_args(url) == {
        "host": "Db.Example.com", "port": 3307, "user": "app@corp", "password": "p@ss+w0rd",
        "database": "shop%20db", "unix_socket": None, "charset": "latin1",
        "connect_timeout": 5,
    }


def test_what_the_url_leaves_out_is_the_mysql_clients_default():
    assert mysql_url.resolve("mysql:///app") == mysql_url.Target(
        user=ME, database="app", host="localhost", port=3306)
    assert mysql_url.connect_args("mysql:///app") == {
        "host": "localhost", "port": 3306, "user": ME, "password": None, "database": "app",
        "unix_socket": None, "charset": "utf8mb4", "connect_timeout": 10,
    }
    assert mysql_url.target("mysql://h:/app") == f"mysql://{ME}@h:3306/app"  # an empty port


@pytest.mark.parametrize(("url", "host", "target"), [
    ("mysql://u@[::1]:3307/app", "::1", "mysql://u@[::1]:3307/app"),
    ("mysql://u@[0:0:0:0:0:0:0:1]/app", "0:0:0:0:0:0:0:1", "mysql://u@[::1]:3306/app"),
    ("mysql://u@[FE80::1%25eth0]/app", "FE80::1%eth0", "mysql://u@[fe80::1%25eth0]:3306/app"),
])
def test_an_ipv6_address_is_read_in_brackets_and_named_in_its_shortest_form(url, host, target):
    assert mysql_url.connect_args(url)["host"] == host
    assert mysql_url.target(url) == target


def test_a_unix_socket_names_the_server_and_host_and_port_are_not_used(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real = tmp_path / "real" / "mysqld.sock"
    through_link = quote(str(tmp_path / "link" / "mysqld.sock"), safe="")
    spellings = [f"mysql://u@/app?unix_socket={real}",
                 f"mariadb://u@Other:1234/app?socket={through_link}",
                 f"mysql://u@localhost/app?unix-socket={real}&charset=utf8"]
    assert {mysql_url.target(url) for url in spellings} == {
        f"mysql://u@/app?unix_socket={quote(os.path.realpath(real), safe='')}"}
    assert len({worker_of(url) for url in spellings}) == 1
    assert mysql_url.connect_args(spellings[1])["unix_socket"] == str(
        tmp_path / "link" / "mysqld.sock")
    assert worker_of(spellings[0]) != worker_of(f"mysql://u@/app?unix_socket={real}.2")


@pytest.mark.parametrize("spellings", [
    ["mysql://u@db/app", "mariadb://u@db/app", "mysql://u@DB:3306/app", "mysql://u:pw@db/app",
     "mysql://%75@db/%61pp", "mysql://u@db/app?charset=latin1&ssl_mode=REQUIRED",
     "mysql://u@db/app?connect_timeout=3&password=x&ssl-ca=/etc/ca.pem"],
    ["mysql://u@127.0.0.1/app", "mariadb://u@127.0.0.1:3306/app", "mysql://u:x@127.0.0.1/app"],
    [f"mysql://{ME}@localhost:3306/app", "mysql:///app", "mariadb://localhost/app"],
])
def test_spellings_of_one_database_share_a_worker(spellings):
    assert len({mysql_url.target(url) for url in spellings}) == 1
    assert len({worker_of(url) for url in spellings}) == 1


@pytest.mark.parametrize(("one", "other"), [
    ("mysql://u@db/app", "mysql://v@db/app"),
    ("mysql://u@db/app", "mysql://u@db2/app"),
    ("mysql://u@db/app", "mysql://u@db:3307/app"),
    ("mysql://u@db/app", "mysql://u@db/App"),  # database names may be case-sensitive
    ("mysql://u@localhost/app", "mysql://u@127.0.0.1/app"),  # accounts tell them apart
    ("mysql://u@db/app", "mysql://u@db/app?unix_socket=/run/mysqld/mysqld.sock"),
    ("mysql://u@db/app", "postgresql://u@db:3306/app"),
])
def test_urls_that_reach_different_databases_get_different_workers(one, other):
    assert database_url.target(one) != database_url.target(other)
    assert worker_of(one) != worker_of(other)


@st.composite
def well_formed(draw) -> str:
    """mysql:// URLs as a person writes them, each part percent-encoded or not."""
    word = st.text(alphabet="abcXY09-._~!$'()*+;,:=@/?&#% é", min_size=1, max_size=8)

    def part() -> str:
        return quote(draw(word), safe=draw(st.sampled_from(["", "-._~", "+*'$!"])))

    text = draw(st.sampled_from(["mysql://", "mariadb://"]))
    if draw(st.booleans()):
        text += part() + (":" + part() if draw(st.booleans()) else "") + "@"
    text += draw(st.sampled_from(["", "db", "DB.example", "[::1]", "10.0.0.1", "[::ffff:1.2.3.4]"]))
    if draw(st.booleans()):
        text += ":" + str(draw(st.integers(1, 65535)))
    text += "/" + part()
    pairs = [f"{key}={value}" for key, value in draw(st.lists(st.sampled_from([
        ("charset", "utf8"), ("connect_timeout", "7"), ("ssl_mode", "required"),
        ("unix_socket", "/run/mysqld/mysqld.sock"), ("socket", "%2Ftmp%2Fm.sock"),
        ("password", "pa%26ss"), ("ssl-ca", "/etc/ca.pem")]), max_size=3))]
    return text + ("?" + "&".join(pairs) if pairs else "")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(well_formed())
def test_a_target_is_a_url_that_reads_as_that_same_target(url):
    named = mysql_url.target(url)
    assert named.startswith("mysql://")
    assert mysql_url.target(named) == named
    assert mysql_url.target(database_url.split_secrets(url)[0]) == named


# -- the password --------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "public", "secrets"), [
    ("mysql://app:p%40ss@db/app", "mysql://app@db/app", {"password": "p@ss"}),
    ("mysql://app:p@ss@db/app", "mysql://app@db/app", {"password": "p@ss"}),  # a raw @
    ("mysql://app:p#w:x@db/app", "mysql://app@db/app", {"password": "p#w:x"}),
    ("mariadb://:only@db/app", "mariadb://@db/app", {"password": "only"}),
    ("mysql://app:@db/app", "mysql://app@db/app", {"password": ""}),  # empty, on purpose
    ("mysql://app:first@db/app?charset=utf8&pass%77ord=a+b%26c&ssl_mode=required",
     "mysql://app@db/app?charset=utf8&ssl_mode=required", {"password": "a+b&c"}),
    ("mysql://app@db/app?password=x", "mysql://app@db/app", {"password": "x"}),
    ("mysql://app@db/app?charset=Utf8%4Db4", "mysql://app@db/app?charset=Utf8%4Db4", {}),
])
def test_the_password_is_cut_out_and_every_other_byte_stays_as_written(url, public, secrets):
    assert database_url.split_secrets(url) == (public, secrets)
    assert mysql_url.split_secrets(url) == (public, secrets)


@st.composite
def urls_with_a_password(draw) -> tuple[str, str, str]:
    """(a URL, its password, the password as written in it), in the userinfo or as a
    parameter, percent-encoded or raw (a raw one may make the URL malformed, or read
    otherwise; only a raw `&` in a parameter is left out: see mysql_url's docstring)."""
    password = "ZX" + draw(st.text(alphabet="abc09 :/?#[]@!$&'()*+,;=%-._~\n\x00é",
                                   max_size=10)) + "QY"
    if draw(st.booleans()):
        written = quote(password, safe=draw(st.sampled_from(["", "@:", "/?", "#[]%&=+", "@"])))
        url = f"mysql://app:{written}@db:3306/shop?charset=utf8"
    else:
        written = quote(password, safe=draw(st.sampled_from(["", "=+", "@/?:", "$!*"])))
        url = f"mariadb://app@db/shop?password={written}&charset=utf8"
    url += draw(st.sampled_from(["", "&ssl_mode=bogus", "&nope=1", "&connect_timeout=x"]))
    return url, password, written


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(urls_with_a_password())
def test_the_password_is_in_no_public_text_and_no_error_text(case):
    url, password, written = case
    try:
        public, secrets = database_url.split_secrets(url)
        named = database_url.target(url)
        tracking = endpoint.tracking_label(url, "schema_migrations", None)
    except ValueError as exc:
        assert "ZX" not in str(exc), str(exc)
        return
    for shown in (public, named, tracking, endpoint.for_database(url).database):
        assert "ZX" not in shown, shown  # no piece of it with its first letters, either
        assert password not in shown and written not in shown
    if written == quote(password, safe=""):
        assert secrets == {"password": password}


def test_the_password_goes_to_mysql_pwd_and_connect_args_reads_it_back():
    public, secrets = database_url.split_secrets("mysql://root:s%3Acr%C3%A9t@h/app")
    environ = database_url.secrets_environment(secrets, public)
    assert environ == {"MYSQL_PWD": "s:crét"}
    assert database_url.secret_variables(public) == {"password": "MYSQL_PWD"}
    assert mysql_url.connect_args(public, environ)["password"] == "s:crét"
    assert mysql_url.connect_args(public, {})["password"] is None
    # A password the URL still holds (a worker started by hand) beats the environment's.
    assert mysql_url.connect_args("mysql://root:url@h/app", environ)["password"] == "url"
    assert mysql_url.connect_args("mysql://root:@h/app", environ)["password"] == ""


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "said"), [
    ("mysql://root:hunter2@db", "names no database"),
    ("mysql://root:hunter2@db/", "names no database"),
    ("mysql://root:hunter2@db:99999/app", "port is not a number from 1 to 65535"),
    ("mysql://root:hunter2@db:0/app", "port is not a number from 1 to 65535"),
    ("mysql://root:hunter2@db:33o6/app", "port is not a number from 1 to 65535"),
    ("mysql://root:hunter2@::1/app", "an IPv6 address goes in [brackets]"),
    ("mysql://root:hunter2@[::1/app", "unclosed or empty [IPv6 address]"),
    ("mysql://root:hunter2@[]/app", "unclosed or empty [IPv6 address]"),
    ("mysql://root:hunter2@[::1]x/app", "a character after an [IPv6 address]"),
    ("mysql://root:hunter2%zz@db/app", "invalid percent-encoded token"),
    ("mysql://root:hunter2%@db/app", "invalid percent-encoded token"),
    ("mysql://root:hunter2%00@db/app", "forbidden %00"),
    ("mysql://root:hunter2%FF@db/app", "not UTF-8"),
    ("mysql://root:hunter 2@db/app", "a space or a control character"),
    ("mysql://root:hunter2@%2Frun%2Fmysqld/app", "give a socket as ?unix_socket=PATH"),
    ("mysql://root:hun/ter2@db/app", "an '@' after its host"),
    ("mysql://root:hun?ter2@db/app", "an '@' after its host"),
    ("mysql://root:hunter2@db/my/app", "more than one part"),
    ("mysql://root:hunter2@db/app?charset", "has no '='"),
    ("mysql://root:hunter2@db/app?sslmode=require", "unknown parameter 'sslmode'; the known"
     " ones are unix_socket (or socket), charset, ssl_mode"),
    ("mysql://root:hunter2@db/app?unix_socket=run/mysqld.sock", "unix_socket must be an"
     " absolute path"),
    ("mysql://root:hunter2@db/app?ssl_ca=ca.pem", "ssl_ca must be an absolute path"),
    ("mysql://root:hunter2@db/app?charset=", "parameter charset is empty"),
    ("mysql://root:hunter2@db/app?charset=utf8;drop", "charset must be a character set"),
    ("mysql://root:hunter2@db/app?connect_timeout=0", "connect_timeout must be a whole"),
    ("mysql://root:hunter2@db/app?connect_timeout=1.5", "connect_timeout must be a whole"),
    ("mysql://root:hunter2@db/app?ssl_mode=strict", "ssl_mode must be one of DISABLED,"),
    ("mysql://root:hunter2@db/app?ssl_mode=verify_ca", "needs ssl_ca"),
    ("mysql://root:hunter2@db/app?ssl_mode=disabled&ssl_ca=/ca.pem", "DISABLED and gives"),
    ("mysql://root:hunter2@db/app?ssl_key=/k.pem", "ssl_key without ssl_cert"),
])
def test_a_malformed_url_is_refused_naming_the_problem_and_never_the_password(url, said):
    for read in (database_url.split_secrets, database_url.target, endpoint.for_database):
        with pytest.raises(ValueError) as refused:
            read(url)
        assert said in str(refused.value)
        assert "hunter" not in str(refused.value) and "ter2" not in str(refused.value)


# -- the shared entry points ---------------------------------------------------------------


@pytest.mark.parametrize(("database", "backend"), [
    ("postgresql://u@db/app", "postgresql"), ("postgres://db/app", "postgresql"),
    ("mysql://u@db/app", "mysql"), ("mariadb://u@db/app", "mysql"),
    ("app.db", None), ("/srv/app.db", None), ("sqlserver://db/app", None),
    ("MySQL://db/app", None), ("mysql:/db/app", None), ("mysql", None), ("", None),
])
def test_one_place_tells_the_kind_of_database(database, backend):
    assert database_url.backend_of(database) == backend
    assert database_url.is_url(database) == (backend is not None)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=20), st.builds(
    lambda scheme, rest: scheme + rest,
    st.sampled_from(["postgresql://", "postgres://", "postgresql:/", "mysql://", "mariadb:/"]),
    st.text(max_size=12))))
def test_is_url_says_of_postgresql_urls_and_paths_exactly_what_it_said_before(text):
    before = text.partition("://")[0] in database_url.SCHEMES and "://" in text
    mysql = text.partition("://")[0] in ("mysql", "mariadb") and "://" in text
    assert database_url.is_url(text) == (before or mysql)


PG_URLS = [
    ("postgresql://app:p%40ss@db/app", "postgresql://app@db/app", {"password": "p@ss"},
     {"PGPASSWORD": "p@ss"}, "postgresql://app@db:5432/app"),
    ("postgres://u:first@db/app?sslpassword=k%26y&pass%77ord=second&sslmode=require",
     "postgres://u@db/app?sslmode=require", {"password": "second", "sslpassword": "k&y"},
     {"PGPASSWORD": "second", "MIGRATIONS_PGSSLPASSWORD": "k&y"},
     "postgresql://u@db:5432/app"),
    ("postgresql://u@h1,h2:5433/app?target_session_attrs=read-write",
     "postgresql://u@h1,h2:5433/app?target_session_attrs=read-write", {}, {},
     "postgresql://u@h1:5432,h2:5433/app?load_balance_hosts=disable"
     "&target_session_attrs=read-write"),
]


@pytest.mark.parametrize(("url", "public", "secrets", "environment", "target"), PG_URLS)
def test_a_postgresql_url_gets_from_the_shared_entry_points_what_it_got_before(
        monkeypatch, tmp_path, url, public, secrets, environment, target):
    for variable in database_url.TARGET_ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("PGSERVICE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert database_url.split_secrets(url) == (public, secrets) == database_url._parse(url)[1:]
    assert database_url.secrets_environment(secrets, url) == environment
    assert database_url.secret_variables(url) is database_url.SECRET_ENVIRONMENT
    assert database_url.target(url, {}) == target
    assert isinstance(database_url.resolve(url, {}), database_url.Target)
    assert endpoint.tracking_label(url, "t", None) == "public.t"
    assert endpoint.tracking_label(url, "t", "app") == "app.t"


def test_a_node_given_no_mysql_url_never_loads_mysql_url():
    probe = ("import sys; from broker import database_url, endpoint;"
             " database_url.split_secrets('postgresql://u:p@db/app');"
             " database_url.target('postgresql://u@db/app', {});"
             " endpoint.tracking_label('app.db', 't', None);"
             " print('broker.mysql_url' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=NODE.parent, timeout=PROCESS_TIMEOUT_S, check=True)
    assert done.stdout == "False\n", done.stderr


def test_the_tracking_table_of_a_mysql_database_is_named_with_its_database():
    assert endpoint.tracking_label("mysql://u:pw@db/shop", "schema_migrations", None) == (
        "shop.schema_migrations")
    assert endpoint.tracking_label("app.db", "schema_migrations", None) == "schema_migrations"


# -- what the node hands its worker --------------------------------------------------------


def test_the_worker_gets_the_password_in_its_environment_and_never_in_its_argv(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = "mysql://root:s%40cr%C3%A9t@127.0.0.1:3306/test?password=s3cr%C3%A9t%26x"
    where = endpoint.for_database(url)
    secrets = database_url.split_secrets(url)[1]
    settings_ = spawn.WorkerSettings(Path("/srv/migrations"), table="schema_migrations")
    command = spawn.worker_command(where, settings_)
    environment = spawn.worker_environment(where, secrets)
    assert command[command.index("--db") + 1] == "mysql://root@127.0.0.1:3306/test"
    for secret in ("s3cr", "s%40cr", "sécret", "s3crét&x", "password"):
        assert not any(secret in argument for argument in command), secret
    assert environment is not None
    assert environment["MYSQL_PWD"] == "s3crét&x"  # the last one given, decoded once
    assert "PGPASSWORD" not in environment
    assert environment["PATH"] == os.environ["PATH"]  # the node's own environment besides
    assert where.target == "mysql://root@127.0.0.1:3306/test"
    assert spawn.worker_environment(endpoint.for_database("mysql://root@h/test"), {}) is None


def test_a_postgresql_worker_still_gets_pgpassword():
    url = "postgresql://app:p%40ss@db/app?sslpassword=k"
    where = endpoint.for_database(url)
    environment = spawn.worker_environment(where, database_url.split_secrets(url)[1])
    assert environment is not None
    assert (environment["PGPASSWORD"], environment["MIGRATIONS_PGSSLPASSWORD"]) == ("p@ss", "k")
    assert "MYSQL_PWD" not in environment


def run_node(tmp_path: Path, *args: str, **environ: str) -> tuple[int, str, str]:
    """node.py run to its end, with no stdin: (status, stdout, stderr)."""
    env = {**os.environ, endpoint.RUNTIME_DIR_ENV: str(tmp_path / "run")}
    env.pop("DATABASE_URL", None)
    env.update(environ)
    done = subprocess.run([sys.executable, str(NODE), *args], input=b"", capture_output=True,
                          cwd=tmp_path, env=env, timeout=PROCESS_TIMEOUT_S)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def test_the_node_refuses_a_malformed_mysql_url_without_showing_its_password(tmp_path):
    status, out, err = run_node(tmp_path, "--db", "mysql://root:hunter2@127.0.0.1:3306")
    assert (status, out) == (2, "")
    assert "the MySQL URL names no database" in err and "hunter2" not in err


def test_the_node_refuses_schema_with_a_mysql_url(tmp_path):
    status, out, err = run_node(tmp_path, "--db", "mysql://root:hunter2@db/test",
                                "--schema", "app")
    assert (status, out) == (2, "")
    assert "--schema is for a PostgreSQL database; on MySQL" in err and "hunter2" not in err


def test_config_shows_a_mysql_database_url_without_its_password(tmp_path):
    status, out, err = run_node(tmp_path, "config",
                                DATABASE_URL="mariadb://root:hunter2@db/test?ssl-mode=required")
    assert status == 0, err
    assert "mariadb://root@db/test?ssl-mode=required" in out
    assert "hunter2" not in out + err
