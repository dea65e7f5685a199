"""Which transactions may still commit: the Neutron DB's own evidence that an id gap is final.

A gap (ids missing below one that committed) is a transaction still in flight or one that
rolled back; only the database can tell which, and no timeout can. When the importer first
sees a gap it records, right after the read that showed it, *which transactions were in
flight* (:func:`observe`). The gap is final once every one of them has ended
(:func:`settled`) and a read taken after that still does not show its ids: a writer of a
missing id was in flight at the first read (it took its id before a later id committed),
so it is among those recorded, and once it ended its task is either visible or never
will be.

- **PostgreSQL**: a fresh xid of the importer's own (``pg_current_xact_id()``) at the first
  sight; settled when the xmin of a current snapshot reached it (every transaction that had
  an xid then has ended; xids are handed out in order). Our writers (and the Neutron
  plugin) write the membership row before the task row, so a writer has its xid before it
  takes its task id.
- **MariaDB/MySQL (InnoDB)**: the ``trx_id`` set of ``information_schema.innodb_trx``
  (needs the PROCESS privilege); settled when none of them is left. That table is served
  from a cache InnoDB refreshes only on a read that comes 0.1 s after the previous one (by
  anyone): read more often, it stays stale for ever and misses a writer that has just taken
  its task id. So a list counts only when it shows a canary transaction begun just before
  (:func:`_innodb_in_flight`), and this process reads it at most every 0.11 s.
- **Galera**: each node lists only its own transactions (a remote one is replicated only
  at commit), so the evidence is the union over every node in ``wsrep_incoming_addresses``,
  reached with the importer's own credentials, and the importer reads with
  ``wsrep_sync_wait`` so that what committed on another node is visible to its next read.
  Galera keeps a transaction open on a node evicted from the primary component (a stall,
  a partition) and lets it commit once the node is back (measured with MariaDB 10.11 and
  galera-4: a write held on a node frozen until the others evicted it committed after it
  rejoined). So a node counts only while it answers in the primary component: a recorded
  node's transactions have ended only when its own list says so, and evidence is taken
  only while the primary component holds every node this process has seen in it and at
  least as many nodes as ``wsrep_cluster_address`` names (a process started while a node
  was out has not seen that node; so that address must name every node, and an error is
  logged when it names fewer than the primary component holds). A node cut off from the
  others lists only its own component, and one listed as ``unspecified`` (address not
  known) cannot be asked: neither tells anything. Until a missing node is back, gaps stay
  open (tasks behind them do not wait); after removing a node for good, take it out of
  ``wsrep_cluster_address`` and restart the importer, which then knows only the nodes it
  sees.
- **SQLite**: writers are serialised and a rolled-back id is reused, so a gap is final at
  once (it can only come from deleted rows).

Evidence taken later than the first sight is as good (a writer still in flight is in it,
one that ended is visible or never will be), so a gap whose evidence could not be taken is
asked about again at the next step. Without any (no privilege, an unknown database) a gap is
never declared final: it is tracked, costs a few bytes in the stored position, and an error
is logged once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

LOG = logging.getLogger(__name__)
SERIAL = "serial"  # the evidence of a database whose writers cannot overlap

_warned: set[str] = set()


def observe(conn: Connection) -> str | None:
    """What is in flight now, as a short string to store with new gaps (None: unknown)."""
    dialect = conn.dialect.name
    try:
        if dialect == "sqlite":
            return SERIAL
        if dialect == "postgresql":
            # A new xid of our own: every transaction that has one already got a smaller
            # one. (A snapshot's xmax is not that: it is the latest *completed* xid + 1, and
            # a transaction running with an xid above it is not listed.)
            xid = conn.exec_driver_sql("SELECT pg_current_xact_id()::text").scalar_one()
            return f"pg:{xid}"
        if dialect in ("mysql", "mariadb"):
            primary, nodes = _galera_view(conn)
            if nodes:
                if not primary or _nodes_out(conn, nodes):
                    return None  # ask again once every node is in the primary component
                in_flight = _galera_in_flight(conn, nodes)
                if any(ids is None for ids in in_flight.values()):
                    return None  # a member we cannot see: ask again at the next step
                return "galera:" + ";".join(f"{node}={','.join(ids)}"
                                            for node, ids in in_flight.items())
            in_flight = _innodb_in_flight(conn.engine)
            return None if in_flight is None else "innodb:" + ",".join(in_flight)
    except sa.exc.DBAPIError as exc:
        _warn_once(dialect, f"cannot tell which transactions are in flight ({exc.orig}); "
                   "id gaps stay open until they can be told final")
        return None
    _warn_once(dialect, f"no in-flight evidence for {dialect}: id gaps stay open")
    return None


def settled(conn: Connection, evidences: Iterable[str | None]) -> set[str]:
    """The evidences whose transactions have all ended (a gap recorded with one is final
    once a later read still misses its ids)."""
    wanted = {e for e in evidences if e is not None}
    done = {e for e in wanted if e == SERIAL}
    pg = {e for e in wanted if e.startswith("pg:")}
    if pg:
        xmin = int(conn.exec_driver_sql(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text").scalar_one())
        done |= {e for e in pg if xmin >= int(e[3:])}
    innodb = {e for e in wanted if e.startswith("innodb:")}
    running = _innodb_in_flight(conn.engine) if innodb else None
    if running is not None:  # None: no fresh list now, nothing settles
        done |= {e for e in innodb
                 if not set(running) & set(filter(None, e[7:].split(",")))}
    galera = {e for e in wanted if e.startswith("galera:")}
    if galera:
        primary, members = _galera_view(conn)
        if primary:
            now = _galera_in_flight(conn, members)
            done |= {e for e in galera if _galera_settled(e, now)}
    return done


def is_galera(conn: Connection) -> bool:
    """Whether ``conn`` is a node of a Galera cluster (its reads then need a causality wait:
    see :func:`read_causally`)."""
    return conn.dialect.name in ("mysql", "mariadb") and bool(_galera_view(conn)[1])


def read_causally(conn: Connection) -> None:
    """Make this connection's reads see every transaction committed anywhere in the cluster
    before they start (``wsrep_sync_wait``). Without it a write set certified on another
    node but not applied here yet is in flight nowhere and visible nowhere: a gap holding
    it would look final."""
    conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")


# InnoDB refreshes information_schema.innodb_trx only on a read 0.1 s after the last one.
INNODB_CACHE_IDLE = 0.11
STALE_READS_BEFORE_WARNING = 100
_last_innodb_read: dict[str, float] = {}
_stale_innodb_reads: dict[str, int] = {}


def _innodb_in_flight(engine: sa.Engine) -> list[str] | None:
    """The server's InnoDB transactions in flight, from a list proven fresh: None when this
    process read the list less than INNODB_CACHE_IDLE ago, or the list does not show the
    canary transaction begun just before it (someone else keeps the cache from refreshing).
    None is "no evidence now": the caller asks again at its next step.
    """
    key = _server_key(engine)
    if time.monotonic() - _last_innodb_read.get(key, -math.inf) < INNODB_CACHE_IDLE:
        return None
    with engine.connect() as canary, engine.connect() as conn:
        canary_thread = canary.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        canary.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        rows = conn.exec_driver_sql(
            "SELECT trx_id, trx_mysql_thread_id FROM information_schema.innodb_trx "
            "WHERE trx_mysql_thread_id <> CONNECTION_ID()").all()
        _last_innodb_read[key] = time.monotonic()
        canary.rollback()
    if not any(thread == canary_thread for _, thread in rows):
        _note_stale(key)
        return None
    _stale_innodb_reads[key] = 0
    return [str(trx) for trx, thread in rows if thread != canary_thread]


def _note_stale(key: str) -> None:
    _stale_innodb_reads[key] = stale = _stale_innodb_reads.get(key, 0) + 1
    if stale == STALE_READS_BEFORE_WARNING:
        LOG.warning("information_schema.innodb_trx on %s has stayed stale for %d reads: "
                    "something reads it more often than every 0.1 s, so InnoDB never "
                    "refreshes it; id gaps stay open until it does", key, stale)


def _galera_view(conn: Connection) -> tuple[bool, list[str]]:
    """Whether this node is in the primary component, and the client addresses of the
    nodes of its component ([] when not on Galera), read in one statement."""
    status = dict(conn.exec_driver_sql(
        "SHOW STATUS WHERE Variable_name IN "
        "('wsrep_cluster_status', 'wsrep_incoming_addresses')").all())
    addresses = status.get("wsrep_incoming_addresses") or "AUTO"
    if addresses == "AUTO":
        return False, []
    nodes = sorted(a.strip() for a in addresses.split(",") if a.strip())
    primary = status.get("wsrep_cluster_status") == "Primary"
    if primary:
        _seen_nodes.setdefault(_server_key(conn.engine), set()).update(filter(_address, nodes))
    return primary, nodes


# The cluster's nodes seen in its primary component, by the URL this process reads it at.
_seen_nodes: dict[str, set[str]] = {}


def _server_key(engine: sa.Engine) -> str:
    """What this process's per-server state (read times, nodes seen) is kept under."""
    return engine.url.render_as_string(hide_password=True)


def _nodes_out(conn: Connection, nodes: list[str]) -> bool:
    """Whether a node may be out of the primary component now (``nodes``, this node's
    view, being in it): one this process has seen in it before, or one it has never seen
    (started while that node was out) that ``wsrep_cluster_address`` names. Each may hold
    a writer that commits when it is back."""
    out = sorted(_seen_nodes.get(_server_key(conn.engine), set()) - set(nodes))
    address = conn.exec_driver_sql("SELECT @@global.wsrep_cluster_address").scalar() or ""
    peers = _peers(address)
    if len(peers) < len(nodes):
        _warn_once("wsrep_cluster_address", (
            f"wsrep_cluster_address {address!r} names {len(peers)} nodes, fewer than the "
            f"{len(nodes)} of the primary component: name every node of the cluster there, "
            "this one included. An importer started while a node is out counts the nodes "
            "it names to know that one is missing, and would take the others' in-flight "
            "transactions for all of them"))
    if not out and len(peers) <= len(nodes):
        return False
    _warn_once(f"out {out} {len(peers)}/{len(nodes)}", (
        f"Galera nodes are out of the primary component ({out or 'not seen by this process'}"
        f"; {len(peers)} in wsrep_cluster_address, {len(nodes)} in the component): id gaps "
        "stay open until they are back (after removing a node for good, take it out of "
        "wsrep_cluster_address and restart the importer)"))
    return True


def _peers(cluster_address: str) -> set[str]:
    """The nodes ``wsrep_cluster_address`` names (``gcomm://a,b:4567,c?option=value``)."""
    names = cluster_address.removeprefix("gcomm://").split("?")[0].split(",")
    return {name.strip() for name in names if name.strip()}


def _address(node: str) -> tuple[str, int] | None:
    """``host:port`` of a node's entry; None for one not known (``unspecified``)."""
    host, _, port = node.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _galera_in_flight(conn: Connection, nodes: list[str]) -> dict[str, list[str] | None]:
    """node address -> its in-flight InnoDB transactions (None: unreachable now, its
    address not known, or no fresh list yet)."""
    url = conn.engine.url
    result: dict[str, list[str] | None] = {}
    for node in nodes:
        address = _address(node)
        if address is None:
            result[node] = None
            continue
        engine = _node_engine(url.set(host=address[0], port=address[1]))
        try:
            result[node] = _innodb_in_flight(engine)
        except sa.exc.DBAPIError:
            result[node] = None
            engine.dispose()  # a node that died: reconnect from scratch next time
    return result


_node_engines: dict[str, sa.Engine] = {}


def _node_engine(url: sa.URL) -> sa.Engine:
    """One small pool per Galera node: asked at every gap check, a new connection each
    time would cost more than the question. Two stay open: :func:`_innodb_in_flight`
    holds a canary and a reader at once."""
    key = url.render_as_string(hide_password=False)
    engine = _node_engines.get(key)
    if engine is None:
        engine = _node_engines[key] = sa.create_engine(
            url, pool_size=2, max_overflow=1, pool_pre_ping=True,
            connect_args={"connect_timeout": 2})
    return engine


def _galera_settled(evidence: str, now: dict[str, list[str] | None]) -> bool:
    """Whether every transaction the evidence recorded has ended, each told by its own
    node's list now (a node absent from ``now`` tells nothing: it may commit when back)."""
    for part in filter(None, evidence[7:].split(";")):
        node, _, ids = part.partition("=")
        recorded = set(filter(None, ids.split(",")))
        if recorded and (now.get(node) is None or recorded & set(now[node])):
            return False
    return True


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        LOG.error(message)
