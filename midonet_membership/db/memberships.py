"""Agent memberships in the Neutron database, each change journaled in its transaction.

The database enforces uniqueness (primary key on ``id``, unique ``ip_address``): a pre-check
would race with a concurrent request, the constraint cannot.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from midonet_membership import exceptions
from midonet_membership.context import RequestContext
from midonet_membership.db import journal
from midonet_membership.db.engine import (
    AnyConnection,
    DriverConnection,
    database_server,
    is_duplicate_error,
    reader,
    retry_transient,
    statements_in_flight,
    writer,
)
from midonet_membership.db.models import memberships
from midonet_membership.db.paging import keyset_select
from midonet_membership.paging import ListQuery


class AgentMemberships:
    """create/get/list/delete with Neutron's plugin argument shapes."""

    def __init__(self, engine: Engine, max_bulk: int | None = None) -> None:
        """``max_bulk``: the most memberships one request may create, because the cluster
        applies a request's tasks in ONE NSDB transaction and the NSDB bounds its size
        (:func:`midonet_membership.nsdb.max_ops_per_apply`). None: no limit."""
        self.engine = engine
        self.max_bulk = max_bulk
        self._pages_as_json = engine.dialect.driver == "pymysql" or engine.dialect.name == "sqlite"

    @retry_transient
    def create(self, context: RequestContext, items: Sequence[dict[str, str]]) -> list[dict]:
        """Insert every membership and its CREATE task in one transaction (bulk = atomic)."""
        refuse_duplicates_within(items)
        refuse_oversized(items, self.max_bulk)
        rows = [{"id": m["id"], "ip_address": m["ip_address"]} for m in items]
        # The original contract's tenant_id lives in the task only (the table has no column).
        owners = [m.get("tenant_id") or context.project_id for m in items]
        one_statement = len(rows) == 1 and _one_statement(self.engine.dialect)
        try:
            with writer(self.engine, single_statement=one_statement, driver=True) as conn:
                if one_statement:
                    _insert_in_one_statement(conn, rows[0], owners[0], context)
                else:
                    insert_with_tasks(conn, rows, owners, audit_of(context))
        except sa.exc.IntegrityError as exc:
            if not is_duplicate_error(exc):
                raise
            if journal.recorded_by(self.engine, rows[0]["id"], context.request_id):
                return rows  # a retry of our own create, whose COMMIT had gone through
            raise self._conflict(rows) from None
        return rows

    def _conflict(self, rows: Sequence[dict[str, str]]) -> exceptions.Conflict:
        with reader(self.engine) as conn:
            return conflict_of(conn, rows)

    @retry_transient
    def get(self, context: RequestContext, id_: str) -> dict[str, Any]:
        with reader(self.engine, single_statement=True, driver=True) as conn:
            row = conn.execute(_SHOW, {"id": id_}).first()
        if row is None:
            raise exceptions.AgentMembershipNotFound(id=id_)
        return dict(zip(_SHOW_COLUMNS, row, strict=True))

    @retry_transient
    def list(self, context: RequestContext, query: ListQuery) -> Sequence[dict[str, Any]]:
        """The page is one statement (the marker's existence is checked apart only when the
        page is empty, as PostgreSQL's autocommit reads do too).

        The database may write the page's JSON (db.paging's EncodedPage), which the API
        then sends as it is. It does so on its own core, where the rows would be turned
        into Python objects under the server's one GIL:
        - through PyMySQL always: it parses rows in Python, which takes as long as MariaDB
          takes to write them as JSON (a page of 100 at c=1: 278-304 µs as rows,
          277-291 µs as JSON, ad hoc);
        - on SQLite always: it writes a page as JSON anyway (db.paging's ``_page``), and
          naming the links' markers costs it less than parsing the page would cost Python;
        - through a driver written in C (psycopg's libpq, mysqlclient) while the process
          serves other requests too (the production layout's first pages at c=8 on
          PostgreSQL: 1,702 -> 2,354/s). Alone, the rows are faster: they cost the
          database less than its JSON, and then that is the request's latency (on
          PostgreSQL 1,747 -> 1,390 pages/s at c=1 always as JSON, bench/api.py; on
          MariaDB through mysqlclient 911-979 -> 572-633/s, ad hoc, issue 12)."""
        with reader(self.engine, single_statement=True, driver=True) as conn:
            return keyset_select(conn, memberships, query, encoded=self._pages_as_json
                                 or statements_in_flight(self.engine) > 1)

    @retry_transient
    def delete(self, context: RequestContext, id_: str) -> None:
        """Delete the row and write its DELETE task (carrying the deleted data)."""
        if not self._delete_row(context, id_) and not journal.recorded_by(
                self.engine, id_, context.request_id):  # not a retry of our own delete
            raise exceptions.AgentMembershipNotFound(id=id_)

    def _delete_row(self, context: RequestContext, id_: str) -> bool:
        """Whether a row was there to delete."""
        if _one_statement(self.engine.dialect):
            with writer(self.engine, single_statement=True, driver=True) as conn:
                return journal.record_with(conn, _delete_statement(database_server(conn.dialect)),
                                           {"id": id_}, **audit_of(context))
        with writer(self.engine, driver=True) as conn:
            return delete_with_task(conn, id_, audit_of(context))


# The hot path's statements, built once: building (and cache-keying) a SQLAlchemy statement
# per request cost more than its execution on SQLite (cProfile, bench/api.py).
_SHOW = sa.select(memberships).where(memberships.c.id == sa.bindparam("id"))
_SHOW_COLUMNS = tuple(_SHOW.selected_columns.keys())
_INSERT = sa.insert(memberships)
_DELETE = sa.delete(memberships).where(memberships.c.id == sa.bindparam("id"))
_DELETE_RETURNING = _DELETE.returning(*memberships.c)
_SELECT_FOR_DELETE = _SHOW.with_for_update()


# MariaDB's compound statements outside routines came in 10.1, variables typed as a
# column (TYPE OF, the delete's) in 10.3: an older server keeps the transaction.
MARIADB_ONE_STATEMENT = (10, 3)


def _one_statement(dialect: sa.Dialect) -> bool:
    """Whether a change and its task run as one atomic statement: one round trip, no
    BEGIN/COMMIT (PostgreSQL's data-modifying CTEs, SQLite's change views of migration
    0007, MariaDB's compound statements; not MySQL's, which has none of them)."""
    server = database_server(dialect)
    if server == "mariadb":
        return (dialect.server_version_info or ()) >= MARIADB_ONE_STATEMENT
    return server in ("postgresql", "sqlite")


def _insert_in_one_statement(conn: DriverConnection, row: dict[str, str], owner: str | None,
                             context: RequestContext) -> None:
    """The row and its task in one atomic statement (:func:`_one_statement`)."""
    journal.record_with(conn, _create_statement(database_server(conn.dialect)),
                        {**row, "data": json.dumps(row, sort_keys=True)},
                        **audit_of(context, owner))


def audit_of(context: RequestContext, owner: str | None = None) -> dict[str, str | None]:
    """What every task of a request records about it: project (``owner``: the tenant_id a
    POST named, else the caller's project), request id, who, where."""
    return {"tenant_id": owner or context.project_id, "transaction_id": context.request_id,
            "requested_by": context.requested_by, "requested_from": context.remote_address}


# SQLite's change views (migration 0007): an INSERT into one runs the trigger that writes
# the change and its task. Typed, so that ``created_at`` is bound as SQLAlchemy stores it.
_AUDIT_COLUMNS = (sa.column("tenant_id", sa.String), sa.column("transaction_id", sa.String),
                  sa.column("created_at", sa.DateTime), sa.column("requested_by", sa.String),
                  sa.column("requested_from", sa.String))
_CREATIONS = sa.table("midonet_agent_membership_creations", sa.column("id", sa.String),
                      sa.column("ip_address", sa.String), sa.column("data", sa.Text),
                      *_AUDIT_COLUMNS)
_DELETIONS = sa.table("midonet_agent_membership_deletions", sa.column("id", sa.String),
                      *[sa.column(c.name, c.type) for c in _AUDIT_COLUMNS])


@functools.cache
def _create_statement(server: str) -> sa.Executable:
    if server == "sqlite":
        return sa.insert(_CREATIONS)
    if server == "mariadb":
        return journal.mariadb_statement_with_task(
            f"INSERT INTO {memberships.name} (id, ip_address) VALUES (:id, :ip_address);",
            journal.CREATE, journal.AGENTMEMBERSHIP, ":id", ":data")
    insert = (sa.insert(memberships)
              .values(id=sa.bindparam("id"), ip_address=sa.bindparam("ip_address"))
              .returning(memberships.c.id).cte("new_membership"))
    return journal.statement_with_task(insert, journal.CREATE, journal.AGENTMEMBERSHIP,
                                       sa.bindparam("data", type_=sa.Text))


@functools.cache
def _delete_statement(server: str) -> sa.Executable:
    if server == "sqlite":  # its trigger writes the data as jsonb does, below
        return sa.insert(_DELETIONS)
    if server == "mariadb":  # the row locked and read, then deleted; JSON_OBJECT as jsonb
        return journal.mariadb_statement_with_task(
            f"SELECT id, ip_address INTO deleted_id, deleted_ip FROM {memberships.name} "
            f"WHERE id = :id FOR UPDATE; DELETE FROM {memberships.name} WHERE id = :id;",
            journal.DELETE, journal.AGENTMEMBERSHIP, "deleted_id",
            "JSON_OBJECT('id', deleted_id, 'ip_address', deleted_ip)",
            declare=f"DECLARE deleted_id TYPE OF {memberships.name}.id; "
                    f"DECLARE deleted_ip TYPE OF {memberships.name}.ip_address; "
                    "DECLARE CONTINUE HANDLER FOR NOT FOUND SET deleted_id = NULL;",
            written="deleted_id IS NOT NULL")
    deleted = (sa.delete(memberships).where(memberships.c.id == sa.bindparam("id"))
               .returning(memberships.c.id, memberships.c.ip_address)
               .cte("deleted_membership"))
    # jsonb renders keys sorted with ": " and ", ", as json.dumps(sort_keys=True)
    data = sa.cast(sa.func.jsonb_build_object(
        "id", deleted.c.id, "ip_address", deleted.c.ip_address), sa.Text)
    return journal.statement_with_task(deleted, journal.DELETE, journal.AGENTMEMBERSHIP, data)


def insert_with_tasks(conn: AnyConnection, rows: Sequence[dict[str, str]],
                      owners: Sequence[str | None], audit: dict[str, str | None]) -> None:
    """The rows and one CREATE task each, in the caller's transaction (also Neutron's);
    ``owners`` are the tasks' tenant ids, ``audit`` the rest of :func:`audit_of`."""
    conn.execute(_INSERT, rows)
    for row, owner in zip(rows, owners, strict=True):
        journal.record(conn, journal.CREATE, journal.AGENTMEMBERSHIP, row["id"], row,
                       **{**audit, "tenant_id": owner})


def delete_with_task(conn: AnyConnection, id_: str, audit: dict[str, str | None]) -> bool:
    """Delete the row and write its DELETE task (carrying the deleted data), in the
    caller's transaction; whether a row was there."""
    row = _delete_returning(conn, id_)
    if row is not None:
        deleted = dict(zip(_SHOW_COLUMNS, row, strict=True))
        # The row's id, not the caller's spelling: a database whose collation ignores case
        # or trailing spaces (MariaDB's) matches both, and the importer removes by the id.
        journal.record(conn, journal.DELETE, journal.AGENTMEMBERSHIP, deleted["id"], deleted,
                       **audit)
    return row is not None


def conflict_of(conn: sa.Connection, rows: Sequence[dict[str, str]]) -> exceptions.Conflict:
    """Name the row that is in the way (looked up after a unique constraint fired)."""
    for row in rows:
        if conn.execute(sa.select(memberships.c.id)
                        .where(memberships.c.id == row["id"])).first():
            return exceptions.AgentMembershipExists(id=row["id"])
        holder = conn.execute(sa.select(memberships.c.id).where(
            memberships.c.ip_address == row["ip_address"])).scalar_one_or_none()
        if holder is not None:
            return exceptions.TunnelIpAddressInUse(ip_address=row["ip_address"], id=holder)
    return exceptions.Conflict("A concurrent request changed this agent membership; retry.")


def _delete_returning(conn: AnyConnection, id_: str) -> Sequence[Any] | None:
    """Delete one row and return it; one statement where the database has RETURNING."""
    if conn.dialect.delete_returning:
        return conn.execute(_DELETE_RETURNING, {"id": id_}).first()
    row = conn.execute(_SELECT_FOR_DELETE, {"id": id_}).first()
    if row is not None:
        conn.execute(_DELETE, {"id": id_})
    return row


def refuse_oversized(items: Sequence[dict[str, str]], max_bulk: int | None) -> None:
    """Refuse a bulk larger than one NSDB apply holds (``max_bulk``, None: no limit): the
    cluster applies a request's tasks atomically, so a larger one could never be applied."""
    if max_bulk is not None and len(items) > max_bulk:
        raise exceptions.BadRequest(
            resource="agent_membership",
            msg=f"a bulk request may create at most {max_bulk} agent memberships "
                f"(it names {len(items)}): the cluster applies one request atomically "
                "and the NSDB's transaction size limit (ZooKeeper's jute.maxbuffer) "
                "holds no more; split it into several requests")


def refuse_duplicates_within(items: Sequence[dict[str, str]]) -> None:
    for key, error in (("id", "id"), ("ip_address", "ip_address")):
        seen: set[str] = set()
        for item in items:
            if item[key] in seen:
                raise exceptions.BadRequest(
                    resource="agent_membership",
                    msg=f"the request names {error} {item[key]} more than once")
            seen.add(item[key])
