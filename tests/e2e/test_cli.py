"""The installed ``neutron`` and ``midonet-db-manage`` commands against a real all-in-one.

Each test runs the console scripts as a user would (a subprocess, its exit status, its stdout
and stderr) and checks what that user would look at: the rows, the messages, the journal.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.servers import Server, clear_memberships, free_port

BIN = Path(sys.executable).parent
MEMBERSHIPS = "/v2.0/agent-memberships"
Run = Callable[..., subprocess.CompletedProcess]


def run(command: str, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """One CLI invocation with no OS_* or MIDONET_* variables but those given."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("OS_", "MIDONET_"))}
    return subprocess.run([str(BIN / command), *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **(env or {})}, cwd=cwd)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def failed(result: subprocess.CompletedProcess) -> str:
    """The error a user sees: non-zero exit, a message, never a traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and result.stderr.startswith("Error: ")
    return result.stderr


@pytest.fixture(scope="module")
def server(make_database, tmp_path_factory) -> Iterator[Server]:
    """One all-in-one (SQLite) with one local agent for the ``neutron`` tests."""
    srv = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"),
                 {"agent": {"heartbeat_interval": "0.2"}}, ["--agents", "1"]).start()
    yield srv
    srv.stop()


@pytest.fixture
def neutron(server) -> Run:
    clear_memberships(server.database_url)

    def call(*args: str) -> subprocess.CompletedProcess:
        return run("neutron", "--os-url", server.url, "--os-token", server.token, *args)
    return call


def _ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


def test_spec_session(neutron):
    hosts = _ids(3)
    first = ok(neutron("agent-membership-create", "--agent-id", hosts[0].upper(),
                       "--ip-address", "198.51.100.11"))
    assert first.stdout.startswith("Created a new agent_membership:\n")
    assert f"| id         | {hosts[0]} |" in first.stdout  # stored in canonical lower case
    for host, ip in ((hosts[1], "198.51.100.13"), (hosts[2], "198.51.100.12")):
        created = ok(neutron("agent-membership-create", "-a", host, "--ip-address", ip,
                             "-f", "json"))
        assert json.loads(created.stdout) == {"id": host, "ip_address": ip}

    # -P 1: three pages of one, concatenated by following the "next" links.
    paged = ok(neutron("agent-membership-list", "-P", "1", "--sort-key", "ip_address",
                       "--sort-dir", "desc", "-f", "json"))
    assert json.loads(paged.stdout) == [
        {"id": hosts[1], "ip_address": "198.51.100.13"},
        {"id": hosts[2], "ip_address": "198.51.100.12"},
        {"id": hosts[0], "ip_address": "198.51.100.11"}]
    ascending = ok(neutron("agent-membership-list", "-P", "2", "--sort-key", "ip_address",
                           "-c", "ip_address", "-f", "value"))
    assert ascending.stdout.split() == ["198.51.100.11", "198.51.100.12", "198.51.100.13"]
    assert ok(neutron("agent-membership-list", "-c", "id", "-f", "value")).stdout.split() \
        == hosts
    table = ok(neutron("agent-membership-list")).stdout
    assert "| id " in table and f"| {hosts[2]} | 198.51.100.12 |" in table

    shown = ok(neutron("agent-membership-show", hosts[0], "-f", "json"))
    assert json.loads(shown.stdout) == {"id": hosts[0], "ip_address": "198.51.100.11"}

    deleted = ok(neutron("agent-membership-delete", hosts[0], hosts[1]))
    assert deleted.stdout == f"Deleted agent_membership(s): {hosts[0]}, {hosts[1]}\n"
    assert ok(neutron("agent-membership-list", "-c", "id", "-f", "value")).stdout.split() \
        == [hosts[2]]


def test_errors_show_the_server_message(neutron, server):
    host, other = _ids(2)
    ok(neutron("agent-membership-create", "-a", host, "--ip-address", "198.51.100.30"))
    duplicate = neutron("agent-membership-create", "-a", host, "--ip-address", "198.51.100.31")
    assert failed(duplicate) == f"Error: Agent membership {host} already exists.\n"
    same_ip = failed(neutron("agent-membership-create", "-a", other, "--ip-address",
                             "198.51.100.30"))
    assert "198.51.100.30" in same_ip and host in same_ip
    assert "only IPv4 is supported" in failed(neutron(
        "agent-membership-create", "-a", other, "--ip-address", "fe80::1"))
    assert "without leading zeros" in failed(neutron(
        "agent-membership-create", "-a", other, "--ip-address", "198.51.100.030"))
    assert "is not a valid UUID" in failed(neutron(
        "agent-membership-create", "-a", "not-a-uuid", "--ip-address", "198.51.100.32"))
    assert failed(neutron("agent-membership-show", other)) == \
        f"Error: Agent membership {other} could not be found.\n"

    partial = neutron("agent-membership-delete", host, other)
    assert partial.returncode == 1
    assert partial.stdout == f"Deleted agent_membership(s): {host}\n"
    assert failed(partial) == (f"Error: Failed to delete agent_membership {other}: "
                               f"Agent membership {other} could not be found.\n")

    wrong_token = run("neutron", "--os-url", server.url, "--os-token", "nope",
                      "agent-membership-list")
    assert failed(wrong_token) == "Error: Authentication required.\n"
    down_url = f"http://127.0.0.1:{free_port()}"
    down = run("neutron", "--os-url", down_url, "--os-token", "x", "agent-membership-list")
    assert failed(down) == (f"Error: Unable to connect to the API at {down_url} "
                            "(Connection refused): is the server running?\n")
    usage = run("neutron", "agent-membership-create", "--ip-address", "198.51.100.33")
    assert usage.returncode == 2 and "--agent-id" in usage.stderr  # argparse, not the server


def test_local_all_in_one_is_found_through_its_state_dir(server, tmp_path):
    host = str(uuid.uuid4())
    clear_memberships(server.database_url)
    ok(run("neutron", "--state-dir", str(server.state_dir), "agent-membership-create",
           "-a", host, "--ip-address", "198.51.100.20"))
    by_env = ok(run("neutron", "agent-membership-list", "-f", "value",
                    env={"MIDONET_STATE_DIR": str(server.state_dir)}))
    assert by_env.stdout == f"{host} 198.51.100.20\n"
    (tmp_path / "var").symlink_to(server.state_dir)  # the default: ./var
    by_cwd = ok(run("neutron", "agent-membership-show", host, "-f", "value",
                    "-c", "ip_address", cwd=tmp_path))
    assert by_cwd.stdout == "198.51.100.20\n"
    # Only the URL given: the token still comes from the state directory.
    ok(run("neutron", "--os-url", server.url, "--state-dir", str(server.state_dir),
           "agent-membership-delete", host))
    nowhere = tmp_path / "nowhere"
    missing = failed(run("neutron", "--state-dir", str(nowhere), "agent-membership-list"))
    assert f"{nowhere}/admin-token does not exist" in missing and "--os-url" in missing


def test_an_all_in_one_bound_to_ipv6_is_found_through_its_state_dir(make_database, tmp_path):
    """``--bind [::1]:PORT``: the URL the CLI reads from ``api-url`` needs the brackets."""
    if not socket.has_ipv6 or not _loopback_v6():
        pytest.skip("no IPv6 loopback in this network namespace")
    srv = Server(tmp_path / "state", make_database("sqlite"), {}, [], host="::1").start()
    try:
        deadline = time.monotonic() + 10  # written once the port is bound, before serving
        while not (srv.state_dir / "api-url").exists():
            assert time.monotonic() < deadline, srv.output()[-2000:]
            time.sleep(0.05)
        assert (srv.state_dir / "api-url").read_text() == f"{srv.url}\n"
        listed = ok(run("neutron", "--state-dir", str(srv.state_dir), "agent-membership-list",
                        "-f", "json"))
        assert json.loads(listed.stdout) == []
    finally:
        srv.stop()


def _loopback_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_agent_commands(server, neutron):
    deadline = time.monotonic() + 15
    while not (agents := json.loads(ok(neutron("agent-list", "-f", "json")).stdout)):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.2)
    [agent] = agents
    assert agent["agent_type"] == "Midonet agent" and agent["binary"] == "midolman"
    assert agent["alive"] is True and agent["member"] is False
    assert list(agent) == ["id", "agent_type", "binary", "host", "alive",
                           "heartbeat_timestamp", "description", "member",
                           "tunnel_ip_address", "state", "tunnels", "admission_drops"]
    ok(neutron("agent-membership-create", "-a", agent["id"], "--ip-address", "198.51.100.60"))
    updated = ok(neutron("agent-update", agent["id"], "--description", "rack 7"))
    assert updated.stdout == f"Updated agent: {agent['id']}\n"
    shown = json.loads(ok(neutron("agent-show", agent["id"], "-f", "json")).stdout)
    assert shown["description"] == "rack 7" and shown["member"] is True
    assert shown["tunnel_ip_address"] == "198.51.100.60"
    deadline = time.monotonic() + 15
    while shown["state"] != "active":  # the agent reports what it built (dry run: nothing)
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
        shown = json.loads(ok(neutron("agent-show", agent["id"], "-f", "json")).stdout)
    assert shown["tunnels"] == shown["peers"] and shown["admission_drops"] == 0
    assert shown["state_reason"] == "dry run: nothing is built"
    assert isinstance(shown["configurations"]["interfaces"], list)  # a structure, not text
    table = ok(neutron("agent-show", agent["id"])).stdout
    assert '| configurations      | {"interfaces": [' in table
    assert "could not be found" in failed(neutron("agent-show", str(uuid.uuid4())))


# -- Keystone: credentials from OS_* variables, the endpoint from the catalog -------------------
class _FakeKeystone(BaseHTTPRequestHandler):
    """Keystone v3 enough for keystoneauth: discovery and password auth with a catalog."""

    network_url = "http://127.0.0.1:1"
    internal_url = "http://127.0.0.1:1"
    token = ""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json",
                           "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _base(self) -> str:
        return f"http://{self.headers['Host']}"

    def do_GET(self) -> None:
        version = {"id": "v3.14", "status": "stable", "updated": "2026-01-01T00:00:00Z",
                   "links": [{"rel": "self", "href": f"{self._base()}/v3/"}],
                   "media-types": [{"base": "application/json",
                                    "type": "application/vnd.openstack.identity-v3+json"}]}
        self._send(200, {"version": version})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["auth"]["identity"]["password"]["user"]
        if user.get("password") != "secret":
            self._send(401, {"error": {"code": 401, "title": "Unauthorized",
                                       "message": "The request you have made requires "
                                                  "authentication."}})
            return
        domain = {"id": "default", "name": "Default"}
        token = {"methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
                 "issued_at": "2026-01-01T00:00:00.000000Z",
                 "user": {"id": "u-admin", "name": user.get("name"), "domain": domain}}
        if "scope" in body["auth"]:  # as Keystone: an unscoped token has no catalog
            endpoints = [{"id": i, "interface": i, "region": "RegionOne",
                          "region_id": "RegionOne", "url": url}
                         for i, url in (("public", self.network_url),
                                        ("internal", self.internal_url))]
            token.update({
                "project": {"id": "p-admin", "name": "admin", "domain": domain},
                "roles": [{"id": "r-admin", "name": "admin"}],
                "catalog": [{"type": "network", "name": "neutron", "id": "n",
                             "endpoints": endpoints}]})
        self._send(201, {"token": token}, {"X-Subject-Token": self.token})


@pytest.fixture
def keystone(server) -> Iterator[str]:
    handler = type("Keystone", (_FakeKeystone,), {
        # Catalogs often carry the version suffix; the client must not double it.
        "network_url": f"{server.url}/v2.0/", "token": server.token,
        "internal_url": f"http://127.0.0.1:{free_port()}"})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v3"
    httpd.shutdown()
    httpd.server_close()


def test_keystone_credentials_and_catalog(keystone, neutron):
    host = str(uuid.uuid4())
    env = {"OS_AUTH_URL": keystone, "OS_USERNAME": "admin", "OS_PASSWORD": "secret",
           "OS_PROJECT_NAME": "admin", "OS_USER_DOMAIN_NAME": "Default",
           "OS_PROJECT_DOMAIN_NAME": "Default"}
    ok(run("neutron", "agent-membership-create", "-a", host, "--ip-address", "198.51.100.70",
           env=env))
    listed = ok(run("neutron", "agent-membership-list", "-f", "value", env=env))
    assert listed.stdout == f"{host} 198.51.100.70\n"
    old_openrc = {**{k: v for k, v in env.items() if k != "OS_PROJECT_NAME"},
                  "OS_TENANT_NAME": "admin"}  # python-neutronclient's v2-era spelling
    assert ok(run("neutron", "agent-membership-list", "-f", "value", env=old_openrc)
              ).stdout == listed.stdout
    internal = failed(run("neutron", "--os-interface", "internal", "agent-membership-list",
                          env=env))
    assert "Unable to connect to the API at http://127.0.0.1:" in internal
    assert failed(run("neutron", "--os-region-name", "Elsewhere", "agent-membership-list",
                      env=env)) == ("Error: No 'network' endpoint in the Keystone catalog for "
                                    "interface public, region_name Elsewhere\n")
    assert "requires authentication" in failed(run(
        "neutron", "agent-membership-list", env={**env, "OS_PASSWORD": "wrong"}))
    nowhere = f"http://127.0.0.1:{free_port()}/v3"
    down = failed(run("neutron", "agent-membership-list", env={**env, "OS_AUTH_URL": nowhere}))
    assert down == f"Error: Unable to connect to Keystone at {nowhere} (Connection refused)\n"


# -- midonet-db-manage ------------------------------------------------------------------------
def _wait_for_zone(manage: Run, members: dict[str, str]) -> dict:
    deadline = time.monotonic() + 10
    while True:
        shown = manage("tunnel-zone-show", "-f", "json")
        zone = json.loads(shown.stdout) if shown.returncode == 0 else None
        if zone and zone["members"] == members:
            return zone
        assert time.monotonic() < deadline, (shown.stdout, shown.stderr)
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_db_manage_journal(backend, start_server, make_database):
    server = start_server(make_database(backend))
    config = ("--config-file", str(server.config_file), "--state-dir", str(server.state_dir))

    def manage(*args: str) -> subprocess.CompletedProcess:
        return run("midonet-db-manage", *config, *args)

    def tasks(*args: str) -> list[dict]:
        return json.loads(ok(manage("task-list", "-f", "json", *args)).stdout)

    current = json.loads(ok(manage("current", "-f", "json")).stdout)
    assert current["current"] == current["head"] is not None
    assert current["database"].endswith(sa.make_url(server.database_url).database)

    api = server.client()
    a, b = _ids(2)
    create_a = api.post(MEMBERSHIPS, {"agent_membership": {"id": a, "ip_address": "198.51.100.40"}})
    create_b = api.post(MEMBERSHIPS, {"agent_membership": {"id": b, "ip_address": "198.51.100.41"}})
    delete_a = api.delete(f"{MEMBERSHIPS}/{a}")
    assert (create_a.status, create_b.status, delete_a.status) == (201, 201, 204)
    zone = _wait_for_zone(manage, {b: "198.51.100.41"})
    assert zone == {"id": "00000000-0000-0000-0000-000000000001", "name": "DEFAULT",
                    "type": "vxlan", "members": {b: "198.51.100.41"}}
    table = ok(manage("tunnel-zone-show")).stdout
    assert f"| members | {b} → 198.51.100.41 |" in table

    journal = tasks()
    assert [(t["type"], t["data_type"], t["resource_id"]) for t in journal] == [
        ("CREATE", "CONFIG", "00000000-0000-0000-0000-000000000001"),
        ("CREATE", "AGENTMEMBERSHIP", a), ("CREATE", "AGENTMEMBERSHIP", b),
        ("DELETE", "AGENTMEMBERSHIP", a)]
    assert [t["transaction_id"] for t in journal[1:]] == [
        r.headers["x-openstack-request-id"] for r in (create_a, create_b, delete_a)]
    assert journal[1]["data"] == {"id": a, "ip_address": "198.51.100.40"}
    deadline = time.monotonic() + 5  # the importer copies its position back shortly after
    while {t["processed"] for t in journal} != {"yes"}:
        assert time.monotonic() < deadline, journal
        time.sleep(0.05)
        journal = tasks()
    assert tasks("-u") == []

    # Stop the cluster and pretend it processed only up to CREATE b.
    server.stop()
    engine = sa.create_engine(server.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE midonet_task_state SET last_processed_id = :id"),
                     {"id": journal[2]["id"]})
    unprocessed = tasks("--unprocessed")
    assert [(t["id"], t["type"], t["processed"]) for t in unprocessed] == [
        (journal[3]["id"], "DELETE", "no")]

    def resources(*args: str) -> list[tuple]:
        rows = json.loads(ok(manage("task-resource", "-f", "json", *args)).stdout)
        return [(r["data_type"], r["resource_id"]) for r in rows]
    config_row = ("CONFIG", "00000000-0000-0000-0000-000000000001")
    assert resources() == [("AGENTMEMBERSHIP", b), config_row]
    assert resources("-p") == sorted([("AGENTMEMBERSHIP", a), ("AGENTMEMBERSHIP", b),
                                      config_row])

    cleaned = json.loads(ok(manage("task-clean", "-f", "json")).stdout)
    assert cleaned == {"deleted": 3}
    assert [(t["id"], t["processed"]) for t in tasks()] == [(journal[3]["id"], "no")]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT last_processed_id FROM midonet_task_state")
                            ).scalar_one() is None
    engine.dispose()
    assert json.loads(ok(manage("task-clean", "-f", "json")).stdout) == {"deleted": 0}
    assert [t["type"] for t in tasks()] == ["DELETE"]  # never deletes unprocessed tasks


def test_db_manage_says_what_is_missing(tmp_path):
    def manage(*args: str) -> subprocess.CompletedProcess:
        return run("midonet-db-manage", "--state-dir", str(tmp_path / "state"), *args)

    assert "No database at" in failed(manage("task-list"))
    assert "No NSDB at" in failed(manage("tunnel-zone-show"))
    assert not (tmp_path / "state" / "neutron.sqlite").exists()  # nothing created by a read

    assert "upgraded from None to " in ok(manage("upgrade")).stdout
    assert "already at" in ok(manage("upgrade")).stdout
    assert ok(manage("task-list", "-f", "json")).stdout.strip() == "[]"

    from midonet_membership import nsdb
    nsdb.connect(f"sqlite:///{tmp_path / 'state' / 'nsdb.sqlite'}").close()
    assert "DEFAULT tunnel zone does not exist yet" in failed(manage("tunnel-zone-show"))
    assert "Failed to find some config files" in failed(
        run("midonet-db-manage", "--config-file", str(tmp_path / "nope.conf"), "current"))
