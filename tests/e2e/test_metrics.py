"""Prometheus metrics of the all-in-one at ``/metrics``: what an operator's alerts read.

The production layout (separate API, importer and agent processes, each on its own
``[metrics]`` listen address) is scraped by a real Prometheus in test_prometheus.py.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.servers import start_with_agents

AGENTS = "/v2.0/agents"
MEMBERSHIPS = "/v2.0/agent-memberships"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def server(make_database, tmp_path_factory):
    srv = start_with_agents(tmp_path_factory.mktemp("state"), make_database("sqlite"), 2,
                            liveness_timeout="2")
    yield srv
    srv.stop()


def test_requests_are_counted_by_operation_and_status(server):
    api = server.client()
    before = scrape(server.url + "/metrics")
    host = str(uuid.uuid4())
    body = {"agent_membership": {"id": host, "ip_address": "198.51.100.71"}}
    assert api.post(MEMBERSHIPS, body).status == 201
    assert api.post(MEMBERSHIPS, body).status == 409
    for _ in range(3):
        assert api.get(MEMBERSHIPS).status == 200
    assert server.client(token="wrong").get(MEMBERSHIPS).status == 401
    assert api.delete(f"{MEMBERSHIPS}/{host}").status == 204
    after = scrape(server.url + "/metrics")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    total = "midonet_api_requests_total"
    assert delta(total, operation="create_agent_membership", status="201") == 1
    assert delta(total, operation="create_agent_membership", status="409") == 1
    assert delta(total, operation="list_agent_membership", status="200") == 3
    assert delta(total, operation="delete_agent_membership", status="204") == 1
    assert delta(total, operation="other", status="401") == 1  # refused before routing
    histogram = "midonet_api_request_duration_seconds"
    assert delta(f"{histogram}_count", operation="create_agent_membership") == 2
    assert delta(f"{histogram}_bucket", operation="list_agent_membership", le="+Inf") == 3
    assert 0 < delta(f"{histogram}_sum", operation="list_agent_membership") < 30


def test_a_body_with_text_that_is_not_valid_unicode_is_counted_as_its_400(server):
    # It was a 500 raised past the app (its refusal could not be encoded), which the
    # metrics never saw.
    api = server.client()
    host = api.get(AGENTS).json["agents"][0]["id"]
    before = scrape(server.url + "/metrics")
    refused = [api.post(MEMBERSHIPS, raw=b'{"agent_membership": {"id": "\\ud800", '
                                         b'"ip_address": "198.51.100.1"}}'),
               api.put(f"{AGENTS}/{host}", raw=b'{"agent": {"\\ud800": "x"}}')]
    assert [r.status for r in refused] == [400, 400], refused
    after = scrape(server.url + "/metrics")
    for operation in ("create_agent_membership", "update_agent"):
        assert value(after, "midonet_api_requests_total", operation=operation,
                     status="400") - value(before, "midonet_api_requests_total",
                                           operation=operation, status="400") == 1
        assert value(after, "midonet_api_request_duration_seconds_count",
                     operation=operation) - value(
            before, "midonet_api_request_duration_seconds_count", operation=operation) == 1


def test_importer_and_connection_health(server):
    api = server.client()
    before = scrape(server.url + "/metrics")
    hosts = [str(uuid.uuid4()) for _ in range(5)]
    for i, host in enumerate(hosts):
        assert api.post(MEMBERSHIPS, {"agent_membership": {
            "id": host, "ip_address": f"198.51.100.{80 + i}"}}).status == 201
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server.url + "/metrics")
        if value(after, "midonet_importer_lag_tasks") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for host in hosts:
        api.delete(f"{MEMBERSHIPS}/{host}")
    assert value(after, "midonet_importer_lag_tasks") == 0
    assert value(after, "midonet_importer_lag_seconds") == 0
    assert value(after, "midonet_importer_open_gaps") == 0
    applied = value(after, "midonet_importer_tasks_applied_total") - value(
        before, "midonet_importer_tasks_applied_total")
    assert applied == 5
    assert value(after, "midonet_importer_position") >= value(before,
                                                              "midonet_importer_position") + 5
    assert value(after, "midonet_importer_apply_duration_seconds_count") > value(
        before, "midonet_importer_apply_duration_seconds_count")
    assert value(after, "midonet_importer_leader") == 1
    assert value(after, "midonet_journal_failed_tasks") == 0
    assert value(after, "midonet_database_up", process="api") == 1
    assert value(after, "midonet_nsdb_up", process="api") == 1
    assert value(after, "midonet_nsdb_up", process="importer") == 1


def test_agent_state_series_follow_the_agents_api(server):
    api = server.client()
    agents = api.get(AGENTS).json["agents"]
    member = agents[0]["id"]
    assert api.post(MEMBERSHIPS, {"agent_membership": {
        "id": member, "ip_address": "198.51.100.90"}}).status == 201
    try:
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(server.url + "/metrics")
            if value(samples, "midonet_agent_state", host_id=member, state="active") == 1:
                break
            assert time.monotonic() < deadline, "the agent never turned active"
            time.sleep(0.1)
        for agent in api.get(AGENTS).json["agents"]:
            expected = "active" if agent["member"] else "pending"
            states = {state: value(samples, "midonet_agent_state", host_id=agent["id"],
                                   state=state)
                      for state in ("pending", "active", "unsupported", "error")}
            assert states == {s: float(s == expected) for s in states}, agent
            assert value(samples, "midonet_agent_tunnels", host_id=agent["id"]) == 0
            assert value(samples, "midonet_agent_last_heartbeat_timestamp_seconds",
                         host_id=agent["id"]) > time.time() - 30
        assert value(samples, "midonet_agent_zone_updates_total", host_id=member) >= 1
        assert ("midonet_agent_admission_drops_total", (("host_id", member),)) in samples
        deadline = time.monotonic() + 10
        while True:  # the member reports the position it applied: the importer's, once idle
            samples = scrape(server.url + "/metrics")
            position = value(samples, "midonet_importer_position")
            if value(samples, "midonet_agent_zone_position", host_id=member) == position > 0:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.1)

        other = next(a["id"] for a in agents if a["id"] != member)
        assert api.post(MEMBERSHIPS, {"agent_membership": {
            "id": other, "ip_address": "198.51.100.91"}}).status == 201
        deadline = time.monotonic() + 10
        while True:  # two members: each has a tunnel to the other
            samples = scrape(server.url + "/metrics")
            tunnels = [value(samples, "midonet_agent_tunnels", host_id=h) for h in (member, other)]
            peers = [value(samples, "midonet_agent_peers", host_id=h) for h in (member, other)]
            if tunnels == peers == [1, 1]:
                break
            assert time.monotonic() < deadline, (tunnels, peers)
            time.sleep(0.1)
    finally:
        for agent in agents:
            api.delete(f"{MEMBERSHIPS}/{agent['id']}")


def test_metrics_need_no_token_and_leave_the_api_answers_alone(server):
    """Prometheus scrapes without credentials; the API still refuses a tokenless call."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
    assert server.client(token="").get(MEMBERSHIPS).status == 401
