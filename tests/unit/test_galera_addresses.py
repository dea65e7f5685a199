"""A Galera node's entry in ``wsrep_incoming_addresses``, as the importer reads it."""

import logging
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from midonet_membership.cluster import inflight
from midonet_membership.cluster.inflight import _address, _peers


def test_a_node_address_is_host_and_port():
    assert _address("127.0.0.1:3306") == ("127.0.0.1", 3306)
    assert _address("db-2.example.org:13306") == ("db-2.example.org", 13306)


def test_an_address_not_known_yet_is_none_not_an_error():
    """A node whose address is not known shows as ``unspecified``; the gap check once
    raised ValueError on it (a CI run of e604924, while a node was out of the primary
    component). None makes the check settle nothing now and ask again."""
    for entry in ("unspecified", "127.0.0.1", ":3306", "127.0.0.1:"):
        assert _address(entry) is None


def test_the_cluster_address_names_its_nodes():
    assert _peers("gcomm://10.0.0.1,10.0.0.2,10.0.0.3") == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert _peers("gcomm://db-1:4567, db-2?pc.wait_prim=no") == {"db-1:4567", "db-2"}
    assert _peers("gcomm://") == set()  # a bootstrap node's


class _Node:
    """What ``_nodes_out`` asks of a connection: its engine (whose URL keys the nodes seen)
    and ``@@global.wsrep_cluster_address``."""

    def __init__(self, cluster_address: str) -> None:
        self.engine = sa.create_engine("mysql+pymysql://importer@db-1/neutron")
        self.cluster_address = cluster_address

    def exec_driver_sql(self, sql: str) -> SimpleNamespace:
        assert sql == "SELECT @@global.wsrep_cluster_address"
        return SimpleNamespace(scalar=lambda: self.cluster_address)


NODES = ["10.0.0.1:3306", "10.0.0.2:3306", "10.0.0.3:3306"]


@pytest.mark.parametrize("address", ["gcomm://10.0.0.1,10.0.0.2",  # seeds only
                                     "gcomm://"])  # a bootstrap address left in place
def test_a_cluster_address_naming_fewer_nodes_than_the_component_is_reported(
        address, monkeypatch, caplog):
    """With every node in the primary component nothing is out, but the importer says the
    address is too short: started during an outage it would not know a node is missing."""
    monkeypatch.setattr(inflight, "_warned", set())
    with caplog.at_level(logging.ERROR, logger=inflight.LOG.name):
        assert not inflight._nodes_out(_Node(address), NODES)
    assert "name every node of the cluster there" in caplog.text


def test_a_cluster_address_naming_every_node_is_not_reported(monkeypatch, caplog):
    monkeypatch.setattr(inflight, "_warned", set())
    with caplog.at_level(logging.ERROR, logger=inflight.LOG.name):
        assert not inflight._nodes_out(_Node("gcomm://10.0.0.1,10.0.0.2,10.0.0.3"), NODES)
        assert inflight._nodes_out(_Node("gcomm://10.0.0.1,10.0.0.2,10.0.0.3"), NODES[:2])
    assert "name every node" not in caplog.text
