"""The all-in-one answers the spec's basic flow on every database backend."""

import uuid


def test_create_show_delete_round_trip(api):
    host = str(uuid.uuid4())
    created = api.post("/v2.0/agent-memberships",
                       {"agent_membership": {"id": host, "ip_address": "198.51.100.7"}})
    assert created.status == 201, created
    assert created.json == {"agent_membership": {"id": host, "ip_address": "198.51.100.7"}}
    assert api.get(f"/v2.0/agent-memberships/{host}").json["agent_membership"]["id"] == host
    assert api.delete(f"/v2.0/agent-memberships/{host}").status == 204
    assert api.get(f"/v2.0/agent-memberships/{host}").status == 404
