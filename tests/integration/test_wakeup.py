"""The importer's wake-up (cluster/wakeup.py). On PostgreSQL, while LISTEN is up, a commit by
any writer wakes it at once and nothing else does more than once a second; when the LISTEN
connection dies it polls again until LISTEN is back, so no commit waits for the safety net.
On SQLite, a poll wakes it only when another connection committed since the last one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from midonet_membership.cluster.wakeup import SAFETY_POLL_INTERVAL, Wakeup
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration
from midonet_membership.db.models import memberships

POLL = 0.02  # [cluster] poll_interval's default


@pytest.fixture
def listening(make_database) -> Iterator[tuple[Wakeup, sa.Engine]]:
    url = make_database("postgresql")
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    wakeup = Wakeup(POLL)
    wakeup.watch_database(url)
    _wait_until(lambda: wakeup.listening, 10)
    wakeup.wait()  # the notification LISTEN's start gives
    yield wakeup, engine
    wakeup.stop()
    engine.dispose()


def _wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.01)


def _wakeups_during(wakeup: Wakeup, seconds: float) -> int:
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        wakeup.wait()
        count += 1
    return count


def _commit_task_elsewhere(engine: sa.Engine) -> None:
    """A task committed on a connection of its own, as another process would (no in-process
    notification)."""
    host = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(sa.insert(memberships).values(id=host, ip_address="192.0.2.77"))
        journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, host,
                       {"id": host, "ip_address": "192.0.2.77"}, tenant_id=None,
                       transaction_id=f"req-{host}")
    with engine.begin() as conn:  # leave the address free for the next one
        conn.execute(sa.delete(memberships).where(memberships.c.id == host))


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
    _wait_until(lambda: wakeup.listening, 10)
    took = _seconds_to_wake_after(wakeup, lambda: _commit_task_elsewhere(engine))
    assert took < SAFETY_POLL_INTERVAL / 4, f"woken {took:.3f} s after the commit"
    admin.dispose()
