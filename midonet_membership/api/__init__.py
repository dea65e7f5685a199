"""The Neutron v2.0-compatible API of the extension (``make_app`` builds it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType

from oslo_config import cfg
from sqlalchemy.engine import Engine

from midonet_membership import exceptions
from midonet_membership.api import auth, console, policies
from midonet_membership.api.agents import Agents
from midonet_membership.api.app import UNKNOWN_KEYSTONE, Application, with_pages
from midonet_membership.api.definitions import agent, agent_membership
from midonet_membership.api.resource import Controller, Plugin, Resource
from midonet_membership.conf import nsdb_url
from midonet_membership.db.memberships import AgentMemberships
from midonet_membership.nsdb import max_ops_per_apply
from midonet_membership.nsdb.base import NSDB


def make_app(conf: cfg.ConfigOpts, engine: Engine, nsdb: NSDB | None = None,
             more: Iterable[tuple[ModuleType, type[exceptions.NotFound], Plugin]] = (),
             metrics_page: Callable | None = None) -> Callable:
    """The WSGI app serving agent-memberships and, given an NSDB, the agents, the deployment
    status and the console. ``metrics_page`` (the all-in-one's) is served at ``/metrics``."""
    authorizer = policies.Authorizer(policies.get_enforcer(conf))
    max_bulk = max_ops_per_apply(nsdb_url(conf))
    declared = [(agent_membership, exceptions.AgentMembershipNotFound,
                 AgentMemberships(engine, max_bulk=max_bulk)), *more]
    if nsdb is not None:
        declared.append((agent, exceptions.AgentNotFound, Agents(engine, nsdb)))
    controllers = [
        Controller(Resource.from_definition(definition, not_found), plugin, authorizer,
                   link_prefix=conf.network_link_prefix, max_limit=conf.pagination_max_limit)
        for definition, not_found, plugin in declared]
    authenticate, wrap = auth.build(conf)
    endpoints = {}
    page, pages = console.pages(conf)
    if nsdb is not None:
        endpoints["deployment-status"] = console.deployment_status(engine, nsdb, authorizer)
    if metrics_page is not None:
        pages["/metrics"] = metrics_page
    app = wrap(Application(controllers, [d for d, _, _ in declared], authenticate,
                           endpoints=endpoints,
                           challenge=None if conf.auth_strategy == "keystone"
                           else UNKNOWN_KEYSTONE))
    # The console's files, its login and the metrics need no token: served around the
    # authentication wrapper (keystonemiddleware would otherwise look for one).
    return with_pages(app, pages, page)
