"""The production NSDB: ZooKeeper through kazoo.

Layout under the root (default ``/midonet``)::

    /tunnel_zone                       {"id", "name", "type"}   (after the first CONFIG)
    /tunnel_zone_members               the last apply's delta (see below)
    /tunnel_zone_members/<host>@<ip>   {"ip_address"}           one znode per member
    /tunnel_zone_member_hosts/<host>   (empty)                  exists while <host> is one
    /hosts                             (agents may create children)
    /hosts/<host>                      {"id", "hostname", "interfaces"}
    /hosts/<host>/alive                ephemeral, heartbeat time (ISO 8601, UTC)
    /importer/position                 the importer's position: the highest applied task id
                                       (decimal; empty before any), JSON with its open
                                       gaps while there are some (``ImportPosition``)

A member's tunnel IP is part of its znode name so that a watcher learns the whole zone from
one ``get_children``: a change costs O(1) writes and one read per watcher, never O(members)
reads. Each apply also writes its net change (``previous``, ``position``: the position node's
versions before and after, ``zone``, ``added``, ``removed``) as the data of
``/tunnel_zone_members``, in the same multi-op, so a watcher follows the zone with one small
read per apply. An agent whose host is not a member watches
only its own ``tunnel_zone_member_hosts`` node (and the zone) and is not woken by the changes
among the others.

Security (``user:password@`` in the URL; see the README's threat model): three identities.
The **cluster** (``role="cluster"``: the importer, ``midonet-db-manage nsdb-init`` and
``nsdb-host-add``) alone creates the tree, and every node it creates carries
``[cluster: all, world: read]``: it alone writes the zone, the members, the position and the
leader election. ``/hosts`` grants nobody but the cluster ``create``: a host record exists
only once the cluster provisioned it (``provision_host``) with ``[cluster: all, <host's own
digest identity>: read|write|create|delete, world: read]``, so an **agent**
(``role="agent"``) writes its own record and its liveness child and nothing else, and nobody
can squat a host id the admin has not provisioned, nor one provisioned for someone else.
The **api** (``role="api"``, the default) creates nothing: it only reads, connects in the
background, and raises :class:`NSDBUnavailable` while ZooKeeper is unreachable. No role but
the cluster creates any part of the tree, so a process started first cannot leave nodes with
its own or open ACLs. Without credentials every node is open (development only) and an
agent creates its own record under the cluster's ``/hosts``.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Sequence

from kazoo.client import KazooClient, KazooState, TransactionRequest
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, WatchedEvent
from kazoo.retry import KazooRetry
from kazoo.security import ACL, OPEN_ACL_UNSAFE, make_acl, make_digest_acl

from midonet_membership.nsdb.base import (
    NSDB,
    AddMember,
    Host,
    HostStatus,
    ImportPosition,
    NSDBError,
    NSDBUnavailable,
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
from midonet_membership.nsdb.zookeeper_io import ConnectionThreadWatch, PollThreadingHandler
from midonet_membership.nsdb.zookeeper_wire import (
    DEFAULT_JUTE_MAXBUFFER,
    max_members_per_apply,
    member_node,
)

LOG = logging.getLogger(__name__)
ROLES = ("cluster", "agent", "api")
WORLD_READ = make_acl("world", "anyone", read=True)


def owner_acl(user: str, password: str) -> list[ACL]:
    """The nodes of a digest identity: it may do everything, the world only read."""
    return [make_digest_acl(user, password, all=True), WORLD_READ]


def host_acl(cluster_acl: ACL, user: str, password: str) -> list[ACL]:
    """A provisioned host record: the host's identity writes it and its children (liveness)
    but may neither delete it (that is ``/hosts``'s delete right) nor change its ACL."""
    return [cluster_acl, make_digest_acl(user, password, read=True, write=True, create=True,
                                         delete=True), WORLD_READ]


# What ZooKeeper answers to a write it refuses: the caller's to handle, not an outage.
_REFUSED = (NoNodeError, NoAuthError, NodeExistsError)


def reconnecting() -> KazooRetry:
    """How every client of ours reconnects: for ever, at least every 2 s. kazoo's default
    pause doubles up to an hour: after a one-minute ZooKeeper outage an agent came back
    38 s after ZooKeeper did (its tunnels' zone frozen meanwhile), after longer ones later
    still."""
    return KazooRetry(max_tries=-1, max_delay=2.0)


def parse_members(children: list[str]) -> dict[str, str]:
    return dict(child.split("@", 1) for child in children if "@" in child)


def zone_record(zone: TunnelZone) -> dict[str, str]:
    """The data of the ``tunnel_zone`` node, as JSON."""
    return {"id": zone.id, "name": zone.name, "type": zone.type}


class ZooKeeperNSDB(NSDB):
    """Options: ``role`` ("cluster", "agent" or "api": what this identity may do, see the
    module doc), ``timeout`` (seconds: the connect, an agent's wait for the tree and its
    host record, an API read), ``liveness_timeout`` (the session timeout, seconds),
    ``jute_maxbuffer`` (the servers' request limit, bytes: see ``max_ops_per_apply``)."""

    def __init__(self, url: str, role: str | None = None, timeout: float = 10.0,
                 liveness_timeout: float = 10.0,
                 jute_maxbuffer: int | str = DEFAULT_JUTE_MAXBUFFER,
                 **_ignored: object) -> None:
        role = role or "api"
        if role not in ROLES:
            raise NSDBError(f"unknown NSDB role {role!r}: use 'cluster', 'agent' or 'api'")
        parts = urllib.parse.urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2]
        self.root = parts.path.rstrip("/") or "/midonet"
        self.role = role
        self.timeout = timeout
        self._max_members = max_members_per_apply(url, jute_maxbuffer)
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        self.user = user
        auth = [("digest", f"{user}:{password}")] if user else None
        self.secure = bool(user)
        if user:  # secure by default: credentials always mean digest ACLs
            self._own_acl = owner_acl(user, password)
        else:
            self._own_acl = OPEN_ACL_UNSAFE
        # The session timeout is the liveness timeout: a dead agent's ephemeral liveness
        # node disappears when its session expires. ``timeout`` bounds the connect.
        # Recipes (the leader lock) create nodes with ``default_acl``: ours, not open.
        self.client = KazooClient(
            hosts=hosts, timeout=liveness_timeout, auth_data=auth,
            handler=PollThreadingHandler(), default_acl=self._own_acl,
            connection_retry=reconnecting())
        if role == "api":
            # Start without waiting: the memberships API must serve while ZooKeeper is down.
            self.client.start_async().wait(min(timeout, 2.0))
        else:
            try:
                self.client.start(timeout=timeout)
            except KazooTimeoutError:
                self.client.close()
                raise NSDBError(f"cannot reach ZooKeeper at {hosts} within {timeout:g} s"
                                ) from None
        self.zone_path = f"{self.root}/tunnel_zone"
        self.members_path = f"{self.root}/tunnel_zone_members"
        self.member_hosts_path = f"{self.root}/tunnel_zone_member_hosts"
        self.hosts_path = f"{self.root}/hosts"
        self.position_path = f"{self.root}/importer/position"
        self._watches: list[_ZooKeeperWatch] = []
        if role == "cluster":
            self.ensure_layout()

    def layout(self) -> list[str]:
        """The nodes of the tree that exist before any member or host: the cluster's."""
        return [self.root, self.members_path, self.member_hosts_path,
                f"{self.root}/importer", self.position_path, self.hosts_path]

    def ensure_layout(self) -> None:
        """Create the tree (idempotent) with the cluster's ACLs, and correct the ACLs of
        nodes that exist with others (a tree an older version or another identity made).

        Only the cluster calls it (at connect, and ``midonet-db-manage nsdb-init``).
        """
        if self.role != "cluster":
            raise NSDBError(f"the {self.role} identity does not create the NSDB tree: run "
                            "the cluster or `midonet-db-manage nsdb-init`")
        # Every node, ``/hosts`` included (nobody else creates host records), with ours.
        for path in self.layout():
            try:  # the root's parents (if any) are created with ``default_acl``: ours
                self.client.create(path, b"", acl=self._own_acl, makepath=path == self.root)
            except NodeExistsError:
                self._correct_acl(path, self._own_acl)
        self._add_missing_member_hosts()

    def _add_missing_member_hosts(self) -> None:
        """A tree written before member-host nodes existed gets them for its members."""
        flagged = set(self.client.get_children(self.member_hosts_path))
        for host in set(self.list_members()) - flagged:
            try:
                self.client.create(f"{self.member_hosts_path}/{host}", b"", acl=self._own_acl)
            except NodeExistsError:
                pass

    def _correct_acl(self, path: str, acl: list[ACL]) -> None:
        current, _stat = self.client.get_acls(path)
        if sorted(map(str, current)) == sorted(map(str, acl)):
            return
        try:
            self.client.set_acls(path, acl)
        except NoAuthError:
            raise NSDBError(f"{path} exists with ACLs {current} that this identity "
                            f"({self.user or 'anonymous'}) may not change: it was created "
                            "by another identity; remove the tree or use that one") from None
        LOG.warning("NSDB %s had ACLs %s; set to the cluster's", path, current)

    def provision_host(self, host_id: str, user: str, password: str) -> None:
        """Create (or re-key) host ``host_id``'s record, writable only by digest identity
        ``user:password`` (the agent's) and the cluster. An admin step: see nsdb-host-add."""
        if self.role != "cluster" or not self.secure:
            raise NSDBError("provisioning a host needs the cluster's credentials")
        path = f"{self.hosts_path}/{host_id}"
        acl = host_acl(self._own_acl[0], user, password)
        try:
            self.client.create(path, b"", acl=acl)
        except NodeExistsError:
            self.client.set_acls(path, acl)

    # -- position ------------------------------------------------------------------------------
    def max_ops_per_apply(self) -> int:
        return self._max_members

    def get_import_position(self) -> ImportPosition:
        self._require_connection()
        try:
            data, _stat = self._get(self.client.get_async(self.position_path))
        except NoNodeError:
            return ImportPosition()
        return ImportPosition.decode(data)

    def apply(self, ops: Sequence[Op], expected_position: ImportPosition | int | None,
              new_position: ImportPosition | int) -> None:
        expected = ImportPosition.of(expected_position)
        new = ImportPosition.of(new_position)
        for attempt in range(2):  # a race on member nodes is re-read and retried once
            position_reply = self.client.get_async(self.position_path)
            children_reply = self.client.get_children_async(self.members_path)
            member_hosts_reply = self.client.get_children_async(self.member_hosts_path)
            zone_reply = self.client.get_async(self.zone_path)
            data, stat = position_reply.get()
            position = ImportPosition.decode(data)
            if position != expected:
                raise PositionConflict(f"position is {position}, expected {expected}")
            members = parse_members(children_reply.get())
            member_hosts = set(member_hosts_reply.get())
            try:
                zone: dict[str, str] | None = json.loads(zone_reply.get()[0])
            except NoNodeError:
                zone = None
            tx = self.client.transaction()
            tx.check(self.position_path, stat.version)
            zone, added, removed = self._add_ops(tx, ops, zone, members, member_hosts)
            # The watchers' tokens are the position node's versions: every apply moves them,
            # also one that applies a late task below the high-water id.
            tx.set_data(self.members_path, json.dumps({
                "previous": stat.version, "position": stat.version + 1, "zone": zone,
                "added": added, "removed": removed}).encode())
            tx.set_data(self.position_path, new.encode().encode())
            results = tx.commit()
            failure = next((r for r in results if isinstance(r, Exception)
                            and not isinstance(r, RolledBackError)), None)
            if failure is None:
                return
            if isinstance(failure, BadVersionError):
                raise PositionConflict("the position changed while applying")
            if not isinstance(failure, (NodeExistsError, NoNodeError)) or attempt:
                raise failure
            LOG.warning("NSDB transaction raced on a member node (%r); retrying", failure)

    def _add_ops(self, tx: TransactionRequest, ops: Sequence[Op], zone: dict[str, str] | None,
                 members: dict[str, str], member_hosts: set[str]
                 ) -> tuple[dict[str, str] | None, dict[str, str], list[str]]:
        """Translate idempotent ops into create/set/delete against the current tree.

        ``member_hosts`` (the hosts' member nodes) is kept in step with ``members``.

        Returns the zone after the ops and the net change of the member set (added or
        re-addressed, removed), which the same transaction publishes for watchers.
        """
        before = dict(members)
        for op in ops:
            if isinstance(op, SetTunnelZone):
                data = zone_record(op.zone)
                if zone is None:
                    tx.create(self.zone_path, json.dumps(data).encode(), acl=self._own_acl)
                elif zone != data:
                    tx.set_data(self.zone_path, json.dumps(data).encode())
                zone = data
            elif isinstance(op, AddMember):
                if members.get(op.host_id) == op.ip_address:
                    continue
                if op.host_id in members:
                    tx.delete(f"{self.members_path}/"
                              f"{member_node(op.host_id, members[op.host_id])}")
                if op.host_id not in member_hosts:
                    tx.create(f"{self.member_hosts_path}/{op.host_id}", acl=self._own_acl)
                    member_hosts.add(op.host_id)
                tx.create(f"{self.members_path}/{member_node(op.host_id, op.ip_address)}",
                          json.dumps({"ip_address": op.ip_address}).encode(),
                          acl=self._own_acl)
                members[op.host_id] = op.ip_address
            elif isinstance(op, RemoveMember):
                if op.host_id in members:
                    tx.delete(f"{self.members_path}/"
                              f"{member_node(op.host_id, members.pop(op.host_id))}")
                if op.host_id in member_hosts:
                    tx.delete(f"{self.member_hosts_path}/{op.host_id}")
                    member_hosts.discard(op.host_id)
            else:
                raise TypeError(f"unknown NSDB op {op!r}")
        added = {h: ip for h, ip in members.items() if before.get(h) != ip}
        return zone, added, sorted(set(before) - set(members))

    # -- tunnel zone ---------------------------------------------------------------------------
    def get_tunnel_zone(self) -> TunnelZone | None:
        self._require_connection()
        try:
            data, _ = self._get(self.client.get_async(self.zone_path))
        except NoNodeError:
            return None
        return TunnelZone(**json.loads(data))

    def list_members(self) -> dict[str, str]:
        self._require_connection()
        try:
            return parse_members(self._get(self.client.get_children_async(self.members_path)))
        except NoNodeError:
            return {}

    def watch_tunnel_zone(self, callback: ZoneCallback, host_id: str | None = None) -> Watch:
        watch = _ZooKeeperWatch(self, callback, host_id)
        self._watches.append(watch)
        return watch

    # -- hosts ---------------------------------------------------------------------------------
    def register_host(self, host: Host) -> None:
        data = json.dumps(host_record(host)).encode()
        path = f"{self.hosts_path}/{host.id}"
        self._require_connection()
        try:  # the usual case, every report after the first: one round trip
            self._get(self.client.set_async(path, data), passes=_REFUSED)
            return
        except NoNodeError:
            pass
        except NoAuthError:
            raise self._wrong_identity(host.id) from None
        self._create_host_record(host.id, path, data)

    def _create_host_record(self, host_id: str, path: str, data: bytes) -> None:
        """A first registration. Nobody but the cluster creates the tree: an agent started
        first waits for ``/hosts``. A secured agent writes the record the cluster
        provisioned for it, and waits for the admin to provision it."""
        not_provisioned = (f"host {host_id} is not provisioned in the NSDB: an admin runs "
                           f"`midonet-db-manage nsdb-host-add {host_id}` (cluster "
                           "credentials) and gives this agent the [nsdb_agent] credentials "
                           "it prints")
        self._wait_for(self.hosts_path, "start the cluster or run `midonet-db-manage "
                                        "nsdb-init` (they create the NSDB tree) before the "
                                        "agents")
        try:
            if self.secure:
                self._wait_for(path, not_provisioned)
                self.client.set(path, data)
                return
            try:
                self.client.create(path, data, acl=self._own_acl)
            except NodeExistsError:
                self.client.set(path, data)
        except NoNodeError:
            raise NSDBError(not_provisioned) from None
        except NoAuthError:
            raise self._wrong_identity(host_id) from None

    def _wrong_identity(self, host_id: str) -> NSDBError:
        return NSDBError(
            f"the NSDB refuses identity {self.user or 'anonymous'!r} the record of host "
            f"{host_id}: it was provisioned for another identity (check [nsdb_agent] "
            "username/password and the host id file)")

    def _wait_for(self, path: str, hint: str) -> None:
        """Block up to ``timeout`` seconds until ``path`` exists (an agent started first)."""
        appeared = threading.Event()
        deadline = time.monotonic() + self.timeout
        while not self.client.exists(path, watch=lambda _event: appeared.set()):
            if not appeared.wait(max(0.0, deadline - time.monotonic())):
                raise NSDBError(f"{path} does not exist after {self.timeout:g} s: {hint}")
            appeared.clear()

    def heartbeat(self, host_id: str) -> None:
        path = f"{self.hosts_path}/{host_id}/alive"
        now = datetime.datetime.now(datetime.UTC).isoformat().encode()
        self._require_connection()
        try:
            self._get(self.client.set_async(path, now), passes=_REFUSED)
        except NoNodeError:
            self._get(self.client.create_async(path, now, acl=self._own_acl, ephemeral=True),
                      passes=_REFUSED)

    def list_hosts(self) -> list[HostStatus]:
        self._require_connection()
        try:
            ids = sorted(self._get(self.client.get_children_async(self.hosts_path)))
        except NoNodeError:
            return []
        return self._hosts(ids)

    def get_host(self, host_id: str) -> HostStatus | None:
        """Two reads, not the whole tree: agents read their peers' VTEP MACs with it."""
        self._require_connection()
        return next(iter(self._hosts([host_id])), None)

    def _require_connection(self) -> None:
        """The API and agents fail at once while disconnected: kazoo would queue the request
        until it reconnects, and a request (or a metrics scrape) would hang meanwhile, or an
        agent's heartbeat thread, which also reconciles the data plane and must keep doing
        so, and must stop when told. The cluster keeps kazoo's waiting."""
        if self.role != "cluster" and not self.client.connected:
            raise NSDBUnavailable("ZooKeeper is unreachable (reconnecting)")

    def _get(self, reply, passes: tuple[type[Exception], ...] = (NoNodeError,)):
        """A reply; for the API and agents, NSDBUnavailable when the connection goes
        (``passes`` pass)."""
        if self.role == "cluster":
            return reply.get()
        try:
            return reply.get(timeout=self.timeout)
        except passes:
            raise
        except (KazooException, KazooTimeoutError) as exc:
            raise NSDBUnavailable(f"ZooKeeper did not answer: {type(exc).__name__}") from None

    def _hosts(self, ids: list[str]) -> list[HostStatus]:
        records = [self.client.get_async(f"{self.hosts_path}/{i}") for i in ids]
        beats = [self.client.get_async(f"{self.hosts_path}/{i}/alive") for i in ids]
        hosts = []
        for record, beat in zip(records, beats, strict=True):
            try:
                raw = self._get(record)[0]
            except NoNodeError:
                continue
            if not raw:  # provisioned, its agent has not registered yet
                continue
            data = json.loads(raw)
            try:
                beat_at = datetime.datetime.fromisoformat(self._get(beat)[0].decode())
                alive = True
            except NoNodeError:
                beat_at, alive = None, False
            hosts.append(HostStatus(host_from_record(data), alive=alive, heartbeat_at=beat_at))
        return hosts

    def close(self) -> None:
        for watch in list(self._watches):
            watch.cancel()
        self.client.stop()
        self.client.close()


_UNKNOWN = object()  # a watch's position before its first read
# A read that failed because the connection went (or the client closed; ConnectionClosedError
# is a SessionExpiredError): the watch's CONNECTED listener re-arms and re-reads.
_CONNECTION_GONE = (ConnectionLoss, SessionExpiredError)
# The pauses between re-reads after a read failed for another reason (seconds, doubling).
RETRY_MIN, RETRY_MAX = 0.05, 1.0


class _ZooKeeperWatch(Watch):
    """Follows the zone through one watch on the members node and one re-read thread.

    Every apply publishes its net change as the data of the members node (``previous``,
    ``position``, ``zone``, ``added``, ``removed``). A watcher whose last position is the
    delta's ``previous`` applies it in O(change), zone and members together, so it never
    pairs a new zone with old members. Otherwise (first call, a coalesced burst, a
    reconnect) the re-read thread loads the whole tree. Deliveries hold one lock and always
    send the newest state, so callbacks are never concurrent and never go back in time.

    With hundreds of agents woken by one change, every thread hand-off counts: kazoo's
    ``DataWatch`` takes three per event (the event to the callback worker, whose synchronous
    read goes to the connection thread and its reply back). Here the watch event re-arms
    itself with an asynchronous read on the connection thread (``ConnectionThreadWatch``)
    and the reply is applied on kazoo's completion worker: one hand-off, and the data plane
    never runs on the connection thread. Every (re)connection re-arms the watch (kazoo drops
    watches on a connection loss) and forces a re-read for what was missed meanwhile; a
    reply for a position already applied is ignored.

    Scoped to a host (an agent's watch), it reads the zone node and the host's member-host
    node only, each change of either waking the re-read thread, and follows the members from
    the moment the host is one (once following, always following: a removed member may well
    come back).

    A read that fails for another reason than the connection (a node whose ACL no longer
    lets us read it, a zone record we cannot parse) leaves no watch behind, and nothing
    would ever read again: the zone would freeze while the agent looks active. Such a
    failure is logged, ``failure()`` reports it (the agent shows ``error``), and the re-read
    thread retries with a growing pause until a re-read, which also re-arms the watch,
    succeeds.
    """

    def __init__(self, store: ZooKeeperNSDB, callback: ZoneCallback,
                 host_id: str | None = None) -> None:
        self.store = store
        self.callback = callback
        self.host_id = host_id
        self._rereads: queue.Queue[bool] = queue.Queue()  # False: stop
        self._cancelled = False
        self._stopped = threading.Event()  # cuts a pause between retries short
        self._failure: str | None = None  # why the last read failed, until a re-read works
        self._last: tuple[TunnelZone | None, dict[str, str]] | None = None
        self._zone: TunnelZone | None = None
        self._members: dict[str, str] = {}
        self._position: object = _UNKNOWN
        self._generation = 0  # bumped by every delta, so a slower re-read cannot undo it
        self._lock = threading.Lock()  # the state above
        self._delivering = threading.Lock()  # one callback at a time
        self._members_changed = ConnectionThreadWatch(self._on_members_event)  # one identity
        self._pending_changed = ConnectionThreadWatch(self._on_pending_event)
        # Scoped to a host, the first re-read tells whether it is a member: a member's first
        # snapshot is then the whole zone, never "pending" from the zone alone, which would
        # tear down the tunnels a restarted agent's host still uses.
        self._following = host_id is None  # whether the members node is watched
        store.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, daemon=True, name="zk-zone-reread")
        self._thread.start()
        self._rereads.put(True)

    def _arm(self) -> None:
        """Read the members' delta and leave a watch for the next one. Never blocks."""
        if self._cancelled:
            return
        self.store.client.get_async(self.store.members_path, watch=self._members_changed
                                    ).rawlink(self._on_members_reply)

    def _on_members_event(self, event: WatchedEvent) -> None:
        """On the connection thread: a change (or the node's creation) re-arms at once. A
        connection loss (``NONE``) waits for the reconnection, which re-arms."""
        if event.type != EventType.NONE and not self._cancelled:
            self._arm()

    def _on_members_reply(self, reply) -> None:
        try:
            data, _stat = reply.get(block=False)
        except NoNodeError:  # before the cluster made the tree: wait for the node
            self.store.client.exists_async(self.store.members_path, watch=self._members_changed
                                           ).rawlink(self._on_members_exists)
            return
        except Exception as exc:  # no watch is left: the re-read leaves it again
            if self._failed("read the members", exc):
                self._rereads.put(True)
            return
        self._on_members(data)

    def _on_members_exists(self, reply) -> None:
        try:
            created = reply.get(block=False) is not None
        except Exception as exc:
            if self._failed("watch for the members node", exc):
                self._rereads.put(True)
            return
        if created:  # created between the read and the check: its watch may have been missed
            self._arm()

    def _on_pending_event(self, event: WatchedEvent) -> None:
        """On the connection thread: the zone or the host's member-host node changed."""
        if event.type != EventType.NONE and not self._cancelled:
            self._rereads.put(True)

    def _on_members(self, data: bytes | None) -> None:
        if self._cancelled:
            return
        try:
            delta = json.loads(data) if data else None
        except ValueError:
            delta = None
        with self._lock:
            known = isinstance(delta, dict) and "zone" in delta
            if known and delta.get("position") == self._position:
                return  # a second reply for what was applied already (a re-armed watch)
            applies = known and delta.get("previous") == self._position
            if applies:
                zone = delta["zone"]
                self._zone = TunnelZone(**zone) if zone else None
                self._members.update(delta["added"])
                for host in delta["removed"]:
                    self._members.pop(host, None)
                self._position = delta["position"]
                self._generation += 1
        if applies:
            self._deliver()
        else:
            self._rereads.put(True)

    def _on_state(self, state: str) -> None:
        """On the connection thread: kazoo dropped the watch with the connection."""
        if state == KazooState.CONNECTED and not self._cancelled:
            if self._following:
                self._arm()
            self._rereads.put(True)  # events may have been missed meanwhile

    def failure(self) -> str | None:
        if not self._thread.is_alive() and not self._cancelled:
            return self._failure or "the re-read thread ended"
        return self._failure

    def _failed(self, what: str, exc: Exception) -> bool:
        """Record a failed read; True when it is the re-read thread's to retry. A lost
        connection is not: kazoo reconnects and ``_on_state`` re-arms and re-reads."""
        if isinstance(exc, _CONNECTION_GONE):
            LOG.debug("tunnel zone watch cannot %s (%r); waiting for the connection", what, exc)
            return False
        if self._failure is None:
            LOG.error("tunnel zone watch cannot %s (%r); retrying until it works", what, exc)
        self._failure = f"cannot {what}: {type(exc).__name__}" + (f" ({exc})" if str(exc)
                                                                  else "")
        return True

    def _reread(self) -> bool:
        """Load the whole zone and leave the members watch (a failed read left none);
        False when a delta arrived meanwhile (read again)."""
        if not self._following:
            if not self._host_is_member():
                return self._reread_zone_alone()
            self._following = True
        with self._lock:
            generation = self._generation
        client = self.store.client
        # One client's requests are served in order: children and zone are at least as new
        # as the position read first, and replaying a later delta on top is idempotent.
        # The watch is the one ``_arm`` leaves (kazoo and the server keep it once).
        data_reply = client.get_async(self.store.members_path, watch=self._members_changed)
        children_reply = client.get_children_async(self.store.members_path)
        zone_reply = client.get_async(self.store.zone_path)
        try:
            data, children = data_reply.get()[0], children_reply.get()
        except NoNodeError:  # the cluster has not created the tree yet: watch for it
            if client.exists(self.store.members_path, watch=self._members_changed):
                return False  # created meanwhile: read it
            data, children = b"", []
        try:
            zone: TunnelZone | None = TunnelZone(**json.loads(zone_reply.get()[0]))
        except NoNodeError:
            zone = None
        try:
            position = json.loads(data)["position"] if data else None
        except (ValueError, KeyError, TypeError):
            position = None
        with self._lock:
            if self._generation != generation:
                return False
            self._zone, self._members = zone, parse_members(children)
            self._position = position
            return True

    def _host_is_member(self) -> bool:
        """Whether the watch's host is a member now; a watch re-reads when that changes."""
        path = f"{self.store.member_hosts_path}/{self.host_id}"
        return self.store.client.exists(path, watch=self._pending_changed) is not None

    def _reread_zone_alone(self) -> bool:
        """While the host is not a member: the zone, with a watch that re-reads on a change.
        False when the zone was created between two reads (read again)."""
        client = self.store.client
        try:
            data = client.get(self.store.zone_path, watch=self._pending_changed)[0]
        except NoNodeError:  # no watch is left on a node that does not exist: watch for it
            if client.exists(self.store.zone_path, watch=self._pending_changed):
                return False
            data = b""
        zone = TunnelZone(**json.loads(data)) if data else None
        with self._lock:
            self._zone = zone
        return True

    def _run(self) -> None:
        pause = 0.0
        while self._rereads.get():
            while not self._rereads.empty():  # coalesce a burst into one re-read
                if not self._rereads.get_nowait():
                    return
            if self._cancelled:
                return
            try:
                fresh = self._reread()
            except Exception as exc:
                if self._failed("re-read the zone", exc):
                    pause = min(RETRY_MAX, max(pause * 2, RETRY_MIN))
                    if self._stopped.wait(pause):
                        return
                    self._rereads.put(True)
                continue
            pause = 0.0
            if self._failure is not None:
                LOG.warning("tunnel zone watch works again")
                self._failure = None
            if fresh:
                self._deliver()
            else:
                self._rereads.put(True)

    def _deliver(self) -> None:
        """Hand the newest state to the callback unless it already has it."""
        with self._delivering:
            if self._cancelled:
                return
            with self._lock:
                snapshot = (self._zone, dict(members_seen_by(self.host_id, self._members)))
            if snapshot == self._last:
                return
            self._last = snapshot
            try:
                self.callback(*snapshot)
            except Exception:  # a failing callback must not end the watch
                LOG.exception("tunnel zone watch callback failed")

    def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self.store.client.remove_listener(self._on_state)
        try:
            self.store._watches.remove(self)
        except ValueError:
            pass
        self._stopped.set()
        self._rereads.put(False)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

