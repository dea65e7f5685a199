"""auth_strategy = keystone against a real Keystone (tests/fixtures/keystone.py).

keystonemiddleware validates real tokens: an admin's token may change memberships, a
member's may not (403 on POST, 404 on a member, an empty list), none or a forged one is a
401, and a Keystone outage is a 503 (the token may be fine), never a 401.
"""

from __future__ import annotations

import http.client
import uuid

import pytest

from tests.fixtures.servers import ApiClient

PATH = "/v2.0/agent-memberships"


@pytest.fixture(scope="module")
def keystone_server(keystone, make_database, tmp_path_factory):
    from tests.fixtures.servers import Server
    server = Server(tmp_path_factory.mktemp("state"), make_database("sqlite"), {
        "DEFAULT": {"auth_strategy": "keystone"},
        "keystone_authtoken": keystone.authtoken_options()}, [])
    server.start()
    yield server
    server.stop()


def test_keystone_tokens_decide_access(keystone_server, keystone):
    server = keystone_server
    host = str(uuid.uuid4())
    admin = ApiClient(server.url, token=keystone.token("admin"))
    created = admin.post(PATH, {"agent_membership": {"id": host, "ip_address": "198.51.100.8"}})
    assert created.status == 201, (created, server.output()[-3000:])
    member = ApiClient(server.url, token=keystone.token("demo"))
    refused = member.post(PATH, {"agent_membership": {"id": str(uuid.uuid4()),
                                                      "ip_address": "198.51.100.9"}})
    assert refused.status == 403
    assert refused.json["NeutronError"]["type"] == "PolicyNotAuthorized"
    assert member.get(PATH).json == {"agent_memberships": []}
    assert member.get(f"{PATH}/{host}").status == 404
    assert member.delete(f"{PATH}/{host}").status == 404
    assert admin.get(PATH).json == {"agent_memberships": [
        {"id": host, "ip_address": "198.51.100.8"}]}
    for client in (ApiClient(server.url), ApiClient(server.url, token="forged")):
        resp = client.get(PATH)
        assert resp.status == 401
        assert resp.json["NeutronError"]["type"] == "HTTPUnauthorized"


def test_a_401_tells_once_where_keystone_is(keystone_server, keystone):
    """keystonemiddleware adds ``WWW-Authenticate: Keystone uri=...`` to a 401 with the
    configured Keystone; the app added a second one, naming no Keystone ("unknown")."""
    connection = http.client.HTTPConnection("127.0.0.1", keystone_server.port, timeout=30)
    try:
        connection.request("GET", PATH, headers={"X-Auth-Token": "forged"})
        resp = connection.getresponse()
        resp.read()
    finally:
        connection.close()
    assert resp.status == 401
    assert [v for k, v in resp.getheaders() if k.lower() == "www-authenticate"] == [
        f'Keystone uri="{keystone.url}"']


def test_a_keystone_outage_is_503_not_401(keystone_server, keystone):
    fresh = keystone.new_token("admin")  # not in the server's token cache yet
    with keystone.outage():
        resp = ApiClient(keystone_server.url, token=fresh).get(PATH)
        assert resp.status == 503, resp
        error = resp.json["NeutronError"]
        assert error["type"] == "HTTPServiceUnavailable" and "Keystone" in error["message"]
        assert resp.headers["x-openstack-request-id"].startswith("req-")
    assert ApiClient(keystone_server.url, token=fresh).get(PATH).status == 200
