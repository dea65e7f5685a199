"""The service plugin: Neutron's create/get/get-list/delete over our tables and journal.

Every write runs in one ``CONTEXT_WRITER`` transaction on Neutron's own session: the row and
its task commit together (DESIGN invariant 1), with ``context.request_id`` as the task's
transaction id, exactly as our own server writes them. The SQL is the same code as our
server's (``db.memberships``), run on the session's connection.
"""

from __future__ import annotations

import functools
import logging

from neutron.api import extensions as neutron_extensions
from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.db import api as db_api
from neutron_lib.db import utils as db_utils
from neutron_lib.services import base as service_base
from oslo_config import cfg
from oslo_db import exception as db_exc

from midonet_membership import conf as config
from midonet_membership import exceptions
from midonet_membership.api.definitions import agent_membership as ours
from midonet_membership.api.resource import MAX_SQL_LIMIT, validation_error
from midonet_membership.db import journal, memberships
from midonet_membership.db.models import memberships as memberships_table
from midonet_membership.db.paging import keyset_select
from midonet_membership.neutron import definition
from midonet_membership.neutron import extensions as our_extensions
from midonet_membership.nsdb import max_ops_per_apply
from midonet_membership.paging import ListQuery

LOG = logging.getLogger(__name__)
PLUGIN_TYPE = "MIDONET_MEMBERSHIP"
_OURS = ours.RESOURCE_ATTRIBUTE_MAP[ours.COLLECTION_NAME]
_CANONICAL_ID = definition.RESOURCE_ATTRIBUTE_MAP[definition.COLLECTION_NAME]["id"]["convert_to"]

def register_opts(conf: cfg.ConfigOpts = cfg.CONF) -> None:
    """``[MIDONET]`` in neutron.conf: the same options as our server's (``conf.MIDONET_OPTS``)."""
    conf.register_opts(config.MIDONET_OPTS, group="MIDONET")
    conf.register_opts(config.NSDB_OPTS, group="nsdb")


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("MIDONET", config.MIDONET_OPTS), ("nsdb", config.NSDB_OPTS)]


@functools.cache
def neutron_error(cls: type[exceptions.MembershipError]) -> type[n_exc.NeutronException]:
    """Our error as a Neutron exception of the same name and status (Neutron's fault map
    turns its base class into the status, its class name into the body's ``type``)."""
    base = {400: n_exc.BadRequest, 404: n_exc.NotFound, 409: n_exc.Conflict}.get(
        cls.code, n_exc.NeutronException)
    return type(cls.__name__, (base,), {"message": "%(msg)s", "__module__": __name__})


def _raise_as_neutron(exc: exceptions.MembershipError):
    raise neutron_error(type(exc))(msg=exc.msg) from None


class AgentMembershipPlugin(service_base.ServicePluginBase):
    """agent-membership for neutron-server: ``service_plugins = midonet-membership``."""

    supported_extension_aliases = [definition.ALIAS]
    __native_bulk_support = True
    __native_pagination_support = True
    __native_sorting_support = True
    __filter_validation_support = True

    def __init__(self) -> None:
        super().__init__()
        # Before Neutron's extension manager starts, which follows the service plugins.
        neutron_extensions.append_api_extensions_path(our_extensions.__path__)
        register_opts()
        self._record_config()
        # The importer reads [nsdb] from the same neutron.conf; unset: no NSDB bound known.
        connection = cfg.CONF.nsdb.connection
        self._max_bulk = max_ops_per_apply(connection) if connection else None

    @classmethod
    def get_plugin_type(cls) -> str:
        return PLUGIN_TYPE

    def get_plugin_description(self) -> str:
        return definition.DESCRIPTION

    # -- start-up ----------------------------------------------------------------------------
    def _record_config(self) -> None:
        """The CONFIG task, with our server's dedup rule: only when the protocol changed.

        Every API worker runs this; the task-state row lock makes them write it once.
        """
        context = n_context.get_admin_context()
        protocol = cfg.CONF.MIDONET.tunnel_protocol
        with db_api.CONTEXT_WRITER.using(context):
            written = journal.record_config_on(_connection(context), protocol,
                                               context.request_id)
        if written:
            LOG.info("CONFIG task written: tunnel_protocol=%s", protocol)

    # -- the resource ------------------------------------------------------------------------
    def create_agent_membership(self, context, agent_membership: dict) -> dict:
        return self._create(context, [agent_membership[definition.RESOURCE_NAME]])[0]

    def create_agent_membership_bulk(self, context, agent_memberships: dict) -> list[dict]:
        """All or nothing: one transaction for every item (Neutron's emulated bulk would
        create them one by one and delete, writing DELETE tasks, on a failure)."""
        return self._create(context, [item[definition.RESOURCE_NAME]
                                      for item in agent_memberships[definition.COLLECTION_NAME]])

    @db_api.retry_if_session_inactive()
    def _create(self, context, items: list[dict]) -> list[dict]:
        try:
            memberships.refuse_duplicates_within(items)
            memberships.refuse_oversized(items, self._max_bulk)
        except exceptions.MembershipError as exc:
            _raise_as_neutron(exc)
        rows = [{"id": m["id"], "ip_address": m["ip_address"]} for m in items]
        owners = [m.get("tenant_id") or context.project_id for m in items]
        try:
            with db_api.CONTEXT_WRITER.using(context):
                memberships.insert_with_tasks(_connection(context), rows, owners,
                                              _audit(context))
        except db_exc.DBDuplicateEntry:
            # Neutron would answer a bare 500; name the holder, as our server does. A retry
            # of our own create whose COMMIT had gone through finds its own task.
            with db_api.CONTEXT_READER.using(context):
                conn = _connection(context)
                if journal.recorded_on(conn, rows[0]["id"], context.request_id):
                    return rows
                _raise_as_neutron(memberships.conflict_of(conn, rows))
        return rows

    def get_agent_membership(self, context, id: str, fields: list[str] | None = None
                             ) -> dict:  # noqa: A002 (Neutron's argument name)
        with db_api.CONTEXT_READER.using(context):
            found = keyset_select(_connection(context), memberships_table,
                                  ListQuery(filters={"id": [_stored_id(id)]}))
        if not found:
            _raise_as_neutron(exceptions.AgentMembershipNotFound(id=id))
        return db_utils.resource_fields(found[0], fields)

    def get_agent_memberships(self, context, filters: dict | None = None,
                              fields: list[str] | None = None, sorts: list | None = None,
                              limit: int | None = None, marker: str | None = None,
                              page_reverse: bool = False) -> list[dict]:
        query = ListQuery(filters=_usable_filters(filters or {}), sorts=list(sorts or []),
                          limit=min(limit, MAX_SQL_LIMIT) if limit else None,
                          marker=_marker(marker) if marker else None,
                          page_reverse=page_reverse)
        with db_api.CONTEXT_READER.using(context):
            items = keyset_select(_connection(context), memberships_table, query)
        return [db_utils.resource_fields(item, fields) for item in items]

    def update_agent_membership(self, context, id: str, agent_membership: dict  # noqa: A002
                                ) -> dict:
        """Neutron refuses a PUT that names an attribute (none is updatable) and calls this
        for an empty one, which must be refused the same way, not be a 500."""
        raise n_exc.BadRequest(resource=definition.RESOURCE_NAME,
                               msg="an agent membership cannot be updated: delete it and "
                                   "create it again")

    @db_api.retry_if_session_inactive()
    def delete_agent_membership(self, context, id: str) -> None:  # noqa: A002
        stored = _stored_id(id)
        with db_api.CONTEXT_WRITER.using(context):
            conn = _connection(context)
            if not memberships.delete_with_task(conn, stored, _audit(context)) \
                    and not journal.recorded_on(conn, stored, context.request_id):
                _raise_as_neutron(exceptions.AgentMembershipNotFound(id=id))


def _audit(context) -> dict[str, str | None]:
    """The tasks' audit fields as our server fills them: project, request id, the token's
    user. Neutron's context does not carry the client's address, so requested_from stays
    empty (Neutron's own CADF audit middleware, if enabled, logs it)."""
    return {"tenant_id": context.project_id, "transaction_id": context.request_id,
            "requested_by": context.user_id, "requested_from": None}


def _connection(context):
    """The session's connection, so our SQL runs in Neutron's transaction."""
    conn = context.session.connection()
    conn.info.pop("wrote_task", None)  # our server's commit hook; Neutron has none
    return conn


def _stored_id(value: str) -> str:
    """An id as stored (canonical lower case). One that cannot be a UUID is not found, as
    on our server: sent on, MariaDB's collation (case and trailing spaces ignored) would
    find a row under a spelling the importer does not know."""
    if validation_error(_OURS["id"], value) is not None:
        _raise_as_neutron(exceptions.AgentMembershipNotFound(id=value))
    return _CANONICAL_ID(value)


def _marker(value: str) -> str:
    """As our server: a marker that cannot be an id is a 400 (Neutron would send it to the
    database: bytes that are not UTF-8 made MariaDB fail, a 500)."""
    error = validation_error(_OURS["id"], value)
    if error is not None:
        raise n_exc.BadRequest(resource="marker", msg=f"Invalid marker: {error}")
    return _CANONICAL_ID(value)


def _usable_filters(filters: dict[str, list]) -> dict[str, list]:
    """Our server's rule: a value the attribute's validator refuses cannot match a stored
    row (MariaDB's PAD SPACE collation would match '198.51.100.1 ' to '198.51.100.1')."""
    return {name: [v for v in values if validation_error(_OURS[name], v) is None]
            for name, values in filters.items()}
