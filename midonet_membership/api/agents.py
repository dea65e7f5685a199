"""The agents resource: hosts, liveness and what each agent built from the NSDB, membership
and description from the Neutron DB, shaped like Neutron's agent extension.

It joins both stores, so it lives with the API rather than in ``db/`` (which never reads the
NSDB).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from midonet_membership import exceptions
from midonet_membership.context import RequestContext
from midonet_membership.db.engine import reader, retry_transient, writer
from midonet_membership.db.models import agent_descriptions, memberships
from midonet_membership.nsdb.base import NSDB, HostStatus, NSDBUnavailable, ObservedState
from midonet_membership.paging import ListQuery, apply_in_memory

AGENT_TYPE = "Midonet agent"
BINARY = "midolman"


class Agents:
    def __init__(self, engine: Engine, nsdb: NSDB) -> None:
        self.engine = engine
        self.nsdb = nsdb

    @retry_transient
    def list(self, context: RequestContext, query: ListQuery) -> list[dict[str, Any]]:
        return [dict(a) for a in apply_in_memory(self._all(), query)]

    def get(self, context: RequestContext, id_: str) -> dict[str, Any]:
        try:
            status = self.nsdb.get_host(id_)
        except NSDBUnavailable as exc:
            raise _unavailable(exc) from None
        if status is None:
            raise exceptions.AgentNotFound(id=id_)
        return self._agents([status])[0]

    @retry_transient
    def update(self, context: RequestContext, id_: str, changes: dict) -> dict[str, Any]:
        self.get(context, id_)
        if "description" in changes:
            with writer(self.engine) as conn:
                table = agent_descriptions
                done = conn.execute(sa.update(table).where(table.c.id == id_)
                                    .values(description=changes["description"])).rowcount
                if not done:
                    conn.execute(sa.insert(table).values(id=id_,
                                                         description=changes["description"]))
        return self.get(context, id_)

    def _all(self) -> list[dict[str, Any]]:
        try:
            hosts = self.nsdb.list_hosts()
        except NSDBUnavailable as exc:
            raise _unavailable(exc) from None
        return self._agents(hosts)

    def _agents(self, hosts: list[HostStatus]) -> list[dict[str, Any]]:
        with reader(self.engine) as conn:
            ips = dict(conn.execute(sa.select(memberships.c.id, memberships.c.ip_address)).all())
            notes = dict(conn.execute(sa.select(agent_descriptions.c.id,
                                                agent_descriptions.c.description)).all())
        return [_agent(status, ips.get(status.host.id), notes.get(status.host.id))
                for status in hosts]


def _unavailable(exc: NSDBUnavailable) -> exceptions.ServiceUnavailable:
    """The agents live in the NSDB; the memberships do not, and keep working."""
    return exceptions.ServiceUnavailable(
        f"The agents list is unavailable: the NSDB cannot be read ({exc}); "
        "agent-memberships still work, and agents return when the NSDB does.")


def _agent(status: HostStatus, tunnel_ip: str | None, description: str | None) -> dict:
    host = status.host
    beat = status.heartbeat_at
    return {
        "id": host.id, "agent_type": AGENT_TYPE, "binary": BINARY, "topic": "midonet",
        "host": host.hostname, "admin_state_up": True, "alive": status.alive,
        "heartbeat_timestamp": beat.strftime("%Y-%m-%d %H:%M:%S") if beat else None,
        "description": description,
        "configurations": {"interfaces": [
            {"name": i.name, "ip_addresses": list(i.ip_addresses)} for i in host.interfaces]},
        "member": tunnel_ip is not None, "tunnel_ip_address": tunnel_ip,
        **_observed(host.observed), "vtep_mac": host.vtep_mac,
    }


def _observed(observed: ObservedState | None) -> dict[str, Any]:
    """``member`` is the admin's intent; these are what the agent says it built. An agent
    that has not reported (not started since this field existed) shows ``state`` None."""
    if observed is None:
        return {"state": None, "state_reason": None, "tunnels": None, "peers": None,
                "zone_position": None, "admission_drops": None}
    return {"state": observed.state, "state_reason": observed.reason,
            "tunnels": observed.tunnels, "peers": observed.peers,
            "zone_position": observed.zone_position,
            "admission_drops": observed.admission_drops}
