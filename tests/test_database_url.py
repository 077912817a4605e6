"""PostgreSQL URLs as a node reads them (broker/database_url.py), held to libpq's own reading.

No server is needed: libpq itself, through psycopg's conninfo_to_dict (PQconninfoParse), is
the judge of how a URL reads; the node must not load it, so it has a parser of its own.
"""

from __future__ import annotations

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
            database_url.split_password(url)
        return
    public, secrets = database_url.split_password(url)
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
    assert database_url.split_password(url) == (public, secrets)


def test_the_secret_options_are_every_password_field_libpq_knows():
    password_fields = {option.keyword.decode() for option in pq.Conninfo.get_defaults()
                       if option.dispchar == b"*"}
    assert password_fields <= set(database_url.SECRET_OPTIONS)
    assert set(database_url.SECRET_ENVIRONMENT.values()) >= {"PGPASSWORD"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cr3t@db/app?dbname=%zz",
        "postgresql://u:s3cr3t@db/app?sslmode",
        "postgresql://u:s3cr3t@db/a%00pp",
        "postgresql://u:s3cr3t@[::1/app",
        "postgresql://u:s3cr3t@db:port/app",
    ],
)
def test_a_url_libpq_would_refuse_is_refused_without_quoting_it(url):
    with pytest.raises(ValueError) as refused:
        worker_of(url)
    assert "s3cr3t" not in str(refused.value)
