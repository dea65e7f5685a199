"""``midonet-membership demo``: activation on the wire, shown on this machine.

Builds three hosts and a rogue as network namespaces, starts the all-in-one and one agent
per host, activates hosts through the API and shows which overlay pings get through and
which are dropped (and counted) by the members' admission tables. Everything it creates is
removed at the end, also after Ctrl-C. :class:`Deployment` is shared with
``bench/dataplane.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from midonet_membership.agent.lab import Lab, LabHost, forge_vxlan

MEMBERSHIPS = "/v2.0/agent-memberships"


class Deployment:
    """An all-in-one (a subprocess, SQLite) plus hosts whose agents run in this process.

    The agents stay in the root namespace, where the NSDB file is, and build in their
    host's namespace through ``KernelDataPlane(netns)``.
    """

    def __init__(self, reconcile_interval: float = 2.0) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="mm-demo-"))
        self.reconcile_interval = reconcile_interval
        self.lab = Lab()
        self.hosts: dict[str, LabHost] = {}
        self.ids: dict[str, str] = {}
        self.agents: dict[str, Any] = {}
        self.server: subprocess.Popen | None = None
        self.url = ""

    # -- processes -----------------------------------------------------------------------------
    def start_server(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.state_dir / "all-in-one.log", "ab")
        self.server = subprocess.Popen(
            [str(Path(sys.executable).parent / "midonet-membership"), "all-in-one",
             "--state-dir", str(self.state_dir), "--bind", f"127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=1).close()
                return
            except (OSError, urllib.error.URLError):
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the all-in-one did not start; its log: "
                                       f"{self.state_dir / 'all-in-one.log'}") from None
                time.sleep(0.1)

    def add_host(self, name: str) -> LabHost:
        host = self.lab.add_host(name)
        self.hosts[name] = host
        self.ids[name] = str(uuid.uuid4())
        return host

    def start_agent(self, name: str):
        from midonet_membership import nsdb
        from midonet_membership.agent import Agent, interfaces
        from midonet_membership.agent.kernel import KernelDataPlane

        host = self.hosts[name]
        dataplane = KernelDataPlane(host.netns, overlay_address=host.overlay_address)
        store = nsdb.connect(f"sqlite:///{self.state_dir / 'nsdb.sqlite'}", role="agent")
        self.agents[name] = Agent(
            self.ids[name], store, dataplane, hostname=f"host-{name}",
            heartbeat_interval=0.5, reconcile_interval=self.reconcile_interval,
            discover=lambda: interfaces.discover(host.netns)).start()
        return self.agents[name]

    def stop_agent(self, name: str) -> None:
        self.agents.pop(name).stop()

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.lab.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- the admin's API ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> Any:
        token = (self.state_dir / "admin-token").read_text().strip()
        req = urllib.request.Request(
            self.url + path, method=method, headers={
                "X-Auth-Token": token, "Content-Type": "application/json"},
            data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def activate(self, *names: str) -> None:
        self.request("POST", MEMBERSHIPS, {"agent_memberships": [
            {"id": self.ids[n], "ip_address": self.hosts[n].tunnel_ip} for n in names]})

    def deactivate(self, name: str) -> None:
        self.request("DELETE", f"{MEMBERSHIPS}/{self.ids[name]}")

    def view(self, name: str) -> dict:
        return self.request("GET", f"/v2.0/agents/{self.ids[name]}")["agent"]

    def wait_until(self, name: str, timeout: float = 15, **fields: Any) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                view = self.view(name)
                if all(view.get(k) == v for k, v in fields.items()):
                    return view
            except urllib.error.HTTPError:  # not registered yet
                view = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {name}: wanted {fields}, agent shows {view}")
            time.sleep(0.05)

    def wait_for_drops(self, name: str, timeout: float = 10) -> int:
        """The agent's reported drop count once it shows any (it reports periodically)."""
        deadline = time.monotonic() + timeout
        while not (dropped := self.view(name)["admission_drops"]):
            if time.monotonic() > deadline:
                return dropped
            time.sleep(0.1)
        return dropped

    def ping(self, source: str, target: str) -> bool:
        return self.lab.ping(self.hosts[source], self.hosts[target].overlay_ip, count=2,
                             timeout=0.5, interval=0.1)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(text: str) -> None:
    _say(f"\n== {text}")


def _pings(demo: Deployment, pairs: list[tuple[str, str]]) -> None:
    for source, target in pairs:
        ok = demo.ping(source, target)
        mark = "replies  " if ok else "no reply "
        _say(f"   ping {source} -> {target} ({demo.hosts[target].overlay_ip}): {mark}")


def _agents(demo: Deployment, names: str) -> None:
    _say("   agent  member  state        tunnels  admission_drops")
    for name in names:
        view = demo.view(name)
        _say(f"   {name:<6} {str(view['member']):<7} {view['state']:<12} {view['tunnels']:>7}  "
             f"{view['admission_drops']:>15}")


def run_demo() -> int:
    """The README's demo; returns the exit status."""
    if os.geteuid() != 0:
        print("midonet-membership demo: needs root (it creates network namespaces)",
              file=sys.stderr)
        return 2
    for tool in ("nft", "ping"):
        if shutil.which(tool) is None:
            print(f"midonet-membership demo: {tool} is missing; run tools/ensure-netns-tools",
                  file=sys.stderr)
            return 2
    logging.getLogger().setLevel(logging.WARNING)
    _say("midonet-membership demo: hosts join the tunnel mesh only when an admin activates "
         "them.")
    demo = Deployment(reconcile_interval=0.5)
    try:
        _step("building 3 hosts and a rogue as network namespaces on one underlay bridge")
        for name in ("a", "b", "c", "rogue"):
            host = demo.add_host(name)
            _say(f"   host {name:<5} namespace {host.netns}, tunnel IP {host.tunnel_ip}, "
                 f"overlay IP {host.overlay_ip}")
        _step("starting the all-in-one (API + importer + NSDB on SQLite) and one agent per "
              "host")
        demo.start_server()
        _say(f"   API on {demo.url}/v2.0/ (state in {demo.state_dir})")
        for name in "abc":
            demo.start_agent(name)
            demo.wait_until(name, state="pending")
            _say(f"   agent {name} registered as {demo.ids[name]}: pending, no tunnels")
        forge_vxlan(demo.hosts["rogue"], [(demo.hosts[n], demo.ids[n]) for n in "ab"],
                    "rogue0")
        _say("   the rogue has a VXLAN device on the same VNI, with forged FDB and ARP "
             "entries toward a and b; it has no agent and no membership")

        _step("before any membership: nobody is on the overlay")
        _pings(demo, [("a", "b"), ("rogue", "a")])

        _step("POST agent-memberships for a and b (the admin activates them)")
        demo.activate("a", "b")
        for name in "ab":
            demo.wait_until(name, state="active", tunnels=1)
        _agents(demo, "abc")
        _pings(demo, [("a", "b"), ("b", "a"), ("rogue", "a"), ("rogue", "b")])
        for name in "ab":
            dropped = demo.wait_for_drops(name)
            _say(f"   {name}'s admission table dropped {dropped} packet(s) from outside the "
                 "membership")

        _step("POST agent-membership for c")
        demo.activate("c")
        for name, tunnels in (("a", 2), ("b", 2), ("c", 2)):
            demo.wait_until(name, state="active", tunnels=tunnels)
        _agents(demo, "abc")
        _pings(demo, [("c", "a"), ("c", "b"), ("a", "c")])

        _step("DELETE agent-membership of b (the admin deactivates it)")
        demo.deactivate("b")
        demo.wait_until("b", state="pending", tunnels=0)
        for name in "ac":
            demo.wait_until(name, state="active", tunnels=1)
        _agents(demo, "abc")
        _pings(demo, [("a", "c"), ("b", "a"), ("a", "b")])
        _say("   b's tunnel device and admission table are gone; a and c no longer send to b")
    except KeyboardInterrupt:
        _say("\ninterrupted")
        status = 130
    except Exception as exc:  # a step timed out or failed: say which, then clean up
        print(f"midonet-membership demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        status = 1
    else:
        status = 0
    finally:
        _step("cleaning up: agents, the all-in-one, every namespace (with its devices and "
              "nftables tables)")
        demo.close()
        _say("   done; nothing is left behind")
    return status
