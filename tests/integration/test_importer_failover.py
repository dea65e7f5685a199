"""Several importers on ZooKeeper: one leads, a standby takes over, nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from kazoo.exceptions import KazooException

from midonet_membership import nsdb
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships, tasks

BIN = Path(sys.executable).parent


def _stream(engine, count: int) -> threading.Thread:
    """Create ``count`` memberships and delete every third, in the background."""
    def run() -> None:
        api = AgentMemberships(engine)
        for i in range(count):
            host = str(uuid.uuid4())
            api.create(RequestContext.admin(),
                       [{"id": host, "ip_address": f"198.51.{100 + i // 250}.{i % 250 + 1}"}])
            if i % 3 == 0:
                api.delete(RequestContext.admin(), host)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _importer(tmp_path: Path, database_url: str, nsdb_url: str, name: str):
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"[database]\nconnection = {database_url}\n"
                    f"[nsdb]\nconnection = {nsdb_url}\n[cluster]\nbatch_size = 20\n")
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([str(BIN / "midonet-membership"), "importer", "--config-file",
                             str(conf), "--state-dir", str(tmp_path)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    return proc, log


def _wait_until(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except KazooException:  # our probe's own connection is failing over too
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _converged(engine, store) -> None:
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(tasks.c.id))).scalar()
        table = dict(conn.execute(sa.select(memberships.c.id, memberships.c.ip_address)).all())
    _wait_until(lambda: store.get_position() == last, 60, "the NSDB to catch up")
    _wait_until(lambda: store.list_members() == table, 10, "the members to equal the table")


def test_standby_takes_over_when_the_leader_is_killed(make_database, zookeeper_url, tmp_path):
    database_url = make_database("postgresql")
    migration.upgrade(database_url)
    engine = db_engine.create_engine(database_url)
    store = nsdb.connect(zookeeper_url, role="cluster")
    procs = dict(a=_importer(tmp_path, database_url, zookeeper_url, "a"),
                 b=_importer(tmp_path, database_url, zookeeper_url, "b"))
    try:
        _wait_until(lambda: any("is the leader" in log.read_text()
                                for _, log in procs.values()), 30, "a leader")
        leader = next(n for n, (_, log) in procs.items() if "is the leader" in log.read_text())
        standby = "b" if leader == "a" else "a"
        writer = _stream(engine, 600)
        _wait_until(lambda: (store.get_position() or 0) > 100, 30, "import to start")
        procs[leader][0].send_signal(signal.SIGKILL)
        took = _wait_until(lambda: "is the leader" in procs[standby][1].read_text(), 30,
                           "the standby to lead")
        assert took < 15, f"takeover took {took:.1f}s"
        writer.join()
        _converged(engine, store)
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait()
        store.close()
        engine.dispose()


def test_losing_one_of_three_zookeeper_nodes_loses_nothing(make_database, zookeeper_ensemble,
                                                           tmp_path):
    database_url = make_database("postgresql")
    migration.upgrade(database_url)
    engine = db_engine.create_engine(database_url)
    ensemble = zookeeper_ensemble()
    url = ensemble.url()
    store = nsdb.connect(url, role="cluster")
    proc, _ = _importer(tmp_path, database_url, url, "importer")
    try:
        writer = _stream(engine, 600)
        _wait_until(lambda: (store.get_position() or 0) > 100, 30, "import to start")
        ensemble.kill(0)
        time.sleep(1)
        ensemble.restart(0)
        ensemble.kill(2)
        writer.join()
        _converged(engine, store)
    finally:
        proc.kill()
        proc.wait()
        store.close()
        engine.dispose()
