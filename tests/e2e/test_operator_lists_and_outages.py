"""What operators see when the server caps its pages or the NSDB is down.

The `neutron` and `openstack` CLIs and the console list every page a server with
``pagination_max_limit`` links, as python-neutronclient does; while ZooKeeper is down the
deployment status answers 503 with the reason and the console stays logged in (memberships
still work then). Real servers over HTTP, the installed console scripts as subprocesses, the
console in headless Chromium, ZooKeeper stopped for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.servers import ApiClient, Server, clear_memberships

BIN = Path(sys.executable).parent
MEMBERSHIPS = "/v2.0/agent-memberships"
AGENTS = "/v2.0/agents"


def run(command: str, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "MIDONET_"))}
    return subprocess.run([str(command), *args], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})})


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    return result


def every_page(client: ApiClient, path: str, collection: str) -> list[dict]:
    """All items of a list, following the ``next`` links the server gives."""
    items, query = [], ""
    while True:
        body = client.get(path + query).json
        items += body[collection]
        nxt = [link["href"] for link in body.get(f"{collection}_links", [])
               if link["rel"] == "next"]
        if not nxt or not body[collection]:
            return items
        query = "?" + urllib.parse.urlsplit(nxt[0]).query


# -- a server whose pages are capped, as `pagination_max_limit` in neutron.conf does ----------
MAX_LIMIT = 2
N_MEMBERSHIPS = 5
N_AGENTS = 3


@pytest.fixture(scope="module")
def capped(make_database, tmp_path_factory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"),
                 {"DEFAULT": {"pagination_max_limit": str(MAX_LIMIT)},
                  "agent": {"heartbeat_interval": "0.2"}},
                 ["--agents", str(N_AGENTS)]).start()
    deadline = time.monotonic() + 30
    while len(every_page(srv.client(), AGENTS, "agents")) < N_AGENTS:
        assert time.monotonic() < deadline, srv.output()[-3000:]
        time.sleep(0.2)
    yield srv
    srv.stop()


@pytest.fixture
def capped_memberships(capped) -> list[str]:
    clear_memberships(capped.database_url)
    hosts = sorted(str(uuid.uuid4()) for _ in range(N_MEMBERSHIPS))
    api = capped.client()
    for i, host in enumerate(hosts):
        created = api.post(MEMBERSHIPS, {"agent_membership": {
            "id": host, "ip_address": f"198.51.100.{101 + i}"}})
        assert created.status == 201, created
    assert len(every_page(api, MEMBERSHIPS, "agent_memberships")) == N_MEMBERSHIPS
    return hosts


def test_neutron_membership_list_shows_every_membership_when_pages_are_capped(
        capped, capped_memberships):
    """python-neutronclient follows the ``next`` links of every list; ours only with -P, so
    with `pagination_max_limit` set the operator silently sees the first page only."""
    listed = ok(run(BIN / "neutron", "--os-url", capped.url, "--os-token", capped.token,
                    "agent-membership-list", "-f", "value", "-c", "id"))
    assert listed.stdout.split() == capped_memberships


def test_neutron_agent_list_shows_every_agent_when_pages_are_capped(capped):
    agents = sorted(a["id"] for a in every_page(capped.client(), AGENTS, "agents"))
    listed = ok(run(BIN / "neutron", "--os-url", capped.url, "--os-token", capped.token,
                    "agent-list", "-f", "value", "-c", "id"))
    assert sorted(listed.stdout.split()) == agents


def test_openstack_membership_list_shows_every_membership_when_pages_are_capped(
        capped, capped_memberships):
    """Without --limit the OSC plugin must list everything (openstacksdk follows links)."""
    from tests.fixtures.neutron import VENV, neutron_venv_or_skip
    neutron_venv_or_skip()
    listed = ok(run(VENV / "bin" / "openstack", "--os-auth-type", "admin_token",
                    "--os-endpoint", capped.url, "--os-token", capped.token,
                    "network", "agent", "membership", "list", "-f", "value", "-c", "ID"))
    assert listed.stdout.split() == capped_memberships


@pytest.mark.slow
def test_console_shows_every_agent_when_pages_are_capped(capped, page):
    from playwright.sync_api import expect

    page.goto(capped.url + "/")
    page.get_by_label("Admin token").fill(capped.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#agents-summary")).to_contain_text("agent(s)")
    expect(page.locator("#agents-summary")).to_have_text(
        f"{N_AGENTS} agent(s), {N_AGENTS} pending activation.")


# -- the NSDB (ZooKeeper) down under a running all-in-one -------------------------------------
def _on_own_zookeeper(make_database, state: Path, zk: Path) -> Server:
    """An all-in-one with one agent on a ZooKeeper of its own (``.zk``), once it serves."""
    from tests.fixtures.zookeeper import ZooKeeperNode, _free_port, _require_zookeeper
    _require_zookeeper()
    node = ZooKeeperNode(zk, _free_port()).start()
    node.wait_ready()
    srv = Server(state, make_database("sqlite"),
                 {"nsdb": {"connection": f"zookeeper://127.0.0.1:{node.client_port}/review"},
                  "agent": {"heartbeat_interval": "0.2"}}, ["--agents", "1"]).start()
    srv.zk = node
    deadline = time.monotonic() + 30
    while srv.client().get("/v2.0/deployment-status").status != 200 or \
            not srv.client().get(AGENTS).json["agents"]:
        assert time.monotonic() < deadline, srv.output()[-3000:]
        time.sleep(0.2)
    return srv


@pytest.fixture(scope="module")
def zk_server(make_database, tmp_path_factory):
    """An all-in-one on its own ZooKeeper (which the tests stop and start again)."""
    srv = _on_own_zookeeper(make_database, tmp_path_factory.mktemp("state"),
                            tmp_path_factory.mktemp("zk"))
    yield srv
    srv.stop()
    srv.zk.kill()


def _zookeeper_down(srv: Server) -> None:
    """Kill the server's ZooKeeper; return once its agents list says 503."""
    srv.zk.kill()
    deadline = time.monotonic() + 20
    while srv.client().get(AGENTS).status != 503:
        assert time.monotonic() < deadline, srv.output()[-3000:]
        time.sleep(0.2)


class _Outage:
    def __init__(self, srv: Server) -> None:
        self.srv = srv

    def __enter__(self) -> None:
        _zookeeper_down(self.srv)

    def __exit__(self, *exc) -> None:
        self.srv.zk.start().wait_ready()
        deadline = time.monotonic() + 30
        while self.srv.client().get(AGENTS).status != 200:
            assert time.monotonic() < deadline, self.srv.output()[-3000:]
            time.sleep(0.2)


def test_deployment_status_is_503_not_a_500_with_a_traceback_while_the_nsdb_is_down(zk_server):
    """The agents API answers 503 with the reason; the console's other endpoint must too,
    not a 500 "see its log" with a traceback logged at every poll (each second, per console)."""
    before = zk_server.output().count("Traceback")
    with _Outage(zk_server):
        status = zk_server.client().get("/v2.0/deployment-status")
        after = zk_server.output().count("Traceback")
    assert status.status == 503, status
    assert status.json["NeutronError"]["type"] == "HTTPServiceUnavailable"
    assert after == before, "a traceback was logged for an NSDB outage"


@pytest.mark.slow
def test_console_keeps_the_operator_logged_in_while_the_nsdb_is_down(zk_server, page):
    """Memberships still work while ZooKeeper is down (README), so the console must stay
    usable: a 503 from the agents list is not a wrong token."""
    from playwright.sync_api import expect

    page.goto(zk_server.url + "/")
    page.get_by_label("Admin token").fill(zk_server.token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#app")).to_be_visible()
    with _Outage(zk_server):
        page.reload()  # or a new tab, or the operator logging in now
        time.sleep(2)
        stored = page.evaluate("sessionStorage.getItem('midonet-token')")
        login_visible = page.locator("#login-panel").is_visible()
        shown = page.locator("#login-error").text_content()
        # a fresh login during the outage
        page.evaluate("sessionStorage.clear()")
        page.goto(zk_server.url + "/")
        time.sleep(1)
        form_visible = page.get_by_label("Admin token").is_visible()
        if form_visible:
            page.get_by_label("Admin token").fill(zk_server.token)
            page.get_by_role("button", name="Log in").click()
            time.sleep(2)
        fresh_app_visible = page.locator("#app").is_visible()
    assert (stored, login_visible, fresh_app_visible) == (zk_server.token, False, True), (
        f"token kept: {stored is not None}, login panel shown: {login_visible} "
        f"({shown!r}), a fresh login reaches the console: {fresh_app_visible}")


def test_the_all_in_one_stops_at_once_while_zookeeper_is_down(make_database, tmp_path):
    """`systemctl stop` during an outage. It took 15 s: the importer released its leader
    lock and the agent sent heartbeats, each waiting for a ZooKeeper that was down."""
    srv = _on_own_zookeeper(make_database, tmp_path / "state", tmp_path / "zk")
    try:
        _zookeeper_down(srv)
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(timeout=30) == 0, srv.output()[-3000:]
        assert time.monotonic() - started < 5, srv.output()[-3000:]
    finally:
        srv.stop()
        srv.zk.kill()
