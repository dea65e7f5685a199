"""What an agent's log says when its state changes."""

from __future__ import annotations

from midonet_membership.agent.state import ACTIVE, PENDING, AgentState

HOST = "6c76de52-73d2-4412-86d3-6a1710171c7d"


def _active(*ips: str, local_ip: str = "192.0.2.10") -> AgentState:
    return AgentState(HOST, ACTIVE, "vxlan", local_ip,
                      tuple(sorted((f"host-{ip}", ip) for ip in ips)))


def test_activation_and_deactivation_say_the_whole_state():
    pending = AgentState(HOST, PENDING)
    assert _active("192.0.2.11").describe_change(pending) == (
        f"host {HOST} active: vxlan tunnels from 192.0.2.10 to 192.0.2.11 (needs the vxlan "
        "kernel module and UDP port 4789 open between tunnel endpoints)")
    assert pending.describe_change(_active("192.0.2.11")) == (
        f"host {HOST} pending: not a member of the DEFAULT tunnel zone")


def test_a_peer_change_names_only_the_peers_that_changed():
    before = _active(*(f"198.51.100.{n}" for n in range(1, 200)))
    after = _active(*(f"198.51.100.{n}" for n in range(2, 201)))
    assert after.describe_change(before) == (
        f"host {HOST} active: tunnel peers +198.51.100.200 -198.51.100.1 (199 in all)")


def test_a_new_tunnel_endpoint_says_the_whole_state():
    assert "tunnels from 192.0.2.99" in _active("192.0.2.11", local_ip="192.0.2.99"
                                                ).describe_change(_active("192.0.2.11"))
