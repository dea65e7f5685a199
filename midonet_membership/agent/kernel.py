"""The kernel data plane: a VXLAN device, its FDB and an nftables admission table.

What an active host holds, all in one network namespace (``[agent] netns``)::

    mm-vxlan0   vxlan id VNI dstport 4789 local <tunnel ip> nolearning, MAC from the host id
      fdb 00:00:00:00:00:00 dst <peer ip>   one per peer: broadcast and ARP reach every member
      fdb <peer VTEP MAC>   dst <peer ip>   one per peer: its unicast goes to it alone
    table inet midonet_membership
      set members { <peer ips> }            updated in one atomic nft batch (flush + add)
      udp dport 4789 ip saddr @members accept
      udp dport 4789 counter name admission_drops drop

``apply`` reconciles: it reads what the kernel has and changes only the difference, so a
restart, a crash or a hand-made change converges without duplicate devices or entries.
Netlink goes through one pyroute2 socket kept open for the agent's life (with pyroute2 0.9 a
namespaced socket forks a helper: 25-30 ms each); ``nft`` is driven as ``nft -j -f -``
(Debian's Python binding only binds the system Python), under ``ip netns exec`` for a
namespace other than our own. Nothing here shells out to ``ip link`` or ``bridge``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from midonet_membership.agent.dataplane import UNSUPPORTED, Built, DataPlaneError
from midonet_membership.agent.state import ACTIVE, PENDING, AgentState

LOG = logging.getLogger(__name__)

VXLAN_PORT = 4789
ZERO_MAC = "00:00:00:00:00:00"
TABLE = "midonet_membership"
COUNTER = "admission_drops"
# The inode of the initial network namespace on kernels that fix it (PROC_NET_INIT_INO,
# include/linux/proc_ns.h); read /proc/1/ns/net when we may, this when we may not.
INIT_NET_INODE = 0xEFFFFFF9
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
# After an admission, stuck neighbour entries are flushed again at these times (seconds).
REFLUSH_AFTER = tuple(n * 0.05 for n in range(1, 21))  # every 50 ms for 1 s
# Tunnel types and the link kind each needs from the kernel.
KINDS = {"vxlan": "vxlan", "gre": "gretap"}


def vtep_mac(host_id: str) -> str:
    """A locally administered unicast MAC derived from the host id.

    Stable across restarts and device re-creations, so the unicast FDB entries the peers
    hold for this host stay right when a deleted device is rebuilt.
    """
    digest = hashlib.sha256(uuid.UUID(host_id).bytes if _is_uuid(host_id)
                            else host_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def namespace_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}" if netns else "/proc/self/ns/net").st_ino


def is_root_namespace(netns: str) -> bool:
    inode = namespace_inode(netns)
    try:
        return inode == os.stat("/proc/1/ns/net").st_ino
    except OSError:  # not ours to read (containers): the kernel's fixed init_net inode
        return inode == INIT_NET_INODE


class Nft:
    """``nft -j`` in one namespace; every batch is atomic (all of it applies, or nothing)."""

    def __init__(self, netns: str) -> None:
        nft = shutil.which("nft")
        if nft is None:
            raise DataPlaneError("nft not found: install Debian's nftables package "
                                 "(tools/ensure-netns-tools does)")
        self.command = ["ip", "netns", "exec", netns, nft] if netns else [nft]

    def run(self, commands: list[dict]) -> None:
        self._nft(["-j", "-f", "-"], json.dumps({"nftables": commands}))

    def start(self, commands: list[dict]) -> subprocess.Popen:
        """Send a batch without waiting, so netlink work can overlap it; see finish()."""
        process = subprocess.Popen(self.command + ["-j", "-f", "-"], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        process.stdin.write(json.dumps({"nftables": commands}))
        process.stdin.close()
        return process

    @staticmethod
    def finish(process: subprocess.Popen) -> None:
        try:
            error = process.stderr.read()
            process.wait(timeout=30)
        finally:
            process.stderr.close()
        if process.returncode:
            raise DataPlaneError(f"nft -j -f failed: {error.strip()}")

    def list_table(self) -> list[dict] | None:
        """The table's objects (``{"set": ...}``, ``{"rule": ...}``...), None if absent."""
        out = self._nft(["-j", "list", "table", "inet", TABLE], None, missing_ok=True)
        if out is None:
            return None
        return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]

    def _nft(self, args: list[str], stdin: str | None, missing_ok: bool = False
             ) -> str | None:
        done = subprocess.run(self.command + args, input=stdin, capture_output=True,
                              text=True, timeout=30)
        if done.returncode:
            if missing_ok and "No such file or directory" in done.stderr:
                return None
            raise DataPlaneError(f"nft {' '.join(args[:3])} failed: {done.stderr.strip()}")
        return done.stdout


def admission_rules(port: int) -> list[list[dict]]:
    """The chain's two rules, in the form ``nft -j list`` gives them back."""
    dport = {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                       "right": port}}
    return [[dport, {"match": {"op": "==",
                               "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "right": "@members"}}, {"accept": None}],
            [dport, {"counter": COUNTER}, {"drop": None}]]


def _obj(kind: str, **fields: Any) -> dict:
    return {kind: {"family": "inet", "table": TABLE, **fields}}


class KernelDataPlane:
    """Builds the host's tunnels in a network namespace. See the module docstring.

    ``netns``: a name under /run/netns, or "" for the agent's own namespace; the machine's
    root namespace is refused unless ``allow_root_namespace``.
    """

    def __init__(self, netns: str = "", *, vni: int = 1, mtu: int | None = None,
                 device: str = "mm-vxlan0", overlay_address: str | None = None,
                 allow_root_namespace: bool = False, port: int = VXLAN_PORT) -> None:
        from pyroute2 import IPRoute  # only an agent that builds tunnels needs netlink

        if netns and not os.path.exists(f"/run/netns/{netns}"):
            raise DataPlaneError(f"network namespace {netns!r} does not exist "
                                 "([agent] netns); create it first")
        if not allow_root_namespace and is_root_namespace(netns):
            raise DataPlaneError(
                "refusing to build tunnels in this machine's root network namespace: set "
                "[agent] netns to the host's namespace, or [agent] allow_root_namespace = "
                "true on a real hypervisor")
        self.netns = netns
        self.vni, self.mtu, self.device, self.port = vni, mtu, device, port
        self.overlay_address = overlay_address
        # flags=0: the default flags would silently create a missing namespace.
        self._ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
        try:
            self._nft = Nft(netns)
            self.kinds = self._probe_kinds()
        except BaseException:
            self._ipr.close()  # its helper process must not outlive a refused start
            raise
        self._lock = threading.Lock()
        self._members: frozenset[str] | None = None  # the nft set as last written
        self._table_absent = False  # known to be absent (we removed it), not just unknown
        self._peers: frozenset[str] = frozenset()  # peers of the last successful apply
        self._drops_before = 0  # drops counted by tables that were since rebuilt
        self._drops_seen = 0
        self._last: AgentState | None = None
        self._closed = False
        self._flush_generation = 0

    # -- the interface ---------------------------------------------------------------------------
    def vtep_mac(self, host_id: str) -> str | None:
        return vtep_mac(host_id)

    def apply(self, state: AgentState) -> Built:
        with self._lock:
            verify = state == self._last  # nothing changed here: check the kernel fully
            built = self._apply(state, verify)
            self._last = state
            return built

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ipr.close()

    # -- converging --------------------------------------------------------------------------------
    def _apply(self, state: AgentState, verify: bool) -> Built:
        if state.status != ACTIVE:
            self._teardown()
            return Built(PENDING, admission_drops=self._drops())
        kind = KINDS.get(state.tunnel_type or "")
        if kind not in self.kinds:
            self._teardown()
            return Built(UNSUPPORTED, f"{state.tunnel_type} tunnels are not available in "
                                      "this kernel", admission_drops=self._drops())
        if kind != "vxlan":
            self._teardown()
            return Built(UNSUPPORTED, f"{state.tunnel_type} tunnels ({kind}) are not built "
                                      "by this data plane yet", admission_drops=self._drops())
        try:
            underlay = self._underlay_index(state.local_ip)
        except DataPlaneError:
            self._teardown()  # no tunnel from an address the membership no longer names
            raise
        peers = dict(state.peers)
        ips = frozenset(peers.values())
        # The admission batch runs while netlink builds the device; both are done before
        # the neighbour flush below lets ARP (and so the first packet) toward a new peer go.
        settle = self._admit(ips, verify)
        try:
            index = self._ensure_device(state, underlay)
            self._ensure_fdb(index, peers, dict(state.peer_macs))
        finally:
            settle()
        if ips - self._peers:  # a new peer: ARP entries that failed before it was admitted
            self._flush_stuck_neighbours(index)
            self._flush_again_soon()
        self._peers = ips
        return Built(ACTIVE, tunnels=len(peers), admission_drops=self._drops())

    def _teardown(self) -> None:
        """Everything removed: the device (with its FDB and neighbours) and the table."""
        for index in self._ipr.link_lookup(ifname=self.device):
            self._ipr.link("del", index=index)
        table = self._nft.list_table()
        if table is not None:
            self._retire_table(table)
        self._members = None
        self._table_absent = True  # the next activation creates it without looking first
        self._peers = frozenset()

    def _admit(self, ips: frozenset[str], verify: bool) -> Callable[[], None]:
        """Bring the admission table in step with the members, in one atomic batch.

        Returns the function that waits for the batch (it may still be running).
        """
        if not verify and self._members is None and self._table_absent:
            process = self._nft.start(self._table_commands() + self._set_commands(ips))
            return lambda: self._settle(process, ips, created=True)
        if verify or self._members is None:
            table = self._nft.list_table()
            if table is not None and not self._table_is_ours(table):
                LOG.warning("nftables table %s was changed by hand: rebuilding it", TABLE)
                self._retire_table(table)
                table = None
            if table is None:
                if self._members is not None:
                    LOG.warning("nftables table %s was removed: rebuilding it", TABLE)
                    self._drops_before += self._drops_seen
                    self._drops_seen = 0
                self._nft.run(self._table_commands() + self._set_commands(ips))
                self._members, self._table_absent = ips, False
                return lambda: None
            self._count_drops(table)
            self._members = self._set_elements(table)
        if ips == self._members:
            return lambda: None
        process = self._nft.start(self._set_commands(ips))
        return lambda: self._settle(process, ips, created=False)

    def _settle(self, process: subprocess.Popen, ips: frozenset[str], created: bool) -> None:
        try:
            self._nft.finish(process)
        except DataPlaneError:
            self._members, self._table_absent = None, False  # look before the next try
            if created:
                raise
            # The table was removed behind our back: rebuild it now.
            LOG.warning("nftables set update failed: checking table %s", TABLE)
            self._admit(ips, verify=True)()
            return
        self._members, self._table_absent = ips, False

    def _retire_table(self, table: list[dict]) -> None:
        """Delete the table, keeping its drop count in the running total."""
        self._count_drops(table)
        self._drops_before += self._drops_seen
        self._drops_seen = 0
        self._nft.run([{"delete": {"table": {"family": "inet", "name": TABLE}}}])

    def _table_commands(self) -> list[dict]:
        commands = [{"add": {"table": {"family": "inet", "name": TABLE}}},
                    {"add": _obj("set", name="members", type="ipv4_addr")},
                    {"add": _obj("counter", name=COUNTER)},
                    {"add": _obj("chain", name="input", type="filter", hook="input", prio=0,
                                 policy="accept")}]
        return commands + [{"add": _obj("rule", chain="input", expr=expr)}
                           for expr in admission_rules(self.port)]

    @staticmethod
    def _set_commands(ips: frozenset[str]) -> list[dict]:
        commands = [{"flush": _obj("set", name="members")}]
        if ips:
            commands.append({"add": _obj("element", name="members", elem=sorted(ips))})
        return commands

    def _table_is_ours(self, table: list[dict]) -> bool:
        chains = [o["chain"] for o in table if "chain" in o]
        rules = [o["rule"]["expr"] for o in table if "rule" in o]
        sets = [o["set"]["name"] for o in table if "set" in o]
        counters = [o["counter"]["name"] for o in table if "counter" in o]
        return (sets == ["members"] and counters == [COUNTER] and rules ==
                admission_rules(self.port) and [(c["name"], c.get("hook"), c.get("policy"))
                                                for c in chains] == [("input", "input",
                                                                      "accept")])

    @staticmethod
    def _set_elements(table: list[dict]) -> frozenset[str]:
        for o in table:
            if "set" in o:
                return frozenset(e for e in o["set"].get("elem", []) if isinstance(e, str))
        return frozenset()

    def _count_drops(self, table: list[dict] | None) -> None:
        for o in table or ():
            if "counter" in o and o["counter"]["name"] == COUNTER:
                self._drops_seen = o["counter"]["packets"]

    def _drops(self) -> int:
        return self._drops_before + self._drops_seen

    def _ensure_device(self, state: AgentState, underlay: int) -> int:
        """The VXLAN device as configured, created or repaired; returns its index."""
        mac = vtep_mac(state.host_id)
        [index] = self._ipr.link_lookup(ifname=self.device) or [None]
        if index is not None:
            link = self._ipr.get_links(index)[0]
            info = link.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info else None
            wanted = ("vxlan", self.vni, state.local_ip, self.port, 0, underlay)
            found = None if data is None else (
                info.get_attr("IFLA_INFO_KIND"), data.get_attr("IFLA_VXLAN_ID"),
                data.get_attr("IFLA_VXLAN_LOCAL"), data.get_attr("IFLA_VXLAN_PORT"),
                data.get_attr("IFLA_VXLAN_LEARNING"), data.get_attr("IFLA_VXLAN_LINK"))
            if found != wanted:
                LOG.info("tunnel device %s is %s, want %s: re-creating it", self.device,
                         found, wanted)
                self._ipr.link("del", index=index)
                index = None
        if index is None:
            options: dict[str, Any] = {"address": mac}
            if self.mtu:
                options["mtu"] = self.mtu
            self._ipr.link("add", ifname=self.device, kind="vxlan", vxlan_id=self.vni,
                           vxlan_port=self.port, vxlan_local=state.local_ip,
                           vxlan_link=underlay, vxlan_learning=0, **options)
            [index] = self._ipr.link_lookup(ifname=self.device)
            link = self._ipr.get_links(index)[0]
        changes: dict[str, Any] = {}
        if link.get_attr("IFLA_ADDRESS") != mac:
            changes["address"] = mac
        if self.mtu and link.get_attr("IFLA_MTU") != self.mtu:
            changes["mtu"] = self.mtu
        if not link["flags"] & 1:
            changes["state"] = "up"
        if changes:
            self._ipr.link("set", index=index, **changes)
        if self.overlay_address:
            self._ensure_overlay_address(index)
        return index

    def _underlay_index(self, local_ip: str | None) -> int:
        for addr in self._ipr.get_addr(family=2):
            if addr.get_attr("IFA_ADDRESS") == local_ip:
                return addr["index"]
        where = f"namespace {self.netns}" if self.netns else "this namespace"
        raise DataPlaneError(f"tunnel IP {local_ip} is not an address of any interface in "
                             f"{where}: the membership's ip_address must be one of the "
                             "host's own")

    def _ensure_overlay_address(self, index: int) -> None:
        address, _, prefix = self.overlay_address.partition("/")
        present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                   for a in self._ipr.get_addr(index=index, family=2)}
        if (address, int(prefix or 32)) not in present:
            self._ipr.addr("add", index=index, address=address, prefixlen=int(prefix or 32))

    def _ensure_fdb(self, index: int, peers: dict[str, str], macs: dict[str, str]) -> None:
        """All-zeros entry per peer (flooding) plus its VTEP MAC's entry (unicast)."""
        wanted = {(ZERO_MAC, ip) for ip in peers.values()}
        wanted |= {(macs[h], ip) for h, ip in peers.items() if h in macs}
        found = set()
        for entry in self._ipr.fdb("dump", ifindex=index):
            if entry["ifindex"] == index:
                found.add((entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")))
        for mac, ip in found - wanted:
            if ip is None:
                self._ipr.fdb("del", ifindex=index, lladdr=mac)
            else:
                self._ipr.fdb("del", ifindex=index, lladdr=mac, dst=ip)
        for mac, ip in sorted(wanted - found):
            self._ipr.fdb("append", ifindex=index, lladdr=mac, dst=ip)

    def _flush_stuck_neighbours(self, index: int) -> None:
        """Without this a host whose ARP went INCOMPLETE before the peer was admitted
        waits ~800 ms for the kernel to retry; with it the next packet resolves (5-12 ms)."""
        for entry in self._ipr.neigh("dump", ifindex=index):
            if entry["ifindex"] == index and entry["state"] & (NUD_INCOMPLETE | NUD_FAILED):
                try:
                    self._ipr.neigh("del", ifindex=index, dst=entry.get_attr("NDA_DST"))
                except Exception as exc:  # gone meanwhile
                    LOG.debug("neighbour flush: %s", exc)

    def _flush_again_soon(self) -> None:
        """Flush stuck entries again for a moment after an admission.

        The new peer's agent builds its side at the same time as we do ours; an ARP request
        sent (by a running ping) between our flush and the moment its device is up is lost,
        and the kernel retries only after ``retrans_time`` (1 s). Measured with
        bench/dataplane.py on a loaded machine (load 10-12 on 2 cores): a new pair's first
        ping p50 750 ms with one flush, 190-220 ms re-flushing at 20/50/100/200/400/800 ms;
        every 50 ms for 1 s: p50 72 ms, p99 184 ms (10 runs, load 9.5), following the
        slower side's build instead of the kernel's retry.
        """
        self._flush_generation += 1
        generation = self._flush_generation

        def run() -> None:
            slept = 0.0
            for at in REFLUSH_AFTER:
                time.sleep(at - slept)
                slept = at
                with self._lock:
                    if self._closed or generation != self._flush_generation:
                        return
                    indexes = self._ipr.link_lookup(ifname=self.device)
                    if not indexes:
                        return
                    try:
                        self._flush_stuck_neighbours(indexes[0])
                    except Exception as exc:  # the device went away meanwhile
                        LOG.debug("neighbour re-flush: %s", exc)
                        return
        threading.Thread(target=run, daemon=True, name="neighbour-reflush").start()

    def _probe_kinds(self) -> frozenset[str]:
        """Which tunnel link kinds this kernel has: create and delete a probe of each.

        Checked, not assumed: kernels of one machine kind differ (no gretap here, and no
        modules to load).
        """
        kinds = set()
        name = f"mmprobe{os.getpid() % 100000}"
        for kind in sorted(set(KINDS.values())):
            # A VNI and port of their own: the probe must not collide with a device we built.
            options = {"vxlan_id": 16777215, "vxlan_port": 4790} if kind == "vxlan" else {}
            try:
                self._ipr.link("add", ifname=name, kind=kind, **options)
            except Exception as exc:
                code = getattr(exc, "code", None)
                if code in (errno.EOPNOTSUPP, errno.ENOENT):
                    continue
                if code != errno.EEXIST:
                    raise
            for index in self._ipr.link_lookup(ifname=name):
                self._ipr.link("del", index=index)
            kinds.add(kind)
        return frozenset(kinds)
