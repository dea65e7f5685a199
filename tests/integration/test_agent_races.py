"""The heartbeat's peer-MAC refresh never overrides a newer zone (DESIGN §3, invariant 5).

The heartbeat thread reads the VTEP MACs peers published late, one NSDB read (a ZooKeeper
round trip) per peer, while the watch's thread may apply a newer zone. The refresh once
wrote the zone state it had started from back over the newer one and reconciled it: a
removed host got its tunnels back, or a removed peer came back, until the next zone change.

Deterministic: the agent's NSDB holds the heartbeat thread's next host read until the test
has changed the zone and seen the watch apply it; then the read completes and the test
watches the periodic passes that follow it.
"""

from __future__ import annotations

import threading
import time
import uuid

from midonet_membership import nsdb
from midonet_membership.agent import ACTIVE, PENDING, Agent
from midonet_membership.nsdb.base import (
    AddMember,
    Host,
    HostStatus,
    RemoveMember,
    SetTunnelZone,
)
from tests.integration.test_agents import WAIT, ZONE, HistoryDataPlane, _is

MAC_B = "02:00:00:00:00:0b"


class MacDataPlane(HistoryDataPlane):
    """Has a VTEP MAC, as the kernel data plane does: the agent reads its peers' MACs."""

    def vtep_mac(self, host_id: str) -> str | None:
        return "02:00:00:00:00:01"


class HeldPeerReads:
    """An agent's NSDB whose next host read on the heartbeat thread (the periodic MAC
    refresh) waits for ``release`` after ``hold()``; the watch's reads are never held."""

    def __init__(self, store: nsdb.NSDB) -> None:
        self._store = store
        self._armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.release.clear()
        self.entered.clear()
        self._armed.set()

    def get_host(self, host_id: str) -> HostStatus | None:
        if self._armed.is_set() and threading.current_thread().name.startswith("heartbeat"):
            self._armed.clear()
            self.entered.set()
            self.release.wait(WAIT)
        return self._store.get_host(host_id)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _start(nsdb_url: str, host_id: str) -> tuple[Agent, HeldPeerReads, MacDataPlane]:
    store = HeldPeerReads(nsdb.connect(nsdb_url, role="agent"))
    dataplane = MacDataPlane()
    agent = Agent(host_id, store, dataplane, hostname=f"host-{host_id[:4]}",
                  heartbeat_interval=0.05, reconcile_interval=0.1).start()
    return agent, store, dataplane


def _two_passes_after(dataplane: MacDataPlane, applied: int) -> None:
    """The held read's pass applies once, the next periodic pass once more."""
    _until(lambda: len(dataplane.states) >= applied + 2, "two periodic passes")


def test_a_host_removed_while_its_peer_macs_are_read_gets_no_tunnels_back(nsdb_url):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())  # B's agent never publishes a MAC
    cluster = nsdb.connect(nsdb_url, role="cluster")
    cluster.apply([SetTunnelZone(ZONE), AddMember(a, "198.51.100.1"),
                   AddMember(b, "198.51.100.2")], None, 1)
    agent, store, dataplane = _start(nsdb_url, a)
    try:
        agent.wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        store.hold()
        assert store.entered.wait(WAIT), "the heartbeat never read B's record"
        cluster.apply([RemoveMember(a)], 1, 2)  # the admin deletes A's membership
        agent.wait_for(_is(PENDING), WAIT)  # the watch applied it meanwhile
        applied = len(dataplane.states)
        store.release.set()
        _two_passes_after(dataplane, applied)
        assert [s for s in dataplane.states[applied:] if s.status != PENDING or s.peers] == []
        assert agent.state.status == PENDING and agent.observed.state == PENDING
    finally:
        store.release.set()
        agent.stop()
        cluster.close()


def test_a_peer_removed_while_peer_macs_are_read_does_not_come_back(nsdb_url):
    a, b, c = sorted(str(uuid.uuid4()) for _ in range(3))  # B and C publish no MAC yet
    cluster = nsdb.connect(nsdb_url, role="cluster")
    cluster.apply([SetTunnelZone(ZONE), AddMember(a, "198.51.100.1"),
                   AddMember(b, "198.51.100.2"), AddMember(c, "198.51.100.3")], None, 1)
    agent, store, dataplane = _start(nsdb_url, a)
    try:
        agent.wait_for(_is(ACTIVE, ("198.51.100.2", "198.51.100.3")), WAIT)
        store.hold()
        assert store.entered.wait(WAIT), "the heartbeat never read a peer's record"
        cluster.register_host(Host(b, "host-b", vtep_mac=MAC_B))  # B publishes it now
        cluster.apply([RemoveMember(c)], 1, 2)
        agent.wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        applied = len(dataplane.states)
        store.release.set()
        _two_passes_after(dataplane, applied)
        assert [s for s in dataplane.states[applied:]
                if s.peers != ((b, "198.51.100.2"),)] == []
        # enrichment still works: B's MAC, read by whichever thread, reaches the data plane
        assert agent.wait_for(lambda s: s.peer_macs == ((b, MAC_B),), WAIT).peers == (
            (b, "198.51.100.2"),)
        assert all(c not in dict(s.peer_macs) for s in dataplane.states[applied:])
    finally:
        store.release.set()
        agent.stop()
        cluster.close()
