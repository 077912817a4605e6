"""PostgreSQL URLs as a node reads them (broker/database_url.py), held to libpq's own reading.

No server is needed: libpq itself, through psycopg's conninfo_to_dict (PQconninfoParse), is
the judge of how a URL reads; the node must not load it, so it has a parser of its own. The
worker for a URL is found by endpoint.for_database, whose endpoint is named by the URL's
target: these tests compare endpoints, exactly as two nodes would.
"""

from __future__ import annotations

import os
import pwd
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from broker import database_url, endpoint

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (extra: postgres)")
from psycopg import pq  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

TARGET_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGOPTIONS",
                    "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGTARGETSESSIONATTRS",
                    "PGLOADBALANCEHOSTS")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No PG* variable of the machine's, and endpoints in a runtime folder of the test's."""
    for name in TARGET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(endpoint.RUNTIME_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pg_service.conf of the machine's


def worker_of(url: str) -> str:
    """The endpoint a node started with --db `url` finds (or spawns) its worker at."""
    return endpoint.for_database(url).address


def libpq_reads(url: str) -> dict[str, str] | None:
    """What libpq reads in a URL (None: it refuses it)."""
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return None
    except UnicodeDecodeError:  # escapes of bytes that are not UTF-8: psycopg cannot say
        assume(False)


def libpq_refuses_only_an_unknown_option(url: str) -> bool:
    """libpq refuses the URL for an option it does not know, and for nothing else: the node
    leaves those to the worker's libpq (a newer one may know them)."""
    if libpq_reads(url) is not None:
        return False
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        if "invalid URI query parameter" not in str(exc):
            return False
    known = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
    base, _, query = url.partition("?")
    kept = [pair for pair in query.split("&")
            if pair == "ssl=true" or database_url._decode(pair.partition("=")[0])
            in known | {"requiressl"}]
    return libpq_reads(f"{base}?{'&'.join(kept)}") is not None


# -- reading a URL as libpq does -----------------------------------------------------------

RAW = st.text(alphabet="abcAB09-._~!$'()*+;, /:?@&=#[]%", max_size=8)
OPTION_NAMES = ["dbname", "port", "host", "hostaddr", "user", "options", "password",
                "sslpassword", "sslmode", "application_name", "ssl", "requiressl",
                "pass%77ord", "service", "target_session_attrs"]


@st.composite
def urls(draw) -> str:
    """URL-shaped strings: each part sometimes percent-encoded, sometimes raw (libpq may
    then read it otherwise, or refuse it: the parser must agree either way)."""

    def part(raw: st.SearchStrategy[str] = RAW) -> str:
        text = draw(raw)
        return quote(text, safe=draw(st.sampled_from(["", "/:", "@", "+ ", "%"])))

    text = draw(st.sampled_from(["postgresql://", "postgres://"]))
    if draw(st.booleans()):
        text += part() + (":" + part() if draw(st.booleans()) else "") + "@"
    hosts = []
    for _ in range(draw(st.integers(0, 3))):
        host = draw(st.sampled_from(["127.0.0.1", "Db.Example", "[::1]", "%2Frun%2Fpg", "",
                                     part()]))
        hosts.append(host + (":" + draw(st.sampled_from(["5432", "1", "", "x"]))
                             if draw(st.booleans()) else ""))
    text += ",".join(hosts)
    if draw(st.booleans()):
        text += "/" + part()
    if draw(st.booleans()):
        pairs = [f"{draw(st.sampled_from(OPTION_NAMES))}={part()}"
                 for _ in range(draw(st.integers(0, 4)))]
        text += "?" + "&".join(pairs)
    return text


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(urls())
def test_secrets_come_out_decoded_and_the_rest_of_the_url_reads_as_before(url):
    libpq = libpq_reads(url)
    if libpq is None and libpq_refuses_only_an_unknown_option(url):
        return
    if libpq is None:
        with pytest.raises(ValueError):
            database_url.split_secrets(url)
        return
    public, secrets = database_url.split_secrets(url)
    expected_secrets = {key: value for key, value in libpq.items()
                        if key in database_url.SECRET_OPTIONS}
    assert secrets == expected_secrets
    assert libpq_reads(public) == {key: value for key, value in libpq.items()
                                   if key not in expected_secrets}


@pytest.mark.parametrize(
    ("url", "public", "secrets"),
    [
        ("postgresql://app:p%40ss@db/app", "postgresql://app@db/app", {"password": "p@ss"}),
        ("postgresql://db/app?options=-c%20search_path%3Dapp&password=a+b",
         "postgresql://db/app?options=-c%20search_path%3Dapp", {"password": "a+b"}),
        ("postgresql://u:first@db/app?sslpassword=k%26y&pass%77ord=second&sslmode=require",
         "postgresql://u@db/app?sslmode=require", {"password": "second", "sslpassword": "k&y"}),
        ("postgresql://u:p#w@db/app", "postgresql://u@db/app", {"password": "p#w"}),
    ],
)
def test_secrets_are_cut_out_and_every_other_byte_stays_as_written(url, public, secrets):
    assert database_url.split_secrets(url) == (public, secrets)


def test_the_secret_options_are_every_password_field_libpq_knows():
    password_fields = {option.keyword.decode() for option in pq.Conninfo.get_defaults()
                       if option.dispchar == b"*"}
    assert password_fields <= set(database_url.SECRET_OPTIONS)
    assert set(database_url.SECRET_ENVIRONMENT.values()) >= {"PGPASSWORD"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cr3t@db/app?port=1,2,3",
        "postgresql://u:s3cr3t@db/app?dbname=%zz",
        "postgresql://u:s3cr3t@db/app?sslmode",
        "postgresql://u:s3cr3t@db/a%00pp",
        "postgresql://u:s3cr3t@[::1/app",
        "postgresql://u:s3cr3t@db:port/app",
        "postgresql://u:s3cr3t@a,b/app?hostaddr=127.0.0.1",
    ],
)
def test_a_url_libpq_would_refuse_is_refused_without_quoting_it(url):
    with pytest.raises(ValueError) as refused:
        worker_of(url)
    assert "s3cr3t" not in str(refused.value)


# -- one worker per database ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("postgresql://postgres@127.0.0.1/app", "postgresql://postgres@127.0.0.1/app?port=5433"),
        ("postgresql://postgres@127.0.0.1/app?dbname=a",
         "postgresql://postgres@127.0.0.1/app?dbname=b"),
        ("postgresql://postgres@127.0.0.1/app", "postgresql://postgres@127.0.0.1/app?host=db2"),
        ("postgresql://postgres@127.0.0.1/app", "postgresql://postgres@127.0.0.1/app?user=app"),
        ("postgresql://postgres@db/app", "postgresql://postgres@db/app?hostaddr=10.0.0.2"),
        ("postgresql://postgres@a,b/app", "postgresql://postgres@b,a/app"),
        ("postgresql://postgres@a,b/app", "postgresql://postgres@a,b/app?port=5432,5433"),
        ("postgresql://postgres@a,b/app",
         "postgresql://postgres@a,b/app?target_session_attrs=read-write"),
        ("postgresql://postgres@db/app",
         "postgresql://postgres@db/app?options=-c%20search_path%3Ddeploy"),
        ("postgresql://postgres@db/app", "postgresql://postgres@db/app?replication=database"),
        ("postgresql:///app?host=/run/a", "postgresql:///app?host=/run/b"),
        ("postgresql:///app", "postgresql://localhost/app"),
    ],
)
def test_urls_that_reach_different_databases_get_different_workers(one, other):
    assert worker_of(one) != worker_of(other)


@pytest.mark.parametrize(
    "spellings",
    [
        ["postgresql://postgres@127.0.0.1/app", "postgres://postgres@127.0.0.1:5432/app",
         "postgresql:///app?host=127.0.0.1&user=postgres", "postgresql://%70ostgres@127.0.0.1/a%70p",
         "postgresql://postgres@127.0.0.1:05432/app?sslmode=require&application_name=x",
         "postgresql://postgres:secret@127.0.0.1/app?sslpassword=x&connect_timeout=3",
         "postgresql://postgres@127.0.0.1/other?dbname=app&port=5432",
         "postgresql://postgres@/app?hostaddr=127.0.0.1"],
        ["postgresql://u@DB.Example.ORG/app", "postgresql://u@db.example.org/app"],
        ["postgresql://u@[::1]/app", "postgresql://u@[0:0::1]:5432/app",
         "postgresql://u@/app?host=::1"],
        ["postgresql:///app?host=/var/run/../run/postgresql&user=u",
         "postgresql://u@%2Frun%2Fpostgresql/app"],
        ["postgresql://u@a,b:5432/app", "postgresql://u@a:5432,b/app",
         "postgresql://u@a,b/app?target_session_attrs=any"],
        ["postgresql://u@db/app?target_session_attrs=read-write", "postgresql://u@db/app"],
    ],
)
def test_spellings_of_one_database_share_a_worker(spellings):
    assert len({worker_of(url) for url in spellings}) == 1, [
        database_url.target(url) for url in spellings]


def test_the_environment_and_libpq_defaults_fill_what_the_url_leaves_out(monkeypatch):
    # libpq's default user is the effective user id's name, whatever $USER says.
    login = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    assert worker_of("postgresql://127.0.0.1") == worker_of(
        f"postgresql://{login}@127.0.0.1:5432/{login}")

    monkeypatch.setenv("PGHOST", "db1")
    monkeypatch.setenv("PGPORT", "5433")
    monkeypatch.setenv("PGUSER", "app")
    monkeypatch.setenv("PGDATABASE", "appdb")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=app")
    from_environment = worker_of("postgresql://")
    assert from_environment == worker_of(
        "postgresql://app@db1:5433/appdb?options=-c%20search_path%3Dapp")
    # A part in the URL wins over the environment, a query parameter over the URL's part.
    assert worker_of("postgresql://db2") != from_environment
    assert worker_of("postgresql://db2/x?host=db1&dbname=appdb") == from_environment


def test_a_service_is_read_from_the_service_file_libpq_reads(monkeypatch, tmp_path):
    services = tmp_path / "services.conf"
    services.write_text(
        "# the machine's services\n[blue]\nhost=db1\nport=5433\ndbname=blue\nuser=app\n"
        "password=not-part-of-anything\n\n[green]\nhost=db1\nport=5433\ndbname=green\n"
        "user=app\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    blue = "postgresql:///?service=blue"
    assert worker_of(blue) != worker_of("postgresql:///?service=green")
    assert worker_of(blue) == worker_of("postgres://?service=blue")
    # What the URL gives wins over the service, as in libpq.
    assert worker_of("postgresql:///green?service=blue") == worker_of(
        "postgresql:///?service=green&dbname=green&service=blue")
    target = database_url.resolve(blue)
    assert target.hosts == (database_url.Host("db1", 5433),)
    assert (target.dbname, target.user, target.unsure) == ("blue", "app", frozenset())


def test_a_service_in_no_file_we_can_read_leaves_its_fields_unsure_but_keeps_its_name(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "missing.conf"))
    red = database_url.resolve("postgresql:///reddb?service=red")
    assert red.unsure == frozenset({"host", "hostaddr", "port", "user", "options"})
    assert ("service", "red") in red.settings
    assert worker_of("postgresql:///x?service=red") != worker_of("postgresql:///x?service=blue")


@settings(max_examples=500, deadline=None)
@given(urls())
def test_a_target_is_a_url_libpq_reads_as_that_same_target(url):
    if libpq_reads(url) is None:
        return
    try:
        target = database_url.resolve(url)
    except ValueError:  # libpq parses it, but would not connect: ports and hosts unmatched
        return
    text = str(target)
    assert database_url.target(text) == text
    read = libpq_reads(text)
    assert read is not None
    assert (read["dbname"], read["user"]) == (target.dbname, target.user)
    ports = read["port"].split(",")
    assert [int(port) for port in ports] == [host.port for host in target.hosts]
