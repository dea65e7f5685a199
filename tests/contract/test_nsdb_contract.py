"""One contract, every NSDB backend: the same tests against SQLite and ZooKeeper."""

from __future__ import annotations

import datetime
import random
import threading
import time
import uuid

import pytest
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import ConnectionLoss, NoAuthError, SessionExpiredError
from kazoo.security import OPEN_ACL_UNSAFE

from midonet_membership import nsdb
from midonet_membership.nsdb import (
    AddMember,
    Host,
    Interface,
    ObservedState,
    PositionConflict,
    RemoveMember,
    SetTunnelZone,
    TunnelZone,
)

ZONE = TunnelZone("00000000-0000-0000-0000-000000000001", "DEFAULT", "vxlan")


class Recorder:
    """A watch callback that lets a test wait, with a deadline, for a given snapshot."""

    def __init__(self) -> None:
        self.seen: list[tuple[TunnelZone | None, dict[str, str]]] = []
        self._changed = threading.Condition()

    def __call__(self, zone: TunnelZone | None, members: dict[str, str]) -> None:
        with self._changed:
            self.seen.append((zone, dict(members)))
            self._changed.notify_all()

    def wait_for(self, zone: TunnelZone | None, members: dict[str, str],
                 timeout: float = 10) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.seen and self.seen[-1] == (zone, members),
                                          timeout):
                raise AssertionError(f"last snapshot {self.seen[-1:]} != {(zone, members)}")


@pytest.fixture
def store(nsdb_url):
    with nsdb.connect(nsdb_url, role="cluster") as s:
        yield s


def test_position_moves_only_with_the_expected_value(store):
    assert store.get_position() is None
    store.apply([SetTunnelZone(ZONE)], None, 5)
    assert store.get_position() == 5
    with pytest.raises(PositionConflict):
        store.apply([SetTunnelZone(TunnelZone(ZONE.id, "DEFAULT", "gre")),
                     AddMember("h1", "198.51.100.1")], 4, 6)
    with pytest.raises(PositionConflict):
        store.apply([AddMember("h1", "198.51.100.1")], None, 6)
    assert store.get_position() == 5 and store.list_members() == {}
    assert store.get_tunnel_zone() == ZONE


def test_ops_are_idempotent_and_the_zone_type_can_change(store):
    ops = [SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1"), AddMember("h1", "198.51.100.1"),
           RemoveMember("absent"), AddMember("h2", "198.51.100.2")]
    store.apply(ops, None, 1)
    store.apply(ops, 1, 2)  # a replay changes nothing
    assert store.list_members() == {"h1": "198.51.100.1", "h2": "198.51.100.2"}
    store.apply([SetTunnelZone(TunnelZone(ZONE.id, "DEFAULT", "gre")),
                 AddMember("h1", "198.51.100.9"), RemoveMember("h2")], 2, 3)
    assert store.get_tunnel_zone().type == "gre"
    assert store.list_members() == {"h1": "198.51.100.9"}


def test_a_large_batch_is_one_apply(store):
    adds = [AddMember(f"host-{i:04d}", f"198.51.{100 + i // 250}.{i % 250 + 1}")
            for i in range(500)]
    store.apply([SetTunnelZone(ZONE), *adds], None, 500)
    assert len(store.list_members()) == 500
    store.apply([RemoveMember(a.host_id) for a in adds[:250]], 500, 750)
    assert len(store.list_members()) == 250 and store.get_position() == 750


def test_members_follow_many_adds_and_removes(store):
    """Random batches against a dict model: list_members is the model after every apply."""
    rng, model, position = random.Random(7), {}, None
    store.apply([SetTunnelZone(ZONE)], position, 1)
    position = 1
    for _ in range(20):
        ops = []
        for _ in range(rng.randint(1, 30)):
            host = f"host-{rng.randrange(40)}"
            if rng.random() < 0.6:
                ip = f"198.51.100.{rng.randrange(1, 255)}"
                ops.append(AddMember(host, ip))
                model[host] = ip
            else:
                ops.append(RemoveMember(host))
                model.pop(host, None)
        store.apply(ops, position, position + len(ops))
        position += len(ops)
        assert store.list_members() == model
    assert store.get_position() == position


def test_racing_appliers_exactly_one_wins(nsdb_url):
    with nsdb.connect(nsdb_url, role="cluster") as a, nsdb.connect(nsdb_url, role="cluster") as b:
        a.apply([SetTunnelZone(ZONE)], None, 1)
        barrier, outcomes = threading.Barrier(2), []

        def apply(store, host):
            barrier.wait()
            try:
                store.apply([AddMember(host, "198.51.100.5")], 1, 2)
                outcomes.append(host)
            except PositionConflict:
                outcomes.append(None)
        threads = [threading.Thread(target=apply, args=(s, h)) for s, h in ((a, "A"), (b, "B"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if o]
        assert len(winners) == 1 and len(outcomes) == 2
        assert a.list_members() == b.list_members() == {winners[0]: "198.51.100.5"}
        assert a.get_position() == 2


def test_watch_delivers_snapshots_and_stops_after_cancel(store):
    recorder = Recorder()
    watch = store.watch_tunnel_zone(recorder)
    recorder.wait_for(None, {})  # the initial snapshot
    store.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
    recorder.wait_for(ZONE, {"h1": "198.51.100.1"})
    gre = TunnelZone(ZONE.id, "DEFAULT", "gre")
    store.apply([SetTunnelZone(gre)], 1, 2)
    recorder.wait_for(gre, {"h1": "198.51.100.1"})
    watch.cancel()
    watch.cancel()  # safe twice
    count = len(recorder.seen)
    # A second watch sees the next change: by then the cancelled one would have seen it too.
    witness = Recorder()
    second = store.watch_tunnel_zone(witness)
    store.apply([RemoveMember("h1")], 2, 3)
    witness.wait_for(gre, {})
    second.cancel()
    assert len(recorder.seen) == count


def test_watch_converges_after_a_burst(nsdb_url, store):
    """Many quick applies from another connection: the last snapshot is the final state."""
    recorder = Recorder()
    watch = store.watch_tunnel_zone(recorder)
    recorder.wait_for(None, {})
    with nsdb.connect(nsdb_url, role="cluster") as writer:
        writer.apply([SetTunnelZone(ZONE)], None, 0)
        for i in range(1, 61):
            ops = [AddMember(f"h{i}", f"198.51.100.{i}")]
            if i % 3 == 0:
                ops.append(RemoveMember(f"h{i - 1}"))
            writer.apply(ops, i - 1, i)
        final = writer.list_members()
    recorder.wait_for(ZONE, final)
    assert all(zone == ZONE for zone, _ in recorder.seen[1:])  # never a zone-less member set
    watch.cancel()


def test_a_watch_follows_changes_larger_than_one_socket_read(nsdb_url, store):
    """1500 members in one apply (a ~100 kB delta): it and the re-read span many TCP reads."""
    recorder = Recorder()
    with nsdb.connect(nsdb_url) as reader:
        watch = reader.watch_tunnel_zone(recorder)
        recorder.wait_for(None, {})
        store.apply([SetTunnelZone(ZONE), AddMember("h0", "198.51.100.1")], None, 1)
        recorder.wait_for(ZONE, {"h0": "198.51.100.1"})
        many = {f"host-{i:04d}-{uuid.uuid4()}": f"10.{i // 250}.{i % 250}.1" for i in range(1500)}
        store.apply([AddMember(h, ip) for h, ip in many.items()], 1, 2)
        recorder.wait_for(ZONE, {"h0": "198.51.100.1", **many}, timeout=20)
        store.apply([RemoveMember("h0")], 2, 3)  # and small ones after it
        recorder.wait_for(ZONE, many)
        watch.cancel()
    with nsdb.connect(nsdb_url) as late:  # a first read of it all
        late_recorder = Recorder()
        late.watch_tunnel_zone(late_recorder)
        late_recorder.wait_for(ZONE, many, timeout=20)


def test_a_host_scoped_watch_sees_members_only_while_the_host_is_one(nsdb_url, store):
    """An agent's watch: pending means no members at all, then the whole zone, then none."""
    recorder = Recorder()
    with nsdb.connect(nsdb_url, role="agent") as agent:
        watch = agent.watch_tunnel_zone(recorder, host_id="me")
        recorder.wait_for(None, {})
        store.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
        recorder.wait_for(ZONE, {})
        store.apply([AddMember("h2", "198.51.100.2")], 1, 2)
        store.apply([AddMember("me", "198.51.100.3")], 2, 3)
        everyone = {"h1": "198.51.100.1", "h2": "198.51.100.2", "me": "198.51.100.3"}
        recorder.wait_for(ZONE, everyone)
        store.apply([AddMember("me", "198.51.100.4")], 3, 4)  # re-addressed
        recorder.wait_for(ZONE, {**everyone, "me": "198.51.100.4"})
        store.apply([RemoveMember("me")], 4, 5)
        recorder.wait_for(ZONE, {})
        store.apply([AddMember("me", "198.51.100.3")], 5, 6)
        recorder.wait_for(ZONE, everyone)
        watch.cancel()
    assert all(members == {} or "me" in members for _, members in recorder.seen)


def test_hosts_register_and_prove_liveness(nsdb_url, store):
    agent = nsdb.connect(nsdb_url, role="agent")
    agent.register_host(Host("h1", "compute-1", (Interface("eth0", ("192.0.2.5",)),)))
    agent.heartbeat("h1")
    [status] = store.list_hosts()
    assert status.host.hostname == "compute-1" and status.alive
    assert status.host.interfaces == (Interface("eth0", ("192.0.2.5",)),)
    assert status.heartbeat_at.utcoffset() == datetime.timedelta(0)
    assert abs(time.time() - status.heartbeat_at.timestamp()) < 5
    agent.register_host(Host("h1", "compute-1b"))  # a restarted agent replaces its record
    agent.heartbeat("h1")
    assert store.get_host("h1").host == Host("h1", "compute-1b")
    agent.close()  # the agent's process is gone: no more heartbeats, no session
    deadline = time.monotonic() + 5
    while store.get_host("h1").alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.get_host("h1").alive


def test_an_agent_reports_its_vtep_mac_and_observed_state_in_its_own_record(nsdb_url, store):
    agent = nsdb.connect(nsdb_url, role="agent")
    try:
        interfaces = (Interface("eth0", ("198.51.100.5",)),)
        agent.register_host(Host("h1", "compute-1", interfaces))
        assert store.get_host("h1").host.observed is None  # not reported yet
        observed = ObservedState("active", tunnel_type="vxlan", tunnels=2, peers=2,
                                 zone_position=17, admission_drops=3)
        agent.register_host(Host("h1", "compute-1", interfaces, "02:5e:00:00:00:01", observed))
        assert store.get_host("h1").host == Host("h1", "compute-1", interfaces,
                                                 "02:5e:00:00:00:01", observed)
        assert store.list_hosts()[0].host.observed == observed
        unsupported = ObservedState("unsupported", "gre tunnels are not available in this "
                                    "kernel", tunnel_type="gre", peers=2)
        agent.register_host(Host("h1", "compute-1", interfaces, None, unsupported))
        assert store.get_host("h1").host.observed == unsupported
        assert store.get_host("h1").host.vtep_mac is None
        assert store.get_host("no-such-host") is None
    finally:
        agent.close()


def test_a_sqlite_nsdb_from_before_observed_state_gains_its_columns(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE hosts (id TEXT PRIMARY KEY, hostname TEXT NOT NULL, "
                      "interfaces TEXT NOT NULL, heartbeat_at REAL);"
                      "INSERT INTO hosts VALUES ('h1', 'compute-1', '[]', NULL);")
    old.close()
    with nsdb.connect(f"sqlite:///{path}") as store:
        assert store.get_host("h1").host == Host("h1", "compute-1")
        store.register_host(Host("h1", "compute-1", (), "02:00:00:00:00:01",
                                 ObservedState("pending")))
        assert store.get_host("h1").host.observed == ObservedState("pending")


def test_a_tree_from_before_member_host_nodes_gets_them_when_the_cluster_starts(
        zookeeper_server):
    """Upgrading the cluster: members written without member-host nodes still activate."""
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    url = f"zookeeper://{hosts}/upgrade-{uuid.uuid4().hex[:12]}"
    with nsdb.connect(url, role="cluster") as cluster:
        cluster.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
        cluster.client.delete(cluster.member_hosts_path, recursive=True)
    with nsdb.connect(url, role="cluster"), nsdb.connect(url, role="agent") as agent:
        recorder = Recorder()
        watch = agent.watch_tunnel_zone(recorder, host_id="h1")
        recorder.wait_for(ZONE, {"h1": "198.51.100.1"})
        watch.cancel()


def test_agents_cannot_make_themselves_members(zookeeper_server):
    """ZooKeeper digest ACLs: only the cluster identity writes the zone; an agent writes
    only the host record provisioned for its identity."""
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    root = f"/acl-{uuid.uuid4().hex[:12]}"
    with nsdb.connect(f"zookeeper://cluster:cluster-secret@{hosts}{root}",
                      role="cluster") as cluster:
        cluster.apply([SetTunnelZone(ZONE), AddMember("good", "198.51.100.1")], None, 1)
        cluster.provision_host("rogue", "rogue", "rogue-secret")
        cluster.provision_host("other", "other", "other-secret")
        rogue = nsdb.connect(f"zookeeper://rogue:rogue-secret@{hosts}{root}", role="agent")
        rogue.register_host(Host("rogue", "rogue-host"))
        rogue.heartbeat("rogue")
        assert rogue.get_tunnel_zone() == ZONE  # it may read the zone
        with pytest.raises(NoAuthError):
            rogue.apply([AddMember("rogue", "198.51.100.66")], 1, 2)
        raw = KazooClient(hosts, auth_data=[("digest", "rogue:rogue-secret")])
        raw.start()
        with pytest.raises(NoAuthError):
            raw.create(f"{root}/tunnel_zone_members/rogue@198.51.100.66", b"{}")
        with pytest.raises(NoAuthError):
            raw.create(f"{root}/tunnel_zone_member_hosts/rogue", b"")
        with pytest.raises(NoAuthError):
            raw.set(f"{root}/importer/position", b"99")
        with pytest.raises(NoAuthError):
            raw.set(f"{root}/tunnel_zone", b'{"id": "x", "name": "DEFAULT", "type": "gre"}')
        with pytest.raises(NoAuthError):
            raw.delete(f"{root}/tunnel_zone_members/good@198.51.100.1")
        with pytest.raises(NoAuthError):  # squatting a host id nobody provisioned yet
            raw.create(f"{root}/hosts/{uuid.uuid4()}", b"{}")
        with pytest.raises(NoAuthError):  # nor deleting its own record, nor re-keying it
            raw.delete(f"{root}/hosts/rogue", recursive=False)
        with pytest.raises(NoAuthError):
            raw.set_acls(f"{root}/hosts/rogue", OPEN_ACL_UNSAFE)
        other = nsdb.connect(f"zookeeper://other:other-secret@{hosts}{root}", role="agent")
        other.register_host(Host("other", "other-host"))
        other.heartbeat("other")
        with pytest.raises(NoAuthError):
            raw.set(f"{root}/hosts/other", b"{}")
        with pytest.raises(nsdb.NSDBError, match="provisioned for another identity"):
            rogue.register_host(Host("other", "hijacked"))
        with pytest.raises(NoAuthError):
            rogue.heartbeat("other")
        with pytest.raises(NoAuthError):
            raw.delete(f"{root}/hosts/other/alive")
        raw.stop()
        assert cluster.get_host("other").host == Host("other", "other-host")
        assert cluster.get_host("other").alive
        other.close()
        rogue.close()
        assert cluster.list_members() == {"good": "198.51.100.1"}
        assert cluster.get_position() == 1 and cluster.get_tunnel_zone() == ZONE


def test_zookeeper_agent_watch_before_the_cluster_made_the_tree(zookeeper_url):
    """An agent may start first: it sees an empty zone, then the cluster's changes."""
    with nsdb.connect(zookeeper_url, role="agent") as agent:
        recorder = Recorder()
        agent.watch_tunnel_zone(recorder)
        recorder.wait_for(None, {})
        with nsdb.connect(zookeeper_url, role="cluster") as cluster:
            cluster.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
            recorder.wait_for(ZONE, {"h1": "198.51.100.1"})


def test_secured_agent_started_first_waits_for_the_cluster_tree(zookeeper_server):
    """A secured agent never creates the tree (it would own it): it waits for the cluster."""
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    root = f"/early-{uuid.uuid4().hex[:12]}"
    agent_url = f"zookeeper://agent:agent-secret@{hosts}{root}"
    with nsdb.connect(agent_url, role="agent", timeout=0.5) as agent:
        with pytest.raises(nsdb.NSDBError, match="start the cluster"):
            agent.register_host(Host("h1", "compute-1"))
    with nsdb.connect(agent_url, role="agent", timeout=10) as agent:
        registered = threading.Thread(target=agent.register_host,
                                      args=(Host("h1", "compute-1"),))
        registered.start()
        with nsdb.connect(f"zookeeper://cluster:cluster-secret@{hosts}{root}",
                          role="cluster") as cluster:
            time.sleep(0.2)
            assert registered.is_alive()  # the tree is there; h1 is not provisioned yet
            cluster.provision_host("h1", "agent", "agent-secret")
            registered.join(10)
            assert not registered.is_alive()
            agent.heartbeat("h1")
            assert cluster.get_host("h1").alive
            with pytest.raises(NoAuthError):  # the tree is still the cluster's
                agent.client.create(f"{root}/tunnel_zone", b"{}")


def test_zookeeper_watch_survives_session_expiry(zookeeper_server, zookeeper_url):
    """Expire the watcher's session (kazoo's test trick: close it from a second client)."""
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    with nsdb.connect(zookeeper_url, role="cluster") as writer, \
            nsdb.connect(zookeeper_url, liveness_timeout=2) as reader:
        recorder = Recorder()
        reader.watch_tunnel_zone(recorder)
        writer.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
        recorder.wait_for(ZONE, {"h1": "198.51.100.1"})
        states, reconnected = [], threading.Event()

        def on_state(state):
            states.append(state)
            if state == KazooState.CONNECTED and KazooState.LOST in states:
                reconnected.set()
        reader.client.add_listener(on_state)
        old_session = reader.client.client_id[0]
        thief = KazooClient(hosts, client_id=reader.client.client_id)
        thief.start()
        thief.stop()  # closes the shared session: the reader's session has expired
        thief.close()
        writer.apply([AddMember("h2", "198.51.100.2")], 1, 2)  # while it is expired
        assert reconnected.wait(15), states
        assert reader.client.client_id[0] != old_session
        recorder.wait_for(ZONE, {"h1": "198.51.100.1", "h2": "198.51.100.2"})
        writer.apply([RemoveMember("h1")], 2, 3)  # and the re-armed watch still fires
        recorder.wait_for(ZONE, {"h2": "198.51.100.2"})


def test_zookeeper_watch_survives_a_server_restart(zookeeper_ensemble):
    ensemble = zookeeper_ensemble()
    url = ensemble.url()
    with nsdb.connect(url, role="cluster") as writer, nsdb.connect(url) as reader:
        recorder = Recorder()
        reader.watch_tunnel_zone(recorder)
        writer.apply([SetTunnelZone(ZONE), AddMember("h1", "198.51.100.1")], None, 1)
        for index in range(3):  # every node goes down once, one at a time
            ensemble.kill(index)
            _apply_through_failover(writer, AddMember(f"h{index + 2}",
                                                      f"198.51.100.{index + 2}"), index + 2)
            ensemble.restart(index)
        recorder.wait_for(ZONE, {"h1": "198.51.100.1", "h2": "198.51.100.2",
                                 "h3": "198.51.100.3", "h4": "198.51.100.4"}, timeout=20)
        assert writer.get_position() == 4


def _apply_through_failover(store, op, position: int) -> None:
    """What the importer does: retry after a connection loss, re-reading the position."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            current = store.get_position()
            if current == position:
                return  # the lost reply's transaction had committed
            store.apply([op], current, position)
            return
        except (ConnectionLoss, SessionExpiredError):
            time.sleep(0.2)
    raise AssertionError("the ensemble never accepted the write")
