"""A write whose COMMIT went through but whose answer was lost is retried, and succeeds.

The database connection can die between the server committing and the client reading the
result (a database restart, a network cut). The whole operation is then retried; the retry
must recognise its own earlier commit instead of answering 409 (create) or 404 (delete),
and the journal must hold the change's task exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from midonet_membership import exceptions
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships, tasks
from midonet_membership.paging import ListQuery
from tests.fixtures.proxy import TcpProxy


def _tasks(engine, resource_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(tasks.c.type, tasks.c.transaction_id)
            .where(tasks.c.resource_id == resource_id).order_by(tasks.c.id))]


def _rows(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(memberships.c.id, memberships.c.ip_address)).all())


def test_a_repeated_request_finds_its_own_commit(plugin):
    """What the retry does, on every backend: same request id, second attempt."""
    host = str(uuid.uuid4())
    context = RequestContext.admin()
    item = {"id": host, "ip_address": "192.0.2.40"}
    assert plugin.create(context, [item]) == [item]
    assert plugin.create(context, [item]) == [item]
    with pytest.raises(exceptions.AgentMembershipExists):  # another request: a conflict
        plugin.create(RequestContext.admin(), [item])

    deleting = RequestContext.admin()
    plugin.delete(deleting, host)
    plugin.delete(deleting, host)
    with pytest.raises(exceptions.AgentMembershipNotFound):
        plugin.delete(RequestContext.admin(), host)
    assert _tasks(plugin.engine, host) == [("CREATE", context.request_id),
                                           ("DELETE", deleting.request_id)]
    assert _rows(plugin.engine) == {}


@pytest.fixture
def lossy(make_database) -> Iterator[tuple[AgentMemberships, TcpProxy]]:
    """The plugin on a fresh PostgreSQL database, through a :class:`TcpProxy`."""
    url = make_database("postgresql")
    migration.upgrade(url)
    proxy, proxied = TcpProxy.to_database(url)
    engine = db_engine.create_engine(proxied)
    yield AgentMemberships(engine), proxy
    engine.dispose()
    proxy.cut()


def test_postgresql_answer_lost_after_commit(lossy):
    plugin, proxy = lossy
    engine = plugin.engine
    host = str(uuid.uuid4())
    creating, deleting = RequestContext.admin(), RequestContext.admin()
    item = {"id": host, "ip_address": "192.0.2.41"}

    proxy.armed.set()
    assert plugin.create(creating, [item]) == [item]
    assert proxy.cuts == 1 and _rows(engine) == {host: "192.0.2.41"}

    proxy.armed.set()
    plugin.delete(deleting, host)
    assert proxy.cuts == 2 and _rows(engine) == {}
    assert _tasks(engine, host) == [("CREATE", creating.request_id),
                                    ("DELETE", deleting.request_id)]


def test_postgresql_read_whose_connection_died_is_retried(lossy):
    """A show and a page whose connection dies before the answer (a database restart, a
    network cut) are answered from a new connection, and the dead one leaves the pool."""
    plugin, proxy = lossy
    host = str(uuid.uuid4())
    plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.42"}])
    proxy.cut_on = b"SELECT 1"
    for read in (lambda: plugin.get(RequestContext.admin(), host),
                 lambda: plugin.list(RequestContext.admin(), ListQuery(limit=10))[0]):
        proxy.armed.set()
        assert read() == {"id": host, "ip_address": "192.0.2.42"}
        assert not proxy.armed.is_set()  # the first answer was cut
    assert proxy.cuts == 2
    checked_in = plugin.engine.pool.checkedin()
    for _ in range(checked_in + 2):  # every pooled connection still works
        assert plugin.get(RequestContext.admin(), host)["ip_address"] == "192.0.2.42"
