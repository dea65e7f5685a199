"""The embedded NSDB: one SQLite file (WAL) shared by the importer and local agents.

Watches poll ``PRAGMA data_version`` on a connection of their own, which changes whenever
another connection commits: a few microseconds per look, so a change is seen within
``watch_interval`` without reading any table.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence

from midonet_membership.nsdb.base import (
    NSDB,
    AddMember,
    Host,
    HostStatus,
    ImportPosition,
    Op,
    PositionConflict,
    RemoveMember,
    SetTunnelZone,
    TunnelZone,
    Watch,
    ZoneCallback,
    host_from_record,
    host_record,
    members_seen_by,
)

LOG = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tunnel_zone (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1), id TEXT NOT NULL,
    name TEXT NOT NULL, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tunnel_zone_members (
    host_id TEXT PRIMARY KEY, ip_address TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, interfaces TEXT NOT NULL,
    heartbeat_at REAL, vtep_mac TEXT, observed TEXT);
CREATE TABLE IF NOT EXISTS importer_position (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1), position INTEGER);
INSERT OR IGNORE INTO importer_position (singleton, position) VALUES (1, NULL);
"""
# Columns added after the first release: a file written before them gets them at connect.
ADDED_HOST_COLUMNS = ("vtep_mac", "observed")


def _open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SQLiteNSDB(NSDB):
    def __init__(self, url: str, liveness_timeout: float = 10.0, watch_interval: float = 0.005,
                 **_ignored: object) -> None:
        self.path = url.removeprefix("sqlite:///")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self.liveness_timeout = liveness_timeout
        self.watch_interval = watch_interval
        self._conn = _open(self.path)
        self._lock = threading.RLock()
        self._watches: list[_SQLiteWatch] = []
        with self._lock:
            self._conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
            with self._transaction() as conn:
                present = {row[1] for row in conn.execute("PRAGMA table_info(hosts)")}
                for column in ADDED_HOST_COLUMNS:
                    if column not in present:
                        conn.execute(f"ALTER TABLE hosts ADD COLUMN {column} TEXT")
                columns = {row[1] for row in conn.execute(
                    "PRAGMA table_info(importer_position)")}
                if "state" not in columns:  # a file written before positions had gaps
                    conn.execute("ALTER TABLE importer_position ADD COLUMN state TEXT")

    @contextlib.contextmanager
    def _transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- position ------------------------------------------------------------------------------
    def get_import_position(self) -> ImportPosition:
        with self._transaction(immediate=False) as conn:
            return _position(conn)

    def apply(self, ops: Sequence[Op], expected_position: ImportPosition | int | None,
              new_position: ImportPosition | int) -> None:
        expected = ImportPosition.of(expected_position)
        new = ImportPosition.of(new_position)
        with self._transaction() as conn:
            current = _position(conn)
            if current != expected:
                raise PositionConflict(f"position is {current}, expected {expected}")
            for op in ops:
                _apply_op(conn, op)
            # ``position`` stays the bare high-water id for anything reading it directly.
            conn.execute("UPDATE importer_position SET position = ?, state = ? "
                         "WHERE singleton = 1", (new.high, new.encode()))

    # -- tunnel zone ---------------------------------------------------------------------------
    def get_tunnel_zone(self) -> TunnelZone | None:
        with self._transaction(immediate=False) as conn:
            return _zone(conn)

    def list_members(self) -> dict[str, str]:
        with self._transaction(immediate=False) as conn:
            return _members(conn)

    def watch_tunnel_zone(self, callback: ZoneCallback, host_id: str | None = None) -> Watch:
        watch = _SQLiteWatch(self.path, callback, self.watch_interval, host_id)
        self._watches.append(watch)
        return watch

    # -- hosts ---------------------------------------------------------------------------------
    def register_host(self, host: Host) -> None:
        record = host_record(host)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO hosts (id, hostname, interfaces, vtep_mac, observed) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, "
                "interfaces = excluded.interfaces, vtep_mac = excluded.vtep_mac, "
                "observed = excluded.observed",
                (host.id, host.hostname, json.dumps(record["interfaces"]), host.vtep_mac,
                 json.dumps(record["observed"]) if host.observed else None))

    def heartbeat(self, host_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("UPDATE hosts SET heartbeat_at = ? WHERE id = ?", (time.time(), host_id))

    def list_hosts(self) -> list[HostStatus]:
        return self._hosts("ORDER BY id")

    def get_host(self, host_id: str) -> HostStatus | None:
        """One row, not the whole table: agents read their peers' VTEP MACs with it."""
        return next(iter(self._hosts("WHERE id = ?", (host_id,))), None)

    def _hosts(self, where: str, args: tuple = ()) -> list[HostStatus]:
        with self._transaction(immediate=False) as conn:
            rows = conn.execute("SELECT id, hostname, interfaces, heartbeat_at, vtep_mac, "
                                f"observed FROM hosts {where}", args).fetchall()
        now = time.time()
        return [HostStatus(
            host=host_from_record({"id": id_, "hostname": hostname,
                                   "interfaces": json.loads(ifaces), "vtep_mac": mac,
                                   "observed": json.loads(observed) if observed else None}),
            alive=beat is not None and now - beat < self.liveness_timeout,
            heartbeat_at=None if beat is None else datetime.datetime.fromtimestamp(
                beat, datetime.UTC))
            for id_, hostname, ifaces, beat, mac, observed in rows]

    def close(self) -> None:
        for watch in self._watches:
            watch.cancel()
        with self._lock:
            self._conn.close()


def _position(conn: sqlite3.Connection) -> ImportPosition:
    high, state = conn.execute("SELECT position, state FROM importer_position").fetchone()
    return ImportPosition.decode(state) if state else ImportPosition(high=high)


def _zone(conn: sqlite3.Connection) -> TunnelZone | None:
    row = conn.execute("SELECT id, name, type FROM tunnel_zone").fetchone()
    return None if row is None else TunnelZone(*row)


def _members(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT host_id, ip_address FROM tunnel_zone_members"))


def _apply_op(conn: sqlite3.Connection, op: Op) -> None:
    if isinstance(op, SetTunnelZone):
        conn.execute("INSERT OR REPLACE INTO tunnel_zone (singleton, id, name, type) "
                     "VALUES (1, ?, ?, ?)", (op.zone.id, op.zone.name, op.zone.type))
    elif isinstance(op, AddMember):
        conn.execute("INSERT OR REPLACE INTO tunnel_zone_members (host_id, ip_address) "
                     "VALUES (?, ?)", (op.host_id, op.ip_address))
    elif isinstance(op, RemoveMember):
        conn.execute("DELETE FROM tunnel_zone_members WHERE host_id = ?", (op.host_id,))
    else:
        raise TypeError(f"unknown NSDB op {op!r}")


class _SQLiteWatch(Watch):
    """A thread that delivers a snapshot whenever the zone or its members change.

    An sqlite error (a locked or replaced file, a full disk, an I/O error) does not end it:
    it reopens its connection with a growing pause, says so once, and ``failure()`` reports
    it meanwhile, so an agent shows ``error`` instead of staying ``alive`` and silent.
    """

    def __init__(self, path: str, callback: ZoneCallback, interval: float,
                 host_id: str | None) -> None:
        self._path = path
        self._callback = callback
        self._host_id = host_id
        self._interval = interval
        self._cancelled = threading.Event()
        self._failure: str | None = None
        self._conn: sqlite3.Connection | None = _open(path)
        self._thread = threading.Thread(target=self._run, daemon=True, name="nsdb-watch")
        self._thread.start()

    def failure(self) -> str | None:
        if not self._thread.is_alive() and not self._cancelled.is_set():
            return self._failure or "the watch thread ended"
        return self._failure

    def _snapshot(self, conn: sqlite3.Connection) -> tuple[TunnelZone | None, dict[str, str]]:
        conn.execute("BEGIN")
        try:
            return _zone(conn), members_seen_by(self._host_id, _members(conn))
        finally:
            conn.execute("COMMIT")

    def _run(self) -> None:
        last = None
        version = None
        pause = self._interval
        while not self._cancelled.is_set():
            try:
                if self._conn is None:
                    self._conn = _open(self._path)
                    version = None  # whatever changed meanwhile is delivered now
                current = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if current != version:
                    snapshot = self._snapshot(self._conn)
                    version = current
                    if snapshot != last:
                        last = snapshot
                        try:
                            self._callback(*snapshot)
                        except Exception:  # a failing callback must not end the watch
                            LOG.exception("tunnel zone watch callback failed")
            except sqlite3.Error as exc:
                if self._failure is None:
                    LOG.error("tunnel zone watch on %s failed (%s); reopening it until it "
                              "works", self._path, exc)
                self._failure = f"{type(exc).__name__}: {exc}"
                self._close_connection()
                pause = min(1.0, max(pause * 2, 0.05))
                self._cancelled.wait(pause)
                continue
            if self._failure is not None:
                LOG.warning("tunnel zone watch on %s works again", self._path)
                self._failure = None
                pause = self._interval
            self._cancelled.wait(self._interval)
        self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def cancel(self) -> None:
        self._cancelled.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
