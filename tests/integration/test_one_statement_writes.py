"""A membership's change and its task are written by one statement where the database
allows it (PostgreSQL's data-modifying CTEs, SQLite's change views of migration 0007) and
by a transaction elsewhere: the rows, the tasks and their text are the same on every
backend, and a task the journal refuses takes its change with it (DESIGN invariant 1)."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa

from midonet_membership import exceptions
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import memberships as membership_writes
from midonet_membership.db import migration
from midonet_membership.db.models import memberships, tasks
from tests.fixtures.databases import EVERY_DRIVER

# A trigger that makes the journal refuse every task, per backend.
REFUSING_JOURNAL = {
    "sqlite": ["CREATE TRIGGER refuse BEFORE INSERT ON midonet_tasks "
               "BEGIN SELECT RAISE(ABORT, 'the journal refuses'); END"],
    "postgresql": ["CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION 'the journal refuses'; END; $$ LANGUAGE plpgsql",
                   "CREATE TRIGGER refuse BEFORE INSERT ON midonet_tasks "
                   "FOR EACH ROW EXECUTE FUNCTION refuse()"],
    "mysql": ["CREATE TRIGGER refuse BEFORE INSERT ON midonet_tasks FOR EACH ROW "
              "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the journal refuses'"],
}


@pytest.fixture(params=EVERY_DRIVER)
def database_url(request, make_database) -> str:
    """Each backend, and MariaDB through each driver: the shared ``plugin`` runs on it."""
    return make_database(request.param)


def _context() -> RequestContext:
    return RequestContext(request_id=f"req-{uuid.uuid4()}", user_id="operator",
                          project_id="admin-project", roles=("admin",),
                          remote_address="198.51.100.9")


def _tasks_of(engine: sa.Engine, host: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(
            sa.select(tasks).where(tasks.c.resource_id == host).order_by(tasks.c.id))]


def _rows(engine: sa.Engine, host: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(memberships).where(memberships.c.id == host))]


def test_a_create_and_a_delete_write_the_same_tasks_on_every_backend(plugin):
    host, ip = str(uuid.uuid4()), "192.0.2.91"
    created, deleted = _context(), _context()
    plugin.create(created, [{"id": host, "ip_address": ip}])
    assert _rows(plugin.engine, host) == [(host, ip)]
    plugin.delete(deleted, host)
    assert _rows(plugin.engine, host) == []
    data = json.dumps({"id": host, "ip_address": ip}, sort_keys=True)
    found = _tasks_of(plugin.engine, host)
    assert [(t["type"], t["data_type"], t["data"], t["tenant_id"], t["transaction_id"],
             t["requested_by"], t["requested_from"]) for t in found] == [
        ("CREATE", "AGENTMEMBERSHIP", data, "admin-project", created.request_id,
         "operator", "198.51.100.9"),
        ("DELETE", "AGENTMEMBERSHIP", data, "admin-project", deleted.request_id,
         "operator", "198.51.100.9")]
    assert all(t["created_at"] is not None for t in found)


def test_deleting_what_is_not_there_writes_no_task(plugin):
    host = str(uuid.uuid4())
    with pytest.raises(exceptions.AgentMembershipNotFound):
        plugin.delete(_context(), host)
    assert _tasks_of(plugin.engine, host) == []


@pytest.mark.mariadb
def test_a_delete_journals_the_stored_id_not_the_callers_spelling(make_database):
    """MariaDB's collation ignores case and trailing spaces, so another spelling of an id
    finds the row (Neutron's plugin path hands us the client's). The task must name the
    row's id: the importer removes the member by it."""
    url = make_database("mariadb")
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    host, audit = str(uuid.uuid4()), {"tenant_id": "p", "transaction_id": "req-1",
                                      "requested_by": None, "requested_from": None}
    try:
        with engine.begin() as conn:
            membership_writes.insert_with_tasks(
                conn, [{"id": host, "ip_address": "198.51.100.7"}], ["p"], audit)
        with engine.begin() as conn:
            assert membership_writes.delete_with_task(conn, host.upper() + " ", audit)
        assert _rows(engine, host) == []
        assert [(t["type"], t["resource_id"]) for t in _tasks_of(engine, host)] == [
            ("CREATE", host), ("DELETE", host)]
    finally:
        engine.dispose()


def test_a_task_the_journal_refuses_takes_its_change_with_it(plugin):
    kept, host = str(uuid.uuid4()), str(uuid.uuid4())
    plugin.create(_context(), [{"id": kept, "ip_address": "192.0.2.92"}])
    with plugin.engine.begin() as conn:
        for statement in REFUSING_JOURNAL[plugin.engine.dialect.name]:
            conn.exec_driver_sql(statement)
    with pytest.raises(sa.exc.DBAPIError, match="the journal refuses"):
        plugin.create(_context(), [{"id": host, "ip_address": "192.0.2.93"}])
    assert _rows(plugin.engine, host) == []
    with pytest.raises(sa.exc.DBAPIError, match="the journal refuses"):
        plugin.delete(_context(), kept)
    assert _rows(plugin.engine, kept) == [(kept, "192.0.2.92")]
    assert len(_tasks_of(plugin.engine, kept)) == 1
