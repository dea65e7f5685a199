"""An attacker on loopback with no credentials (``tools/attack_loopback.py``) against the
all-in-one on a secured ZooKeeper: every write path of the threat model, then a raw-HTTP
fuzz. No 5xx, no NSDB write, no change to the zone or the hosts, the server still answers,
and the journal holds exactly what the admin did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

from midonet_membership import nsdb
from midonet_membership.nsdb import Host

ROOT = Path(__file__).resolve().parents[2]
PATH = "/v2.0/agent-memberships"


def test_an_attacker_without_credentials_changes_nothing(start_server, make_database,
                                                         zookeeper_server):
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    root = f"/attack-{uuid.uuid4().hex[:12]}"
    server = start_server(make_database("sqlite"), conf={
        "nsdb": {"connection": f"zookeeper://{hosts}{root}"},
        "nsdb_cluster": {"username": "cluster", "password": "cluster-secret"},
        "nsdb_api": {"username": "api", "password": "api-secret"}})
    admin = server.client()
    member, pending = str(uuid.uuid4()), str(uuid.uuid4())
    with nsdb.connect(f"zookeeper://cluster:cluster-secret@{hosts}{root}",
                      role="cluster") as cluster:
        for host in (member, pending):
            cluster.provision_host(host, host, f"{host}-secret")
    agents = [nsdb.connect(f"zookeeper://{h}:{h}-secret@{hosts}{root}", role="agent")
              for h in (member, pending)]
    try:
        for host, agent in zip((member, pending), agents, strict=True):
            agent.register_host(Host(host, f"compute-{host[:4]}"))
            agent.heartbeat(host)
        assert admin.post(PATH, {"agent_membership": {
            "id": member, "ip_address": "198.51.100.80"}}).status == 201
        deadline = time.monotonic() + 30
        while agents[0].list_members() != {member: "198.51.100.80"}:
            assert time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.05)
        before = admin.get(PATH).json

        attack = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "attack_loopback.py"), "--api", server.url,
             "--zookeeper", f"{hosts}{root}", "--seed", "7", "--fuzz", "300"],
            capture_output=True, text=True, timeout=600)
        report = json.loads(attack.stdout)
        assert attack.returncode == 0, (report, attack.stderr[-2000:])
        assert report["nsdb_writes_allowed"] == [] and report["server_errors"] == []
        assert report["nsdb_changed"] == [] and report["still_answering"]
        assert len(report["nsdb"]) == 39 and report["nodes_checked"] >= 10
        assert all(v.startswith("refused") for v in report["nsdb"].values())
        crafted = report["http"]["crafted"]
        assert crafted["no token"] == crafted["forged token"] == 401
        assert crafted["noauth-style roles header"] == 401
        assert crafted["2 MB body"] == 413
        assert crafted["answers while 24 slow bodies hang"] == 200
        assert sum(report["http"]["fuzz"].values()) == 300

        assert admin.get(PATH).json == before
        assert agents[0].list_members() == {member: "198.51.100.80"}
        shown = {a["id"]: a for a in admin.get("/v2.0/agents").json["agents"]}
        assert shown[member]["member"] and not shown[pending]["member"]
        assert shown[pending]["host"] == f"compute-{pending[:4]}"
    finally:
        for agent in agents:
            agent.close()
