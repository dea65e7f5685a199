"""How the importer learns of new tasks: a notification when there is one, else a short poll.

The API's commit wakes an in-process importer directly; PostgreSQL delivers ``NOTIFY`` at
commit to a ``LISTEN``ing connection; SQLite/MariaDB fall back to polling every
``[cluster] poll_interval`` (20 ms), fifty times more often than the original's 1000 ms.

Where the database can say that nothing was committed, the importer reads the journal only
once every ``SAFETY_POLL_INTERVAL`` besides: while the ``LISTEN`` connection is up (every
commit of a task notifies it, through a trigger on the tasks table, whoever the writer), and
on SQLite, whose 20 ms poll asks ``PRAGMA data_version`` (it changes when any other
connection commits; a few µs) and reads the journal only when it changed. The in-process
wake-up alone does not see other processes' writes (a second API server, a
``midonet-db-manage`` run). An idle importer reading the journal every 20 ms used 4-5 % of
a core (the all-in-one and ``midonet-membership importer``, /proc), and on PostgreSQL a
query each time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import sqlalchemy as sa

from midonet_membership.db import engine as db_engine
from midonet_membership.db.journal import NOTIFY_CHANNEL

LOG = logging.getLogger(__name__)
SAFETY_POLL_INTERVAL = 1.0  # seconds between journal reads the database said were idle
# The longest the LISTEN connection goes unread while a wake-up waits to be taken (a standby
# importer never takes one): PostgreSQL keeps what it could not deliver in its notification
# queue, which must not grow without bound, since a full one fails every commit that notifies.
LISTEN_PARK_LIMIT = 0.1


class Wakeup:
    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._event = threading.Event()
        self._taken = threading.Event()  # the importer took the last wake-up (its read follows)
        self._taken.set()
        self._stopped = threading.Event()
        self._listening = threading.Event()  # the LISTEN connection is up
        self._threads: list[threading.Thread] = []
        self._listen_conn = None
        self._data_version: _DataVersion | None = None  # SQLite's cheap poll

    @property
    def listening(self) -> bool:
        """Whether PostgreSQL's LISTEN connection is up (polls are then a safety net)."""
        return self._listening.is_set()

    def notify(self) -> None:
        """Called after every commit of a task: an event already set (the importer has not
        yet begun the read that will see this commit) need not be set again, which takes
        its lock and wakes no one."""
        if not self._event.is_set():
            self._taken.clear()
            self._event.set()

    @property
    def pending(self) -> bool:
        """Whether a notification arrived since the last :meth:`wait` returned."""
        return self._event.is_set()

    def wait(self, gaps_open: bool = False, at_most: float | None = None) -> None:
        """Return at the next notification, or at the next poll that may find a task.

        ``gaps_open``: the importer has id gaps to settle, which no commit announces (a
        rolled-back id is final when its writer has ended, seen only by a read): every poll
        then reads the journal, so that ``last_processed_id`` and ``task-clean``'s low
        watermark move on in a tenth of a second, not at the next safety poll.
        ``at_most``: return after that many seconds whatever happens (the importer has a
        position copy to make then)."""
        def bounded(seconds: float) -> float:
            return seconds if at_most is None else min(seconds, at_most)

        if self.listening and not gaps_open:
            self._event.wait(bounded(max(self.poll_interval, SAFETY_POLL_INTERVAL)))
        else:
            safety = time.monotonic() + bounded(SAFETY_POLL_INTERVAL)
            while not self._event.wait(self.poll_interval):
                if (gaps_open or self._data_version is None or self._data_version.changed()
                        or time.monotonic() >= safety):
                    break
        self._event.clear()
        self._taken.set()

    def listen_in_process(self) -> None:
        db_engine.on_task_commit(self.notify)

    def watch_database(self, database_url: str) -> None:
        """Learn of other processes' commits: PostgreSQL's LISTEN, SQLite's data version;
        MariaDB has neither, and every poll reads the journal."""
        url = sa.make_url(database_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            self._data_version = _DataVersion(url.database)
        if url.get_backend_name() != "postgresql":
            return
        thread = threading.Thread(target=self._listen_loop, args=(url,), daemon=True,
                                  name="importer-listen")
        thread.start()
        self._threads.append(thread)

    def _listen_loop(self, url: sa.URL) -> None:
        import psycopg

        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopped.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    self._listen_conn = conn
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._listening.set()
                    self.notify()  # anything committed while we were not listening
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):  # a packet's
                            self.notify()
                        self._park_until_taken()
            except psycopg.Error as exc:
                self._listening.clear()
                self.notify()  # a poll now, and short polls until LISTEN is back
                LOG.warning("LISTEN connection lost (%s); polling until it is back", exc)
                self._stopped.wait(1.0)

    def _park_until_taken(self) -> None:
        """Leave the LISTEN connection unread until the importer takes the wake-up it has.

        Why: every commit of a task notifies, and each notification read was a wake-up of
        this thread and psycopg's Python around it, in the importer's process: under a stream
        of creates one per create, while the importer needs one per batch. The ones that
        arrive meanwhile wait in the socket and PostgreSQL's queue, and are read together
        once the importer has begun the read that sees their commits; any read after that
        sets the wake-up again, so none is lost (at worst one more read of the journal)."""
        self._taken.wait(LISTEN_PARK_LIMIT)

    def stop(self) -> None:
        self._stopped.set()
        self._taken.set()
        db_engine.remove_task_commit_listener(self.notify)
        self._event.set()
        if self._data_version is not None:
            self._data_version.close()


class _DataVersion:
    """``PRAGMA data_version`` of one SQLite file, on a connection of its own: it changes
    whenever another connection, of any process, committed since it was last asked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._last: int | None = None

    def changed(self) -> bool:
        """True also on any error (the caller then reads the journal, as a plain poll)."""
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=1.0, check_same_thread=False)
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            LOG.debug("PRAGMA data_version failed (%s); reading the journal", exc)
            self._conn = self._last = None
            return True
        changed, self._last = version != self._last, version
        return changed

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
