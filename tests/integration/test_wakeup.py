"""The importer's wake-up (cluster/wakeup.py). On PostgreSQL, while LISTEN is up, a commit by
any writer wakes it at once and nothing else does more than once a second, unless it has id
gaps to settle; when the LISTEN connection dies it polls again until LISTEN is back, so no
commit waits for the safety net. On SQLite, a poll wakes it only when another connection
committed since the last one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from midonet_membership import nsdb
from midonet_membership.cluster.wakeup import LISTEN_PARK_LIMIT, SAFETY_POLL_INTERVAL, Wakeup
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration
from midonet_membership.db.models import memberships, tasks
from tests.fixtures.importer import importer_running, last_processed, wait_until

POLL = 0.02  # [cluster] poll_interval's default


@pytest.fixture
def listening(make_database) -> Iterator[tuple[Wakeup, sa.Engine]]:
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    wakeup = Wakeup(POLL)
    wakeup.watch_database(url)
    wait_until(lambda: wakeup.listening, 10)
    wakeup.wait()  # the notification LISTEN's start gives
    yield wakeup, engine
    wakeup.stop()
    engine.dispose()


def _wakeups_during(wakeup: Wakeup, seconds: float) -> int:
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        wakeup.wait()
        count += 1
    return count


def _commit_task_elsewhere(engine: sa.Engine, commit: bool = True) -> int:
    """A task committed (or rolled back) on a connection of its own, as another process would
    (no in-process notification); its id."""
    host = str(uuid.uuid4())
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(sa.insert(memberships).values(id=host, ip_address="192.0.2.77"))
        journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, host,
                       {"id": host, "ip_address": "192.0.2.77"}, tenant_id=None,
                       transaction_id=f"req-{host}")
        task_id = conn.execute(sa.select(sa.func.max(tasks.c.id))).scalar_one()
        if not commit:
            transaction.rollback()
    with engine.begin() as conn:  # leave the address free for the next one
        conn.execute(sa.delete(memberships).where(memberships.c.id == host))
    return task_id


def _seconds_to_wake_after(wakeup: Wakeup, action) -> float:
    woke = threading.Event()

    def waiter() -> None:
        wakeup.wait()
        woke.set()
    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(0.1)  # the waiter is waiting
    started = time.monotonic()
    action()
    assert woke.wait(5)
    thread.join()
    return time.monotonic() - started


def test_on_sqlite_a_poll_wakes_it_only_after_another_connections_commit(make_database):
    url = make_database("sqlite")
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    wakeup = Wakeup(POLL)
    wakeup.watch_database(url)
    wakeup.wait()  # the first poll has nothing to compare with
    assert _wakeups_during(wakeup, 1.5) <= 1.5 / SAFETY_POLL_INTERVAL + 1, (
        "woken more than once a second while nothing was committed")
    took = _seconds_to_wake_after(wakeup, lambda: _commit_task_elsewhere(engine))
    assert took < 10 * POLL, f"woken {took:.3f} s after the commit"
    engine.dispose()


def test_an_idle_importer_with_listen_up_polls_once_a_second_not_every_20ms(listening):
    wakeup, _ = listening
    assert _wakeups_during(wakeup, 1.5) <= 1.5 / SAFETY_POLL_INTERVAL + 1
    # without LISTEN the same wait polls every poll_interval
    polling = Wakeup(POLL)
    assert _wakeups_during(polling, 0.5) >= 0.5 / POLL / 2


def test_a_commit_by_another_writer_wakes_it_at_once(listening):
    wakeup, engine = listening
    took = _seconds_to_wake_after(wakeup, lambda: _commit_task_elsewhere(engine))
    assert took < SAFETY_POLL_INTERVAL / 4, f"woken {took:.3f} s after the commit"


def test_a_killed_listen_connection_falls_back_to_polling_then_listens_again(listening):
    wakeup, engine = listening
    admin = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)

    def kill_listener() -> None:
        with admin.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'")).all()
            conn.commit()
        assert killed == [(True,)]

    took = _seconds_to_wake_after(wakeup, kill_listener)
    assert took < SAFETY_POLL_INTERVAL / 2, "the lost LISTEN did not wake the importer"
    assert not wakeup.listening
    # polling at poll_interval meanwhile: a commit now is seen within one poll, not 1 s
    assert _wakeups_during(wakeup, 0.3) >= 0.3 / POLL / 2
    wait_until(lambda: wakeup.listening, 10)
    took = _seconds_to_wake_after(wakeup, lambda: _commit_task_elsewhere(engine))
    assert took < SAFETY_POLL_INTERVAL / 4, f"woken {took:.3f} s after the commit"
    admin.dispose()


def test_a_rolled_back_id_is_settled_without_waiting_for_the_safety_poll(listening, tmp_path):
    """A task id rolled back while LISTEN is up leaves a gap that nothing announces (nothing
    committed) and only a read settles: while the importer has one it keeps polling, so its
    copied position (``last_processed_id``, ``task-list --unprocessed``, ``task-clean``'s
    watermark) passes the gap in a fraction of the once-a-second safety poll."""
    wakeup, engine = listening
    nsdb_url = f"sqlite:///{tmp_path / 'nsdb.sqlite'}"
    took = []
    with nsdb.connect(nsdb_url, role="cluster") as store, \
            importer_running(engine, store, nsdb_url, wakeup=wakeup):
        for _ in range(3):
            _commit_task_elsewhere(engine, commit=False)
            committed = _commit_task_elsewhere(engine)
            started = time.monotonic()
            wait_until(lambda task_id=committed: last_processed(engine) == task_id, 10)
            took.append(time.monotonic() - started)
    assert max(took) < SAFETY_POLL_INTERVAL / 2, took


def test_a_stream_of_commits_is_read_in_a_few_packets_while_the_importer_is_busy(listening):
    """Every commit of a task notifies. While the importer has a wake-up it has not taken
    (it is applying a batch), the LISTEN connection is left unread for up to
    LISTEN_PARK_LIMIT: the stream's notifications are then read together, not one wake-up
    of the listener per commit. Nobody taking the wake-up (a standby importer) does not stop
    the reads, so PostgreSQL's notification queue is drained; and once taken, the next
    commit wakes the importer at once."""
    wakeup, engine = listening
    reads: list[float] = []
    park = wakeup._park_until_taken

    def counted() -> None:  # what the listener does after each read of the connection
        reads.append(time.monotonic())
        park()
    wakeup._park_until_taken = counted
    commits = 30
    started = time.monotonic()
    for _ in range(commits):
        _commit_task_elsewhere(engine)
    last_commit = time.monotonic()
    elapsed = last_commit - started
    wait_until(lambda: reads and reads[-1] >= last_commit, 5 * LISTEN_PARK_LIMIT + 1)
    during = [t for t in reads if t < last_commit]
    assert len(during) <= min(commits / 3, 2 + elapsed / LISTEN_PARK_LIMIT), (
        f"{len(during)} notification reads for {commits} commits in {elapsed:.2f} s")
    wakeup.wait()  # the importer takes it
    took = _seconds_to_wake_after(wakeup, lambda: _commit_task_elsewhere(engine))
    assert took < SAFETY_POLL_INTERVAL / 4, f"woken {took:.3f} s after the commit"
