"""The journal reader under late commits, interleaved and poison transactions (issue 8).

What the NSDB saw is recorded by :class:`RecordingNSDB`, a pass-through around the real
backend: every assertion about "one apply" is about calls that reached the NSDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from midonet_membership import nsdb
from midonet_membership.api.console import read_status
from midonet_membership.cli.db_manage import resync
from midonet_membership.cluster.importer import POSITION_COPY_INTERVAL, Importer
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships, tasks
from midonet_membership.nsdb.base import (
    HOLD_POSITION_BYTES,
    AddMember,
    RemoveMember,
    SetTunnelZone,
    TunnelZone,
)
from tests.fixtures.importer import importer_running, last_processed, wait_until


class RecordingNSDB:
    """Delegates to a real NSDB and keeps the ops and the new position of every apply that
    succeeded."""

    def __init__(self, store: nsdb.NSDB) -> None:
        self.store = store
        self.applies: list[list] = []
        self.positions: list = []

    def apply(self, ops: Sequence, expected, new) -> None:
        self.store.apply(ops, expected, new)
        self.applies.append(list(ops))
        self.positions.append(new)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def _engine(url: str):
    migration.upgrade(url)
    return db_engine.create_engine(url)


def _ip(n: int) -> str:
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def _members_table(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(memberships.c.id, memberships.c.ip_address)).all())


def _add_task(conn, host: str, ip: str, transaction_id: str) -> None:
    conn.execute(sa.insert(memberships).values(id=host, ip_address=ip))
    journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, host,
                   {"id": host, "ip_address": ip}, tenant_id=None,
                   transaction_id=transaction_id)


def _add_config(conn, type_: str, tunnel_protocol: str, transaction_id: str) -> None:
    """A CONFIG task written straight into the journal, inside ``conn``'s transaction."""
    journal.record(conn, type_, journal.CONFIG, journal.CONFIG_RESOURCE_ID,
                   {"id": journal.CONFIG_RESOURCE_ID, "tunnel_protocol": tunnel_protocol},
                   tenant_id=None, transaction_id=transaction_id)


def _catch_up_while_writing(importer: Importer, writer, threads: int) -> None:
    """``writer(i)`` in ``threads`` threads, the importer catching up all along and once after."""
    running = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for t in running:
        t.start()
    while any(t.is_alive() for t in running):
        importer.catch_up()
    for t in running:
        t.join()
    importer.catch_up()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_interleaved_transactions_are_each_applied_whole(make_database, tmp_path, backend):
    """T1 takes ids 1 and 3, T2 ids 2 and 4: each reaches the NSDB in one apply."""
    engine = _engine(make_database(backend))
    hosts = [str(uuid.uuid4()) for _ in range(4)]
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as real:
        store = RecordingNSDB(real)
        importer = Importer(engine, store, batch_size=1)  # cut every read after one task
        one, two = engine.connect(), engine.connect()
        one.begin()
        two.begin()
        _add_task(one, hosts[0], _ip(0), "req-t1")
        _add_task(two, hosts[1], _ip(1), "req-t2")
        _add_task(one, hosts[2], _ip(2), "req-t1")
        _add_task(two, hosts[3], _ip(3), "req-t2")
        one.commit()
        two.commit()
        one.close()
        two.close()
        importer.catch_up()
        assert store.list_members() == {h: _ip(i) for i, h in enumerate(hosts)}
        assert [sorted(op.host_id for op in ops) for ops in store.applies] == [
            sorted([hosts[0], hosts[2]]), sorted([hosts[1], hosts[3]])]


def test_two_bulk_writers_never_split_a_transaction(make_database, nsdb_url):
    """Two writers x bulk 50 x 20 rounds on PostgreSQL; the importer runs meanwhile with a
    batch smaller than one bulk, so reads cut transactions all the time."""
    engine = _engine(make_database("postgresql"))
    api = AgentMemberships(engine)
    expected: dict[str, set[str]] = {}
    lock = threading.Lock()

    def writer(index: int) -> None:
        for round_ in range(20):
            items = [{"id": str(uuid.uuid4()), "ip_address": _ip(index * 1000 + round_ * 50 + i)}
                     for i in range(50)]
            context = RequestContext.admin()
            api.create(context, items)
            with lock:
                expected[context.request_id] = {i["id"] for i in items}

    with nsdb.connect(nsdb_url, role="cluster") as real:
        store = RecordingNSDB(real)
        importer = Importer(engine, store, batch_size=30)
        _catch_up_while_writing(importer, writer, 2)
        assert store.list_members() == _members_table(engine)
        applied = [{op.host_id for op in ops if isinstance(op, AddMember)}
                   for ops in store.applies]
        for request_id, hosts in expected.items():
            holding = [i for i, seen in enumerate(applied) if seen & hosts]
            assert len(holding) == 1, f"{request_id} split over applies {holding}"
            assert hosts <= applied[holding[0]]
        counts = Counter(host for seen in applied for host in seen)
        assert set(counts.values()) == {1}, "a task applied twice"


def test_an_older_config_committing_late_does_not_override_a_newer_one(make_database,
                                                                       tmp_path):
    engine = _engine(make_database("postgresql"))
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        old = engine.connect()
        old.begin()
        _add_config(old, journal.CREATE, "vxlan", "req-old-config")
        journal.record_config(engine, "gre", "req-new-config")
        importer.catch_up()
        assert store.get_tunnel_zone().type == "gre"
        old.commit()
        old.close()
        importer.catch_up()
        assert store.get_tunnel_zone().type == "gre", "an older CONFIG won"
        with db_engine.reader(engine) as conn:
            newest = conn.execute(sa.select(tasks.c.id).where(
                tasks.c.transaction_id == "req-new-config")).scalar_one()
        position = store.get_import_position()
        assert position.config_id == newest and position.high == newest
        assert position.gaps == ()


def test_a_config_skipped_with_its_poisoned_transaction_does_not_supersede(make_database,
                                                                           tmp_path):
    """A CONFIG recorded as failed with its transaction (another task of it is poison,
    written past the API) was never applied: an older CONFIG committing late still is."""
    engine = _engine(make_database("postgresql"))
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        late = engine.connect()
        late.begin()
        _add_config(late, journal.CREATE, "gre", "req-late-config")
        with engine.begin() as conn:
            _add_config(conn, journal.UPDATE, "vxlan", "req-poisoned")
            journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, "not-a-host-id",
                           {"id": "not-a-host-id", "ip_address": _ip(0)}, tenant_id=None,
                           transaction_id="req-poisoned")
        importer.catch_up()
        assert store.get_tunnel_zone() is None
        assert len(journal.list_failures(engine)) == 2
        late.commit()
        late.close()
        importer.catch_up()
        assert store.get_tunnel_zone().type == "gre", "a CONFIG that never applied won"


def _write_config(path, database_url: str, nsdb_url: str) -> None:
    path.write_text(f"[database]\nconnection = {database_url}\n"
                    f"[nsdb]\nconnection = {nsdb_url}\n")


def _manage(config_file, *args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "midonet-db-manage")
    return subprocess.run([exe, "--config-file", str(config_file), *args],
                          capture_output=True, text=True, timeout=60)


def test_poison_tasks_are_recorded_skipped_and_listed(make_database, nsdb_url, tmp_path):
    """An id with a "/" and an IP that is not unicast IPv4, written past the API."""
    url = make_database("sqlite")
    engine = _engine(url)
    bad_id, bad_ip_host, good = "a/b", str(uuid.uuid4()), str(uuid.uuid4())
    with db_engine.writer(engine) as conn:
        journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, bad_id,
                       {"id": bad_id, "ip_address": _ip(1)}, tenant_id=None,
                       transaction_id="req-bad-id")
    with db_engine.writer(engine) as conn:
        journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, bad_ip_host,
                       {"id": bad_ip_host, "ip_address": "224.0.0.5"}, tenant_id=None,
                       transaction_id="req-bad-ip")
    AgentMemberships(engine).create(RequestContext.admin(), [{"id": good, "ip_address": _ip(2)}])
    with nsdb.connect(nsdb_url, role="cluster") as store:
        Importer(engine, store).catch_up()
        assert store.list_members() == {good: _ip(2)}
        with db_engine.reader(engine) as conn:
            assert store.get_position() == conn.execute(sa.select(sa.func.max(tasks.c.id))
                                                        ).scalar_one()
    config = tmp_path / "manage.conf"
    _write_config(config, url, nsdb_url)
    listed = _manage(config, "task-list", "--failed", "-f", "json")
    assert listed.returncode == 0, listed.stderr
    failed = {t["resource_id"]: t["failed"] for t in json.loads(listed.stdout)}
    assert set(failed) == {bad_id, bad_ip_host}
    assert "'a/b' is not a valid UUID" in failed[bad_id]
    assert "'224.0.0.5' is a multicast address" in failed[bad_ip_host]


def test_resync_rebuilds_the_zone_and_says_what_changed(make_database, nsdb_url, tmp_path):
    url = make_database("sqlite")
    engine = _engine(url)
    journal.record_config(engine, "vxlan", "req-config")
    kept, lost = str(uuid.uuid4()), str(uuid.uuid4())
    AgentMemberships(engine).create(RequestContext.admin(), [
        {"id": kept, "ip_address": _ip(1)}, {"id": lost, "ip_address": _ip(2)}])
    stray = str(uuid.uuid4())
    with nsdb.connect(nsdb_url, role="cluster") as store:
        Importer(engine, store).catch_up()
        position = store.get_import_position()
        store.apply([RemoveMember(lost), AddMember(stray, _ip(3))], position, position)
    config = tmp_path / "manage.conf"
    _write_config(config, url, nsdb_url)
    first = _manage(config, "resync", "-f", "json")
    assert first.returncode == 0, first.stderr
    assert sorted((c["change"], c["id"]) for c in json.loads(first.stdout)) == sorted(
        [("added", lost), ("removed", stray)])
    again = _manage(config, "resync", "-f", "json")
    assert json.loads(again.stdout) == [] and "nothing changed" in again.stderr
    with nsdb.connect(nsdb_url, role="cluster") as store:
        assert store.list_members() == _members_table(engine)


def test_resync_rebuilds_a_lost_zone_after_task_clean_from_neutron_conf(make_database,
                                                                        tmp_path):
    """task-clean removed the CONFIG tasks with the rest; then the NSDB is lost. resync
    takes the zone's type from [MIDONET] tunnel_protocol, as the API would write it."""
    url = make_database("sqlite")
    engine = _engine(url)
    journal.record_config(engine, "gre", "req-config")
    host = str(uuid.uuid4())
    AgentMemberships(engine).create(RequestContext.admin(), [{"id": host, "ip_address": _ip(1)}])
    with nsdb.connect(f"sqlite:///{tmp_path / 'lost.sqlite'}", role="cluster") as store:
        Importer(engine, store).catch_up()
    assert journal.clean(engine) == 2
    engine.dispose()
    new_nsdb = f"sqlite:///{tmp_path / 'new.sqlite'}"
    config = tmp_path / "manage.conf"
    _write_config(config, url, new_nsdb)
    with open(config, "a") as f:
        f.write("[MIDONET]\ntunnel_protocol = gre\n")
    done = _manage(config, "resync", "-f", "json")
    assert done.returncode == 0, done.stderr
    assert sorted((c["change"], c["tunnel_ip_or_type"]) for c in json.loads(done.stdout)) == [
        ("added", _ip(1)), ("zone", "gre")]
    with nsdb.connect(new_nsdb, role="cluster") as store:
        assert store.get_tunnel_zone().type == "gre"
        assert store.list_members() == {host: _ip(1)}


def test_resync_passes_over_a_config_the_importer_refused(make_database, tmp_path):
    """A CONFIG written past the API with a protocol the importer refuses is recorded as
    failed and the zone stays; resync must not write it either."""
    engine = _engine(make_database("sqlite"))
    journal.record_config(engine, "vxlan", "req-config")
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        importer.catch_up()
        with db_engine.writer(engine) as conn:
            journal.record(conn, journal.UPDATE, journal.CONFIG, journal.CONFIG_RESOURCE_ID,
                           {"id": journal.CONFIG_RESOURCE_ID, "tunnel_protocol": "geneve"},
                           tenant_id=None, transaction_id="req-bad-config")
        importer.catch_up()
        assert len(journal.list_failures(engine)) == 1
        store.apply([SetTunnelZone(TunnelZone(journal.CONFIG_RESOURCE_ID, "DEFAULT", "gre"))],
                    store.get_import_position(), store.get_import_position())  # a drift
        assert resync(engine, store) == [("zone", journal.CONFIG_RESOURCE_ID, "vxlan")]
        assert store.get_tunnel_zone().type == "vxlan"
    engine.dispose()


def test_more_open_gaps_than_one_read_names_are_all_read(make_database, tmp_path,
                                                         monkeypatch):
    """Open gaps beyond one read's window are read in rotation, not starved."""
    monkeypatch.setattr("midonet_membership.cluster.importer.MAX_GAPS_PER_READ", 2)
    engine = _engine(make_database("postgresql"))
    api = AgentMemberships(engine)
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        held, hosts = [], []
        for n in range(5):  # five held ids, each followed by a committed one
            conn = engine.connect()
            conn.begin()
            host = str(uuid.uuid4())
            _add_task(conn, host, _ip(n), f"req-held-{n}")
            held.append((conn, host))
            other = str(uuid.uuid4())
            api.create(RequestContext.admin(), [{"id": other, "ip_address": _ip(100 + n)}])
            hosts.append(other)
        importer.catch_up()
        assert set(store.list_members()) == set(hosts)
        assert len(store.get_import_position().gaps) == 5
        for conn, host in reversed(held):  # the last window first
            conn.commit()
            conn.close()
            hosts.append(host)
            importer.catch_up()
            assert set(store.list_members()) == set(hosts)


def test_a_members_later_task_waits_for_its_earlier_one_in_a_gap_not_read(
        make_database, tmp_path, monkeypatch):
    """With more open gaps than one read names, a member's earlier task that committed
    late may lie in a gap the read leaves out while its later task, past ``high``, is
    read: applied first, a delete would leave the member in the zone for good, and a
    re-create's address would be removed. Three gaps, one named a read: whichever the
    first read names, one of the two members was wrong before the fix."""
    monkeypatch.setattr("midonet_membership.cluster.importer.MAX_GAPS_PER_READ", 1)
    engine = _engine(make_database("postgresql"))
    api = AgentMemberships(engine)
    admin = RequestContext.admin()
    readdressed = str(uuid.uuid4())
    api.create(admin, [{"id": readdressed, "ip_address": _ip(0)}])
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
        importer = Importer(engine, store)
        importer.catch_up()
        held = engine.connect()  # an id that stays a gap
        held.begin()
        _add_task(held, str(uuid.uuid4()), _ip(1), "req-held")
        api.create(admin, [{"id": str(uuid.uuid4()), "ip_address": _ip(6)}])
        created_late, deleted_late = engine.connect(), engine.connect()
        created_late.begin()
        deleted_late.begin()
        removed = str(uuid.uuid4())
        _add_task(created_late, removed, _ip(2), "req-created-late")
        api.create(admin, [{"id": str(uuid.uuid4()), "ip_address": _ip(3)}])
        deleted_late.execute(sa.delete(memberships).where(memberships.c.id == readdressed))
        journal.record(deleted_late, journal.DELETE, journal.AGENTMEMBERSHIP, readdressed,
                       {"id": readdressed}, tenant_id=None, transaction_id="req-deleted-late")
        api.create(admin, [{"id": str(uuid.uuid4()), "ip_address": _ip(4)}])
        importer.catch_up()
        assert len(store.get_import_position().gaps) == 3
        for conn in (created_late, deleted_late):
            conn.commit()
            conn.close()
        api.delete(admin, removed)
        api.create(admin, [{"id": readdressed, "ip_address": _ip(5)}])
        importer.catch_up()
        members = store.list_members()
        assert removed not in members
        assert members.get(readdressed) == _ip(5)
        assert members == _members_table(engine)
        held.rollback()
        held.close()
        importer.catch_up()
        assert store.list_members() == _members_table(engine)


def _burn_id(engine, n: int) -> None:
    """A transaction that takes a task id and rolls back: a gap that never fills."""
    with engine.connect() as conn, conn.begin() as tx:
        _add_task(conn, str(uuid.uuid4()), _ip(5000 + n), f"req-burn-{n}")
        tx.rollback()


def test_a_position_past_its_limit_holds_new_tasks_and_loses_none(make_database,
                                                                  zookeeper_url, caplog):
    """Gaps that cannot be told final grow the stored position (here a transaction held
    open on PostgreSQL, whose xid holds back every later gap's evidence, as a Galera node
    out of the primary component does). Past its limit the importer takes no task after
    ``high`` but still applies a late commit inside a gap, and the console says so; once
    the held transaction ends, the gaps are final and every task that waited is applied,
    each exactly once."""
    engine = _engine(make_database("postgresql"))
    api = AgentMemberships(engine)
    with nsdb.connect(zookeeper_url, role="cluster") as real:
        store = RecordingNSDB(real)
        importer = Importer(engine, store)
        held, late = engine.connect(), engine.connect()
        held.begin()
        late.begin()
        held_host, late_host = str(uuid.uuid4()), str(uuid.uuid4())
        _add_task(held, held_host, _ip(0), "req-held")
        _add_task(late, late_host, _ip(1), "req-late")
        created = []
        for n in range(1400):  # a gap each, ~30 bytes: past HOLD_POSITION_BYTES (32 KiB)
            _burn_id(engine, n)
            created.append(str(uuid.uuid4()))
            api.create(RequestContext.admin(), [{"id": created[-1], "ip_address": _ip(10 + n)}])
            if n % 50 == 49:
                importer.catch_up()
        size = len(store.get_import_position().encode())
        assert HOLD_POSITION_BYTES < size < HOLD_POSITION_BYTES + 50 * 40, \
            "the position grew past one step over its limit"
        applied = set(store.list_members())
        waiting = [h for h in created if h not in applied]
        assert len(waiting) >= 50 and applied == set(created[:len(created) - len(waiting)])
        assert any(r.levelname == "ERROR" and "open id gaps" in r.getMessage()
                   for r in caplog.records)
        status = read_status(engine, store)["importer"]  # what the console shows
        assert status["holding"] and status["lag_tasks"] == len(waiting)
        assert status["open_gaps"] == len(store.get_import_position().gaps) > 1000

        late.commit()  # its id lies in a gap: applied while the importer holds
        late.close()
        importer.catch_up()
        assert set(store.list_members()) == applied | {late_host}

        held.commit()
        held.close()
        everyone = set(created) | {held_host, late_host}

        def settled() -> bool:
            importer.catch_up()
            return (not store.get_import_position().gaps
                    and set(store.list_members()) == everyone)

        wait_until(settled, 30, interval=0.1)
        added = Counter(op.host_id for ops in store.applies for op in ops
                        if isinstance(op, AddMember))
        assert set(added) == everyone and set(added.values()) == {1}
        assert any(r.levelname == "WARNING" and "applied again" in r.getMessage()
                   for r in caplog.records)
        status = read_status(engine, store)["importer"]
        assert (status["holding"], status["open_gaps"], status["lag_tasks"]) == (False, 0, 0)


def test_a_stream_of_commits_is_applied_in_batches_and_an_idle_change_at_once(
        make_database, tmp_path):
    """``[cluster] batch_window``: after an apply the importer lets the window pass, so a
    stream of 20 single-membership commits (each its own transaction and wake-up) reaches
    the NSDB in a few applies, not 20; a change made while it is idle is not held back."""
    window = 2.0
    engine = _engine(make_database("sqlite"))
    api = AgentMemberships(engine)
    nsdb_url = f"sqlite:///{tmp_path / 'nsdb.sqlite'}"
    with nsdb.connect(nsdb_url, role="cluster") as real:
        store = RecordingNSDB(real)
        with importer_running(engine, store, nsdb_url, window):
            first = str(uuid.uuid4())
            written = time.monotonic()
            api.create(RequestContext.admin(), [{"id": first, "ip_address": _ip(0)}])
            wait_until(lambda: first in real.list_members(), timeout=window)
            assert time.monotonic() - written < window, "an idle change waited for the window"
            applies_before = len(store.applies)
            stream = [str(uuid.uuid4()) for _ in range(20)]
            for n, host in enumerate(stream, 1):
                api.create(RequestContext.admin(), [{"id": host, "ip_address": _ip(n)}])
            wait_until(lambda: set(stream) <= set(real.list_members()), timeout=10 * window)
            assert len(store.applies) - applies_before <= 3, store.applies[applies_before:]
            assert real.list_members() == _members_table(engine)


class SlowNSDB(RecordingNSDB):
    """An NSDB whose every apply takes ``seconds`` (a ZooKeeper ensemble far away)."""

    def __init__(self, store: nsdb.NSDB, seconds: float) -> None:
        super().__init__(store)
        self.seconds = seconds

    def apply(self, ops: Sequence, expected, new) -> None:
        time.sleep(self.seconds)
        super().apply(ops, expected, new)


def test_a_steady_stream_slower_than_a_read_is_not_chased_commit_by_commit(
        make_database, tmp_path):
    """A steady stream of commits, one every 5 ms, into an NSDB whose apply takes 20 ms:
    each apply must carry what committed during the previous apply and the batch window,
    not the one to four commits that arrived during the apply (re-reading at once after
    every apply, 3-4 commits an apply, is the importer's CPU spent a commit at a time).
    Over 1 s with a 100 ms window that is at most ~1 s / (100 + 20 ms) applies, and every
    membership arrives."""
    window, apply_seconds, interval, count = 0.1, 0.02, 0.005, 200
    engine = _engine(make_database("sqlite"))
    api = AgentMemberships(engine)
    nsdb_url = f"sqlite:///{tmp_path / 'nsdb.sqlite'}"
    with nsdb.connect(nsdb_url, role="cluster") as real:
        store = SlowNSDB(real, apply_seconds)
        with importer_running(engine, store, nsdb_url, window):
            stream = [str(uuid.uuid4()) for _ in range(count)]
            next_at = time.monotonic()
            for n, host in enumerate(stream):
                api.create(RequestContext.admin(), [{"id": host, "ip_address": _ip(n)}])
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
            wait_until(lambda: set(stream) <= set(real.list_members()), timeout=10)
            sizes = [len(ops) for ops in store.applies]
    assert sum(sizes) == count
    assert len(sizes) <= count * interval / (window + apply_seconds) + 4, sizes


@pytest.mark.parametrize("pause", [0.002, 0.02], ids=["steady", "pausing-past-the-window"])
def test_last_processed_id_is_copied_a_few_times_a_second_under_a_stream_and_at_once_after(
        make_database, tmp_path, monkeypatch, pause):
    """The position copy (``last_processed_id``) is a write transaction of its own: under a
    stream of creates it must not follow every apply, but once the stream ends it must
    name the last task soon after, not at the next commit. A stream that pauses longer
    than the batch window after each create (as a loaded machine makes any stream) lets
    the importer go idle after each: those idle moments must not each cost a copy."""
    copies: list[int] = []
    copy = journal.set_last_processed
    monkeypatch.setattr(journal, "set_last_processed",
                        lambda engine, task_id: (copies.append(task_id), copy(engine, task_id)))
    engine = _engine(make_database("sqlite"))
    api = AgentMemberships(engine)
    nsdb_url = f"sqlite:///{tmp_path / 'nsdb.sqlite'}"
    with nsdb.connect(nsdb_url, role="cluster") as real:
        store = RecordingNSDB(real)
        with importer_running(engine, store, nsdb_url, batch_window=0.005):
            started = time.monotonic()
            stream = [str(uuid.uuid4()) for _ in range(round(0.6 / pause))]
            for n, host in enumerate(stream):
                api.create(RequestContext.admin(), [{"id": host, "ip_address": _ip(n)}])
                time.sleep(pause)
            wait_until(lambda: set(stream) <= set(real.list_members()), timeout=10)
            elapsed = time.monotonic() - started
            with engine.connect() as conn:
                last = conn.execute(sa.select(sa.func.max(tasks.c.id))).scalar_one()
            wait_until(lambda: last_processed(engine) == last, timeout=0.5)
    assert len(store.applies) > 2 * len(copies), (len(store.applies), len(copies))
    assert len(copies) <= elapsed / POSITION_COPY_INTERVAL + 3, (elapsed, copies)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_busy_importer_reads_on_one_connection_and_an_idle_one_holds_none(
        make_database, tmp_path, backend):
    """Under a steady stream of creates the importer's steps read on one kept connection:
    the pool is checked out for the position copies (a write transaction each) and a few
    times more, not once per apply. Once the stream is applied and the importer idle, it
    holds no connection of the pool on PostgreSQL (on SQLite the engine keeps its write
    connection out of the pool by design, the position copy's too)."""
    url = make_database(backend)
    engine = _engine(url)
    importer_engine = db_engine.create_engine(url)  # the importer's own pool, counted
    checkouts: list[float] = []
    sa.event.listen(importer_engine.pool, "checkout",
                    lambda *args: checkouts.append(time.monotonic()))
    api = AgentMemberships(engine)
    nsdb_url = f"sqlite:///{tmp_path / 'nsdb.sqlite'}"
    with nsdb.connect(nsdb_url, role="cluster") as real:
        store = RecordingNSDB(real)
        with importer_running(importer_engine, store, nsdb_url, batch_window=0.005):
            applies_before, started = len(store.applies), time.monotonic()
            stream = [str(uuid.uuid4()) for _ in range(300)]
            for n, host in enumerate(stream):
                api.create(RequestContext.admin(), [{"id": host, "ip_address": _ip(n)}])
                time.sleep(0.002)
            wait_until(lambda: set(stream) <= set(real.list_members()), timeout=10)
            elapsed = time.monotonic() - started
            during = [t for t in checkouts if started <= t <= started + elapsed]
            applies = len(store.applies) - applies_before
            if backend == "postgresql":
                wait_until(lambda: importer_engine.pool.checkedout() == 0, timeout=5)
    importer_engine.dispose()
    # Not once per apply: a loaded machine's stream pauses more often, and each pause is an
    # idle importer giving its connection back, so the count is bounded by the applies.
    assert applies > 2 * (elapsed / POSITION_COPY_INTERVAL + 3), (applies, elapsed)
    assert len(during) * 2 <= applies, (len(during), applies, elapsed)


def test_a_gap_stays_open_while_a_monitor_keeps_innodb_trx_stale(make_database, tmp_path):
    """InnoDB refreshes ``information_schema.innodb_trx`` only on a read 0.1 s after the
    previous one: a monitoring tool polling it every 20 ms keeps it stale for ever, and a
    list read from it misses a writer that has just taken its task id. That writer's gap
    must stay open however long, and its task be applied once it commits (invariant 2)."""
    engine = _engine(make_database("mariadb"))
    api = AgentMemberships(engine)
    stop = threading.Event()

    def monitor() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                conn.exec_driver_sql("SELECT count(*) FROM information_schema.innodb_trx").all()
                time.sleep(0.02)
    polling = threading.Thread(target=monitor, daemon=True)
    polling.start()
    held = engine.connect()
    try:
        with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as store:
            importer = Importer(engine, store)
            held.begin()
            held_host, later = str(uuid.uuid4()), str(uuid.uuid4())
            _add_task(held, held_host, _ip(1), "req-held")
            api.create(RequestContext.admin(), [{"id": later, "ip_address": _ip(2)}])
            until = time.monotonic() + 2.0
            while time.monotonic() < until:  # gap checks every 0.1 s, all on a stale cache
                importer.catch_up()
                time.sleep(0.05)
            assert later in store.list_members()
            assert store.get_import_position().gaps, "the held writer's gap was given up"
            held.commit()
            importer.catch_up()
            assert held_host in store.list_members()
    finally:
        stop.set()
        polling.join(5)
        held.close()
