"""Hosts as network namespaces on one machine, for the tests, the demo and the bench.

::

    with Lab() as lab:                     # a per-run prefix: mmlab-<pid>-<random>
        a = lab.add_host("a")              # namespace mmlab-...-a, tunnel IP 198.51.100.1
        lab.ping(a, "192.0.2.2")           # from a's namespace

Each host is a namespace with ``lo`` up and one underlay veth (``ul0``) into a bridge that
lives in a namespace of its own (tunnel IPs from 198.51.100.0/24). Its agent runs in the
caller's namespace, where the NSDB is reachable, and builds the host's VXLAN device (overlay
IPs from 192.0.2.0/24) through ``[agent] netns``. Nothing is created in the root
namespace: the veths are created inside the bridge's namespace and moved to the host's.
Everything is removed on exit, and the namespaces of runs that were killed (their pid is
gone) at the next start.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import time

PREFIX = "mmlab-"
UNDERLAY = "198.51.100."
OVERLAY = "192.0.2."
BRIDGE = "br0"


@dataclasses.dataclass(frozen=True)
class LabHost:
    name: str  # short name: "a", "rogue"
    netns: str
    tunnel_ip: str  # on ul0, the underlay
    overlay_ip: str  # on the VXLAN device, once built

    @property
    def overlay_address(self) -> str:
        return f"{self.overlay_ip}/24"


def remove_leftovers(prefix: str = PREFIX) -> list[str]:
    """Remove the namespaces of earlier runs whose process is gone; returns their names."""
    from pyroute2 import netns

    removed = []
    for name in netns.listnetns():
        if not name.startswith(prefix):
            continue
        pid = name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            netns.remove(name)
            removed.append(name)
    return removed


def forge_vxlan(host: LabHost, victims: list[tuple[LabHost, str]], device: str) -> None:
    """What a rogue does: its own VXLAN ``device`` on the deployment's VNI in ``host``,
    flooding to the victims' tunnel IPs, with static ARP entries naming their overlay IPs
    and VTEP MACs (``victims``: each host with its host id), all it could know or guess."""
    from pyroute2 import NetNS

    from midonet_membership.agent.kernel import vtep_mac

    with NetNS(host.netns, flags=0) as ns:
        ul0 = ns.link_lookup(ifname="ul0")[0]
        ns.link("add", ifname=device, kind="vxlan", vxlan_id=1, vxlan_port=4789,
                vxlan_local=host.tunnel_ip, vxlan_link=ul0)
        index = ns.link_lookup(ifname=device)[0]
        ns.addr("add", index=index, address=host.overlay_ip, prefixlen=24)
        ns.link("set", index=index, state="up")
        for victim, host_id in victims:
            ns.fdb("append", ifindex=index, lladdr="00:00:00:00:00:00", dst=victim.tunnel_ip)
            ns.neigh("add", ifindex=index, dst=victim.overlay_ip, lladdr=vtep_mac(host_id),
                     state=0x80)


class Lab:
    """A bridge namespace and hosts on it; ``close`` (or leaving ``with``) removes them."""

    def __init__(self, prefix: str = PREFIX) -> None:
        from pyroute2 import NetNS, netns

        remove_leftovers(prefix)
        self.prefix = f"{prefix}{os.getpid()}-{secrets.token_hex(2)}-"
        self.hosts: list[LabHost] = []
        self.bridge_netns = f"{self.prefix}underlay"
        netns.create(self.bridge_netns)
        try:
            self._bridge = NetNS(self.bridge_netns, flags=0)
            self._bridge.link("add", ifname=BRIDGE, kind="bridge")
            for ifname in (BRIDGE, "lo"):
                self._bridge.link("set", index=self._index(self._bridge, ifname), state="up")
        except BaseException:
            netns.remove(self.bridge_netns)
            raise

    def add_host(self, name: str) -> LabHost:
        """A namespace with ``lo`` up and ``ul0`` on the bridge, holding the next tunnel IP."""
        from pyroute2 import NetNS, netns

        number = len(self.hosts) + 1
        host = LabHost(name, f"{self.prefix}{name}", f"{UNDERLAY}{number}",
                       f"{OVERLAY}{number}")
        netns.create(host.netns)
        self.hosts.append(host)
        port = f"p{number}"
        self._bridge.link("add", ifname=port, kind="veth",
                          peer={"ifname": "ul0", "net_ns_fd": host.netns})
        self._bridge.link("set", index=self._index(self._bridge, port),
                          master=self._index(self._bridge, BRIDGE), state="up")
        # No IPv6 on the host's devices: router solicitations and MLD reports of a new
        # device would otherwise cross the overlay and blur the drop counters.
        subprocess.run(["ip", "netns", "exec", host.netns, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        with NetNS(host.netns, flags=0) as ns:
            ul0 = self._index(ns, "ul0")
            ns.addr("add", index=ul0, address=host.tunnel_ip, prefixlen=24)
            ns.link("set", index=ul0, state="up")
            ns.link("set", index=self._index(ns, "lo"), state="up")
        return host

    def ping(self, host: LabHost, address: str, count: int = 1, timeout: float = 1.0,
             interval: float = 0.2) -> bool:
        """Whether ``address`` answers a ping from ``host`` (every one of ``count``)."""
        return self.ping_replies(host, address, count, timeout, interval) == count

    def ping_replies(self, host: LabHost, address: str, count: int = 1,
                     timeout: float = 1.0, interval: float = 0.2) -> int:
        """How many of ``count`` pings from ``host`` got a reply within ``timeout`` each."""
        done = subprocess.run(
            ["ip", "netns", "exec", host.netns, "ping", "-n", "-q", "-c", str(count),
             "-i", str(interval), "-W", str(timeout), address],
            capture_output=True, text=True, timeout=count * (interval + timeout) + 10)
        for line in done.stdout.splitlines():
            if " received" in line:
                return int(line.split(",")[1].split()[0])
        return 0

    def wait_for_ping(self, host: LabHost, address: str, timeout: float = 10.0) -> float:
        """Seconds until ``address`` first answers from ``host``; TimeoutError after
        ``timeout``. Each try waits 0.2 s for its reply."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.ping(host, address, timeout=0.2):
                return time.monotonic() - start
        raise TimeoutError(f"{address} did not answer {host.name} within {timeout:g} s")

    def close(self) -> None:
        from pyroute2 import netns

        self._bridge.close()
        for name in [h.netns for h in self.hosts] + [self.bridge_netns]:
            try:
                netns.remove(name)
            except OSError:
                pass

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _index(ipr, ifname: str) -> int:
        return ipr.link_lookup(ifname=ifname)[0]
