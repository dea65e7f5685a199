"""python-neutronclient's own v2.0 Client, used as a real client of our server.

What an operator's scripts would do: post/get/delete/list on /agent-memberships, follow the
pagination links the client follows itself, and catch the client's exception classes.
"""

from __future__ import annotations

import re
import uuid

import pytest
from neutronclient.common import exceptions
from neutronclient.v2_0 import client as neutron_client

from tests.fixtures.servers import Server, clear_memberships

PATH = "/agent-memberships"
REQUEST_ID = re.compile(r"^req-[0-9a-f-]{36}$")


def body(host: str, ip: str) -> dict:
    return {"agent_membership": {"id": host, "ip_address": ip}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, make_database, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("state"), make_database(request.param), {}, [])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def neutron(server):
    clear_memberships(server.database_url)
    return neutron_client.Client(endpoint_url=server.url, token=server.token)


@pytest.fixture
def hosts(neutron):
    """Five members; IP i belongs to hosts[i] and both orders agree."""
    hosts = sorted(str(uuid.uuid4()) for _ in range(5))
    for i, host in enumerate(hosts):
        neutron.post(PATH, body=body(host, f"198.51.100.{21 + i}"))
    return hosts


def test_create_show_delete(neutron):
    host = str(uuid.uuid4())
    created = neutron.post(PATH, body=body(host.upper(), "198.51.100.20"))
    assert created == body(host, "198.51.100.20")
    assert REQUEST_ID.match(created.request_ids[0])
    assert neutron.get(f"{PATH}/{host}") == body(host, "198.51.100.20")
    deleted = neutron.delete(f"{PATH}/{host}")  # 204: nothing, but a request id
    assert not deleted and REQUEST_ID.match(deleted.request_ids[0])
    with pytest.raises(exceptions.NotFound, match=f"Agent membership {host} could not be found"):
        neutron.get(f"{PATH}/{host}")


def test_retrieve_all_follows_next_links(neutron, hosts):
    listed = neutron.list("agent_memberships", PATH, retrieve_all=True, limit=2)
    assert [m["id"] for m in listed["agent_memberships"]] == hosts
    assert len(listed.request_ids) == 3  # three pages: 2 + 2 + 1


def test_page_by_page_forwards_and_backwards(neutron, hosts):
    pages = list(neutron.list("agent_memberships", PATH, retrieve_all=False, limit=2))
    assert [[m["id"] for m in p["agent_memberships"]] for p in pages] == [
        hosts[:2], hosts[2:4], hosts[4:]]
    # with page_reverse the client follows the previous links, from the end
    pages = list(neutron.list("agent_memberships", PATH, retrieve_all=False, limit=2,
                              page_reverse=True))
    assert [[m["id"] for m in p["agent_memberships"]] for p in pages] == [
        hosts[3:], hosts[1:3], hosts[:1]]


def test_filters_sorting_and_fields_as_client_params(neutron, hosts):
    listed = neutron.list("agent_memberships", PATH,
                          ip_address=["198.51.100.22", "198.51.100.25"])
    assert [m["id"] for m in listed["agent_memberships"]] == [hosts[1], hosts[4]]
    listed = neutron.list("agent_memberships", PATH, sort_key="ip_address", sort_dir="desc",
                          fields="id", limit=2)
    assert listed == {"agent_memberships": [{"id": h} for h in hosts[::-1]]}
    with pytest.raises(exceptions.BadRequest, match="invalid attribute for filtering"):
        neutron.list("agent_memberships", PATH, tenant_id="x")


def test_errors_map_to_the_clients_exceptions_with_our_messages(neutron, hosts):
    with pytest.raises(exceptions.Conflict, match=f"Agent membership {hosts[0]} already exists"):
        neutron.post(PATH, body=body(hosts[0], "198.51.100.40"))
    with pytest.raises(exceptions.Conflict, match=f"198.51.100.22.*{hosts[1]}") as conflict:
        neutron.post(PATH, body=body(str(uuid.uuid4()), "198.51.100.22"))
    assert conflict.value.status_code == 409
    assert REQUEST_ID.match(conflict.value.request_ids[0])
    with pytest.raises(exceptions.BadRequest, match="only IPv4 is supported") as bad:
        neutron.post(PATH, body=body(str(uuid.uuid4()), "2001:db8::1"))
    assert bad.value.status_code == 400
    with pytest.raises(exceptions.BadRequest, match="without leading zeros"):
        neutron.post(PATH, body=body(str(uuid.uuid4()), "198.51.100.050"))
    with pytest.raises(exceptions.BadRequest, match="Required attribute 'id'"):
        neutron.post(PATH, body={"agent_membership": {"ip_address": "198.51.100.41"}})
    with pytest.raises(exceptions.NotFound, match="could not be found") as missing:
        neutron.delete(f"{PATH}/{uuid.uuid4()}")
    assert missing.value.status_code == 404
    with pytest.raises(exceptions.NeutronClientException) as refused:
        neutron.put(f"{PATH}/{hosts[0]}", body={"agent_membership": {"ip_address": "1.1.1.1"}})
    assert refused.value.status_code == 405
    assert len(neutron.list("agent_memberships", PATH)["agent_memberships"]) == 5


def test_a_wrong_token_is_unauthorized(server, hosts):
    stranger = neutron_client.Client(endpoint_url=server.url, token="not-the-token")
    with pytest.raises(exceptions.Unauthorized):
        stranger.list("agent_memberships", PATH)
    with pytest.raises(exceptions.Unauthorized):
        stranger.delete(f"{PATH}/{hosts[0]}")
