"""One MidoNet agent: registers its host, proves it is alive, and follows the DEFAULT zone.

The agent never decides membership: it only reads the zone the cluster maintains. While its
host is not a member it is ``pending`` and has no tunnels; once the admin's membership reaches
the zone it is ``active`` with a tunnel to every other member.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from operator import itemgetter

from midonet_membership.agent.dataplane import DataPlane
from midonet_membership.nsdb.base import NSDB, Host, Interface, TunnelZone, Watch

LOG = logging.getLogger(__name__)

PENDING, ACTIVE = "pending", "active"
REQUIREMENTS = {
    "vxlan": "the vxlan kernel module and UDP port 4789 open between tunnel endpoints",
    "gre": "the ip_gre kernel module and IP protocol 47 allowed between tunnel endpoints",
}


@dataclasses.dataclass(frozen=True)
class AgentState:
    host_id: str
    status: str  # PENDING or ACTIVE
    tunnel_type: str | None = None
    local_ip: str | None = None
    peers: tuple[tuple[str, str], ...] = ()  # (host id, tunnel ip), sorted

    @property
    def requires(self) -> str | None:
        return REQUIREMENTS.get(self.tunnel_type or "") if self.status == ACTIVE else None

    def describe(self) -> str:
        if self.status == PENDING:
            return f"host {self.host_id} pending: not a member of the DEFAULT tunnel zone"
        peers = ", ".join(ip for _, ip in self.peers) or "no peers yet"
        return (f"host {self.host_id} active: {self.tunnel_type} tunnels from {self.local_ip} "
                f"to {peers} (needs {self.requires})")

    def describe_change(self, previous: AgentState) -> str:
        """The whole state when the status or endpoint changed, otherwise the peers that did:
        with hundreds of members, a log line per change must not list them all."""
        if (self.status != ACTIVE or previous.status != ACTIVE
                or (self.tunnel_type, self.local_ip) != (previous.tunnel_type, previous.local_ip)):
            return self.describe()
        now, before = set(self.peers), set(previous.peers)
        changes = [f"+{ip}" for _, ip in sorted(now - before, key=lambda p: p[1])]
        changes += [f"-{ip}" for _, ip in sorted(before - now, key=lambda p: p[1])]
        return (f"host {self.host_id} active: tunnel peers {' '.join(changes)} "
                f"({len(self.peers)} in all)")

    def as_dict(self) -> dict:
        return {"host_id": self.host_id, "status": self.status,
                "tunnel_type": self.tunnel_type, "local_ip": self.local_ip,
                "peers": [{"host_id": h, "ip_address": ip} for h, ip in self.peers],
                "requires": self.requires}


def state_from_zone(host_id: str, zone: TunnelZone | None,
                    members: dict[str, str]) -> AgentState:
    if zone is None or host_id not in members:
        return AgentState(host_id, PENDING)
    # Every member's agent runs this on every change: copying the dict and sorting on the
    # (unique) host id alone stays in C, 8-11 us with 150-200 members instead of 22-30 us
    # for filtering in a generator and comparing (host, ip) tuples.
    others = dict(members)
    local_ip = others.pop(host_id)
    return AgentState(host_id, ACTIVE, zone.type, local_ip,
                      tuple(sorted(others.items(), key=itemgetter(0))))


class Agent:
    """Registers the host, keeps its liveness, and reconciles the data plane with the zone.

    Usage::

        agent = Agent(host_id, nsdb.connect(url, role="agent"), RecordingDataPlane()).start()
        agent.wait_for(lambda s: s.status == ACTIVE, timeout=5)
        agent.stop()

    ``state`` is what the data plane was last given successfully; it changes only on a zone
    event (a watch, never a poll) or on a retry after a data plane failure.
    """

    def __init__(self, host_id: str, nsdb: NSDB, dataplane: DataPlane,
                 interfaces: tuple[Interface, ...] = (), hostname: str | None = None,
                 heartbeat_interval: float = 1.0, state_file: str | None = None,
                 discover: Callable[[], tuple[Interface, ...]] | None = None,
                 interface_scan_interval: float = 10.0) -> None:
        """``discover``: reads the host's interfaces; given, it replaces ``interfaces`` and
        runs again every ``interface_scan_interval`` seconds."""
        self._discover = discover
        if discover is not None:
            interfaces = discover()
        self.host = Host(host_id, hostname or socket.gethostname(), interfaces)
        self.nsdb = nsdb
        self.dataplane = dataplane
        self.heartbeat_interval = heartbeat_interval
        self.interface_scan_interval = interface_scan_interval
        self.state_file = state_file
        self.state = AgentState(host_id, PENDING)  # what the data plane was last given
        self._desired = self.state  # what the zone last said
        self._in_sync = False
        self._reconciling = threading.Lock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                           name=f"heartbeat-{host_id[:8]}")

    @property
    def host_id(self) -> str:
        return self.host.id

    def start(self) -> Agent:
        self._write_state()  # an operator sees "pending" from the moment the host is listed
        self.nsdb.register_host(self.host)
        self.nsdb.heartbeat(self.host_id)
        self._heartbeat.start()
        self._reconcile()  # no tunnels until the zone says otherwise
        self._watch = self.nsdb.watch_tunnel_zone(self._on_zone, host_id=self.host_id)
        LOG.info("agent for host %s (%s) registered; waiting for membership", self.host_id,
                 self.host.hostname)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=5)
        self.nsdb.close()  # ends ZooKeeper liveness at once

    def wait_for(self, predicate: Callable[[AgentState], bool], timeout: float) -> AgentState:
        """Block until the state satisfies ``predicate``; raises TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.state), timeout):
                raise TimeoutError(f"agent {self.host_id}: state is {self.state}")
            return self.state

    def _on_zone(self, zone: TunnelZone | None, members: dict[str, str]) -> None:
        self._desired = state_from_zone(self.host_id, zone, members)
        self._reconcile()

    def _reconcile(self) -> None:
        """Give the data plane the state the zone asks for, unless it already has it.

        Never raises: it runs on the NSDB watch's thread, which must survive a data plane
        failure. A failed apply leaves ``state`` as it was and is retried by the heartbeat
        loop until it succeeds.
        """
        with self._reconciling:
            desired = self._desired
            if self._in_sync and desired == self.state:
                return
            try:
                self.dataplane.apply(desired)
            except Exception:
                self._in_sync = False
                LOG.exception("data plane could not apply (%s); will retry", desired.describe())
                return
            self._in_sync = True
            if desired == self.state:
                return
            if LOG.isEnabledFor(logging.INFO):
                LOG.info("%s", desired.describe_change(self.state))
            with self._changed:
                self.state = desired
                self._changed.notify_all()
            self._write_state()

    def _beat(self) -> None:
        next_scan = (time.monotonic() + self.interface_scan_interval if self._discover
                     else math.inf)
        while not self._stop.wait(min(self.heartbeat_interval,
                                      max(0.0, next_scan - time.monotonic()))):
            if time.monotonic() >= next_scan:
                self._rescan_interfaces()
                next_scan = time.monotonic() + self.interface_scan_interval
            try:
                self.nsdb.heartbeat(self.host_id)
            except Exception as exc:  # the NSDB may be briefly away; keep trying
                LOG.warning("heartbeat failed: %s", exc)
            if not self._in_sync:
                self._reconcile()

    def _rescan_interfaces(self) -> None:
        """Register the host again when its interfaces changed (an address was added)."""
        try:
            found = self._discover()
            if found == self.host.interfaces:
                return
            host = dataclasses.replace(self.host, interfaces=found)
            self.nsdb.register_host(host)
        except Exception as exc:  # netlink or the NSDB briefly away: the next scan retries
            LOG.warning("interface scan failed: %s", exc)
            return
        self.host = host
        LOG.info("host %s interfaces changed: %s", self.host_id, ", ".join(
            f"{i.name} {' '.join(i.ip_addresses) or '(no IPv4)'}" for i in found) or "none")

    def _write_state(self) -> None:
        """Leave the current state where an operator (or a test) can read it."""
        if not self.state_file:
            return
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state.as_dict(), f)
        os.replace(tmp, self.state_file)
