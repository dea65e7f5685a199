"""The agents API over HTTP: the all-in-one with local agents (``--agents 3``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from midonet_membership.agent.agent import NOT_A_MEMBER, ZONE_NOT_READ
from tests.fixtures.servers import ApiClient, start_with_agents

AGENTS = "/v2.0/agents"


def _host_ids(server) -> list[str]:
    ids = []
    for path in sorted(Path(server.state_dir, "agents").glob("*/midonet_host_id.properties")):
        ids.append(path.read_text().strip().removeprefix("host_uuid="))
    return ids


@pytest.fixture(scope="module")
def server(request, make_database, tmp_path_factory):
    srv = start_with_agents(tmp_path_factory.mktemp("state"), make_database("sqlite"), 3,
                            liveness_timeout="1")
    # an agent keeps its host id file before it registers, so every listed agent has one
    assert len(_host_ids(srv)) == 3, srv.output()
    yield srv
    srv.stop()


def _agents_once_they_read_the_zone(api: ApiClient) -> list[dict]:
    """The agents, once each has reported what it made of the zone. An agent registers
    before its first read of the zone, so a just-started host is listed pending for that
    reason first (it was once listed pending with no reason at all)."""
    deadline = time.monotonic() + 10
    while True:
        agents = api.get(AGENTS).json["agents"]
        early = [a for a in agents if a["state_reason"] == ZONE_NOT_READ]
        assert all(a["state"] == "pending" for a in early)
        if not early:
            return agents
        assert time.monotonic() < deadline, early
        time.sleep(0.05)


def test_agents_are_listed_with_neutron_agent_fields(server):
    api = server.client()
    agents = _agents_once_they_read_the_zone(api)
    assert sorted(a["id"] for a in agents) == sorted(_host_ids(server))
    for agent in agents:
        assert agent["agent_type"] == "Midonet agent" and agent["binary"] == "midolman"
        assert agent["alive"] is True and agent["admin_state_up"] is True
        assert agent["heartbeat_timestamp"] and agent["host"].endswith(
            ("-agent-0", "-agent-1", "-agent-2"))
        assert isinstance(agent["configurations"]["interfaces"], list)
        assert agent["member"] is False and agent["tunnel_ip_address"] is None
        assert agent["state"] == "pending" and agent["tunnels"] == 0
        assert agent["state_reason"] == NOT_A_MEMBER
        assert agent["vtep_mac"] is None  # the all-in-one's agents build nothing


def test_membership_shows_on_the_agent_and_activates_it(server):
    api = server.client()
    host = _host_ids(server)[0]
    created = api.post("/v2.0/agent-memberships", {"agent_membership": {
        "id": host, "ip_address": "198.51.100.44"}})
    assert created.status == 201
    try:
        agent = api.get(f"{AGENTS}/{host}").json["agent"]
        assert agent["member"] is True and agent["tunnel_ip_address"] == "198.51.100.44"
        state_file = Path(server.state_dir, "agents", "0", "agent-state.json")
        deadline = time.monotonic() + 5
        while '"active"' not in state_file.read_text():
            assert time.monotonic() < deadline, state_file.read_text()
            time.sleep(0.05)
        assert f"host {host} active" in server.output()
        while api.get(f"{AGENTS}/{host}").json["agent"]["state"] != "active":
            assert time.monotonic() < deadline + 5, api.get(f"{AGENTS}/{host}").json
            time.sleep(0.05)
        assert api.get(f"{AGENTS}?state=active&fields=id").json["agents"] == [{"id": host}]
        members = api.get(f"{AGENTS}?member=true&fields=id").json["agents"]
        assert members == [{"id": host}]
    finally:
        api.delete(f"/v2.0/agent-memberships/{host}")


def test_paging_sorting_and_fields(server):
    api = server.client()
    ids = sorted(_host_ids(server))
    first = api.get(f"{AGENTS}?limit=2").json
    assert [a["id"] for a in first["agents"]] == ids[:2]
    nxt = next(link["href"] for link in first["agents_links"] if link["rel"] == "next")
    rest = api.get(nxt.removeprefix(server.url)).json["agents"]
    assert [a["id"] for a in rest] == ids[2:]
    hosts = [a["host"] for a in api.get(f"{AGENTS}?sort_key=host&sort_dir=desc"
                                        "&fields=host").json["agents"]]
    assert hosts == sorted(hosts, reverse=True)


def test_only_the_description_can_change(server):
    api = server.client()
    host = _host_ids(server)[1]
    updated = api.put(f"{AGENTS}/{host}", {"agent": {"description": "rack 4, slot 2"}})
    assert updated.status == 200 and updated.json["agent"]["description"] == "rack 4, slot 2"
    assert api.get(f"{AGENTS}/{host}").json["agent"]["description"] == "rack 4, slot 2"
    admin_state = api.put(f"{AGENTS}/{host}", {"agent": {"admin_state_up": False}})
    assert admin_state.status == 400
    assert "admin_state_up cannot be changed" in admin_state.json["NeutronError"]["message"]
    deleted = api.delete(f"{AGENTS}/{host}")
    assert deleted.status == 405
    assert "delete its agent membership" in deleted.json["NeutronError"]["message"]
    assert api.post(AGENTS, {"agent": {}}).status == 405
    too_long = api.put(f"{AGENTS}/{host}", {"agent": {"description": "x" * 256}})
    assert too_long.status == 400
    assert api.get(f"{AGENTS}/00000000-0000-4000-8000-000000000000").status == 404


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_a_description_no_database_can_keep_is_400_on_every_backend(make_database,
                                                                    tmp_path, backend):
    # PostgreSQL refuses NUL in text, and no driver takes a lone surrogate: both were 500s
    # (the surrogate on every backend, its refusal unencodable for some).
    srv = start_with_agents(tmp_path / "state", make_database(backend), 1,
                            liveness_timeout="5")
    try:
        api = srv.client()
        [host] = _host_ids(srv)
        path = f"{AGENTS}/{host}"
        kept = api.put(path, {"agent": {"description": "rack 4\tslot 2\nrow B"}})
        assert kept.status == 200, kept  # other control characters are text, as in Neutron
        for raw, why in [
            (b'{"agent": {"description": "\\u0000nul"}}', "NUL"),
            (b'{"agent": {"description": "a\\u0000"}}', "NUL"),
            (b'{"agent": {"description": "\\ud800"}}', "not valid Unicode"),
            (b'{"agent": {"\\ud800": "x"}}', "not valid Unicode"),
            (b'{"agent": {"description": "x"}, "\\ud800": 1}', "not valid Unicode"),
        ]:
            refused = api.put(path, raw=raw)
            assert refused.status == 400, (raw, refused)
            error = refused.json["NeutronError"]
            assert error["type"] == "HTTPBadRequest" and why in error["message"], (raw, error)
        assert api.get(path).json["agent"]["description"] == "rack 4\tslot 2\nrow B"
    finally:
        srv.stop()


def test_agents_need_credentials(server):
    anonymous = ApiClient(server.url)
    assert anonymous.get(AGENTS).status == 401


def test_show_with_fields_filters_and_previous_link(server):
    api = server.client()
    ids = sorted(_host_ids(server))
    shown = api.get(f"{AGENTS}/{ids[0]}?fields=id&fields=alive&fields=configurations").json
    assert shown["agent"].keys() == {"id", "alive", "configurations"}
    assert [a["id"] for a in api.get(f"{AGENTS}?alive=true&fields=id").json["agents"]] == ids
    assert api.get(f"{AGENTS}?alive=false").json["agents"] == []
    assert api.get(f"{AGENTS}?binary=midolman&agent_type=Midonet%20agent&fields=id"
                   ).json["agents"] == [{"id": i} for i in ids]
    page = api.get(f"{AGENTS}?limit=1&marker={ids[1]}").json
    assert [a["id"] for a in page["agents"]] == [ids[2]]
    links = {link["rel"]: link["href"] for link in page["agents_links"]}
    assert f"marker={ids[2]}" in links["previous"] and "page_reverse=True" in links["previous"]
    assert api.get(f"{AGENTS}?limit=-1").status == 400
    assert api.get(f"{AGENTS}?sort_key=configurations").status == 400
    assert api.get(f"{AGENTS}?colour=red").status == 400
    aliases = [e["alias"] for e in api.get("/v2.0/extensions").json["extensions"]]
    assert "agent" in aliases and "agent-membership" in aliases


@pytest.fixture(scope="module")
def noauth_server(make_database, tmp_path_factory):
    from tests.fixtures.servers import Server
    srv = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"),
                 {"DEFAULT": {"auth_strategy": "noauth"}}, ["--agents", "1"]).start()
    deadline = time.monotonic() + 20
    while not _host_ids(srv):
        assert time.monotonic() < deadline, srv.output()
        time.sleep(0.1)
    yield srv
    srv.stop()


def test_non_admins_learn_nothing_about_agents(noauth_server):
    """Neutron's rules for admin-only resources: empty list, 404 on members, 403 on POST."""
    def as_role(role: str) -> ApiClient:
        return ApiClient(noauth_server.url, headers={"X-Roles": role, "X-Project-Id": "p1",
                                                     "X-User-Id": "u1"})
    admin, member = as_role("admin"), as_role("member")
    [host] = _host_ids(noauth_server)
    deadline = time.monotonic() + 10
    while not admin.get(AGENTS).json["agents"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert member.get(AGENTS).json == {"agents": []}
    assert member.get(f"{AGENTS}?limit=1").json["agents"] == []
    for resp in (member.get(f"{AGENTS}/{host}"),
                 member.put(f"{AGENTS}/{host}", {"agent": {"description": "mine"}})):
        assert resp.status == 404, resp
        assert resp.json["NeutronError"]["type"] == "AgentNotFound"
    assert member.delete(f"{AGENTS}/{host}").status == 405  # refused for everyone
    assert admin.get(f"{AGENTS}/{host}").json["agent"]["description"] is None
    assert ApiClient(noauth_server.url).get(AGENTS).json == {"agents": []}
