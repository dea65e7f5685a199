"""A server thread keeps its autocommit connection between requests (db/engine.py,
``_kept_connection``); what it keeps must never be seen: no stale snapshot, no connection back
in the pool still in autocommit, no failure after the database dropped it."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from midonet_membership import exceptions
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships
from midonet_membership.paging import ListQuery


@pytest.fixture
def plugin(database_url) -> Iterator[AgentMemberships]:
    migration.upgrade(database_url)
    engine = db_engine.create_engine(database_url, pool_size=1)
    yield AgentMemberships(engine)
    engine.dispose()


def test_the_same_thread_reads_what_another_committed_since(plugin):
    host = str(uuid.uuid4())
    context = RequestContext.admin()
    with pytest.raises(exceptions.AgentMembershipNotFound):
        plugin.get(context, host)
    writer = threading.Thread(target=plugin.create, args=(
        RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.60"}]))
    writer.start()
    writer.join()
    assert plugin.get(context, host) == {"id": host, "ip_address": "192.0.2.60"}
    plugin.delete(RequestContext.admin(), host)
    with pytest.raises(exceptions.AgentMembershipNotFound):
        plugin.get(context, host)


def test_a_thread_that_ends_leaves_its_connection_transactional(make_database):
    """Its kept connection goes back to the pool when the thread ends; a transaction on it
    must still roll back as a whole (the membership and its task: DESIGN invariant 1)."""
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)
    plugin = AgentMemberships(engine)
    reader = threading.Thread(target=plugin.list, args=(RequestContext.admin(),
                                                              ListQuery(limit=10)))
    reader.start()
    reader.join()
    del reader
    gc.collect()
    host = str(uuid.uuid4())
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(sa.insert(memberships), {"id": host, "ip_address": "192.0.2.61"})
        raise RuntimeError("the request failed after its INSERT")
    with engine.connect() as conn:
        assert conn.execute(sa.select(memberships.c.id)).all() == []
    engine.dispose()


def test_a_kept_connection_the_server_terminated_is_replaced(make_database):
    """PostgreSQL restarted or an administrator killed the idle backend between requests."""
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)
    plugin = AgentMemberships(engine)
    host = str(uuid.uuid4())
    plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.62"}])
    assert plugin.get(RequestContext.admin(), host)["ip_address"] == "192.0.2.62"
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    admin.dispose()
    assert killed >= 1
    for _ in range(3):
        assert plugin.get(RequestContext.admin(), host)["ip_address"] == "192.0.2.62"
    engine.dispose()

