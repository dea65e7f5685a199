"""How the importer learns of new tasks: a notification when there is one, else a short poll.

The API's commit wakes an in-process importer directly; PostgreSQL delivers ``NOTIFY`` at
commit to a ``LISTEN``ing connection; SQLite/MariaDB fall back to polling every
``[cluster] poll_interval`` (20 ms), fifty times more often than the original's 1000 ms.

While the ``LISTEN`` connection is up, every commit of a task notifies it (a trigger on the
tasks table, whoever the writer), so the poll is only a safety net and runs every
``LISTENING_POLL_INTERVAL``: an idle importer polling every 20 ms cost 5 % of a core and
one PostgreSQL query each time (``midonet-membership importer``, measured from /proc).
The in-process wake-up does not see other processes' writes (a second API server, a
``midonet-db-manage`` run), so it keeps the short poll.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from midonet_membership.db import engine as db_engine
from midonet_membership.db.journal import NOTIFY_CHANNEL

LOG = logging.getLogger(__name__)
LISTENING_POLL_INTERVAL = 1.0  # seconds between polls while LISTEN is up


class Wakeup:
    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._event = threading.Event()
        self._stopped = threading.Event()
        self._listening = threading.Event()  # the LISTEN connection is up
        self._threads: list[threading.Thread] = []
        self._listen_conn = None

    @property
    def listening(self) -> bool:
        """Whether PostgreSQL's LISTEN connection is up (polls are then a safety net)."""
        return self._listening.is_set()

    def notify(self) -> None:
        self._event.set()

    def wait(self) -> None:
        """Return at the next notification or after one poll interval."""
        self._event.wait(max(self.poll_interval, LISTENING_POLL_INTERVAL)
                         if self.listening else self.poll_interval)
        self._event.clear()

    def listen_in_process(self) -> None:
        db_engine.on_task_commit(self.notify)

    def listen_postgresql(self, database_url: str) -> None:
        """LISTEN on the journal channel in a thread; reconnects if the connection drops."""
        url = sa.make_url(database_url)
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
                        for _ in conn.notifies(timeout=1.0):
                            self.notify()
            except psycopg.Error as exc:
                self._listening.clear()
                self.notify()  # a poll now, and short polls until LISTEN is back
                LOG.warning("LISTEN connection lost (%s); polling until it is back", exc)
                self._stopped.wait(1.0)

    def stop(self) -> None:
        self._stopped.set()
        db_engine.remove_task_commit_listener(self.notify)
        self._event.set()
