"""Agents follow the DEFAULT zone the importer maintains (issue 5's scenarios)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine

from midonet_membership import nsdb
from midonet_membership.agent import (
    ACTIVE,
    PENDING,
    Agent,
    AgentState,
    Built,
    RecordingDataPlane,
    identity,
)
from midonet_membership.agent import interfaces as host_interfaces
from midonet_membership.agent.agent import NOT_A_MEMBER, ZONE_NOT_READ
from midonet_membership.api.agents import Agents
from midonet_membership.cluster import importer as cluster
from midonet_membership.cluster.wakeup import Wakeup
from midonet_membership.context import RequestContext
from midonet_membership.db import engine as db_engine
from midonet_membership.db import journal, migration
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.nsdb.base import AddMember, HostStatus, SetTunnelZone, TunnelZone
from midonet_membership.paging import ListQuery
from tests.fixtures.hosts import require_kernel

WAIT = 5.0
ZONE = TunnelZone("00000000-0000-0000-0000-000000000001", "DEFAULT", "vxlan")


@contextlib.contextmanager
def _running_importer(make_database, nsdb_url: str) -> Iterator[Engine]:
    """A Neutron DB with CONFIG written and the real importer loop feeding ``nsdb_url``."""
    url = make_database("sqlite")
    migration.upgrade(url)
    engine = db_engine.create_engine(url)
    journal.record_config(engine, "vxlan", "req-config")
    store = nsdb.connect(nsdb_url, role="cluster")
    wakeup = Wakeup(0.005)
    wakeup.listen_in_process()
    stop = threading.Event()
    thread = threading.Thread(target=cluster.run,
                              args=(engine, store, nsdb_url, wakeup, stop), daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        stop.set()
        wakeup.stop()
        thread.join(10)
        store.close()
        engine.dispose()


@pytest.fixture
def deployment(make_database, nsdb_url):
    with _running_importer(make_database, nsdb_url) as engine:
        yield engine, nsdb_url


class HistoryDataPlane(RecordingDataPlane):
    """Keeps every state it was given, so a test can say what never happened."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[AgentState] = []

    def apply(self, state: AgentState) -> Built:
        self.states.append(state)
        return super().apply(state)


def _agent(nsdb_url: str, host_id: str) -> Agent:
    return Agent(host_id, nsdb.connect(nsdb_url, role="agent"), HistoryDataPlane(),
                 hostname=f"host-{host_id[:4]}", heartbeat_interval=0.1).start()


def _is(status: str, peers: tuple = ()):
    return lambda s: s.status == status and tuple(ip for _, ip in s.peers) == peers


def test_only_members_are_active_and_each_sees_the_other_members(deployment):
    engine, url = deployment
    api = AgentMemberships(engine)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    agents = [_agent(url, h) for h in ids]
    try:
        for a in agents:
            assert a.wait_for(_is(PENDING), WAIT).peers == ()
        api.create(RequestContext.admin(), [{"id": ids[0], "ip_address": "198.51.100.1"}])
        api.create(RequestContext.admin(), [{"id": ids[1], "ip_address": "198.51.100.2"}])
        first = agents[0].wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        agents[1].wait_for(_is(ACTIVE, ("198.51.100.1",)), WAIT)
        assert (first.tunnel_type, first.local_ip) == ("vxlan", "198.51.100.1")
        assert agents[2].state.status == PENDING and agents[2].state.peers == ()
        # the rogue never got a tunnel, and nobody has a tunnel to it
        assert all(s.status == PENDING for s in agents[2].dataplane.states)
        assert all(ids[2] not in dict(s.peers) for a in agents[:2] for s in a.dataplane.states)

        api.delete(RequestContext.admin(), ids[1])
        agents[0].wait_for(_is(ACTIVE, ()), WAIT)
        agents[1].wait_for(_is(PENDING), WAIT)

        api.create(RequestContext.admin(), [{"id": ids[1], "ip_address": "198.51.100.2"}])
        before = agents[1].wait_for(_is(ACTIVE, ("198.51.100.1",)), WAIT)
        agents[1].stop()
        agents[1] = _agent(url, ids[1])  # a restart: same host id, same state
        assert agents[1].wait_for(_is(ACTIVE, ("198.51.100.1",)), WAIT) == before
        assert agents[2].state.status == PENDING
    finally:
        for a in agents:
            a.stop()


def test_a_scrape_never_shows_active_before_the_zone_update_is_counted(deployment):
    """midonet_agent_state and midonet_agent_zone_updates_total are read by one scrape and
    compared by alerts: when the agent's observed state turns active, the zone update that
    made it so is already counted (it was not: a CI scrape fell in between)."""
    engine, url = deployment
    host = str(uuid.uuid4())
    counted_when: list[tuple[str, float]] = []

    def updates() -> float:
        return REGISTRY.get_sample_value("midonet_agent_zone_updates_total",
                                         {"host_id": host}) or 0.0

    class ScrapedAgent(Agent):
        def _observe(self, desired: AgentState, built: Built) -> None:
            super()._observe(desired, built)
            counted_when.append((self.observed.state, updates()))

    agent = ScrapedAgent(host, nsdb.connect(url, role="agent"), HistoryDataPlane(),
                         hostname="host-scraped", heartbeat_interval=0.1).start()
    try:
        agent.wait_for(_is(PENDING), WAIT)
        before = updates()
        AgentMemberships(engine).create(RequestContext.admin(),
                                        [{"id": host, "ip_address": "198.51.100.3"}])
        agent.wait_for(_is(ACTIVE), WAIT)
    finally:
        agent.stop()
    assert next(n for state, n in counted_when if state == ACTIVE) == before + 1


def test_a_tunnel_type_change_reaches_the_active_agents(deployment):
    """Unlike the original, a later CONFIG is applied: agents rebuild with the new type."""
    engine, url = deployment
    ids = [str(uuid.uuid4()) for _ in range(2)]
    AgentMemberships(engine).create(RequestContext.admin(), [
        {"id": h, "ip_address": f"198.51.100.{n + 1}"} for n, h in enumerate(ids)])
    agents = [_agent(url, h) for h in ids]
    try:
        agents[0].wait_for(_is(ACTIVE, ("198.51.100.2",)), WAIT)
        assert agents[1].wait_for(_is(ACTIVE, ("198.51.100.1",)), WAIT).tunnel_type == "vxlan"
        assert journal.record_config(engine, "gre", "req-gre")
        for a in agents:
            state = a.wait_for(lambda s: s.tunnel_type == "gre", WAIT)
            assert state.status == ACTIVE and len(state.peers) == 1
            assert "ip_gre" in state.requires
            assert a.dataplane.state == state
    finally:
        for a in agents:
            a.stop()


def test_restarted_agent_keeps_its_id_and_state(deployment, tmp_path):
    engine, url = deployment
    id_file = str(tmp_path / "midonet_host_id.properties")
    host_id = identity.load_or_create(id_file)
    AgentMemberships(engine).create(RequestContext.admin(),
                                    [{"id": host_id, "ip_address": "198.51.100.9"}])
    agent = _agent(url, host_id)
    agent.wait_for(_is(ACTIVE), WAIT)
    agent.stop()
    again = _agent(url, identity.load_or_create(id_file))
    try:
        assert again.host_id == host_id
        assert again.wait_for(_is(ACTIVE), WAIT).local_ip == "198.51.100.9"
    finally:
        again.stop()


def test_membership_created_before_the_agent_registers(deployment):
    """Pre-provisioning: the agent is active as soon as it appears."""
    engine, url = deployment
    host_id = str(uuid.uuid4())
    AgentMemberships(engine).create(RequestContext.admin(),
                                    [{"id": host_id, "ip_address": "198.51.100.20"}])
    time.sleep(0.2)
    agent = _agent(url, host_id)
    try:
        agent.wait_for(_is(ACTIVE), WAIT)
    finally:
        agent.stop()


def test_liveness_follows_the_agent_process(deployment):
    engine, url = deployment
    reader = nsdb.connect(url)
    agents_api = Agents(engine, reader)
    host_id = str(uuid.uuid4())

    def alive() -> bool:
        return agents_api.get(RequestContext.admin(), host_id)["alive"]

    def until(expected: bool, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if alive() == expected:
                return time.monotonic() - start
            time.sleep(0.02)
        raise AssertionError(f"alive never became {expected}")

    try:
        agent = _agent(url, host_id)
        until(True, WAIT)
        listed = agents_api.list(RequestContext.admin(), ListQuery(filters={"id": [host_id]}))
        assert listed[0]["agent_type"] == "Midonet agent" and listed[0]["member"] is False
        agent.stop()
        assert until(False, 3.0) <= 3.0  # SQLite: liveness_timeout 0.5 s; ZooKeeper: session
        agent = _agent(url, host_id)
        until(True, WAIT)
        agent.stop()
    finally:
        reader.close()


def test_corrupt_host_id_file_is_an_error_not_a_new_identity(tmp_path):
    path = tmp_path / "midonet_host_id.properties"
    path.write_text("host_uuid=not-a-uuid\n")
    with pytest.raises(identity.HostIdError, match="not a UUID"):
        identity.load_or_create(str(path))
    assert path.read_text() == "host_uuid=not-a-uuid\n"
    path.write_text("")
    with pytest.raises(identity.HostIdError, match="no host_uuid"):
        identity.load_or_create(str(path))


def test_host_id_is_generated_once(tmp_path):
    path = str(tmp_path / "id.properties")
    first = identity.load_or_create(path)
    assert identity.load_or_create(path) == first
    assert open(path).read() == f"host_uuid={first}\n"


def _secured(zookeeper_server) -> Callable[[str], str]:
    """URLs of one fresh root for several digest identities (``user`` -> URL)."""
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    root = f"/acl-{uuid.uuid4().hex[:12]}"
    return lambda user: f"zookeeper://{user}:{user}-secret@{hosts}{root}"


def test_an_agent_cannot_make_itself_a_member(zookeeper_server):
    """ZooKeeper digest ACLs: the zone is the cluster's; an agent only reads it."""
    url = _secured(zookeeper_server)
    root = urllib.parse.urlsplit(url("x")).path
    cluster = nsdb.connect(url("cluster"), role="cluster")
    cluster.apply([SetTunnelZone(ZONE)], None, 1)
    host_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
    cluster.provision_host(host_id, "agent", "agent-secret")  # nsdb-host-add's part
    cluster.provision_host(other_id, "other", "other-secret")
    agent = _agent(url("agent"), host_id)
    intruder = KazooClient(f"127.0.0.1:{zookeeper_server.client_port}",
                           auth_data=[("digest", "agent:agent-secret")])
    intruder.start()
    try:
        agent.wait_for(_is(PENDING), WAIT)
        with pytest.raises(NoAuthError):  # through the NSDB interface ...
            agent.nsdb.apply([AddMember(host_id, "198.51.100.66")], 1, 2)
        with pytest.raises(NoAuthError):  # ... and around it, with its own identity
            intruder.create(f"{root}/tunnel_zone_members/{host_id}@198.51.100.66", b"{}")
        with pytest.raises(NoAuthError):  # a forged delta would reach every watcher
            intruder.set(f"{root}/tunnel_zone_members", b'{"added": {}}')
        with pytest.raises(NoAuthError):
            intruder.set(f"{root}/tunnel_zone", b'{"id": "x", "name": "DEFAULT", '
                                                b'"type": "gre"}')
        with pytest.raises(NoAuthError):
            intruder.set(f"{root}/importer/position", b"999")
        other = _agent(url("other"), other_id)
        with pytest.raises(NoAuthError):  # nor may it rewrite another host's record
            intruder.set(f"{root}/hosts/{other.host_id}", b"{}")
        other.stop()
        time.sleep(0.3)
        assert agent.state.status == PENDING
        assert all(s.status == PENDING for s in agent.dataplane.states)
        assert cluster.list_members() == {} and cluster.get_position() == 1

        # the cluster identity's change does activate it: read access is enough
        cluster.apply([AddMember(host_id, "198.51.100.7")], 1, 2)
        assert agent.wait_for(_is(ACTIVE), WAIT).local_ip == "198.51.100.7"
    finally:
        intruder.stop()
        agent.stop()
        cluster.close()


def test_secured_zookeeper_end_to_end(make_database, zookeeper_server):
    """The production layout: importer and agents on ZooKeeper, each with its identity."""
    url = _secured(zookeeper_server)
    with _running_importer(make_database, url("cluster")) as engine:
        host_id = str(uuid.uuid4())
        with nsdb.connect(url("cluster"), role="cluster") as cluster:
            cluster.provision_host(host_id, "agent", "agent-secret")
        agent = _agent(url("agent"), host_id)
        try:
            AgentMemberships(engine).create(RequestContext.admin(),
                                            [{"id": host_id, "ip_address": "198.51.100.7"}])
            assert agent.wait_for(_is(ACTIVE), WAIT).local_ip == "198.51.100.7"
        finally:
            agent.stop()


LIVENESS = 1.0  # [agent] liveness_timeout of the killed-agent test


def _agent_process(tmp_path: Path, nsdb_url: str, state_dir: Path) -> subprocess.Popen:
    """``midonet-membership agent`` as an operator starts it."""
    config = tmp_path / "agent.conf"
    config.write_text(f"[nsdb]\nconnection = {nsdb_url}\n[agent]\nheartbeat_interval = 0.1\n"
                      f"liveness_timeout = {LIVENESS}\n")
    log = open(tmp_path / "agent.log", "ab")
    return subprocess.Popen([str(Path(sys.executable).parent / "midonet-membership"), "agent",
                             "--dry-run", "--config-file", str(config),
                             "--state-dir", str(state_dir)],
                            stdout=log, stderr=subprocess.STDOUT)


def _until(condition, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def _state_text(state_file: Path) -> str:
    """The agent's state file, or "" before its first write."""
    try:
        return state_file.read_text()
    except FileNotFoundError:
        return ""


def test_a_killed_agent_is_dead_within_the_liveness_timeout(deployment, tmp_path):
    engine, url = deployment
    state_dir = tmp_path / "agent"
    id_file = state_dir / "midonet_host_id.properties"
    state_file = state_dir / "agent-state.json"
    reader = nsdb.connect(url, liveness_timeout=LIVENESS)
    agents_api = Agents(engine, reader)

    def agent_view() -> dict | None:
        status = reader.get_host(host_id)
        return status and agents_api.get(RequestContext.admin(), host_id)

    process = _agent_process(tmp_path, url, state_dir)
    try:
        _until(id_file.exists, 20, "a host id file")
        host_id = identity.load_or_create(str(id_file))
        _until(lambda: (agent_view() or {}).get("alive"), 20, "alive=True")
        AgentMemberships(engine).create(RequestContext.admin(),
                                        [{"id": host_id, "ip_address": "198.51.100.30"}])
        _until(lambda: '"active"' in _state_text(state_file), WAIT, "activation")

        process.send_signal(signal.SIGKILL)  # no goodbye: no session close, no last beat
        process.wait()
        dead_after = _until(lambda: not agent_view()["alive"], LIVENESS + 2, "alive=False")
        assert dead_after <= LIVENESS + 1.0, dead_after  # ZooKeeper: session expiry ticks

        state_file.unlink()  # the restarted agent must earn "active" again
        process = _agent_process(tmp_path, url, state_dir)
        _until(lambda: agent_view()["alive"], 20, "alive=True after the restart")
        assert identity.load_or_create(str(id_file)) == host_id
        _until(lambda: '"active"' in _state_text(state_file)
               and '"198.51.100.30"' in _state_text(state_file), WAIT, "the same state")
        assert [a["id"] for a in agents_api.list(RequestContext.admin(), ListQuery())
                ] == [host_id]  # the restart did not register a second host
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
        reader.close()


NETNS_PREFIX = "mm-ifdisc-"


def _remove_leftover_namespaces() -> None:
    """Namespaces of killed runs of this test (their pid is gone) must not pile up."""
    from pyroute2 import netns
    for name in netns.listnetns():
        if name.startswith(NETNS_PREFIX):
            pid = int(name.removeprefix(NETNS_PREFIX).split("-")[0])
            if not os.path.exists(f"/proc/{pid}"):
                netns.remove(name)


def test_interface_discovery_skips_loopback_and_down_links():
    from pyroute2 import NetNS, netns

    from midonet_membership.nsdb.base import Interface

    require_kernel("ip")
    _remove_leftover_namespaces()
    name = f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("add", ifname="mm-up", kind="veth", peer="mm-down")
            for ifname, address in (("mm-up", "198.51.100.7"), ("mm-down", "198.51.100.8")):
                index = ns.link_lookup(ifname=ifname)[0]
                ns.addr("add", index=index, address=address, prefixlen=24)
            ns.link("set", index=ns.link_lookup(ifname="mm-up")[0], state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        assert host_interfaces.discover(name) == (Interface("mm-up", ("198.51.100.7",)),)
    finally:
        netns.remove(name)


def test_an_address_added_on_the_host_reaches_the_nsdb(deployment):
    """An operator adds the tunnel endpoint's address after the agent started."""
    from pyroute2 import NetNS, netns

    from midonet_membership.nsdb.base import Interface

    require_kernel("ip")
    _, url = deployment
    _remove_leftover_namespaces()
    name = f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    reader = nsdb.connect(url, liveness_timeout=LIVENESS)
    agent = None
    try:
        with NetNS(name) as ns:
            ns.link("add", ifname="mm-tun", kind="veth", peer="mm-tun-peer")  # peer stays down
            index = ns.link_lookup(ifname="mm-tun")[0]
            ns.link("set", index=index, state="up")
            host_id = str(uuid.uuid4())
            agent = Agent(host_id, nsdb.connect(url, role="agent"), RecordingDataPlane(),
                          discover=lambda: host_interfaces.discover(name),
                          heartbeat_interval=0.1, interface_scan_interval=0.1).start()
            assert reader.get_host(host_id).host.interfaces == (Interface("mm-tun", ()),)
            ns.addr("add", index=index, address="203.0.113.9", prefixlen=24)
        _until(lambda: reader.get_host(host_id).host.interfaces == (
            Interface("mm-tun", ("203.0.113.9",)),), WAIT, "the new address in the NSDB")
    finally:
        if agent is not None:
            agent.stop()
        reader.close()
        netns.remove(name)


def test_run_agent_serves_until_stopped(deployment, tmp_path, capsys):
    """``midonet-membership agent``'s body: start, report, stop on request."""
    from oslo_config import cfg

    from midonet_membership import conf as config
    from midonet_membership.agent import run_agent

    engine, url = deployment
    conf = config.load([], cfg.ConfigOpts())
    conf.set_override("connection", url, group="nsdb")
    conf.set_override("heartbeat_interval", 0.1, group="agent")
    conf.set_override("state_dir", str(tmp_path))
    stop = threading.Event()
    thread = threading.Thread(target=run_agent, args=(conf, str(tmp_path / "a"), True, stop))
    thread.start()
    reader = nsdb.connect(url, liveness_timeout=LIVENESS)
    try:
        id_file = tmp_path / "a" / "midonet_host_id.properties"
        _until(id_file.exists, WAIT, "a host id file")
        host_id = identity.load_or_create(str(id_file))
        _until(lambda: (reader.get_host(host_id) or HostStatus(None, False, None)).alive,
               WAIT, "alive=True")
        stop.set()
        thread.join(WAIT)
        assert not thread.is_alive()
        _until(lambda: not reader.get_host(host_id).alive, LIVENESS + 1, "alive=False")
        assert f"host {host_id} pending" in capsys.readouterr().out
    finally:
        stop.set()
        reader.close()


class FlakyDataPlane(HistoryDataPlane):
    """Fails while ``broken`` is set, as a kernel that refuses a change would."""

    broken = True

    def apply(self, state: AgentState) -> Built:
        if self.broken and state.status == ACTIVE:
            raise OSError("netlink said no")
        return super().apply(state)


def test_the_agent_reports_what_it_built_in_its_own_host_record(deployment):
    """``member`` is the admin's intent; the record says pending, error (and why), active."""
    engine, url = deployment
    reader = nsdb.connect(url)
    host_id = str(uuid.uuid4())
    agent = Agent(host_id, nsdb.connect(url, role="agent"), FlakyDataPlane(),
                  heartbeat_interval=0.05, reconcile_interval=0.1).start()
    try:
        _until(lambda: reader.get_host(host_id).host.observed.state == PENDING, WAIT,
               "pending reported")
        AgentMemberships(engine).create(RequestContext.admin(), [
            {"id": host_id, "ip_address": "198.51.100.9"}])
        _until(lambda: reader.get_host(host_id).host.observed.state == "error", WAIT,
               "the failure reported")
        observed = reader.get_host(host_id).host.observed
        assert observed.reason == "OSError: netlink said no" and observed.tunnels == 0
        assert agent.state.status == PENDING  # not pretending it applied
        agent.dataplane.broken = False  # the periodic reconcile retries and succeeds
        _until(lambda: reader.get_host(host_id).host.observed.state == ACTIVE, WAIT,
               "active reported")
        observed = reader.get_host(host_id).host.observed
        assert (observed.tunnel_type, observed.peers) == ("vxlan", 0)
        assert observed.zone_position == reader.get_position()
    finally:
        agent.stop()
        reader.close()


class HeldDataPlane(HistoryDataPlane):
    """Holds every apply until ``release`` is set: an agent slow to read the zone."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def apply(self, state: AgentState) -> Built:
        assert self.release.wait(WAIT)
        return super().apply(state)


def test_a_host_is_pending_with_a_reason_before_its_agent_has_read_the_zone(deployment):
    """The host is listed from the agent's start; until the agent has made something of the
    zone, its record says why it is pending (it once said pending, for no reason)."""
    _engine, url = deployment
    reader = nsdb.connect(url)
    host_id = str(uuid.uuid4())
    dataplane = HeldDataPlane()
    agent = Agent(host_id, nsdb.connect(url, role="agent"), dataplane, heartbeat_interval=0.05)
    # ZooKeeper's watch may give its first snapshot in the starting thread
    starting = threading.Thread(target=agent.start, daemon=True)
    starting.start()
    try:
        _until(lambda: reader.get_host(host_id) is not None, WAIT, "the host registered")
        observed = reader.get_host(host_id).host.observed
        assert (observed.state, observed.reason) == (PENDING, ZONE_NOT_READ)
        time.sleep(0.3)  # heartbeats and reports meanwhile change nothing
        assert reader.get_host(host_id).host.observed.reason == ZONE_NOT_READ
        dataplane.release.set()
        _until(lambda: reader.get_host(host_id).host.observed.reason == NOT_A_MEMBER, WAIT,
               "the zone's verdict reported")
    finally:
        dataplane.release.set()
        starting.join(WAIT)
        agent.stop()
        reader.close()
