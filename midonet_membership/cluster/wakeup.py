"""How the importer learns of new tasks: a notification when there is one, else a short poll.

The API's commit wakes an in-process importer directly; PostgreSQL delivers ``NOTIFY`` at
commit to a ``LISTEN``ing connection; SQLite/MariaDB fall back to polling every
``[cluster] poll_interval`` (20 ms), fifty times more often than the original's 1000 ms.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from midonet_membership.db import engine as db_engine
from midonet_membership.db.journal import NOTIFY_CHANNEL

LOG = logging.getLogger(__name__)


class Wakeup:
    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._event = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listen_conn = None

    def notify(self) -> None:
        self._event.set()

    def wait(self) -> None:
        """Return at the next notification or after one poll interval."""
        self._event.wait(self.poll_interval)
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
                    self.notify()  # anything committed while we were not listening
                    while not self._stopped.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.notify()
            except psycopg.Error as exc:
                LOG.warning("LISTEN connection lost (%s); polling until it is back", exc)
                self._stopped.wait(1.0)

    def stop(self) -> None:
        self._stopped.set()
        db_engine.remove_task_commit_listener(self.notify)
        self._event.set()
