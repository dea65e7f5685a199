"""A server thread keeps its autocommit connection between requests (db/engine.py,
``_kept_connection``); what it keeps must never be seen: no stale snapshot, no connection back
in the pool still in autocommit, no failure after the database dropped it."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
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
from midonet_membership.db.models import memberships, tasks
from midonet_membership.paging import ListQuery
from tests.fixtures.databases import EVERY_DRIVER, MYSQLCLIENT
from tests.fixtures.proxy import TcpProxy


@pytest.fixture(params=EVERY_DRIVER)
def plugin(request, make_database) -> Iterator[AgentMemberships]:
    url = make_database(request.param)
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)
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


def _assert_transactions_roll_back(engine) -> None:
    """A transaction on the pool's connection rolls back as a whole (DESIGN invariant 1:
    the membership and its task), as it would not in psycopg's autocommit."""
    host = str(uuid.uuid4())
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(sa.insert(memberships), {"id": host, "ip_address": "192.0.2.61"})
        raise RuntimeError("the request failed after its INSERT")
    with engine.connect() as conn:
        assert conn.execute(sa.select(memberships.c.id)
                            .where(memberships.c.id == host)).all() == []


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", MYSQLCLIENT])
@pytest.mark.parametrize("how", ["its statement failed", "its engine went away"])
def test_a_kept_connection_goes_back_to_the_pool_transactional(make_database, how, backend):
    url = make_database(backend)
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)
    plugin = AgentMemberships(engine)
    item = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.63"}
    plugin.create(RequestContext.admin(), [item])
    assert plugin.get(RequestContext.admin(), item["id"]) == item  # autocommit: kept
    assert len(db_engine._kept[engine]) == 1
    if how == "its statement failed":
        with pytest.raises(sa.exc.ProgrammingError), db_engine.reader(
                engine, single_statement=True, driver=True) as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
        assert db_engine._kept[engine] == []
    else:  # what the garbage collector does with the kept ones when the engine goes away
        del db_engine._kept[engine]
        gc.collect()
    assert engine.pool.checkedin() == 1  # the kept one, back: the next checkout takes it
    _assert_transactions_roll_back(engine)
    engine.dispose()


@pytest.mark.parametrize("backend", ["mariadb", MYSQLCLIENT])
def test_a_connection_that_died_idle_in_the_pool_is_retried_when_kept(make_database, backend):
    """A MariaDB write's connection waits in the pool (no pre-ping) and dies there (the
    database restarts). The next read takes it to keep, and turning on the driver's
    autocommit is its first round trip: that failure is retried on a new connection, as a
    statement's is, not a driver's error escaping to the caller."""
    url = make_database(backend)
    migration.upgrade(url)
    proxy, proxied = TcpProxy.to_database(url)
    engine = db_engine.create_engine(proxied, pool_size=1)
    try:
        plugin = AgentMemberships(engine)
        item = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.64"}
        plugin.create(RequestContext.admin(), [item])  # a transaction: back to the pool
        assert db_engine._kept.get(engine, []) == [] and engine.pool.checkedin() == 1
        proxy.cut()
        proxy.restore()
        assert plugin.get(RequestContext.admin(), item["id"]) == item
    finally:
        engine.dispose()
        proxy.cut()


@pytest.mark.parametrize("backend", ["mariadb", MYSQLCLIENT])
def test_a_mariadb_write_returns_without_a_rollback_and_a_failed_one_leaves_none_open(
        make_database, backend):
    """A committed write transaction (a bulk create: one membership is one statement, on a
    kept connection) goes back to the pool without the driver's ROLLBACK (a round trip
    even with nothing open, in PyMySQL and mysqlclient); one that failed is rolled back,
    so the connection's next user starts outside any transaction."""
    url = make_database(backend)
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)  # the writes share one connection
    try:
        _check_mariadb_write_resets(engine)
    finally:
        engine.dispose()  # closes a connection left in a transaction, which holds locks


def _check_mariadb_write_resets(engine: sa.Engine) -> None:
    plugin = AgentMemberships(engine)

    def rollbacks() -> int:
        with engine.connect() as conn:  # its own close rolls back once
            return int(conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Com_rollback'")
                       .first()[1])

    before = rollbacks()
    for i in range(1, 11):
        plugin.create(RequestContext.admin(),
                      [{"id": str(uuid.uuid4()), "ip_address": f"192.0.2.{i}"},
                       {"id": str(uuid.uuid4()), "ip_address": f"198.51.100.{i}"}])
    assert rollbacks() - before == 1
    host = str(uuid.uuid4())
    with pytest.raises(RuntimeError), db_engine.writer(engine, driver=True) as conn:
        conn.execute(sa.insert(memberships), {"id": host, "ip_address": "192.0.2.99"})
        raise RuntimeError("the request failed after its INSERT")
    raw = engine.raw_connection()  # the connection the INSERT ran on
    try:
        cursor = raw.cursor()
        cursor.execute("SELECT @@in_transaction")  # reads no table: opens none itself
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT COUNT(*) FROM midonet_agent_memberships WHERE id = %s",
                       (host,))
        assert cursor.fetchone() == (0,)  # an open transaction would show its own row
    finally:
        raw.invalidate()  # not back to the pool: in a failure it may hold a transaction


@pytest.mark.parametrize("backend", ["mariadb", MYSQLCLIENT])
def test_a_mariadb_change_and_its_task_are_one_statement_that_leaves_nothing_open(
        make_database, backend):
    """On MariaDB a membership's create and delete each reach the server as one statement
    (a compound statement that commits the row and its task together: one round trip,
    where a transaction took three), and one that failed (a duplicate, a 409; a delete of
    what is not there, a 404) leaves its kept connection outside any transaction."""
    url = make_database(backend)
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)  # every statement on one connection
    plugin = AgentMemberships(engine)
    host = str(uuid.uuid4())
    try:
        with pytest.raises(exceptions.AgentMembershipNotFound):  # connects: MariaDB is known
            plugin.get(RequestContext.admin(), host)
        questions = "SHOW SESSION STATUS LIKE 'Questions'"
        before = _on_kept_connection(engine, questions)
        plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.70"}])
        plugin.delete(RequestContext.admin(), host)
        # the create, the delete, the SHOW
        assert _on_kept_connection(engine, questions) - before == 3
        with db_engine.reader(engine) as conn:
            assert [tuple(r) for r in conn.execute(sa.select(memberships))] == []
        plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.70"}])
        with pytest.raises(exceptions.AgentMembershipExists):
            plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.71"}])
        assert _on_kept_connection(engine, "SELECT @@in_transaction") == 0
        plugin.delete(RequestContext.admin(), host)
        with pytest.raises(exceptions.AgentMembershipNotFound):
            plugin.delete(RequestContext.admin(), host)
        assert _on_kept_connection(engine, "SELECT @@in_transaction") == 0
    finally:
        engine.dispose()


def _on_kept_connection(engine: sa.Engine, sql: str) -> int:
    """The last column of ``sql``'s first row, read on the kept connection itself."""
    with db_engine.reader(engine, driver=True) as conn:
        return int(conn.execute(sa.text(sql).columns(sa.column("value"))).first()[-1])


@pytest.mark.parametrize("backend", ["mariadb", MYSQLCLIENT])
def test_a_mariadb_older_than_10_3_writes_in_a_transaction(make_database, backend):
    """The delete's compound statement types its variables as columns (``TYPE OF``,
    MariaDB 10.3): against an older server (this one told it is 10.2) a create and a
    delete run as transactions, not on the kept connection, and write the same tasks."""
    url = make_database(backend)
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)
    plugin = AgentMemberships(engine)
    host = str(uuid.uuid4())
    questions = "SHOW SESSION STATUS LIKE 'Questions'"
    try:
        with pytest.raises(exceptions.AgentMembershipNotFound):  # connects: MariaDB is known
            plugin.get(RequestContext.admin(), host)
        engine.dialect.server_version_info = (10, 2, 44)
        before = _on_kept_connection(engine, questions)
        plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.72"}])
        plugin.delete(RequestContext.admin(), host)
        assert _on_kept_connection(engine, questions) - before == 1  # the SHOW only
        with db_engine.reader(engine) as conn:
            assert [r.type for r in conn.execute(sa.select(tasks.c.type).where(
                tasks.c.resource_id == host).order_by(tasks.c.id))] == ["CREATE", "DELETE"]
            assert conn.execute(sa.select(memberships)).all() == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("bulk", [False, True], ids=["one statement", "transaction"])
def test_a_refused_sqlite_write_leaves_no_transaction_behind(make_database, bulk):
    """SQLite's writes run on a kept connection, one membership as one statement and a
    bulk as BEGIN IMMEDIATE ... COMMIT: one the database refused (a duplicate, a 409) must
    not stay kept inside a transaction, which would hold the file's write lock and make
    every other writer, of any process, wait for its busy timeout."""
    url = make_database("sqlite")
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    plugin = AgentMemberships(engine)
    item = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.65"}
    plugin.create(RequestContext.admin(), [item])
    refused = [item, {"id": str(uuid.uuid4()), "ip_address": "192.0.2.67"}] if bulk else [item]
    with pytest.raises(exceptions.AgentMembershipExists):
        plugin.create(RequestContext.admin(), refused)
    assert not any(pooled.driver_connection.in_transaction
                   for pooled, _ in db_engine._kept.get(engine, []))
    other = sqlite3.connect(sa.make_url(url).database, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # "database is locked" at once if a write lock is held
    other.execute("ROLLBACK")
    other.close()
    second = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.66"}
    plugin.create(RequestContext.admin(), [second])
    assert plugin.get(RequestContext.admin(), second["id"]) == second
    engine.dispose()


def test_a_refused_statement_gives_back_only_its_own_connection(make_database):
    """A 409 (the database refused a duplicate) says nothing about the other connections:
    only a connection found dead sends the others back with it."""
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=4)
    plugin = AgentMemberships(engine)
    item = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.64"}
    plugin.create(RequestContext.admin(), [item])
    with contextlib.ExitStack() as concurrent:  # 3 requests at once: 3 kept connections
        for _ in range(3):
            concurrent.enter_context(db_engine._kept_connection(engine))
    assert len(db_engine._kept[engine]) == 3
    with pytest.raises(exceptions.AgentMembershipExists):
        plugin.create(RequestContext.admin(), [item])
    assert len(db_engine._kept[engine]) == 2
    engine.dispose()


def test_kept_connections_the_server_terminated_cost_one_retry(make_database, monkeypatch):
    """PostgreSQL restarted, or an administrator killed the idle backends, between requests:
    the first request after it finds its connection dead and is retried on a new one, not
    once per dead connection (more are kept than a request's attempts)."""
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=16)
    plugin = AgentMemberships(engine)
    host = str(uuid.uuid4())
    plugin.create(RequestContext.admin(), [{"id": host, "ip_address": "192.0.2.62"}])
    with contextlib.ExitStack() as concurrent:  # 25 requests at once: 25 kept connections
        for _ in range(25):
            concurrent.enter_context(db_engine._kept_connection(engine))
    assert _terminate_other_backends(url) >= 25
    attempts = []
    execute = db_engine.DriverConnection.execute
    monkeypatch.setattr(db_engine.DriverConnection, "execute",
                        lambda self, *args: attempts.append(args) or execute(self, *args))
    assert plugin.get(RequestContext.admin(), host)["ip_address"] == "192.0.2.62"
    assert len(attempts) == 2
    for _ in range(3):
        assert plugin.get(RequestContext.admin(), host)["ip_address"] == "192.0.2.62"
    engine.dispose()


@pytest.fixture
def one_postgresql_connection(make_database) -> Iterator[AgentMemberships]:
    """The plugin on a fresh PostgreSQL database, its pool one connection (and one overflow):
    at c=1 every statement runs on the same kept connection."""
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url, pool_size=1)
    yield AgentMemberships(engine)
    engine.dispose()


def test_a_connection_the_server_terminated_prepares_its_statements_again(
        one_postgresql_connection):
    """Statements run through libpq are prepared on the server's backend, which dies with
    the connection: the pool's new connection in the same slot must not take them for
    prepared (a "prepared statement does not exist" would be a 500)."""
    plugin = one_postgresql_connection
    host = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.63"}
    plugin.create(RequestContext.admin(), [host])
    assert plugin.get(RequestContext.admin(), host["id"]) == host  # prepared on its backend
    before = _backend_pid(plugin)
    _terminate_other_backends(plugin.engine.url)
    for _ in range(3):
        assert plugin.get(RequestContext.admin(), host["id"]) == host
    assert _backend_pid(plugin) != before


@pytest.mark.parametrize("forget", ["DISCARD ALL", "DEALLOCATE the show"])
def test_statements_the_server_forgot_are_prepared_again(one_postgresql_connection, forget):
    """``DISCARD ALL`` (a pooler's or an operator's reset) drops a backend's prepared
    statements while its connection lives on, ``DEALLOCATE`` one of them: the next request
    prepares it again instead of failing with "prepared statement does not exist", under a
    name the backend does not hold (it still holds the others)."""
    plugin = one_postgresql_connection
    host = {"id": str(uuid.uuid4()), "ip_address": "192.0.2.66"}
    plugin.create(RequestContext.admin(), [host])
    assert plugin.get(RequestContext.admin(), host["id"]) == host
    pid = _backend_pid(plugin)
    with db_engine._kept_connection(plugin.engine) as conn:
        driver = conn._pooled.driver_connection
        if forget == "DISCARD ALL":
            driver.execute("DISCARD ALL")
        else:
            (name,) = driver.execute(
                "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'SELECT %' "
                "AND statement LIKE '%WHERE midonet_agent_memberships.id = %'").fetchone()
            driver.execute(f"DEALLOCATE {name}")
    assert plugin.get(RequestContext.admin(), host["id"]) == host
    plugin.create(RequestContext.admin(), [{"id": str(uuid.uuid4()), "ip_address": "192.0.2.67"}])
    assert _backend_pid(plugin) == pid  # the same connection: nothing was retried


def test_psycopgs_own_deallocate_all_after_a_rollback_costs_nothing(
        one_postgresql_connection):
    """A kept connection that saw a 409 goes back to the pool, where a transaction takes it:
    psycopg's cursor prepares a statement run five times and, at the ROLLBACK, sends
    ``DEALLOCATE ALL``, dropping ours too. When the connection is kept again, every
    statement must still be answered, and one prepared again must not take a name the
    backend still holds (the 60 s held-transaction test failed in CI with "prepared
    statement midonet_3 already exists" when names were reused)."""
    plugin = one_postgresql_connection
    hosts = [{"id": str(uuid.uuid4()), "ip_address": f"192.0.2.{n}"} for n in (80, 81)]
    plugin.create(RequestContext.admin(), [hosts[0]])
    assert plugin.get(RequestContext.admin(), hosts[0]["id"]) == hosts[0]
    kept_pid = _backend_pid(plugin)
    with pytest.raises(exceptions.AgentMembershipExists):  # back to the pool
        plugin.create(RequestContext.admin(), [hosts[0]])
    with plugin.engine.connect() as conn:
        with conn.begin() as transaction:
            assert conn.execute(sa.select(sa.func.pg_backend_pid())).scalar() == kept_pid
            for _ in range(6):  # psycopg prepares it at the fifth
                conn.execute(sa.select(memberships.c.id).where(
                    memberships.c.id == hosts[0]["id"])).all()
            transaction.rollback()  # psycopg: ROLLBACK, then DEALLOCATE ALL
        prepared = sa.text("SELECT count(*) FROM pg_prepared_statements")
        assert conn.execute(prepared).scalar() == 0
    # A statement new to the connection, then one it had prepared, then the new one again.
    assert plugin.list(RequestContext.admin(), ListQuery(limit=5)) == [hosts[0]]
    assert plugin.get(RequestContext.admin(), hosts[0]["id"]) == hosts[0]
    plugin.create(RequestContext.admin(), [hosts[1]])
    assert len(plugin.list(RequestContext.admin(), ListQuery(limit=5))) == 2
    plugin.delete(RequestContext.admin(), hosts[1]["id"])
    assert _backend_pid(plugin) == kept_pid


def test_a_connection_prepares_a_bounded_number_of_statements(one_postgresql_connection):
    """A page's limit is written into its SQL, so each limit is a statement of its own: a
    client walking through limits must not grow a backend's prepared statements (server
    memory) without bound. Past the bound, statements run unprepared, with the same
    answers."""
    plugin = one_postgresql_connection
    plugin.create(RequestContext.admin(), [
        {"id": str(uuid.uuid4()), "ip_address": f"192.0.2.{n}"} for n in (70, 71, 72)])
    bound = db_engine._LibpqStatements.MAX_PREPARED
    for limit in range(1, bound + 20):
        assert len(plugin.list(RequestContext.admin(), ListQuery(limit=limit))) == min(limit, 3)
    statements = sa.table("pg_prepared_statements", sa.column("name"))
    with db_engine._kept_connection(plugin.engine) as conn:
        ours = conn.execute(sa.select(sa.func.count()).select_from(statements).where(
            statements.c.name.startswith("midonet_"))).first()[0]
    assert ours == bound


def _backend_pid(plugin: AgentMemberships) -> int:
    with db_engine._kept_connection(plugin.engine) as conn:
        return conn.execute(sa.select(sa.func.pg_backend_pid())).first()[0]


def _terminate_other_backends(url: sa.URL | str) -> int:
    """Kill every other connection to the database; how many there were."""
    admin = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    admin.dispose()
    return killed
