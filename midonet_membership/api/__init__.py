"""The Neutron v2.0-compatible API of the extension (``make_app`` builds it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType

from oslo_config import cfg
from sqlalchemy.engine import Engine

from midonet_membership import exceptions
from midonet_membership.api import auth, policies
from midonet_membership.api.agents import Agents
from midonet_membership.api.app import Application
from midonet_membership.api.definitions import agent, agent_membership
from midonet_membership.api.resource import Controller, Plugin, Resource
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.nsdb.base import NSDB


def make_app(conf: cfg.ConfigOpts, engine: Engine, nsdb: NSDB | None = None,
             more: Iterable[tuple[ModuleType, type[exceptions.NotFound], Plugin]] = ()
             ) -> Callable:
    """The WSGI app serving agent-memberships and, given an NSDB, the agents."""
    authorizer = policies.Authorizer(policies.get_enforcer(conf))
    declared = [(agent_membership, exceptions.AgentMembershipNotFound,
                 AgentMemberships(engine)), *more]
    if nsdb is not None:
        declared.append((agent, exceptions.AgentNotFound, Agents(engine, nsdb)))
    controllers = [
        Controller(Resource.from_definition(definition, not_found), plugin, authorizer,
                   link_prefix=conf.network_link_prefix, max_limit=conf.pagination_max_limit)
        for definition, not_found, plugin in declared]
    authenticate, wrap = auth.build(conf)
    return wrap(Application(controllers, [d for d, _, _ in declared], authenticate))
