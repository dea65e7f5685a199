"""A Neutron DB outage is a 503 the client can act on, and nothing of a refused request is
written; when the database is back, the same server serves again.

The all-in-one reaches PostgreSQL or MariaDB through a TCP proxy that the test cuts (every
open connection reset, new ones refused, as a database restart or a lost failover address
does) and restores on the same port. While it is cut, each request is retried for a few
seconds, then answered ``503 HTTPServiceUnavailable`` in Neutron's format, never a 500.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.fixtures.databases import MYSQLCLIENT
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.servers import Server

PATH = "/v2.0/agent-memberships"


@pytest.fixture(params=["postgresql", "mariadb", MYSQLCLIENT])
def behind_proxy(request, make_database, tmp_path) -> Iterator[tuple[Server, TcpProxy]]:
    """The all-in-one on a fresh database of each backend (MariaDB through each driver),
    reached through a :class:`TcpProxy`."""
    proxy, proxied = TcpProxy.to_database(make_database(request.param))
    server = Server(tmp_path / "state", proxied, {}, []).start()
    yield server, proxy
    server.stop()
    proxy.cut()


def test_a_database_outage_is_503_and_writes_nothing(behind_proxy):
    server, proxy = behind_proxy
    api = server.client()
    before = str(uuid.uuid4())
    assert api.post(PATH, {"agent_membership": {"id": before,
                                                "ip_address": "192.0.2.90"}}).status == 201
    proxy.cut()
    refused = str(uuid.uuid4())
    started = time.monotonic()
    answers = [api.post(PATH, {"agent_membership": {"id": refused,
                                                    "ip_address": "192.0.2.91"}}),
               api.get(f"{PATH}/{before}"), api.get(PATH), api.delete(f"{PATH}/{before}")]
    for resp in answers:
        assert resp.status == 503, resp
        error = resp.json["NeutronError"]
        assert error["type"] == "HTTPServiceUnavailable"
        assert error["message"] == "The Neutron DB is temporarily unavailable; retry later."
        assert resp.headers["x-openstack-request-id"].startswith("req-")
    assert time.monotonic() - started < 4 * 10  # retried a few seconds each, not minutes
    proxy.restore()
    assert api.get(f"{PATH}/{refused}").status == 404  # the refused POST wrote nothing
    assert api.get(f"{PATH}/{before}").json["agent_membership"]["ip_address"] == \
        "192.0.2.90"  # nor did the refused DELETE
    after = str(uuid.uuid4())
    assert api.post(PATH, {"agent_membership": {"id": after,
                                                "ip_address": "192.0.2.92"}}).status == 201
    assert "the Neutron DB is unavailable after" in server.output()


def test_a_database_restart_between_requests_costs_no_request(behind_proxy):
    """Every connection the server holds dies at once (a database restart): those kept for
    reads and those idle in the pool after writes. Each request after it is answered as if
    nothing had happened, its dead connections retried, never a 5xx."""
    server, proxy = behind_proxy
    api = server.client()
    hosts = [str(uuid.uuid4()) for _ in range(3)]
    for i, host in enumerate(hosts):  # writes: connections back to the pool
        assert api.post(PATH, {"agent_membership": {
            "id": host, "ip_address": f"192.0.2.{100 + i}"}}).status == 201
    assert api.get(f"{PATH}/{hosts[0]}").status == 200  # a read: a kept connection
    proxy.cut()
    proxy.restore()
    answers = [api.get(f"{PATH}/{host}") for host in hosts]
    assert [a.status for a in answers] == [200, 200, 200], answers
    shown = sorted((a.json["agent_membership"] for a in answers), key=lambda m: m["id"])
    assert api.get(PATH).json["agent_memberships"] == shown
    assert api.delete(f"{PATH}/{hosts[0]}").status == 204
    assert api.post(PATH, {"agent_membership": {"id": str(uuid.uuid4()),
                                                "ip_address": "192.0.2.110"}}).status == 201
