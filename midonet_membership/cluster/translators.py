"""Task -> NSDB operations, one translator per data type (as MidoNet's cluster does).

Translations are pure and idempotent: the same task always yields the same ops, and the ops
themselves are upserts/removals, so a replay changes nothing.

They also validate what they read, with the API's own rules: the journal may have been
written by something other than this API (the Neutron plugin, an operator's SQL), and an id
with a ``/`` or an IP that is not a unicast IPv4 address must become a recorded, skipped
:class:`PoisonTask`, not an NSDB apply that fails (and is retried) forever.
"""

from __future__ import annotations

from collections.abc import Callable

from midonet_membership.api.validators import validate_ipv4_unicast, validate_uuid
from midonet_membership.conf import TUNNEL_PROTOCOLS
from midonet_membership.db import journal
from midonet_membership.nsdb import base
from midonet_membership.nsdb.base import AddMember, Op, RemoveMember, SetTunnelZone, TunnelZone


class PoisonTask(Exception):
    """A task that can never be translated; the message says why."""


def translate_config(task: journal.Task) -> list[Op]:
    data = _payload(task)
    protocol = data.get("tunnel_protocol")
    if protocol not in TUNNEL_PROTOCOLS:
        raise PoisonTask(f"CONFIG tunnel_protocol {protocol!r} is not one of "
                         f"{', '.join(TUNNEL_PROTOCOLS)}")
    if task.type == journal.DELETE:
        raise PoisonTask("the DEFAULT tunnel zone cannot be deleted")
    zone_id = data.get("id") or task.resource_id or journal.CONFIG_RESOURCE_ID
    _check("CONFIG id", validate_uuid(zone_id))
    return [SetTunnelZone(TunnelZone(id=zone_id, name=base.DEFAULT_TUNNEL_ZONE_NAME,
                                     type=protocol))]


def translate_agent_membership(task: journal.Task) -> list[Op]:
    if not task.resource_id:
        raise PoisonTask("AGENTMEMBERSHIP task without resource_id")
    _check("AGENTMEMBERSHIP resource_id", validate_uuid(task.resource_id))
    if task.type == journal.DELETE:
        return [RemoveMember(task.resource_id)]
    if task.type == journal.CREATE:
        ip = _payload(task).get("ip_address")
        if not isinstance(ip, str) or not ip:
            raise PoisonTask("AGENTMEMBERSHIP CREATE without ip_address")
        _check("AGENTMEMBERSHIP ip_address", validate_ipv4_unicast(ip))
        return [AddMember(task.resource_id, ip)]
    raise PoisonTask(f"AGENTMEMBERSHIP {task.type} is not supported")


TRANSLATORS: dict[str, Callable[[journal.Task], list[Op]]] = {
    journal.CONFIG: translate_config,
    journal.AGENTMEMBERSHIP: translate_agent_membership,
}


def translate(task: journal.Task) -> list[Op]:
    translator = TRANSLATORS.get(task.data_type)
    if translator is None:
        raise PoisonTask(f"unknown data type {task.data_type!r}")
    return translator(task)


def _check(what: str, error: str | None) -> None:
    if error is not None:
        raise PoisonTask(f"{what}: {error}")


def _payload(task: journal.Task) -> dict:
    try:
        data = task.payload()
    except ValueError as exc:
        raise PoisonTask(f"data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoisonTask("data is not a JSON object")
    return data
