"""The importer against real databases and NSDB backends (DESIGN §3 invariants 2, 3 and 6)."""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest
import sqlalchemy as sa

from midonet_membership import nsdb
from midonet_membership.cluster import inflight
from midonet_membership.cluster.importer import Importer
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import tasks
from tests.integration.test_importer_reader import (
    _add_task,
    _catch_up_while_writing,
    _engine,
    _ip,
    _members_table,
)


def test_config_creates_the_zone_once_and_a_new_protocol_changes_its_type(make_database,
                                                                          nsdb_url):
    engine = _engine(make_database("sqlite"))
    with nsdb.connect(nsdb_url, role="cluster") as store:
        importer = Importer(engine, store)
        assert journal.record_config(engine, "vxlan", "req-1")
        importer.catch_up()
        zone = store.get_tunnel_zone()
        assert (zone.id, zone.name, zone.type) == (journal.CONFIG_RESOURCE_ID, "DEFAULT",
                                                   "vxlan")
        assert not journal.record_config(engine, "vxlan", "req-2")  # same CONFIG: no task
        assert journal.record_config(engine, "gre", "req-3")
        importer.catch_up()
        assert store.get_tunnel_zone().type == "gre"
        with db_engine.reader(engine) as conn:
            assert journal.last_processed_id(conn) == store.get_position()


def test_memberships_converge_under_concurrent_writers(make_database, nsdb_url):
    """Invariant 3: random creates/deletes (some failing) from 4 threads, then catch-up."""
    engine = _engine(make_database("sqlite"))
    store_api = AgentMemberships(engine)
    hosts = [str(uuid.uuid4()) for _ in range(40)]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            host = rng.choice(hosts)
            try:
                if rng.random() < 0.6:
                    store_api.create(RequestContext.admin(),
                                     [{"id": host, "ip_address": _ip(rng.randrange(60))}])
                else:
                    store_api.delete(RequestContext.admin(), host)
            except Exception as exc:  # 404/409 are part of the workload
                assert getattr(exc, "code", None) in (404, 409), exc

    with nsdb.connect(nsdb_url, role="cluster") as store:
        importer = Importer(engine, store, batch_size=37)
        _catch_up_while_writing(importer, client, 4)
        assert store.list_members() == _members_table(engine)
        with engine.connect() as conn:
            assert store.get_position() == conn.execute(sa.select(sa.func.max(tasks.c.id))).scalar()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_task_that_commits_late_is_applied_and_does_not_hold_later_ones(make_database,
                                                                          tmp_path, backend):
    """Invariant 2: id N commits after N+1: N+1 is applied at once, N when it commits."""
    engine = _engine(make_database(backend))
    early, late = str(uuid.uuid4()), str(uuid.uuid4())
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        importer.catch_up()
        slow = engine.connect()
        slow.begin()
        _add_task(slow, early, _ip(1), "req-slow")
        AgentMemberships(engine).create(RequestContext.admin(),
                                        [{"id": late, "ip_address": _ip(2)}])
        importer.catch_up()
        assert store.list_members() == {late: _ip(2)}, "held back by a gap"
        position = store.get_import_position()
        assert [(g.low, g.high) for g in position.gaps] == [(position.high - 1,) * 2]
        for _ in range(3):  # however often it looks, the open writer keeps the gap open
            importer.catch_up()
        assert store.get_import_position().gaps
        slow.commit()
        slow.close()
        importer.catch_up()
        assert store.list_members() == {early: _ip(1), late: _ip(2)}
        assert store.get_import_position().gaps == ()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_rolled_back_id_holds_nothing_and_its_gap_closes(make_database, tmp_path, backend):
    engine = _engine(make_database(backend))
    host = str(uuid.uuid4())
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        with engine.connect() as conn, conn.begin() as tx:
            journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, "x", {},
                           tenant_id=None, transaction_id="req-rolled-back")
            tx.rollback()
        AgentMemberships(engine).create(RequestContext.admin(),
                                        [{"id": host, "ip_address": _ip(3)}])
        importer.catch_up()
        assert store.list_members() == {host: _ip(3)}
        # Closed by the database's evidence (the writer has ended), not by a timeout. The
        # server is shared: another session's long transaction, in flight when the gap was
        # seen, keeps it open (correctly) until it ends; a gap may stay only while the
        # database says so.
        deadline = time.monotonic() + 30
        while True:
            importer.catch_up()
            gaps = store.get_import_position().gaps
            with db_engine.reader(engine) as conn:
                still_open = not inflight.settled(conn, {g.evidence for g in gaps})
            if not gaps or (still_open and time.monotonic() > deadline):
                break
            time.sleep(0.05)
        assert not gaps or still_open, gaps
        if not gaps:
            with db_engine.reader(engine) as conn:
                assert journal.last_processed_id(conn) == store.get_position()


def test_a_poison_task_is_recorded_and_skipped(make_database, nsdb_url):
    engine = _engine(make_database("sqlite"))
    host = str(uuid.uuid4())
    with db_engine.writer(engine) as conn:
        journal.record(conn, journal.CREATE, "BOGUS", "x", {"a": 1}, tenant_id=None,
                       transaction_id="req-poison")
        conn.execute(sa.insert(tasks).values(type="CREATE", data_type="AGENTMEMBERSHIP",
                                             resource_id=str(uuid.uuid4()),
                                             data="{not json",
                                             transaction_id="req-bad-json",
                                             created_at=journal.utcnow()))
    AgentMemberships(engine).create(RequestContext.admin(), [{"id": host, "ip_address": _ip(4)}])
    with nsdb.connect(nsdb_url, role="cluster") as store:
        Importer(engine, store).catch_up()
        assert store.list_members() == {host: _ip(4)}
    failures = journal.list_failures(engine)
    assert len(failures) == 2
    assert any("unknown data type 'BOGUS'" in e for e in failures.values())
    assert any("not JSON" in e for e in failures.values())


def test_bulk_transaction_is_never_split_across_applies(make_database, tmp_path):
    """Tasks sharing a transaction id reach the NSDB in one atomic apply, even when the
    transaction is larger than a batch."""
    engine = _engine(make_database("sqlite"))
    items = [{"id": str(uuid.uuid4()), "ip_address": _ip(i)} for i in range(25)]
    AgentMemberships(engine).create(RequestContext.admin(), items)
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        seen: list[int] = []
        watch = store.watch_tunnel_zone(lambda zone, members: seen.append(len(members)))
        importer = Importer(engine, store, batch_size=10)
        assert importer.step() == 25
        watch.cancel()
        assert store.list_members() == {i["id"]: i["ip_address"] for i in items}
        assert all(n in (0, 25) for n in seen), seen


def test_task_clean_keeps_unprocessed_and_ids_never_reused(make_database, tmp_path):
    engine = _engine(make_database("sqlite"))
    store_api = AgentMemberships(engine)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    store_api.create(RequestContext.admin(), [{"id": a, "ip_address": _ip(5)}])
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        importer.catch_up()
        assert journal.clean(engine) == 1
        store_api.create(RequestContext.admin(), [{"id": b, "ip_address": _ip(6)}])
        importer.catch_up()  # the new task's id is above the NSDB position: not lost
        assert store.list_members() == {a: _ip(5), b: _ip(6)}
        remaining, _ = journal.list_tasks(engine)
        assert [json.loads(t.data)["id"] for t in remaining] == [b]
