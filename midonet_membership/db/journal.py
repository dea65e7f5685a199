"""The task journal: what changed, in commit order, for the MidoNet cluster to replay.

Every write path records its task through :func:`record` on the connection of its own
transaction, so a change and its task commit together or not at all.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from midonet_membership.db.engine import (
    AnyConnection,
    DriverConnection,
    is_duplicate_error,
    reader,
    writer,
)
from midonet_membership.db.models import task_failures, task_state, tasks

CREATE, UPDATE, DELETE = "CREATE", "UPDATE", "DELETE"
CONFIG, AGENTMEMBERSHIP = "CONFIG", "AGENTMEMBERSHIP"
CONFIG_RESOURCE_ID = "00000000-0000-0000-0000-000000000001"
NOTIFY_CHANNEL = "midonet_tasks"


@dataclasses.dataclass(frozen=True)
class Task:
    """One row of the journal. The importer reads only what translation needs (the fields
    without a default, in this order): ``created_at`` and who asked are for operators."""

    id: int
    type: str
    data_type: str
    data: str | None
    resource_id: str | None
    tenant_id: str | None
    transaction_id: str | None
    created_at: datetime.datetime | None = None
    requested_by: str | None = None
    requested_from: str | None = None

    def payload(self) -> Any:
        """The decoded ``data``; raises ValueError when it is not JSON."""
        return None if self.data is None else json.loads(self.data)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)


# Built once: building an INSERT with .values() per task cost more than executing it.
_INSERT_TASK = sa.insert(tasks)


def record(conn: AnyConnection, type_: str, data_type: str, resource_id: str, data: Any, *,
           tenant_id: str | None, transaction_id: str, requested_by: str | None = None,
           requested_from: str | None = None) -> None:
    """Append one task inside the caller's transaction."""
    conn.execute(_INSERT_TASK, {
        "type": type_, "data_type": data_type, "resource_id": resource_id,
        "data": None if data is None else json.dumps(data, sort_keys=True),
        "tenant_id": tenant_id, "transaction_id": transaction_id, "created_at": utcnow(),
        "requested_by": _clip(requested_by, 255),
        "requested_from": _clip(requested_from, 64)})
    # On PostgreSQL a trigger (migration 0003) NOTIFYs the importer at commit.
    conn.info["wrote_task"] = True


def _clip(value: str | None, length: int) -> str | None:
    """Header-supplied values must fit their column rather than fail the write."""
    return value if value is None else value[:length]


# What a one-statement change's task takes as parameters (record_with's audit of the
# request), and the columns that task writes.
_AUDIT = {"tenant_id": sa.String, "transaction_id": sa.String, "created_at": sa.DateTime,
          "requested_by": sa.String, "requested_from": sa.String}
_CHANGE_TASK_COLUMNS = ("type", "data_type", "resource_id", "data", *_AUDIT)


def statement_with_task(change: sa.CTE, type_: str, data_type: str,
                        data: sa.ColumnElement) -> sa.Insert:
    """``change`` (a data-modifying CTE returning ``id``) and its task as ONE statement.

    PostgreSQL executes a statement with data-modifying CTEs atomically, so the change and
    its task commit together even in autocommit: one round trip instead of four. ``data``
    is a SQL expression (it may use the CTE's columns). Build it once and run it with
    :func:`record_with`: building SQLAlchemy constructs per request costs more than the
    round trip it saves. It takes the parameters ``tenant_id``, ``transaction_id``,
    ``created_at``, ``requested_by`` and ``requested_from`` besides the change's own.
    """
    return sa.insert(tasks).from_select(
        list(_CHANGE_TASK_COLUMNS),
        sa.select(sa.literal(type_), sa.literal(data_type), change.c.id, data,
                  *(sa.bindparam(name, type_=type_of) for name, type_of in _AUDIT.items()))
        .select_from(change)
    ).returning(tasks.c.id)


def mariadb_statement_with_task(change: str, type_: str, data_type: str, resource_id: str,
                                data: str, *, declare: str = "",
                                written: str | None = None) -> sa.TextualSelect:
    """``change`` (SQL statements) and its task as ONE statement on MariaDB, which has no
    data-modifying CTEs: a compound statement (``BEGIN NOT ATOMIC``) that runs them in one
    transaction and commits it, or on any error rolls it back and raises that error. On a
    connection in autocommit it is one round trip where a transaction took three (the
    change, the task's INSERT, the COMMIT). ``resource_id`` and ``data`` are SQL
    expressions (of ``change``'s parameters or of variables it declared in ``declare``),
    ``written`` the SQL condition under which ``change`` ran and the task was written (None:
    always). Like :func:`statement_with_task`'s, it returns the task's id, or no row when
    no task was written, and takes the same audit parameters; run it with
    :func:`record_with`. The change comes first, so a writer holds its row before it takes
    its task id (the importer's ordering argument)."""
    task = (f"INSERT INTO {tasks.name} ({', '.join(_CHANGE_TASK_COLUMNS)}) VALUES "
            f"('{type_}', '{data_type}', {resource_id}, {data}, "
            f"{', '.join(f':{name}' for name in _AUDIT)});")
    task_id = "SELECT LAST_INSERT_ID();"
    if written:
        task, task_id = (f"IF {written} THEN {task} END IF;",
                         f"IF {written} THEN {task_id} END IF;")
    return sa.text(
        f"BEGIN NOT ATOMIC {declare} "
        "DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END; "
        f"START TRANSACTION; {change} {task} COMMIT; {task_id} END"
    ).columns(sa.column("id", sa.Integer))


def record_with(conn: DriverConnection, statement: sa.Executable, params: dict[str, Any], *,
                tenant_id: str | None, transaction_id: str, requested_by: str | None = None,
                requested_from: str | None = None) -> bool:
    """Run a change and its task as one statement: a :func:`statement_with_task` on
    PostgreSQL, a :func:`mariadb_statement_with_task` on MariaDB, an INSERT into one of
    SQLite's change views (migration 0007). Returns
    whether the change touched a row, and so wrote its task."""
    values = {**params, "tenant_id": tenant_id, "transaction_id": transaction_id,
              "created_at": utcnow(), "requested_by": _clip(requested_by, 255),
              "requested_from": _clip(requested_from, 64)}
    if conn.dialect.name == "sqlite":  # a view's trigger returns nothing: count its changes
        before = conn.total_changes
        conn.execute(statement, values)
        written = conn.total_changes != before
    else:
        written = bool(conn.execute(statement, values).all())
    if written:
        conn.info["wrote_task"] = True
    return written


def recorded_by(engine: Engine, resource_id: str, transaction_id: str) -> bool:
    """Whether the request ``transaction_id`` already wrote a task for ``resource_id``.

    A connection lost during COMMIT leaves the client unsure whether it committed, and the
    whole operation is retried. Request ids are unique, so finding one's own task tells
    "I did it already" apart from "someone else did".
    """
    with reader(engine) as conn:
        return recorded_on(conn, resource_id, transaction_id)


def recorded_on(conn: Connection, resource_id: str, transaction_id: str) -> bool:
    """:func:`recorded_by` on the caller's connection (Neutron's session)."""
    return conn.execute(sa.select(tasks.c.id).where(
        tasks.c.resource_id == resource_id,
        tasks.c.transaction_id == transaction_id).limit(1)).first() is not None


def record_config(engine: Engine, tunnel_protocol: str, transaction_id: str) -> bool:
    """Write a CONFIG task unless the newest CONFIG already says the same.

    The task-state row is locked first so API workers starting together write it once.
    Returns whether a task was written.
    """
    with writer(engine) as conn:
        return record_config_on(conn, tunnel_protocol, transaction_id)


def record_config_on(conn: Connection, tunnel_protocol: str, transaction_id: str) -> bool:
    """:func:`record_config` inside the caller's transaction (the Neutron plugin's)."""
    data = {"id": CONFIG_RESOURCE_ID, "tunnel_protocol": tunnel_protocol}
    conn.execute(sa.select(task_state.c.id).where(task_state.c.id == 1).with_for_update())
    latest = conn.execute(
        sa.select(tasks.c.data).where(tasks.c.data_type == CONFIG)
        .order_by(tasks.c.id.desc()).limit(1)).scalar_one_or_none()
    if latest is not None and _json_or_none(latest) == data:
        return False
    record(conn, CREATE if latest is None else UPDATE, CONFIG, CONFIG_RESOURCE_ID, data,
           tenant_id=None, transaction_id=transaction_id,
           requested_by="neutron.conf", requested_from=socket.gethostname())
    return True


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _tasks(result: sa.CursorResult) -> list[Task]:
    """All rows at once: iterating a result fetches them one by one."""
    return [Task(**row._mapping) for row in result.all()]


# The importer runs these after every commit; built once, like the API's statements. They
# read Task's fields without a default, in its order.
_IMPORTED = [tasks.c[field.name] for field in dataclasses.fields(Task)
             if field.default is dataclasses.MISSING]
_TASKS_FROM_START = (sa.select(*_IMPORTED).order_by(tasks.c.id)
                     .limit(sa.bindparam("limit", type_=sa.Integer)))
_NO_WAL_FLUSH_WAIT = sa.text("SET LOCAL synchronous_commit TO OFF")
_MOVE_POSITION = (sa.update(task_state)
                  .where(task_state.c.id == 1,
                         sa.or_(task_state.c.last_processed_id.is_(None),
                                task_state.c.last_processed_id < sa.bindparam("task_id")))
                  .values(last_processed_id=sa.bindparam("task_id"),
                          updated_at=sa.bindparam("updated_at")))


def pending_tasks(conn: Connection, high: int | None, ranges: Sequence[tuple[int, int]],
                  limit: int, beyond_high: bool = True) -> list[Task]:
    """Committed tasks above ``high`` or inside one of ``ranges``, in id order, in ONE
    statement: one snapshot, so a transaction's tasks are all there or none is.
    ``beyond_high`` False: inside ``ranges`` only (the importer holding new tasks back).

    The importer's read after every commit, run on ``conn``'s own driver connection (same
    session, same autocommit): through ``Connection.execute`` it was 400 µs of a 1 ms
    importer step carrying 6 creates in the all-in-one (``time.thread_time`` around it)."""
    if high is None:
        statement, params = _TASKS_FROM_START, {"limit": limit}
    else:
        statement, params = _pending_statement(len(ranges), beyond_high), {"limit": limit}
        if beyond_high:
            params["position"] = high
        for i, (low, high_) in enumerate(ranges):
            params[f"low_{i}"], params[f"high_{i}"] = low, high_
    return [Task(*row) for row in DriverConnection.of(conn).execute(statement, params)]


@functools.cache
def _pending_statement(gaps: int, beyond_high: bool) -> sa.Select:
    """:func:`pending_tasks`' statement for ``gaps`` ranges, built once per count (the
    importer names at most MAX_GAPS_PER_READ): building it per read cost half of an
    all-in-one importer's step (cProfile)."""
    ranges = [tasks.c.id.between(sa.bindparam(f"low_{i}"), sa.bindparam(f"high_{i}"))
              for i in range(gaps)]
    if beyond_high:
        ranges.insert(0, tasks.c.id > sa.bindparam("position"))
    return _TASKS_FROM_START.where(sa.or_(*ranges))


def tasks_of_transactions(conn: Connection, transaction_ids: Iterable[str]) -> list[Task]:
    """Every task of these transactions (all committed: one of each was seen committed)."""
    return _tasks_with(conn, tasks.c.transaction_id, transaction_ids)


def config_tasks(engine: Engine) -> list[Task]:
    """Every CONFIG task, in id order (resync looks for the newest the importer accepts)."""
    with reader(engine) as conn:
        return _tasks_with(conn, tasks.c.data_type, [CONFIG])


def tasks_of_members(conn: Connection, resource_ids: Iterable[str], low: int,
                     below: int) -> list[Task]:
    """The committed tasks of these resources with ids in ``low``..``below - 1`` (through
    the resource index)."""
    return _tasks_with(conn, tasks.c.resource_id, resource_ids,
                       tasks.c.id >= low, tasks.c.id < below)


def _tasks_with(conn: Connection, column: sa.Column, values: Iterable[str],
                *where: sa.ColumnElement[bool]) -> list[Task]:
    """The tasks whose ``column`` is one of ``values`` (and ``where``), in id order."""
    wanted = sorted(set(values))
    found: list[Task] = []
    for start in range(0, len(wanted), 500):  # bounded IN lists
        found += _tasks(conn.execute(
            sa.select(tasks).where(column.in_(wanted[start:start + 500]), *where)
            .order_by(tasks.c.id)))
    return found


def last_processed_id(conn: Connection) -> int | None:
    return conn.execute(sa.select(task_state.c.last_processed_id)
                        .where(task_state.c.id == 1)).scalar_one_or_none()


def set_last_processed(engine: Engine, task_id: int) -> None:
    """Copy the importer's position back; it only moves forward (it may lag, never lead)."""
    with writer(engine, driver=True) as conn:
        if conn.dialect.name == "postgresql":
            # Losing this update in a crash is harmless (the NSDB holds the real position),
            # so it need not wait for the WAL flush the API's own commits are queued behind.
            conn.execute(_NO_WAL_FLUSH_WAIT)
        conn.execute(_MOVE_POSITION, {"task_id": task_id, "updated_at": utcnow()})


def list_tasks(engine: Engine, unprocessed: bool = False) -> tuple[list[Task], int | None]:
    """All tasks (or only those after ``last_processed_id``) and that id."""
    with reader(engine) as conn:
        last = last_processed_id(conn)
        stmt = sa.select(tasks).order_by(tasks.c.id)
        if unprocessed and last is not None:
            stmt = stmt.where(tasks.c.id > last)
        return _tasks(conn.execute(stmt)), last


def clean(engine: Engine) -> int:
    """Delete processed tasks and reset ``last_processed_id``; unprocessed ones stay."""
    with writer(engine) as conn:
        last = conn.execute(sa.select(task_state.c.last_processed_id)
                            .where(task_state.c.id == 1).with_for_update()).scalar_one_or_none()
        if last is None:
            return 0
        deleted = conn.execute(sa.delete(tasks).where(tasks.c.id <= last)).rowcount
        conn.execute(sa.update(task_state).where(task_state.c.id == 1)
                     .values(last_processed_id=None, updated_at=utcnow()))
        return deleted


def resource_state(engine: Engine, processed_only: bool = False) -> dict[str, dict[str, Any]]:
    """The resources as the journal describes them: data type -> resource id -> data."""
    task_list, last = list_tasks(engine)
    state: dict[str, dict[str, Any]] = {}
    for task in task_list:
        if processed_only and (last is None or task.id > last):
            break
        resources = state.setdefault(task.data_type, {})
        if task.type == DELETE:
            resources.pop(task.resource_id, None)
        else:
            resources[task.resource_id] = _json_or_none(task.data or "null")
    return state


def record_failures(engine: Engine, failures: dict[int, str]) -> None:
    """Remember tasks the importer skipped; recording one twice (after a crash) is harmless."""
    for task_id, error in failures.items():
        try:
            with writer(engine) as conn:
                conn.execute(sa.insert(task_failures).values(task_id=task_id, error=error,
                                                             failed_at=utcnow()))
        except sa.exc.IntegrityError as exc:
            if not is_duplicate_error(exc):
                raise


def list_failures(engine: Engine) -> dict[int, str]:
    with reader(engine) as conn:
        return dict(conn.execute(sa.select(task_failures.c.task_id, task_failures.c.error)
                                 .order_by(task_failures.c.task_id)).all())


def backlog(conn: Connection, high: int | None, ranges: Sequence[tuple[int, int]] = (),
            now: datetime.datetime | None = None) -> tuple[int, float]:
    """How far behind an importer at ``high`` (with open gaps ``ranges``) is: the committed
    tasks it has still to apply, as :func:`pending_tasks` reads them, and the age in seconds
    of the oldest (0 when none). What the lag metrics, the progress log and the console
    show."""
    stmt = sa.select(sa.func.count(), sa.func.min(tasks.c.created_at))
    if high is not None:
        stmt = stmt.where(sa.or_(tasks.c.id > high,
                                 *(tasks.c.id.between(lo, hi) for lo, hi in ranges)))
    count, oldest = conn.execute(stmt).one()
    if not count or oldest is None:
        return 0, 0.0
    return count, max(0.0, ((now or utcnow()) - oldest).total_seconds())


def recent_tasks(conn: Connection, limit: int) -> list[Task]:
    """The newest ``limit`` tasks, newest first (the console's list of last changes)."""
    return _tasks(conn.execute(sa.select(tasks).order_by(tasks.c.id.desc()).limit(limit)))


def failure_count(conn: Connection) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(task_failures)).scalar_one()
