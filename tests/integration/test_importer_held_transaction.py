"""A transaction held open for 60 s does not hold anything else back (issue 8).

One writer takes its task id and sits on it, uncommitted, for 60 s: longer than anything
the importer ever waited (its retired ``gap_timeout`` was 5 s). Meanwhile 1,000 creates
commit from four threads, mixed with forced 409s and explicit rollbacks that burn ids.
Every one of them must reach the NSDB with its usual latency (compared with an idle run of
the same writers in the same test), the held one when it commits, each exactly once.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from midonet_membership import exceptions, nsdb
from midonet_membership.cluster.importer import Importer
from midonet_membership.cluster.wakeup import Wakeup
from midonet_membership.context import RequestContext
from midonet_membership.db import journal
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.db.models import memberships
from midonet_membership.nsdb.base import AddMember
from tests.integration.test_importer_reader import RecordingNSDB, _add_task, _engine, _ip

HOLD_SECONDS = 60.0


class Propagation:
    """When each host was acknowledged to its writer and when a watcher first saw it."""

    def __init__(self) -> None:
        self.acked: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()

    def on_zone(self, _zone, members: dict[str, str]) -> None:
        now = time.monotonic()
        with self.lock:
            for host in members:
                self.seen.setdefault(host, now)

    def ack(self, host: str) -> None:
        with self.lock:
            self.acked[host] = time.monotonic()

    def latencies(self, hosts: list[str]) -> list[float]:
        return [max(0.0, self.seen[h] - self.acked[h]) for h in hosts]

    def wait_for(self, hosts: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(h in self.seen for h in hosts):
                    return
            time.sleep(0.01)
        missing = [h for h in hosts if h not in self.seen]
        raise AssertionError(f"{len(missing)} of {len(hosts)} never reached the NSDB")


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def _write(engine, api: AgentMemberships, propagation: Propagation, hosts: list[str],
           first_ip: int, rng: random.Random, burn_ids: bool) -> None:
    for n, host in enumerate(hosts):
        if burn_ids and rng.random() < 0.05:  # an explicit rollback after taking a task id
            with engine.connect() as conn, conn.begin() as tx:
                conn.execute(sa.insert(memberships).values(id=str(uuid.uuid4()),
                                                           ip_address=_ip(7000 + n)))
                journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, host, {},
                               tenant_id=None, transaction_id=f"req-{uuid.uuid4()}")
                tx.rollback()
        if burn_ids and rng.random() < 0.05 and propagation.acked:  # a forced 409
            taken = next(iter(propagation.acked))
            with pytest.raises(exceptions.Conflict):
                api.create(RequestContext.admin(), [{"id": taken, "ip_address": _ip(9999)}])
        api.create(RequestContext.admin(), [{"id": host, "ip_address": _ip(first_ip + n)}])
        propagation.ack(host)


def _run_writers(engine, api, propagation, hosts: list[str], first_ip: int,
                 burn_ids: bool) -> None:
    shares = [hosts[i::4] for i in range(4)]
    threads = [threading.Thread(target=_write, args=(
        engine, api, propagation, share, first_ip + 1000 * i, random.Random(i), burn_ids))
        for i, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_transaction_held_for_60s_holds_nothing_back(make_database, tmp_path, backend):
    engine = _engine(make_database(backend))
    api = AgentMemberships(engine)
    propagation = Propagation()
    stop = threading.Event()
    wakeup = Wakeup(poll_interval=0.02)
    wakeup.listen_in_process()
    with nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}", role="cluster") as real:
        store = RecordingNSDB(real)
        importer = Importer(engine, store)

        def run() -> None:
            while not stop.is_set():
                importer.catch_up()
                wakeup.wait()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        watcher = nsdb.connect(f"sqlite:///{tmp_path / 'nsdb.sqlite'}")
        watch = watcher.watch_tunnel_zone(propagation.on_zone)
        held = engine.connect()
        try:
            idle = [str(uuid.uuid4()) for _ in range(200)]
            _run_writers(engine, api, propagation, idle, 0, burn_ids=False)
            propagation.wait_for(idle, 30)
            idle_p99 = _p99(propagation.latencies(idle))

            held_host = str(uuid.uuid4())
            held.begin()
            _add_task(held, held_host, _ip(6000), "req-held")
            held_since = time.monotonic()

            busy = [str(uuid.uuid4()) for _ in range(1000)]
            _run_writers(engine, api, propagation, busy, 10000, burn_ids=True)
            propagation.wait_for(busy, 30)
            busy_p99 = _p99(propagation.latencies(busy))
            time.sleep(max(0.0, HOLD_SECONDS - (time.monotonic() - held_since)))
            assert held_host not in propagation.seen
            assert store.get_import_position().gaps, "the held id's gap was given up"
            held.commit()
            propagation.wait_for([held_host], 10)
        finally:
            held.close()  # a failure must not leave its locks for DROP DATABASE to wait on
            stop.set()
            wakeup.notify()
            thread.join(timeout=10)
            watch.cancel()
            watcher.close()
            wakeup.stop()
        with engine.connect() as conn:
            members = dict(conn.execute(sa.select(memberships.c.id,
                                                  memberships.c.ip_address)).all())
        assert store.list_members() == members
        added = [op.host_id for ops in store.applies for op in ops if isinstance(op, AddMember)]
        assert len(added) == len(set(added)) == len(members), "a task applied twice"
    print(f"{backend}: p99 idle {idle_p99 * 1000:.1f} ms, with the held transaction "
          f"{busy_p99 * 1000:.1f} ms")
    # Loose: the machine is shared and the two phases run at different moments (the
    # targets live in bench/propagation.py). A reader that waited for the held id would
    # take 60 s, one with the old gap timeout 5 s.
    assert busy_p99 <= max(2 * idle_p99, idle_p99 + 1.0), (idle_p99, busy_p99)
