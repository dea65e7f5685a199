"""The ZooKeeper watch reports a read it cannot make and retries it until it works.

A read that fails while the session stays connected leaves no ZooKeeper watch behind: the
zone froze while the agent still looked active, and nothing said so. The failures here are
real ones, from the server: the cluster identity takes the world's read right off the
members node (an operator's mistake), so the agent's identity gets NoAuth; putting the ACL
back ends it. (ZooKeeper does not deliver a watch event to a session that may not read the
node, so where the test needs the event it holds the agent's read until the ACL changed.)
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kazoo.security import make_digest_acl

from midonet_membership import nsdb
from midonet_membership.agent import ACTIVE, PENDING, Agent
from midonet_membership.agent.agent import ERROR, NOT_A_MEMBER
from midonet_membership.nsdb.base import AddMember, SetTunnelZone
from midonet_membership.nsdb.zookeeper import RETRY_MAX, owner_acl
from tests.fixtures.zookeeper import ZooKeeperNode, _free_port, _require_zookeeper
from tests.integration.test_agents import WAIT, ZONE, HistoryDataPlane, _is, _secured

# Longer than kazoo's default reconnect pauses add up to before one of 25.6 s: with them an
# agent tried again 21 s after ZooKeeper was back (38 s after a one-minute outage).
LONG_OUTAGE = 30.0


def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _unreadable(cluster: nsdb.NSDB, node: str = "members_path") -> None:
    cluster.client.set_acls(getattr(cluster, node),
                            [make_digest_acl("cluster", "cluster-secret", all=True)])


def _readable(cluster: nsdb.NSDB, node: str = "members_path") -> None:
    cluster.client.set_acls(getattr(cluster, node), owner_acl("cluster", "cluster-secret"))


def _agent(url: str, host_id: str) -> Agent:
    return Agent(host_id, nsdb.connect(url, role="agent"), HistoryDataPlane(),
                 hostname="host-acl", heartbeat_interval=0.05, reconcile_interval=0.1).start()


def _agent_denied(zookeeper_server, member: bool, node: str = "members_path"
                  ) -> tuple[nsdb.NSDB, str, Agent]:
    """A provisioned agent started after the cluster took the read right of ``node`` (the
    members or the zone) away, its host a member (``member``) or not, beside one other
    member: (cluster, host, agent)."""
    url = _secured(zookeeper_server)
    cluster = nsdb.connect(url("cluster"), role="cluster")
    host_id = str(uuid.uuid4())
    cluster.provision_host(host_id, "agent", "agent-secret")
    cluster.apply([SetTunnelZone(ZONE), AddMember("h2", "198.51.100.2"),
                   *([AddMember(host_id, "198.51.100.1")] if member else [])], None, 1)
    _unreadable(cluster, node)
    return cluster, host_id, _agent(url("agent"), host_id)


def test_a_failed_members_read_is_reported_and_retried_with_a_pause(zookeeper_server):
    url = _secured(zookeeper_server)
    cluster = nsdb.connect(url("cluster"), role="cluster")
    cluster.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
    reader = nsdb.connect(url("agent"), role="agent")
    client = reader.client
    get_async, get_children_async = client.get_async, client.get_children_async
    hold, held, go = threading.Event(), threading.Event(), threading.Event()
    rereads: list[float] = []  # the re-read thread's attempts

    def held_get_async(path, watch=None):
        """The watch's next read of the members (after a change) waits for ``go``."""
        if hold.is_set() and path == reader.members_path and watch is not None:
            hold.clear()
            held.set()
            go.wait(WAIT)
        return get_async(path, watch=watch)

    def counted_get_children_async(path, *args, **kwargs):
        if threading.current_thread().name == "zk-zone-reread":
            rereads.append(time.monotonic())
        return get_children_async(path, *args, **kwargs)

    client.get_async, client.get_children_async = held_get_async, counted_get_children_async
    seen: list[dict[str, str]] = []
    watch = reader.watch_tunnel_zone(lambda _zone, members: seen.append(dict(members)))
    try:
        _until(lambda: seen and seen[-1] == {"h1": "198.51.100.1"}, WAIT, "the first snapshot")
        assert watch.failure() is None
        hold.set()
        cluster.apply([AddMember("h2", "198.51.100.2")], 1, 2)  # the watch fires
        assert held.wait(WAIT), "the watch never read the change"
        _unreadable(cluster)
        go.set()  # its read fails now (NoAuth), and leaves no watch
        _until(lambda: watch.failure() is not None, WAIT, "the failure reported")
        assert "NoAuthError" in watch.failure()
        failed_at = len(rereads)
        time.sleep(1.5)  # it keeps trying, with a pause that grows to RETRY_MAX
        assert 1 <= len(rereads) - failed_at <= 8, rereads
        assert watch.failure() is not None and seen[-1] == {"h1": "198.51.100.1"}
        _readable(cluster)
        _until(lambda: seen[-1] == {"h1": "198.51.100.1", "h2": "198.51.100.2"},
               RETRY_MAX + WAIT, "the change made while it failed")
        assert watch.failure() is None
        cluster.apply([AddMember("h3", "198.51.100.3")], 2, 3)  # the watch is armed again
        _until(lambda: "h3" in seen[-1], WAIT, "the next change")
    finally:
        go.set()
        watch.cancel()
        reader.close()
        cluster.close()


def test_an_agent_shows_error_while_it_cannot_read_the_members(zookeeper_server):
    """The agent starts a member but may not read the members: its re-read fails."""
    cluster, host_id, agent = _agent_denied(zookeeper_server, member=True)
    try:
        observed = agent.wait_for_observed(lambda o: o.state == ERROR, WAIT)
        assert "NSDB watch failed" in observed.reason and "NoAuthError" in observed.reason
        _until(lambda: (cluster.get_host(host_id).host.observed or observed).state == ERROR,
               WAIT, "the error in the host record")
        assert agent.dataplane.states == []  # nothing applied from a zone it could not read
        _readable(cluster)
        agent.wait_for(_is(ACTIVE, ("198.51.100.2",)), RETRY_MAX + WAIT)
        agent.wait_for_observed(lambda o: o.state == ACTIVE, WAIT)
        assert [s.status for s in agent.dataplane.states] == [ACTIVE]
    finally:
        agent.stop()
        cluster.close()


def test_a_member_agent_applies_the_whole_zone_first(zookeeper_url):
    """A (re)started member's first snapshot is the whole zone: never "pending" from the
    zone alone, which would tear down the tunnels its host still uses."""
    cluster = nsdb.connect(zookeeper_url, role="cluster")
    host_id = str(uuid.uuid4())
    cluster.apply([SetTunnelZone(ZONE), AddMember(host_id, "198.51.100.1"),
                   AddMember("h2", "198.51.100.2")], None, 1)
    agent = _agent(zookeeper_url, host_id)
    try:
        agent.wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        assert [s.status for s in agent.dataplane.states] == [ACTIVE]
    finally:
        agent.stop()
        cluster.close()


def test_a_pending_agent_is_not_alarmed_by_members_it_does_not_read(zookeeper_server):
    """A non-member's watch reads only the zone and its own member-host node."""
    cluster, _, agent = _agent_denied(zookeeper_server, member=False)
    try:
        agent.wait_for_observed(lambda o: o.reason == NOT_A_MEMBER, WAIT)
        time.sleep(0.3)  # heartbeats meanwhile
        assert (agent.observed.state, agent.state.status) == (PENDING, PENDING)
    finally:
        agent.stop()
        cluster.close()


def test_a_pending_agent_shows_error_while_it_cannot_read_the_zone(zookeeper_server):
    """A non-member reads the zone and its member-host node; a refused read is reported and
    retried, and once it works the agent follows its membership as usual."""
    cluster, host_id, agent = _agent_denied(zookeeper_server, member=False, node="zone_path")
    try:
        observed = agent.wait_for_observed(lambda o: o.state == ERROR, WAIT)
        assert "NSDB watch failed" in observed.reason and "NoAuthError" in observed.reason
        _readable(cluster, "zone_path")
        agent.wait_for_observed(lambda o: o.reason == NOT_A_MEMBER, RETRY_MAX + WAIT)
        cluster.apply([AddMember(host_id, "198.51.100.1")], 1, 2)  # the watch is armed again
        agent.wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        assert [s.status for s in agent.dataplane.states] == [PENDING, ACTIVE]
    finally:
        agent.stop()
        cluster.close()


def test_a_pending_agent_reports_a_zone_record_it_cannot_parse(zookeeper_url):
    cluster = nsdb.connect(zookeeper_url, role="cluster")
    cluster.apply([SetTunnelZone(ZONE), AddMember("h2", "198.51.100.2")], None, 1)
    agent = _agent(zookeeper_url, str(uuid.uuid4()))
    try:
        agent.wait_for_observed(lambda o: o.reason == NOT_A_MEMBER, WAIT)
        good, _ = cluster.client.get(cluster.zone_path)
        cluster.client.set(cluster.zone_path, b"{not json")  # an operator's hand edit
        observed = agent.wait_for_observed(lambda o: o.state == ERROR, WAIT)
        assert "JSONDecodeError" in observed.reason
        cluster.client.set(cluster.zone_path, good)
        agent.wait_for_observed(lambda o: o.reason == NOT_A_MEMBER, RETRY_MAX + WAIT)
    finally:
        agent.stop()
        cluster.close()


@pytest.mark.slow
def test_an_agent_follows_the_zone_within_seconds_of_a_long_outages_end(tmp_path):
    """Data-plane changes made while ZooKeeper was down reach the agent as soon as it is
    back, however long it was down, and its session (liveness) expired meanwhile."""
    _require_zookeeper()
    node = ZooKeeperNode(tmp_path / "zk", _free_port()).start()
    node.wait_ready()
    url = f"zookeeper://127.0.0.1:{node.client_port}/outage"
    host_id = str(uuid.uuid4())
    with nsdb.connect(url, role="cluster") as cluster:
        cluster.apply([SetTunnelZone(ZONE), AddMember(host_id, "198.51.100.1"),
                       AddMember("h2", "198.51.100.2")], None, 1)
    agent = _agent(url, host_id)
    try:
        agent.wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        node.kill()
        time.sleep(LONG_OUTAGE)
        node.start().wait_ready()
        back = time.monotonic()
        with nsdb.connect(url, role="cluster") as cluster:
            cluster.apply([AddMember("h3", "198.51.100.3")], 1, 2)
        agent.wait_for(_is(ACTIVE, ("198.51.100.2", "198.51.100.3")), WAIT)
        assert time.monotonic() - back < WAIT
        with nsdb.connect(url, role="cluster") as cluster:  # its liveness node again
            _until(lambda: cluster.get_host(host_id).alive, WAIT, "the agent's liveness")
    finally:
        agent.stop()
        node.kill()
