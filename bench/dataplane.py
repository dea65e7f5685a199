"""Activation on the wire: from an admin's POST/DELETE to packets on the overlay.

Hosts are network namespaces on one underlay bridge (midonet_membership.agent.lab); the
all-in-one runs on SQLite; each host's agent runs in this process and builds its VXLAN
device, FDB and nftables admission table in its namespace (``KernelDataPlane``). Times are
taken from ``ping -D`` reply timestamps of a ping already running when the request is sent
(one echo request every ``--interval`` seconds), so they include the API, the importer, the
NSDB watch, the agents' netlink and nft work and ARP.

- ``pair_first_ping``: b not a member, a pinging b's overlay IP; POST b -> first reply.
- ``removal_drop``: b's agent stopped (a removed host that does not cooperate: its device
  stays up and it keeps sending), b pinging a; DELETE b -> the last reply a sent (after it
  b's packets are dropped by a's admission table; the drops are checked to grow).
- ``mesh_last_post``: 19 members in a mesh; POST the 20th -> every one of the 19 has had a
  reply from it (an echo and its reply cross the overlay in both directions).
- ``reference_ping``: the same method between two hosts that are members already: the
  floor of the measurement (ping start and the first interval).

Prints JSON. Targets: pair p99 <= 150 ms, removal p99 <= 150 ms, 20-host mesh <= 1 s.

    .venv/bin/python bench/dataplane.py [--runs 20] [--hosts 20] [--interval 0.005]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from midonet_membership.demo import Deployment  # noqa: E402

DEFAULTS = {"runs": 20, "hosts": 20, "interval": 0.005, "reconcile_interval": 2.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Pinger:
    """``ping -D`` from one namespace, running until stopped; reply times in epoch seconds."""

    def __init__(self, deployment: Deployment, source: str, target: str,
                 interval: float) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", deployment.hosts[source].netns, "ping", "-n", "-D", "-O",
             "-i", str(interval), "-W", "1", deployment.hosts[target].overlay_ip],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def replies(self) -> list[float]:
        """Stop, and return the timestamps of the replies."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        return [float(line[1:line.index("]")]) for line in out.splitlines()
                if line.startswith("[") and "bytes from" in line]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1),
            "runs": len(ordered)}


def first_reply_after(deployment: Deployment, source: str, target: str, interval: float,
                      act, timeout: float = 5.0) -> float:
    """Seconds from ``act()`` until the first reply of a ping already running."""
    pinger = Pinger(deployment, source, target, interval)
    time.sleep(0.1)  # the ping is running (and failing) before the request
    start = time.time()
    act()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not deployment.lab.ping(
            deployment.hosts[source], deployment.hosts[target].overlay_ip, timeout=0.2):
        pass
    time.sleep(0.05)
    replies = [t for t in pinger.replies() if t >= start]
    if not replies:
        raise RuntimeError(f"{source} -> {target}: no reply within {timeout} s")
    return replies[0] - start


def pair_and_removal(deployment: Deployment, runs: int, interval: float) -> dict:
    for name in ("a", "b"):
        deployment.add_host(name)
        deployment.start_agent(name)
        deployment.wait_until(name, state="pending")
    deployment.activate("a")
    deployment.wait_until("a", state="active")
    joins, removals, drops = [], [], []
    for run in range(runs):
        joins.append(first_reply_after(deployment, "a", "b", interval,
                                       lambda: deployment.activate("b")))
        deployment.wait_until("b", state="active", tunnels=1)
        deployment.wait_until("a", state="active", tunnels=1)
        # b's agent goes away; its device stays and it keeps sending to a
        deployment.stop_agent("b")
        before = deployment.lab.ping(deployment.hosts["b"], deployment.hosts["a"].overlay_ip)
        assert before, "b reaches a before the DELETE"
        dropped_before = _drops(deployment, "a")
        pinger = Pinger(deployment, "b", "a", interval)
        time.sleep(0.1)
        start = time.time()
        deployment.deactivate("b")
        deployment.wait_until("a", state="active", tunnels=0)
        time.sleep(0.3)  # long enough for any late reply to show
        replies = pinger.replies()
        late = [t for t in replies if t >= start]
        removals.append((late[-1] - start + interval) if late else interval)
        drops.append(_drops(deployment, "a") - dropped_before)
        deployment.start_agent("b")  # tears b's device down: pending again
        deployment.wait_until("b", state="pending", tunnels=0)
        log(f"run {run + 1}/{runs}: join {joins[-1] * 1000:.1f} ms, removal "
            f"{removals[-1] * 1000:.1f} ms, {drops[-1]} of b's packets dropped after")
    assert all(d > 0 for d in drops), f"b's packets were not all dropped: {drops}"
    deployment.activate("b")
    deployment.wait_until("b", state="active", tunnels=1)
    reference = [first_reply_after(deployment, "a", "b", interval, lambda: None)
                 for _ in range(runs)]
    deployment.deactivate("a")
    deployment.deactivate("b")
    for name in ("a", "b"):
        deployment.stop_agent(name)
    return {"pair_first_ping": percentiles(joins), "removal_drop": percentiles(removals),
            "removal_packets_dropped_min": min(drops),
            "reference_ping": percentiles(reference)}


def _drops(deployment: Deployment, name: str) -> int:
    from midonet_membership.agent.kernel import COUNTER, Nft

    for o in Nft(deployment.hosts[name].netns).list_table() or ():
        if "counter" in o and o["counter"]["name"] == COUNTER:
            return o["counter"]["packets"]
    return 0


def mesh(deployment: Deployment, hosts: int, interval: float) -> dict:
    names = [f"m{n}" for n in range(hosts)]
    for name in names:
        deployment.add_host(name)
        deployment.start_agent(name)
    for name in names:
        deployment.wait_until(name, timeout=30, state="pending")
    *first, last = names
    deployment.activate(*first)
    for name in first:
        deployment.wait_until(name, timeout=30, state="active", tunnels=len(first) - 1)
    pingers = {name: Pinger(deployment, name, last, interval) for name in first}
    time.sleep(0.2)
    start = time.time()
    deployment.activate(last)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
            deployment.lab.ping(deployment.hosts[n], deployment.hosts[last].overlay_ip,
                                timeout=0.2) for n in first):
        pass
    time.sleep(0.05)
    firsts = {}
    for name, pinger in pingers.items():
        replies = [t for t in pinger.replies() if t >= start]
        if not replies:
            raise RuntimeError(f"{name} never reached {last}")
        firsts[name] = replies[0] - start
    return {"mesh_last_post": {"hosts": hosts,
                               "all_pairs_ms": round(max(firsts.values()) * 1000, 1),
                               "median_pair_ms": round(statistics.median(
                                   firsts.values()) * 1000, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=DEFAULTS["runs"])
    parser.add_argument("--hosts", type=int, default=DEFAULTS["hosts"])
    parser.add_argument("--interval", type=float, default=DEFAULTS["interval"],
                        help="seconds between echo requests of the measuring pings")
    parser.add_argument("--reconcile-interval", type=float,
                        default=DEFAULTS["reconcile_interval"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) != DEFAULTS[k]}
    deployment = Deployment(reconcile_interval=args.reconcile_interval)
    try:
        deployment.start_server()
        log("pair: POST -> first ping, DELETE -> dropped")
        result = pair_and_removal(deployment, args.runs, args.interval)
        log(f"mesh of {args.hosts}")
        result.update(mesh(deployment, args.hosts, args.interval))
    finally:
        deployment.close()
    print(json.dumps({
        "bench": "dataplane", "layout": "all-in-one on SQLite, agents in one process "
        "driving one network namespace each, VXLAN over a veth/bridge underlay",
        "non_default_settings": settings or "none", **result,
        "targets": {"pair_first_ping_p99_ms": 150, "removal_drop_p99_ms": 150,
                    "mesh_all_pairs_ms": 1000}}, indent=2))


if __name__ == "__main__":
    main()
