"""Activation on the wire: hosts as network namespaces, agents building real VXLAN tunnels.

The all-in-one serves the API on SQLite; each host's agent runs in this process (where the
NSDB is reachable) and builds in its host's namespace through the kernel data plane. What is
asserted is what an admin or a packet would see: pings across the overlay, the agents API,
and the kernel's devices, FDB entries and nftables counters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from midonet_membership import nsdb
from midonet_membership.agent import Agent, interfaces
from midonet_membership.agent.kernel import COUNTER, TABLE, KernelDataPlane, Nft, vtep_mac
from midonet_membership.agent.lab import Lab, LabHost, forge_vxlan
from tests.fixtures.hosts import require_kernel
from tests.fixtures.servers import Server

MEMBERSHIPS = "/v2.0/agent-memberships"
DEVICE = "mm-vxlan0"
FORGED = "forged0"
WAIT = 10.0


def until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


class Kernel:
    """What one host's namespace holds, read the way an operator would check it."""

    def __init__(self, host: LabHost) -> None:
        from pyroute2 import NetNS

        self.host = host
        self.ns = NetNS(host.netns, flags=0)
        self.nft = Nft(host.netns)

    def vxlan_devices(self) -> list[str]:
        return [link.get_attr("IFLA_IFNAME") for link in self.ns.get_links()
                if (info := link.get_attr("IFLA_LINKINFO"))
                and info.get_attr("IFLA_INFO_KIND") == "vxlan"]

    def fdb(self) -> list[tuple[str, str]]:
        [index] = self.ns.link_lookup(ifname=DEVICE) or [None]
        if index is None:
            return []
        return sorted((e.get_attr("NDA_LLADDR"), e.get_attr("NDA_DST"))
                      for e in self.ns.fdb("dump", ifindex=index) if e["ifindex"] == index)

    def table(self) -> list[dict] | None:
        return self.nft.list_table()

    def members(self) -> set[str]:
        for o in self.table() or ():
            if "set" in o:
                return set(o["set"].get("elem", []))
        return set()

    def drops(self) -> int:
        for o in self.table() or ():
            if "counter" in o and o["counter"]["name"] == COUNTER:
                return o["counter"]["packets"]
        return 0

    def close(self) -> None:
        self.ns.close()


class Mesh:
    """The all-in-one, the hosts, their agents, and the admin's API client."""

    def __init__(self, server: Server, lab: Lab, names: str) -> None:
        self.server, self.lab = server, lab
        self.api = server.client()
        self.url = f"sqlite:///{server.state_dir / 'nsdb.sqlite'}"
        self.hosts = {n: lab.add_host(n) for n in names}
        self.ids = {n: str(uuid.uuid4()) for n in names}
        self.kernel = {n: Kernel(h) for n, h in self.hosts.items()}
        self.agents: dict[str, Agent] = {}

    def start_agent(self, name: str) -> Agent:
        host = self.hosts[name]
        dataplane = KernelDataPlane(host.netns, overlay_address=host.overlay_address)
        agent = Agent(self.ids[name], nsdb.connect(self.url, role="agent"), dataplane,
                      hostname=f"host-{name}", heartbeat_interval=0.2, reconcile_interval=0.3,
                      discover=lambda: interfaces.discover(host.netns)).start()
        self.agents[name] = agent
        return agent

    def activate(self, name: str) -> None:
        created = self.api.post(MEMBERSHIPS, {"agent_membership": {
            "id": self.ids[name], "ip_address": self.hosts[name].tunnel_ip}})
        assert created.status == 201, created

    def deactivate(self, name: str) -> None:
        assert self.api.delete(f"{MEMBERSHIPS}/{self.ids[name]}").status == 204

    def view(self, name: str) -> dict:
        """The agent as the API shows it ({} while it is not registered)."""
        shown = self.api.get(f"/v2.0/agents/{self.ids[name]}")
        return shown.json["agent"] if shown.status == 200 else {}

    def wait_view(self, name: str, what: str, **fields: object) -> dict:
        return until(lambda: (v := self.view(name)) and all(
            v.get(k) == want for k, want in fields.items()) and v, f"{name}: {what} {fields}")

    def ping(self, source: str, target: str, **kw) -> bool:
        return self.lab.ping(self.hosts[source], self.hosts[target].overlay_ip, **kw)

    def reaches(self, source: str, target: str, timeout: float = 5.0) -> bool:
        """A reply within ``timeout``, retrying: what must work may take a loaded machine a
        moment; what must not is checked with ``ping`` (one try, 1 s)."""
        try:
            self.lab.wait_for_ping(self.hosts[source], self.hosts[target].overlay_ip, timeout)
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for kernel in self.kernel.values():
            kernel.close()


def unforge(host: LabHost, device: str) -> None:
    from pyroute2 import NetNS

    with NetNS(host.netns, flags=0) as ns:
        ns.link("del", index=ns.link_lookup(ifname=device)[0])


@pytest.fixture
def mesh(make_database, start_server, lab) -> Iterator[Mesh]:
    """Hosts a, b, c with agents, and a rogue namespace without one."""
    server = start_server(make_database("sqlite"))
    built = Mesh(server, lab, ["a", "b", "c", "rogue"])
    try:
        for name in "abc":
            built.start_agent(name)
        for name in "abc":
            built.wait_view(name, "registered", state="pending", alive=True)
        yield built
    finally:
        built.close()


def test_only_members_reach_each_other_and_intruders_are_counted(mesh):
    a, b, c, rogue = (mesh.hosts[n] for n in ("a", "b", "c", "rogue"))
    forge_vxlan(rogue, [(a, mesh.ids["a"]), (b, mesh.ids["b"])], "rogue0")
    assert not mesh.ping("a", "b") and not mesh.ping("rogue", "a")  # no membership, no overlay

    mesh.activate("a")
    mesh.activate("b")
    for name in "ab":
        mesh.wait_view(name, "built", state="active", tunnels=1, peers=1)
    assert mesh.reaches("a", "b") and mesh.reaches("b", "a")
    # each peer has the flooding entry and its VTEP MAC's unicast entry, nothing else
    assert mesh.kernel["a"].fdb() == sorted([("00:00:00:00:00:00", b.tunnel_ip),
                                              (vtep_mac(mesh.ids["b"]), b.tunnel_ip)])
    assert mesh.kernel["a"].members() == {b.tunnel_ip}

    # C is registered but not a member; it tries anyway, like the rogue. Not under the agent's
    # own device name: C's pending agent rightly reconciles that one away (every 2 s).
    forge_vxlan(c, [(a, mesh.ids["a"]), (b, mesh.ids["b"])], FORGED)
    drops_before = {n: mesh.kernel[n].drops() for n in "ab"}
    for source in ("c", "rogue"):
        for target in "ab":
            assert mesh.lab.ping_replies(mesh.hosts[source], mesh.hosts[target].overlay_ip,
                                         count=3, timeout=0.3, interval=0.05) == 0
    for name in "ab":  # each of the 12 requests was dropped at its target, and counted
        assert mesh.kernel[name].drops() - drops_before[name] >= 6
        dropped = mesh.kernel[name].drops()
        mesh.wait_view(name, "the kernel's drop counter", admission_drops=dropped)
    assert mesh.reaches("a", "b")  # members unaffected

    unforge(c, FORGED)  # C gives up its own attempt; the admin then activates it
    mesh.activate("c")
    mesh.wait_view("c", "built", state="active", tunnels=2, peers=2)
    for name in "ab":
        mesh.wait_view(name, "the new peer", state="active", tunnels=2)
    for source, target in (("a", "b"), ("a", "c"), ("b", "c"), ("c", "a"), ("c", "b")):
        assert mesh.lab.wait_for_ping(mesh.hosts[source], mesh.hosts[target].overlay_ip, 5)
    assert mesh.kernel["c"].vxlan_devices() == [DEVICE]
    assert len(mesh.kernel["c"].fdb()) == 4  # one flooding and one unicast entry per peer
    assert not mesh.ping("rogue", "c")

    mesh.deactivate("b")
    mesh.wait_view("b", "torn down", state="pending", tunnels=0)
    for name in "ac":
        mesh.wait_view(name, "one peer fewer", state="active", tunnels=1)
        assert b.tunnel_ip not in {ip for _, ip in mesh.kernel[name].fdb()}
        assert b.tunnel_ip not in mesh.kernel[name].members()
    assert mesh.kernel["b"].vxlan_devices() == [] and mesh.kernel["b"].table() is None
    assert not mesh.ping("b", "a") and not mesh.ping("b", "c")
    assert mesh.reaches("a", "c") and mesh.reaches("c", "a")


def test_restarts_and_hand_made_changes_heal_without_duplicates(mesh):
    a, b = mesh.hosts["a"], mesh.hosts["b"]
    mesh.activate("a")
    mesh.activate("b")
    for name in "ab":
        mesh.wait_view(name, "built", state="active", tunnels=1)
    expected_fdb = mesh.kernel["a"].fdb()
    expected_table = mesh.kernel["a"].table()

    # restart a's agent while a pings b: not one reply lost, nothing built twice
    pinging = subprocess.Popen(["ip", "netns", "exec", a.netns, "ping", "-n", "-q", "-c",
                                "60", "-i", "0.05", "-W", "1", b.overlay_ip],
                               stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    mesh.agents["a"].stop()
    mesh.start_agent("a")
    mesh.wait_view("a", "active again", state="active", tunnels=1)
    out, _ = pinging.communicate(timeout=30)
    assert "60 packets transmitted, 60 received" in out, out
    assert mesh.kernel["a"].vxlan_devices() == [DEVICE]
    assert mesh.kernel["a"].fdb() == expected_fdb
    assert _without_handles(mesh.kernel["a"].table()) == _without_handles(expected_table)

    # behind the agent's back: the device, one FDB entry, the nftables table
    ns = mesh.kernel["a"].ns
    ns.link("del", index=ns.link_lookup(ifname=DEVICE)[0])
    until(lambda: mesh.kernel["a"].fdb() == expected_fdb, "the device rebuilt")
    assert mesh.lab.wait_for_ping(a, b.overlay_ip, 5) is not None

    index = ns.link_lookup(ifname=DEVICE)[0]
    ns.fdb("del", ifindex=index, lladdr=vtep_mac(mesh.ids["b"]), dst=b.tunnel_ip)
    assert mesh.kernel["a"].fdb() != expected_fdb
    until(lambda: mesh.kernel["a"].fdb() == expected_fdb, "the unicast entry restored")

    mesh.kernel["a"].nft.run([{"delete": {"table": {"family": "inet", "name": TABLE}}}])
    until(lambda: _without_handles(mesh.kernel["a"].table() or [])
          == _without_handles(expected_table), "the admission table restored")
    assert mesh.reaches("b", "a")
    assert mesh.kernel["a"].vxlan_devices() == [DEVICE]


def test_a_member_re_addressed_to_an_ip_its_host_lacks_keeps_no_tunnel(mesh):
    """Delete and re-create while its agent is down: the agent's first snapshot names an
    address its host does not have. The old device must not stay up as if nothing changed."""
    mesh.activate("a")
    mesh.activate("b")
    for name in "ab":
        mesh.wait_view(name, "built", state="active", tunnels=1)
    mesh.agents["a"].stop()
    mesh.deactivate("a")
    assert mesh.api.post(MEMBERSHIPS, {"agent_membership": {
        "id": mesh.ids["a"], "ip_address": "203.0.113.99"}}).status == 201
    mesh.start_agent("a")
    view = mesh.wait_view("a", "refusing the address", state="error", tunnels=0)
    assert "203.0.113.99 is not an address" in view["state_reason"]
    assert mesh.kernel["a"].vxlan_devices() == [] and mesh.kernel["a"].table() is None
    assert not mesh.ping("a", "b")

    mesh.deactivate("a")
    mesh.activate("a")  # its own address again
    mesh.wait_view("a", "built again", state="active", tunnels=1, state_reason=None)
    assert mesh.reaches("a", "b") and mesh.reaches("b", "a")


def test_gre_is_unsupported_on_this_kernel_and_vxlan_comes_back(make_database, start_server,
                                                                 lab, tmp_path):
    """The zone's type follows neutron.conf: restart the all-in-one with gre, then vxlan."""
    database = make_database("sqlite")
    state_dir = tmp_path / "state"
    server = start_server(database, state_dir=state_dir)
    mesh = Mesh(server, lab, ["a", "b"])
    try:
        for name in "ab":
            mesh.start_agent(name)
            mesh.wait_view(name, "registered", state="pending")
            mesh.activate(name)
        for name in "ab":
            mesh.wait_view(name, "built", state="active", tunnels=1)
        assert mesh.reaches("a", "b")

        server.stop()
        gre = start_server(database, {"MIDONET": {"tunnel_protocol": "gre"}},
                           state_dir=state_dir)
        mesh.api = gre.client()
        for name in "ab":
            view = mesh.wait_view(name, "refusing gre", state="unsupported")
            assert view["state_reason"] == "gre tunnels are not available in this kernel"
            assert (view["member"], view["tunnels"], view["peers"]) == (True, 0, 1)
            assert mesh.kernel[name].vxlan_devices() == []  # nothing built
            assert mesh.kernel[name].table() is None
        assert not mesh.ping("a", "b")

        gre.stop()
        vxlan = start_server(database, state_dir=state_dir)
        mesh.api = vxlan.client()
        for name in "ab":
            mesh.wait_view(name, "back on vxlan", state="active", tunnels=1,
                           state_reason=None)
        assert mesh.lab.wait_for_ping(mesh.hosts["a"], mesh.hosts["b"].overlay_ip, 5)
    finally:
        mesh.close()


def test_the_cli_shows_what_the_kernel_holds(mesh):
    mesh.activate("a")
    mesh.activate("b")
    for name in "ab":
        mesh.wait_view(name, "built", state="active", tunnels=1)
    neutron = [str(Path(_bin()) / "neutron"), "--os-url", mesh.server.url,
               "--os-token", mesh.server.token]
    listed = subprocess.run([*neutron, "agent-list", "-f", "value", "-c", "id", "-c", "state",
                             "-c", "tunnels", "-c", "admission_drops"], capture_output=True,
                            text=True, check=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in listed.splitlines()}
    for name in "ab":
        kernel = mesh.kernel[name]
        zeros = sum(1 for mac, _ in kernel.fdb() if mac == "00:00:00:00:00:00")
        assert rows[mesh.ids[name]] == ["active", str(zeros), str(kernel.drops())]
    assert rows[mesh.ids["c"]][0] == "pending"


def test_the_data_plane_refuses_the_root_namespace(tmp_path):
    """``make run`` and every test stay off the machine's network unless told otherwise."""
    require_kernel()
    from midonet_membership.agent.dataplane import DataPlaneError

    with pytest.raises(DataPlaneError, match="root network namespace"):
        KernelDataPlane("")
    with pytest.raises(DataPlaneError, match="does not exist"):
        KernelDataPlane(f"mm-missing-{uuid.uuid4().hex[:8]}")
    done = subprocess.run([str(Path(_bin()) / "midonet-membership"), "agent",
                           "--state-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "root network namespace" in done.stderr, done.stderr


def _bin() -> str:
    import sys
    return str(Path(sys.executable).parent)


def _without_handles(objects: list[dict] | None) -> list:
    """nft objects without their handles and counter values (a rebuilt table renumbers)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("handle", "packets", "bytes")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(objects or [])



def test_a_killed_runs_namespaces_are_removed_at_the_next_start():
    require_kernel()
    from pyroute2 import netns

    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is now free: a run that was killed
    leftover = f"mmlab-{gone.pid}-dead-a"
    netns.create(leftover)
    try:
        with Lab() as lab:
            host = lab.add_host("a")
            assert leftover not in netns.listnetns()
            assert host.netns in netns.listnetns()
        assert not [n for n in netns.listnetns() if n.startswith(lab.prefix)]
    finally:
        if leftover in netns.listnetns():
            netns.remove(leftover)


def test_the_demo_shows_admission_and_leaves_nothing_behind():
    require_kernel()
    from pyroute2 import IPRoute, netns

    with IPRoute() as ipr:
        links_before = sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
    demo = subprocess.Popen([str(Path(_bin()) / "midonet-membership"), "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = demo.communicate(timeout=300)
    assert demo.returncode == 0, out + err
    assert "ping a -> b (192.0.2.2): replies" in out
    assert "ping rogue -> a (192.0.2.1): no reply" in out
    assert "a's admission table dropped 0 packet" not in out  # the rogue's were counted
    assert "ping c -> b (192.0.2.2): replies" in out and "ping b -> a (192.0.2.1): no reply" in out
    assert not [n for n in netns.listnetns() if n.startswith(f"mmlab-{demo.pid}-")]
    with IPRoute() as ipr:
        assert sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links()) == links_before
    assert subprocess.run(["nft", "list", "table", "inet", TABLE],
                          capture_output=True).returncode != 0  # none in the root namespace


def _exit_code(process: subprocess.Popen, timeout: float, log: Path) -> int:
    """The process's exit code; if it has not exited within ``timeout``, the test fails
    with where each of its threads was (SIGABRT makes faulthandler write them to its log)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait(10)
        pytest.fail(f"{process.args[1]} did not exit within {timeout} s; its log, with its "
                    f"threads' stacks at the end:\n{log.read_text()[-6000:]}")


def test_the_agent_command_builds_in_its_namespace(make_database, start_server, lab,
                                                   tmp_path):
    """``midonet-membership agent`` with ``[agent] netns``: the production entry point."""
    server = start_server(make_database("sqlite"))
    mesh = Mesh(server, lab, ["a", "b"])
    processes = []
    try:
        mesh.start_agent("a")
        host = mesh.hosts["b"]
        config = tmp_path / "agent-b.conf"
        config.write_text(f"[nsdb]\nconnection = {mesh.url}\n[agent]\nnetns = {host.netns}\n"
                          f"overlay_address = {host.overlay_address}\n"
                          "heartbeat_interval = 0.2\nreconcile_interval = 0.3\n")
        state_dir = tmp_path / "agent-b"
        log = tmp_path / "agent-b.log"
        processes.append(subprocess.Popen(
            [str(Path(_bin()) / "midonet-membership"), "agent", "--config-file", str(config),
             "--state-dir", str(state_dir)], stdout=subprocess.DEVNULL,
            stderr=open(log, "w"), env={**os.environ, "PYTHONFAULTHANDLER": "1"}))
        id_file = state_dir / "midonet_host_id.properties"
        until(id_file.exists, "b's host id")
        mesh.ids["b"] = id_file.read_text().strip().split("=", 1)[1]
        view = mesh.wait_view("b", "registered", state="pending")
        assert {"name": "ul0", "ip_addresses": [host.tunnel_ip]} in \
            view["configurations"]["interfaces"]  # read in its namespace, not ours
        assert view["vtep_mac"] == vtep_mac(mesh.ids["b"])
        mesh.activate("a")
        mesh.activate("b")
        for name in "ab":
            mesh.wait_view(name, "built", state="active", tunnels=1)
        assert mesh.lab.wait_for_ping(mesh.hosts["a"], host.overlay_ip, 5) is not None
        processes[0].terminate()  # a stopped agent leaves its tunnels up
        assert _exit_code(processes[0], 15, log) == 0
        assert mesh.reaches("a", "b")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        mesh.close()
