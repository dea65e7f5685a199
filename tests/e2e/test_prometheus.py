"""Debian's Prometheus scrapes a running deployment in the production layout.

``midonet-membership api --workers 2`` (gunicorn; its master serves all workers' samples),
``midonet-membership importer`` and two ``midonet-membership agent`` processes, each on its
own ``[metrics]`` listen address on 127.0.0.1, scraped every second by a Prometheus server
started here (``tools/ensure-prometheus`` installs the package; its own service is not used).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.fixtures.databases import require_server
from tests.fixtures.servers import BIN, ApiClient, free_port, stop_process

pytestmark = pytest.mark.slow

PROMETHEUS = "/usr/bin/prometheus"
MEMBERSHIPS = "/v2.0/agent-memberships"
BURST = 1000


class Process:
    def __init__(self, name: str, command: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_port(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", port), timeout=0.2):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {port}:\n"
                           + self.log_path.read_text())

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


def _write_conf(path: Path, sections: dict[str, dict[str, str]]) -> Path:
    with open(path, "w") as f:
        for section, options in sections.items():
            f.write(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return path


@pytest.fixture(scope="module")
def deployment(make_database, tmp_path_factory):
    if not os.path.exists(PROMETHEUS):
        require_server(f"{PROMETHEUS} is missing (tools/ensure-prometheus installs it as root)")
    root = tmp_path_factory.mktemp("deployment")
    ports = {name: free_port() for name in ("api", "api_metrics", "importer_metrics",
                                            "agent0_metrics", "agent1_metrics", "prometheus")}
    conf = _write_conf(root / "neutron.conf", {
        "DEFAULT": {"state_dir": str(root)},
        "database": {"connection": make_database("sqlite")},
        "nsdb": {"connection": f"sqlite:///{root}/nsdb.sqlite"},
        "agent": {"heartbeat_interval": "0.5", "liveness_timeout": "3"},
        "metrics": {"api_listen": f"127.0.0.1:{ports['api_metrics']}",
                    "importer_listen": f"127.0.0.1:{ports['importer_metrics']}"}})
    processes: list[Process] = []
    try:
        api = Process("api", [str(BIN / "midonet-membership"), "api", "--config-file", str(conf),
                              "--bind", f"127.0.0.1:{ports['api']}", "--workers", "2",
                              "--threads", "4"], root)
        processes.append(api)
        api.wait_port(ports["api"])
        importer = Process("importer", [str(BIN / "midonet-membership"), "importer",
                                        "--config-file", str(conf)], root)
        processes.append(importer)
        importer.wait_port(ports["importer_metrics"])
        for i in range(2):
            agent_conf = _write_conf(root / f"agent{i}.conf", {"metrics": {
                "agent_listen": f"127.0.0.1:{ports[f'agent{i}_metrics']}"}})
            agent = Process(f"agent{i}", [
                str(BIN / "midonet-membership"), "agent", "--dry-run", "--config-file",
                str(conf), "--config-file", str(agent_conf),
                "--state-dir", str(root / f"agent{i}")], root)
            processes.append(agent)
            agent.wait_port(ports[f"agent{i}_metrics"])
        targets = {name: f"127.0.0.1:{ports[name + '_metrics']}"
                   for name in ("api", "importer", "agent0", "agent1")}
        prometheus_yml = root / "prometheus.yml"
        prometheus_yml.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": name, "static_configs": [{"targets": [target]}]}
                               for name, target in targets.items()]}))
        prometheus = Process("prometheus", [
            PROMETHEUS, f"--config.file={prometheus_yml}",
            f"--storage.tsdb.path={root / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}"], root)
        processes.append(prometheus)
        prometheus.wait_port(ports["prometheus"])
        _wait_ready(f"http://127.0.0.1:{ports['prometheus']}/-/ready", prometheus)
        token = (root / "admin-token").read_text().strip()
        yield {"api": ApiClient(f"http://127.0.0.1:{ports['api']}", token=token),
               "prometheus": f"http://127.0.0.1:{ports['prometheus']}", "root": root,
               "processes": processes}
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(root / "prometheus-data", ignore_errors=True)


def _wait_ready(url: str, process: Process, timeout: float = 60) -> None:
    """Prometheus answers 503 until its TSDB is open."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, process.log_path.read_text()
            time.sleep(0.2)


def query(deployment, promql: str) -> list[dict]:
    url = f"{deployment['prometheus']}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(deployment, promql: str, check, timeout: float = 30) -> list[dict]:
    """Query until ``check(result)`` holds; returns that result."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(deployment, promql)
        if check(result):
            return result
        assert time.monotonic() < deadline, f"{promql}: {result}"
        time.sleep(0.5)


def _post_burst(api: ApiClient, count: int, threads: int = 8) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def post(indices: range) -> None:
        for n in indices:
            # 198.18.0.0/15, the benchmarking range: table data only, never contacted
            ip = f"198.18.{n // 250}.{n % 250 + 1}"
            got = api.post(MEMBERSHIPS, {"agent_membership": {
                "id": str(uuid.uuid4()), "ip_address": ip}}).status
            with lock:
                statuses.append(got)
    workers = [threading.Thread(target=post, args=(range(t, count, threads),))
               for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses


def test_every_process_is_scraped(deployment):
    up = wait_for(deployment, "up", lambda r: len(r) == 4 and all(
        s["value"][1] == "1" for s in r))
    assert {s["metric"]["job"] for s in up} == {"api", "importer", "agent0", "agent1"}
    health = wait_for(deployment, '{__name__=~"midonet_database_up|midonet_nsdb_up"}',
                      lambda r: len(r) == 4)
    assert {(s["metric"]["__name__"], s["metric"]["process"], s["value"][1]) for s in health} == {
        ("midonet_database_up", "api", "1"), ("midonet_database_up", "importer", "1"),
        ("midonet_nsdb_up", "api", "1"), ("midonet_nsdb_up", "importer", "1")}
    wait_for(deployment, "midonet_importer_leader", lambda r: [s["value"][1] for s in r] == ["1"])


def test_importer_lag_is_zero_after_a_burst_of_posts(deployment):
    api = deployment["api"]
    statuses = _post_burst(api, BURST)
    assert statuses.count(201) == BURST, sorted(set(statuses))
    burst_done = time.time()
    # Every worker's requests, summed by Prometheus over the gunicorn workers' samples.
    wait_for(deployment, 'sum(midonet_api_requests_total{operation="create_agent_membership",'
             'status="201"})', lambda r: r and float(r[0]["value"][1]) >= BURST)
    lag = wait_for(deployment, "midonet_importer_lag_tasks",
                   lambda r: r and r[0]["value"][0] > burst_done + 1 and r[0]["value"][1] == "0")
    assert lag[0]["metric"]["job"] == "importer"
    assert query(deployment, "midonet_importer_lag_seconds")[0]["value"][1] == "0"
    applied = query(deployment, "midonet_importer_tasks_applied_total")
    assert float(applied[0]["value"][1]) >= BURST
    # The alert of the README does not fire
    assert query(deployment, "midonet_importer_lag_seconds > 30") == []


def test_agent_state_series_match_the_agents_api(deployment):
    api = deployment["api"]
    agents = wait_for_agents(api, 2)
    member = agents[0]["id"]
    assert api.post(MEMBERSHIPS, {"agent_membership": {
        "id": member, "ip_address": "198.51.100.250"}}).status == 201

    def states() -> dict[str, str]:
        return {s["metric"]["host_id"]: s["metric"]["state"]
                for s in query(deployment, "midonet_agent_state == 1")}
    expected = {a["id"]: "active" if a["id"] == member else "pending" for a in agents}
    deadline = time.monotonic() + 30
    while states() != expected:
        assert time.monotonic() < deadline, (states(), expected)
        time.sleep(0.5)
    from_api = {a["id"]: a["member"] for a in api.get("/v2.0/agents").json["agents"]}
    assert {h: s == "active" for h, s in states().items()} == from_api
    # The README's alert "member but not active": every membership whose host has no active
    # agent (the burst's hosts run none), and not the agent that turned active.
    alert = ('midonet_agent_membership == 1 '
             'unless on (host_id) (midonet_agent_state{state="active"} == 1)')
    memberships = {m["id"] for m in api.get(MEMBERSHIPS).json["agent_memberships"]}
    firing = wait_for(deployment, alert, lambda r: len(r) == len(memberships) - 1)
    assert {s["metric"]["host_id"] for s in firing} == memberships - {member}


def wait_for_agents(api: ApiClient, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while len(agents := api.get("/v2.0/agents").json["agents"]) < count:
        assert time.monotonic() < deadline, agents
        time.sleep(0.2)
    return agents
