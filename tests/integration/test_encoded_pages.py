"""A page the database writes as JSON (db.paging's EncodedPage) is the page the rows give:
the same rows in the same order, the same links, the same bytes. The API asks SQLite and
MariaDB through PyMySQL for it always, PostgreSQL and MariaDB through mysqlclient while its
process serves other requests.

"Another request in flight" is a statement's kept connection held open in the test's
thread (what a concurrent request holds while PostgreSQL answers it).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import orjson
import pytest
import sqlalchemy as sa
import webob
from oslo_config import cfg

from midonet_membership import conf as config
from midonet_membership.api import make_app
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships
from midonet_membership.db.paging import EncodedPage
from midonet_membership.paging import ListQuery, apply_in_memory
from tests.fixtures.databases import MYSQLCLIENT

ADMIN = RequestContext.admin()
PATH = "/v2.0/agent-memberships"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb", MYSQLCLIENT])
def stored(request, make_database) -> Iterator[tuple[sa.Engine, list[dict]]]:
    url = make_database(request.param)
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    items = [{"id": str(uuid.UUID(int=i * 7919 % 2**32)), "ip_address": f"192.0.2.{i}"}
             for i in range(1, 31)]
    AgentMemberships(engine).create(ADMIN, items)
    yield engine, items
    engine.dispose()


@contextlib.contextmanager
def another_request_in_flight(engine: sa.Engine) -> Iterator[None]:
    with db_engine.reader(engine, single_statement=True, driver=True):
        yield


@pytest.mark.parametrize("sorts", [[], [("id", False)], [("ip_address", False)]])
@pytest.mark.parametrize("page_reverse", [False, True])
def test_the_database_writes_the_reference_pages(stored, sorts, page_reverse):
    engine, items = stored
    plugin = AgentMemberships(engine)
    rows_alone = engine.dialect.driver in ("psycopg", "mysqldb")  # libpq's, mysqlclient's
    order = [i["id"] for i in apply_in_memory(items, ListQuery(sorts=sorts))]
    for limit in (1, 7, 30, 100):
        for marker in (None, order[0], order[12], order[-1], str(uuid.uuid4())):
            query = ListQuery(sorts=sorts, limit=limit, marker=marker,
                              page_reverse=page_reverse)
            expected = apply_in_memory(items, query)
            alone = plugin.list(ADMIN, query)
            with another_request_in_flight(engine):
                beside = plugin.list(ADMIN, query)
            assert isinstance(alone, EncodedPage) != rows_alone and alone == expected
            assert isinstance(beside, EncodedPage), (limit, marker)
            assert len(beside) == len(expected) and list(beside) == expected, (limit, marker)
            edges = (expected[0]["id"], expected[-1]["id"]) if expected else None
            assert beside.edge_ids == edges
    assert db_engine.statements_in_flight(engine) == 0


def test_postgresql_counts_the_requests_in_flight(make_database):
    url = make_database("postgresql")
    engine = db_engine.create_engine(url)
    with db_engine.reader(engine, single_statement=True, driver=True):
        assert db_engine.statements_in_flight(engine) == 1
        with db_engine.writer(engine, single_statement=True, driver=True):
            assert db_engine.statements_in_flight(engine) == 2
    assert db_engine.statements_in_flight(engine) == 0
    with pytest.raises(sa.exc.ProgrammingError):
        with db_engine.reader(engine, single_statement=True, driver=True) as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert db_engine.statements_in_flight(engine) == 0
    engine.dispose()


@pytest.fixture
def app(stored, tmp_path):
    engine, items = stored
    conf_file = tmp_path / "neutron.conf"
    conf_file.write_text(f"[DEFAULT]\nauth_strategy = noauth\n"
                         f"[database]\nconnection = {engine.url.render_as_string(False)}\n")
    conf = config.load(["--config-file", str(conf_file)], cfg.ConfigOpts())
    conf.set_override("state_dir", str(tmp_path))
    return make_app(conf, engine), engine, items


def _get(app, path: str) -> webob.Response:
    return webob.Request.blank(path, headers={"X-Roles": "admin", "X-User-Id": "test"},
                               environ={"HTTP_HOST": "198.51.100.7:9696"}).get_response(app)


def test_the_api_writes_the_same_pages_beside_other_requests(app):
    wsgi, engine, items = app
    ids = sorted(i["id"] for i in items)
    queries = [ListQuery(limit=7), ListQuery(limit=7, marker=ids[9]),
               ListQuery(limit=7, marker=ids[3], page_reverse=True),
               ListQuery(limit=5, sorts=[("ip_address", False)]), ListQuery(limit=100),
               ListQuery(limit=3, marker=ids[-1]), ListQuery(limit=3, marker=ids[0],
                                                            page_reverse=True),
               ListQuery(limit=4, marker=str(uuid.uuid4())),
               ListQuery(limit=30, marker=ids[-2], page_reverse=True)]
    for query in queries:
        path = f"{PATH}?limit={query.limit}" + "".join(
            f"&sort_key={k}&sort_dir={'asc' if asc else 'desc'}" for k, asc in query.sorts)
        path += (f"&marker={query.marker}" if query.marker else "") + (
            "&page_reverse=True" if query.page_reverse else "")
        alone = _get(wsgi, path)
        with another_request_in_flight(engine):
            beside = _get(wsgi, path)
        assert alone.status_int == beside.status_int == 200, (path, beside.body)
        assert beside.body == alone.body, path
        expected = apply_in_memory(items, query)
        assert beside.json["agent_memberships"] == expected, path
        # compact and in column order, as orjson writes the rows
        assert b'"agent_memberships":' + orjson.dumps(expected) in beside.body, path
        markers = {link["rel"]: link["href"].partition("marker=")[2].partition("&")[0]
                   for link in beside.json["agent_memberships_links"]}
        edges = {"previous": expected[0]["id"] if expected else "",
                 "next": expected[-1]["id"] if expected else ""}
        assert markers == {rel: edges[rel] for rel in markers} and markers, path


def test_fields_are_picked_from_a_page_the_database_wrote(app):
    wsgi, engine, items = app
    with another_request_in_flight(engine):
        resp = _get(wsgi, f"{PATH}?limit=4&fields=ip_address")
    expected = apply_in_memory(items, ListQuery(limit=4))
    assert resp.json["agent_memberships"] == [{"ip_address": i["ip_address"]}
                                              for i in expected]


@pytest.mark.parametrize("backend", ["mariadb", MYSQLCLIENT])
def test_a_mariadb_server_with_a_short_group_concat_max_len_still_gets_whole_pages(
        make_database, backend):
    """MariaDB cuts JSON_ARRAYAGG's text at ``group_concat_max_len`` with only a warning;
    a server configured below a page's size must not send clients a cut page."""
    url = make_database(backend)
    migration.upgrade(url)
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        configured = conn.exec_driver_sql("SELECT @@GLOBAL.group_concat_max_len").scalar()
        conn.exec_driver_sql("SET GLOBAL group_concat_max_len = 1024")  # new sessions'
    engine = db_engine.create_engine(url)
    try:
        items = [{"id": str(uuid.uuid4()), "ip_address": f"192.0.2.{i}"} for i in range(1, 61)]
        AgentMemberships(engine).create(ADMIN, items)
        with another_request_in_flight(engine):  # written as JSON through either driver
            page = AgentMemberships(engine).list(ADMIN, ListQuery(limit=60))
        assert isinstance(page, EncodedPage) and len(page.json) > 1024
        assert list(page) == apply_in_memory(items, ListQuery(limit=60))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"SET GLOBAL group_concat_max_len = {int(configured)}")
        admin.dispose()


# Values the API never stores (it takes UUIDs and IPv4 addresses) but another writer of the
# table could: each needs JSON's escapes or is not ASCII.
ESCAPED_VALUES = ['a "quoted" host', "back\\slash", "new\nline", "tab\there", "bell\x07",
                  "\x1f unit separator", "\u00e9t\u00e9", "line\u2028separator", "plain"]


def test_values_that_need_escaping_come_out_as_orjson_writes_them(stored):
    """PostgreSQL's page first comes with its values quoted as they are: a page holding
    one of these is read again with escapes. Each value alone, then all on one page."""
    engine, items = stored
    odd = [{"id": f"odd-{i}", "ip_address": value} for i, value in enumerate(ESCAPED_VALUES)]
    with engine.begin() as conn:
        conn.execute(memberships.insert(), odd)
    plugin = AgentMemberships(engine)
    before = [max(i["id"] for i in items)] + [row["id"] for row in odd]  # ids sort before "odd-"
    pages = [([row], before[i]) for i, row in enumerate(odd)] + [(odd, before[0])]
    for expected, marker in pages:
        with another_request_in_flight(engine):
            page = plugin.list(ADMIN, ListQuery(limit=len(expected), marker=marker))
        assert isinstance(page, EncodedPage) and list(page) == expected
        if engine.dialect.name != "mysql":  # MariaDB writes a control character's escape
            assert page.json == orjson.dumps(expected).decode()  # in capitals: \u001F
        assert page.edge_ids == (expected[0]["id"], expected[-1]["id"])
