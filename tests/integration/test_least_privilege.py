"""Invariant 7, least privilege in the NSDB, with real ZooKeeper digest ACLs and real
processes: three identities (cluster, agent, api), a tree only the cluster creates, host
records nobody can squat, and an API that serves memberships while ZooKeeper is down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE, Permissions, make_acl, make_digest_acl

from midonet_membership import nsdb
from midonet_membership.nsdb import Host, SetTunnelZone, TunnelZone
from tests.fixtures.servers import ProductionApi, free_port
from tests.fixtures.zookeeper import ZooKeeperNode

BIN = Path(sys.executable).parent
PATH = "/v2.0/agent-memberships"
ZONE = TunnelZone("00000000-0000-0000-0000-000000000001", "DEFAULT", "vxlan")
WORLD_READ = make_acl("world", "anyone", read=True)
CLUSTER = ("cluster", "cluster-secret")
API = ("api", "api-secret")


def _acl_set(acls) -> set[tuple[int, str, str]]:
    return {(a.perms, a.id.scheme, a.id.id) for a in acls}


CLUSTER_ACL = _acl_set([make_digest_acl(*CLUSTER, all=True), WORLD_READ])


def host_acl(user: str, password: str) -> set:
    return _acl_set([make_digest_acl(*CLUSTER, all=True), make_digest_acl(
        user, password, read=True, write=True, create=True, delete=True), WORLD_READ])


def agent_acl(user: str, password: str) -> set:
    return _acl_set([make_digest_acl(user, password, all=True), WORLD_READ])


def _client(hosts: str, identity: tuple[str, str] | None = None) -> KazooClient:
    client = KazooClient(hosts, auth_data=[("digest", ":".join(identity))] if identity
                         else None)
    client.start(timeout=15)
    return client


def _walk(client: KazooClient, path: str) -> Iterator[str]:
    yield path
    for child in sorted(client.get_children(path)):
        yield from _walk(client, f"{path}/{child}")


def _write_conf(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def _manage(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "midonet-db-manage"), *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    return result


def _until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.1)
    return value


@pytest.fixture
def deployment(zookeeper_server, make_database, tmp_path):
    """The README's production files: a shared neutron.conf without NSDB secrets, and one
    file per identity."""
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    root = f"/lp-{uuid.uuid4().hex[:12]}"
    database = make_database("sqlite")
    shared = _write_conf(tmp_path / "neutron.conf", f"[database]\nconnection = {database}\n"
                         f"[nsdb]\nconnection = zookeeper://{hosts}{root}\n")
    cluster = _write_conf(tmp_path / "cluster.conf",
                          "[nsdb_cluster]\nusername = cluster\npassword = cluster-secret\n")
    api = _write_conf(tmp_path / "api.conf",
                      "[nsdb_api]\nusername = api\npassword = api-secret\n")
    return {"hosts": hosts, "root": root, "database": database, "shared": shared,
            "cluster": cluster, "api": api, "tmp": tmp_path}


def test_only_the_cluster_creates_the_tree_and_every_node_has_its_acl(deployment):
    d = deployment
    hosts, root = d["hosts"], d["root"]
    watcher = _client(hosts)
    state = d["tmp"] / "api-state"
    state.mkdir()
    api = ProductionApi(state, d["database"], config_files=(d["shared"], d["api"]))
    importer = None
    try:
        # The API starts first, serves, and creates nothing.
        assert api.client().get("/v2.0/agents").json == {"agents": []}
        host = str(uuid.uuid4())
        assert api.client().post(PATH, {"agent_membership": {
            "id": host, "ip_address": "198.51.100.70"}}).status == 201
        # an agent started first waits; it creates nothing either
        with nsdb.connect(f"zookeeper://{host}:x@{hosts}{root}", role="agent",
                          timeout=0.5) as early:
            with pytest.raises(nsdb.NSDBError, match="nsdb-init"):
                early.register_host(Host(host, "compute-1"))
        assert watcher.exists(root) is None
        assert "secret" not in d["shared"].read_text()  # the workers' file holds none

        # The cluster's identity creates it; the admin provisions the host.
        init = _manage("--config-file", str(d["shared"]), "--config-file", str(d["cluster"]),
                       "nsdb-init", "-f", "json")
        assert json.loads(init.stdout)["owner"] == "cluster"
        added = json.loads(_manage("--config-file", str(d["shared"]), "--config-file",
                                   str(d["cluster"]), "nsdb-host-add", host, "-f",
                                   "json").stdout)
        assert added["host_id"] == added["nsdb_agent_username"] == host
        password = added["nsdb_agent_password"]
        assert len(password) >= 32
        agent = nsdb.connect(f"zookeeper://{host}:{password}@{hosts}{root}", role="agent")
        agent.register_host(Host(host, "compute-1"))
        agent.heartbeat(host)
        importer = subprocess.Popen(
            [str(BIN / "midonet-membership"), "importer", "--config-file", str(d["shared"]),
             "--config-file", str(d["cluster"]), "--state-dir", str(d["tmp"] / "importer")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: agent.list_members() == {host: "198.51.100.70"}, 30,
               "the membership in the zone")
        [shown] = _until(lambda: api.client().get("/v2.0/agents").json["agents"], 15,
                         "the agent in the agents API")
        assert shown["alive"] and shown["member"]

        # Every node of the tree, read back: the cluster's, except each host's own.
        # (ZooKeeper shows a digest as "user:x" to whoever lacks ADMIN on the node.)
        watcher.add_auth("digest", ":".join(CLUSTER))
        watcher.add_auth("digest", f"{host}:{password}")
        seen = {}
        for path in _walk(watcher, root):
            seen[path] = _acl_set(watcher.get_acls(path)[0])
        record = f"{root}/hosts/{host}"
        for path, acl in seen.items():
            if path == record:
                assert acl == host_acl(host, password), path
            elif path == f"{record}/alive":
                assert acl == agent_acl(host, password), path
            else:
                assert acl == CLUSTER_ACL, (path, acl)
        assert {f"{root}/tunnel_zone", f"{root}/importer/position", f"{root}/hosts",
                f"{root}/tunnel_zone_members/{host}@198.51.100.70",
                f"{root}/importer/election"} <= set(seen)
        assert any(p.startswith(f"{root}/importer/election/") for p in seen)  # the lock
        agent.close()
    finally:
        if importer:
            importer.terminate()
            importer.wait(timeout=15)
        api.stop()
        watcher.stop()


def test_what_the_agent_and_api_identities_may_write(zookeeper_server):
    hosts = f"127.0.0.1:{zookeeper_server.client_port}"
    root = f"/lp-{uuid.uuid4().hex[:12]}"
    mine, provisioned = str(uuid.uuid4()), str(uuid.uuid4())
    with nsdb.connect(f"zookeeper://cluster:cluster-secret@{hosts}{root}",
                      role="cluster") as cluster:
        cluster.apply([SetTunnelZone(ZONE)], None, 1)
        cluster.provision_host(mine, mine, "mine-secret")
        cluster.provision_host(provisioned, provisioned, "its-secret")
        agent = _client(hosts, (mine, "mine-secret"))
        api = _client(hosts, API)
        anonymous = _client(hosts)
        try:
            tree = list(_walk(cluster.client, root))
            # The API identity (and anyone without credentials) writes nothing anywhere.
            for intruder in (api, anonymous):
                for path in tree:
                    with pytest.raises(NoAuthError):
                        intruder.set(path, b"x")
                    with pytest.raises(NoAuthError):
                        intruder.create(f"{path}/intruder", b"")
                    if path != root:
                        with pytest.raises(NoAuthError):
                            intruder.delete(path)
            # The agent: not the zone, the position, the members, another host's record...
            for path in (f"{root}/tunnel_zone", f"{root}/importer/position",
                         f"{root}/tunnel_zone_members", f"{root}/hosts/{provisioned}"):
                with pytest.raises(NoAuthError):
                    agent.set(path, b'{"forged": true}')
            with pytest.raises(NoAuthError):
                agent.create(f"{root}/tunnel_zone_members/{mine}@198.51.100.66", b"{}")
            with pytest.raises(NoAuthError):  # ...nor a record for an id nobody provisioned
                agent.create(f"{root}/hosts/{uuid.uuid4()}", b"{}")
            with pytest.raises(NoAuthError):  # nor one provisioned for another identity ...
                agent.create(f"{root}/hosts/{provisioned}", b"{}")
            with pytest.raises(NoAuthError):  # ... and not its to take over
                agent.set_acls(f"{root}/hosts/{provisioned}", OPEN_ACL_UNSAFE)
            with pytest.raises(NoAuthError):  # nor may it delete the tree, or its record
                agent.delete(root, recursive=True)
            with pytest.raises(NoAuthError):
                agent.delete(f"{root}/hosts/{mine}")
            # What it may do: write its own record and its liveness.
            agent.set(f"{root}/hosts/{mine}", b'{"id": "%s", "hostname": "h"}'
                      % mine.encode())
            agent.create(f"{root}/hosts/{mine}/alive", b"now", ephemeral=True)
            after = list(_walk(cluster.client, root))
            assert set(after) == set(tree) | {f"{root}/hosts/{mine}/alive"}
            assert cluster.get_tunnel_zone() == ZONE and cluster.get_position() == 1
            assert cluster.list_members() == {}
            assert cluster.client.get(f"{root}/hosts/{provisioned}")[0] == b""
            perms = {a.id.id: a.perms for a in cluster.client.get_acls(
                f"{root}/hosts/{mine}")[0]}
            assert not perms[make_digest_acl(mine, "mine-secret").id.id] & Permissions.ADMIN
        finally:
            for client in (agent, api, anonymous):
                client.stop()


@pytest.fixture
def stoppable_zookeeper(tmp_path) -> Iterator[ZooKeeperNode]:
    """A ZooKeeper of this test's own (not started), so stopping it harms no one else."""
    from tests.fixtures.zookeeper import _require_zookeeper

    _require_zookeeper()
    node = ZooKeeperNode(tmp_path / "zk", free_port())
    yield node
    node.kill()


def test_the_api_serves_memberships_while_zookeeper_is_down(stoppable_zookeeper,
                                                             make_database, tmp_path):
    zk = stoppable_zookeeper
    url = f"zookeeper://127.0.0.1:{zk.client_port}/midonet"
    state = tmp_path / "state"
    state.mkdir()
    api = ProductionApi(state, make_database("sqlite"), f"[nsdb]\nconnection = {url}\n")
    try:
        client = api.client()
        host = str(uuid.uuid4())
        assert client.post(PATH, {"agent_membership": {
            "id": host, "ip_address": "198.51.100.71"}}).status == 201
        assert client.get(f"{PATH}/{host}").status == 200
        down = client.get("/v2.0/agents")
        assert down.status == 503, down
        error = down.json["NeutronError"]
        assert error["type"] == "HTTPServiceUnavailable"
        assert "NSDB" in error["message"] and "agent-memberships still work" in error["message"]
        assert client.get(f"/v2.0/agents/{host}").status == 503

        zk.start().wait_ready()
        with nsdb.connect(url, role="cluster") as cluster:
            cluster.register_host(Host(host, "compute-1"))  # open ACLs: no credentials here
            up = _until(lambda: (r := client.get("/v2.0/agents")).status == 200 and r, 30,
                        "the agents API back after ZooKeeper returned")
            assert [a["id"] for a in up.json["agents"]] == [host]
        zk.kill()
        again = _until(lambda: (r := client.get("/v2.0/agents")).status == 503 and r, 30,
                       "503 again with ZooKeeper stopped")
        assert again.json["NeutronError"]["type"] == "HTTPServiceUnavailable"
        assert client.delete(f"{PATH}/{host}").status == 204
        assert client.get(PATH).json == {"agent_memberships": []}
    finally:
        api.stop()
