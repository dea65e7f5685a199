"""A request can never write a transaction the NSDB cannot apply (issue 8).

ZooKeeper refuses (by closing the connection) a request larger than ``jute.maxbuffer``, and
one API transaction is one ZooKeeper multi-op. The API therefore refuses a bulk larger than
what one apply can hold, computed from the wire format: checked here against kazoo's own
serializer, and at the limit on a default-configured ZooKeeper.
"""

from __future__ import annotations

import json
import time
import uuid

from kazoo.protocol.serialization import Transaction

from midonet_membership import nsdb
from midonet_membership.nsdb.base import AddMember, Gap, ImportPosition
from midonet_membership.nsdb.zookeeper_wire import DEFAULT_JUTE_MAXBUFFER

MEMBERSHIPS = "/v2.0/agent-memberships"


def _ip(n: int) -> str:
    return f"198.51.{100 + n // 250}.{n % 250 + 1}"


def test_the_limit_matches_kazoos_serialization(zookeeper_url):
    """The request of a worst-case apply at the limit (with a gap in the position for every
    member, the largest ids) fits, and not by a wasteful margin."""
    limit = nsdb.max_ops_per_apply(zookeeper_url)
    with nsdb.connect(zookeeper_url, role="cluster") as store:
        tx = store.client.transaction()
        host = "ffffffff-ffff-ffff-ffff-{:012x}"
        ops = [AddMember(host.format(n), "223.255.255.255") for n in range(limit)]
        zone, added, removed = store._add_ops(tx, ops, None, {}, set())
        tx.set_data(store.members_path, json.dumps({  # the rest of what apply() sends
            "previous": 0, "position": 1, "zone": zone, "added": added,
            "removed": removed}).encode())
        # ... and the position: on Galera each member's task leaves a gap before it
        top = 2**63 - 1
        gaps = tuple(Gap(top - 2 * n - 1, top - 2 * n - 1, 2**33, "pg:1") for n in range(limit))
        tx.set_data(store.position_path,
                    ImportPosition(high=top, gaps=gaps[::-1]).encode().encode())
        size = len(Transaction(tx.operations).serialize())
    assert size <= DEFAULT_JUTE_MAXBUFFER - 64 * 1024, (limit, size)
    assert size >= 0.8 * DEFAULT_JUTE_MAXBUFFER, (limit, size)


def test_the_largest_bulk_applies_and_one_more_gets_a_400(start_server, make_database,
                                                          zookeeper_url):
    limit = nsdb.max_ops_per_apply(zookeeper_url)
    server = start_server(make_database("postgresql"),
                          conf={"nsdb": {"connection": zookeeper_url}})
    api = server.client()
    too_many = [{"id": str(uuid.uuid4()), "ip_address": _ip(n)} for n in range(limit + 1)]
    refused = api.post(MEMBERSHIPS, {"agent_memberships": too_many})
    assert refused.status == 400, refused
    message = refused.json["NeutronError"]["message"]
    assert f"at most {limit} agent memberships" in message and "jute.maxbuffer" in message

    created = api.post(MEMBERSHIPS, {"agent_memberships": too_many[:limit]})
    assert created.status == 201, created
    with nsdb.connect(zookeeper_url) as store:
        deadline = time.monotonic() + 60
        while len(store.list_members()) < limit and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.list_members() == {i["id"]: i["ip_address"] for i in too_many[:limit]}
    later = api.post(MEMBERSHIPS, {"agent_membership": too_many[limit]})
    assert later.status == 201  # and the importer did not stop behind the big one
    with nsdb.connect(zookeeper_url) as store:
        deadline = time.monotonic() + 30
        while len(store.list_members()) <= limit and time.monotonic() < deadline:
            time.sleep(0.1)
        assert too_many[limit]["id"] in store.list_members()
