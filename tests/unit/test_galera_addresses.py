"""A Galera node's entry in ``wsrep_incoming_addresses``, as the importer reads it."""

from midonet_membership.cluster.inflight import _address


def test_a_node_address_is_host_and_port():
    assert _address("127.0.0.1:3306") == ("127.0.0.1", 3306)
    assert _address("db-2.example.org:13306") == ("db-2.example.org", 13306)


def test_an_address_not_known_yet_is_none_not_an_error():
    """A node whose address is not known shows as ``unspecified``; the gap check once
    raised ValueError on it (a CI run of e604924, while a node was out of the primary
    component). None makes the check settle nothing now and ask again."""
    for entry in ("unspecified", "127.0.0.1", ":3306", "127.0.0.1:"):
        assert _address(entry) is None
