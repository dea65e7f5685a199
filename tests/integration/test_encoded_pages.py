"""A page PostgreSQL writes as JSON (db.paging's EncodedPage), which the API asks for while
its process serves other requests, is the page the rows give alone: the same rows in the
same order, the same links, the same bytes.

"Another request in flight" is a statement's kept connection held open in the test's
thread (what a concurrent request holds while PostgreSQL answers it).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

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
from midonet_membership.db.paging import EncodedPage
from midonet_membership.paging import ListQuery, apply_in_memory

ADMIN = RequestContext.admin()
PATH = "/v2.0/agent-memberships"


@pytest.fixture
def stored(make_database, tmp_path) -> Iterator[tuple[sa.Engine, list[dict]]]:
    url = make_database("postgresql")
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


@pytest.mark.parametrize("sorts", [[], [("ip_address", False)]])
@pytest.mark.parametrize("page_reverse", [False, True])
def test_the_plugin_answers_json_only_beside_other_requests(stored, sorts, page_reverse):
    engine, items = stored
    plugin = AgentMemberships(engine)
    order = [i["id"] for i in apply_in_memory(items, ListQuery(sorts=sorts))]
    for limit in (1, 7, 30, 100):
        for marker in (None, order[0], order[12], order[-1], str(uuid.uuid4())):
            query = ListQuery(sorts=sorts, limit=limit, marker=marker,
                              page_reverse=page_reverse)
            expected = apply_in_memory(items, query)
            alone = plugin.list(ADMIN, query)
            with another_request_in_flight(engine):
                assert db_engine.statements_in_flight(engine) == 1
                beside = plugin.list(ADMIN, query)
            assert not isinstance(alone, EncodedPage) and alone == expected
            assert isinstance(beside, EncodedPage), (limit, marker)
            assert len(beside) == len(expected) and list(beside) == expected, (limit, marker)
            edges = (expected[0]["id"], expected[-1]["id"]) if expected else None
            assert beside.edge_ids == edges
    assert db_engine.statements_in_flight(engine) == 0


def test_a_failed_statement_leaves_no_request_in_flight(stored):
    engine, _ = stored
    with pytest.raises(sa.exc.ProgrammingError):
        with db_engine.reader(engine, single_statement=True, driver=True) as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert db_engine.statements_in_flight(engine) == 0


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
    queries = ["limit=7", f"limit=7&marker={ids[9]}", f"limit=7&marker={ids[3]}&page_reverse=True",
               "limit=5&sort_key=ip_address&sort_dir=desc", "limit=100", f"limit=3&marker={ids[-1]}",
               f"limit=3&marker={ids[0]}&page_reverse=True", f"limit=4&marker={uuid.uuid4()}",
               "limit=4&fields=ip_address", f"limit=30&marker={ids[-2]}&page_reverse=True"]
    for query in queries:
        alone = _get(wsgi, f"{PATH}?{query}")
        with another_request_in_flight(engine):
            beside = _get(wsgi, f"{PATH}?{query}")
        assert alone.status_int == beside.status_int == 200, (query, beside.body)
        assert beside.body == alone.body, query
        assert beside.json["agent_memberships_links"], query
