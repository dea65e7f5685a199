"""Activation latency with 200 agents on ZooKeeper.

200 agents run in 100 worker processes (2 each, every agent with its own ZooKeeper session,
as separate hosts would have: the honest layout, not the cheapest). Since a members event
costs an agent one thread hand-off (see nsdb/zookeeper.py), fuller processes are cheaper:
waking a process costs more than waking a thread. Measured here: agent CPU per activation
55-66 ms at 100 x 2 (~0.4 ms per member agent and event), 36 ms at 4 x 50 (--workers 4).
100 are members already; then 100 more are activated one at a time through the API. For
each POST we time until the new agent is active AND every other member's peer list includes
it. Prints JSON with p50/p99.

    .venv/bin/python bench/activation.py [--agents 200] [--activations 100]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import select
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import contextlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from midonet_membership.agent.dataplane import Built, RecordingDataPlane  # noqa: E402
from tests.fixtures.databases import ADMIN_URLS  # noqa: E402
from tests.fixtures.zookeeper import ZooKeeperNode, _free_port  # noqa: E402

BIN = Path(sys.executable).parent


class Server:
    """The production layout on one machine: a gunicorn API (1 x 8) and an importer process.

    Self-contained rather than borrowed from bench/api.py so that one bench's changes do not
    break the other.
    """

    def __init__(self, database_url: str, nsdb_url: str) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="mm-act-state-"))
        self.port = _free_port()
        config = self.state / "neutron.conf"
        config.write_text(f"[database]\nconnection = {database_url}\n"
                          f"[nsdb]\nconnection = {nsdb_url}\n")
        common = ["--config-file", str(config), "--state-dir", str(self.state)]
        log = open(self.state / "server.log", "ab")
        self.procs = [subprocess.Popen([str(BIN / "midonet-membership"), *command, *common],
                                       stdout=log, stderr=subprocess.STDOUT)
                      for command in (["api", "--workers", "1", "--threads", "8", "--bind",
                                       f"127.0.0.1:{self.port}"], ["importer"])]
        deadline = time.monotonic() + 60
        token = self.state / "admin-token"
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                if token.exists() and token.read_text().strip():
                    break
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                self.stop()
                raise RuntimeError((self.state / "server.log").read_text()[-3000:])
            time.sleep(0.05)
        self.token = token.read_text().strip()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def postgresql_database() -> Iterator[str]:
    """A fresh PostgreSQL database (the machine's server, as the tests use it)."""
    name = f"mm_act_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URLS["postgresql"], isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(ADMIN_URLS["postgresql"]).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class _Reporter(RecordingDataPlane):
    """A dry-run data plane that also reports every state it is given to the parent process.

    One ``os.write`` of a short line on a pipe shared by all workers (atomic below
    PIPE_BUF): a ``multiprocessing.Queue`` would add a pickling feeder thread to every agent
    process, measurement overhead the agents would be charged for.
    """

    def __init__(self, events_fd: int) -> None:
        super().__init__()
        self.events_fd = events_fd

    def apply(self, state) -> Built:
        # Members only join during the run, so the peer count says who is up to date.
        os.write(self.events_fd, f"{state.host_id} {state.status} {len(state.peers)} "
                                 f"{time.time()}\n".encode())
        return super().apply(state)


class _Events:
    """The parent's end of the reporters' pipe: one (host, status, peers, time) at a time."""

    def __init__(self, read_fd: int) -> None:
        self.read_fd = read_fd
        self.buffer = b""

    def get(self, timeout: float) -> tuple[str, str, int, float]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                raise TimeoutError("no agent event")
            self.buffer += os.read(self.read_fd, 1 << 16)
        line, _, self.buffer = self.buffer.partition(b"\n")
        host, status, count, at = line.decode().split()
        return host, status, int(count), float(at)


def run_agents(zk_url: str, host_ids: list[str], events_fd: int, ready, stop) -> None:
    from midonet_membership import nsdb
    from midonet_membership.agent import Agent

    agents = [Agent(h, nsdb.connect(zk_url, role="agent"), _Reporter(events_fd),
                    hostname=f"bench-{h[:8]}").start()
              for h in host_ids]
    ready.set()
    stop.wait()
    for agent in agents:
        agent.stop()


def _tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``roots`` and all their descendants."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    wanted = set(roots)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in wanted} - wanted
        wanted |= more
        grew = bool(more)
    return sum(ticks.get(pid, 0) for pid in wanted) / os.sysconf("SC_CLK_TCK")


def ip_of(n: int) -> str:
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def measure(server: Server, zk_url: str, zk_pid: int, agents: int, activations: int,
            workers: int) -> dict:
    ctx = mp.get_context("fork")
    read_fd, write_fd = os.pipe()
    events, stop = _Events(read_fd), ctx.Event()
    hosts = [str(uuid.uuid4()) for _ in range(agents)]
    procs, readies = [], []
    for w in range(workers):
        ready = ctx.Event()
        p = ctx.Process(target=run_agents, args=(zk_url, hosts[w::workers], write_fd, ready,
                                                 stop), daemon=True)
        p.start()
        procs.append(p)
        readies.append(ready)
    for ready in readies:
        ready.wait(120)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"X-Auth-Token": server.token, "Content-Type": "application/json"}

    def post(items: list[dict]) -> None:
        conn.request("POST", "/v2.0/agent-memberships",
                     json.dumps({"agent_memberships": items}), headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201, resp.status

    initial = agents - activations
    post([{"id": h, "ip_address": ip_of(i)} for i, h in enumerate(hosts[:initial])])
    peer_count: dict[str, int] = {}
    status: dict[str, str] = {}

    def drain_until(done, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        last = 0.0
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("agents did not converge")
            host, st, count, at = events.get(timeout=remaining)
            status[host], peer_count[host] = st, count
            last = max(last, at)
        return last

    drain_until(lambda: sum(s == "active" for s in status.values()) == initial, 120)
    groups = {"agents": [p.pid for p in procs],
              "api_and_importer": [p.pid for p in server.procs], "zookeeper": [zk_pid]}
    cpu_before = {name: _tree_cpu(pids) for name, pids in groups.items()}
    client_before = time.process_time()
    latencies = []
    for k in range(initial, agents):
        host = hosts[k]
        start = time.time()
        post([{"id": host, "ip_address": ip_of(k)}])
        # k members before: each must now list k peers, and the new agent too
        done_at = drain_until(lambda h=host, n=k: status.get(h) == "active" and all(
            peer_count.get(m) == n for m in hosts[:n + 1]), 30)
        latencies.append(done_at - start)
    cpu = {name: round((_tree_cpu(pids) - cpu_before[name]) / activations * 1000, 1)
           for name, pids in groups.items()}
    cpu["bench_client"] = round((time.process_time() - client_before) / activations * 1000, 1)
    stop.set()
    for p in procs:
        p.join(30)
    latencies.sort()
    return {"agents": agents, "layout": f"{workers} processes x {agents // workers} agents, "
            "one ZooKeeper session per agent", "members_before": initial,
            "activations": activations,
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000, 1),
            "max_ms": round(latencies[-1] * 1000, 1),
            # Where the time goes, independent of how busy the shared machine is: CPU per
            # activation (PostgreSQL's own processes not counted). Divided by the cores, it
            # is the floor the latency cannot beat on this machine.
            "cpu_ms_per_activation": cpu,
            "cpu_floor_ms": round(sum(cpu.values()) / (os.cpu_count() or 1), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--activations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=100,
                        help="agent processes (separate hosts are separate processes)")
    args = parser.parse_args()
    load_before = round(os.getloadavg()[0], 1)  # the machine is shared: say how busy
    zk = ZooKeeperNode(Path(tempfile.mkdtemp(prefix="mm-act-zk-")), _free_port()).start()
    zk.wait_ready()
    zk_url = f"zookeeper://127.0.0.1:{zk.client_port}/activation-{uuid.uuid4().hex[:8]}"
    try:
        with postgresql_database() as database_url:
            server = Server(database_url, zk_url)
            try:
                result = measure(server, zk_url, zk.process.pid, args.agents,
                                 args.activations, args.workers)
            finally:
                server.stop()
    finally:
        zk.kill()
    print(json.dumps({"machine": {"cores": os.cpu_count(),
                                  "load_average_1min_before": load_before},
                      "backend":
                      "PostgreSQL + ZooKeeper (gunicorn API + importer process)",
                      "target_p99_ms": 100, **result,
                      "target_met": result["p99_ms"] <= 100}, indent=2))


if __name__ == "__main__":
    main()
