"""The floors bench/api.py measures our API against, in the same run.

*HTTP floor*: a trivial WSGI app that answers each operation with a canned body of the size
ours answers it with, served by the very functions that serve ours
(``midonet_membership.api.server``) with the layout's settings: whatever it costs is the
server's and the client's, not ours. Started as its own process::

    python bench/floors.py --layout api-1x8+importer --port P --responses JSON

*Database floor*: each operation's SQL through the same driver (psycopg 3, sqlite3) with no
HTTP and no SQLAlchemy: the least a correct implementation must send. A create and a delete
write the membership and its task atomically (PostgreSQL: one statement with a
data-modifying CTE in autocommit, as ours; SQLite: one INSERT into a change view whose
trigger writes both, in autocommit, writers of one process queued on a lock, as ours, the
WAL checkpointed by a thread as ours); a show is one primary-key SELECT; a list page one
``ORDER BY id LIMIT 100`` (the deep page ``WHERE id > marker``), in autocommit.

*HTTP + SQL*: the trivial app running each operation's database floor SQL before it answers
(``--database URL``): the server and the database in one process with nothing of ours in
between. Not a floor of the issue's definition (that one adds the two floors' times), but
what a Python WSGI app that only ran our SQL would reach: the rest is ours.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sqlite3
import sys
import threading
import urllib.parse
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer

# -- the HTTP floor ----------------------------------------------------------------------------

# How the floor server of each layout is served: the same server functions and settings as
# the layout's own command (service.py): the all-in-one serves api_threads (16) cheroot
# threads, api_active_threads' default of them at once; ``api --workers 1 --threads 8`` one
# gunicorn gthread worker with 8 threads.
FLOOR_SERVING = {
    "all-in-one": {"server": "ThreadedServer (cheroot)", "threads": 16},
    "api-1x8+importer": {"server": "serve_workers (gunicorn gthread)", "workers": 1,
                         "threads": 8},
}


def floor_serving(layout: str, backend: str) -> dict[str, Any]:
    """``FLOOR_SERVING[layout]`` as it serves ours on ``backend``: the all-in-one's active
    threads are the default of that database (``active_threads_default``)."""
    from midonet_membership.api.server import active_threads_default

    serving = dict(FLOOR_SERVING[layout])
    if "workers" not in serving:
        serving["active_threads"] = active_threads_default(backend)
    return serving


def operation_of(method: str, path: str, query: str) -> str:
    """Which of the bench's operations a request is (the floor app's only routing)."""
    if method == "POST":
        return "create"
    if method == "DELETE":
        return "delete"
    if "limit=" in query:
        return "list_deep_page" if "marker=" in query else "list_first_page"
    if path.rstrip("/").count("/") >= 3:
        return "show"
    return "list_first_page"


def trivial_app(responses: dict[str, tuple[int, int]],
                database: DatabaseFloor | None = None) -> Callable:
    """A WSGI app answering each operation with ``(status, body size)``: reads the request
    body (ours must), returns canned bytes of the same length as ours. With ``database``,
    it first runs the operation's database floor SQL (one connection per server thread):
    the HTTP server and the database in one process, with nothing of ours in between."""
    reasons = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}
    canned = {op: (reasons[status], b"x" * size) for op, (status, size) in responses.items()}
    local = threading.local()

    def run_sql(op: str, environ: dict, raw: bytes) -> None:
        if not hasattr(local, "conn"):
            local.conn = database.connect()
        if op == "create":
            member = json.loads(raw)["agent_membership"]
            item: Any = (member["id"], member["ip_address"])
        elif op in ("show", "delete"):
            item = (environ["PATH_INFO"].rsplit("/", 1)[-1], "")
        else:
            item = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("marker",
                                                                              [None])[0]
        database.operation(op)(local.conn, item)

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        op = operation_of(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                          environ.get("QUERY_STRING", ""))
        if database is not None:
            run_sql(op, environ, raw)
        status, body = canned[op]
        headers = [("Content-Length", str(len(body)))]
        if body:
            headers.append(("Content-Type", "application/json"))
        start_response(status, headers)
        return [body]
    return app


def app_from_environment() -> Callable:
    """The trivial app with ``FLOOR_RESPONSES`` (JSON) from the environment: for servers
    started by an import string (granian ``--factory``)."""
    import os

    return trivial_app({op: tuple(v) for op, v in
                        json.loads(os.environ["FLOOR_RESPONSES"]).items()})


def serve_floor(layout: str, port: int, responses: dict[str, tuple[int, int]],
                backend: str, database_url: str | None = None) -> None:
    """Serve the trivial app as the layout serves ours on ``backend``, until SIGTERM."""
    from midonet_membership import stop_signal
    from midonet_membership.api import server

    app = trivial_app(responses, DatabaseFloor(database_url) if database_url else None)
    serving = floor_serving(layout, backend)
    if "workers" in serving:
        server.serve_workers(lambda: app, "127.0.0.1", port, serving["workers"],
                             serving["threads"])
        return
    threaded = server.ThreadedServer(app, "127.0.0.1", port, serving["threads"],
                                     serving["active_threads"])
    threaded.start()
    stop_signal.wait()
    threaded.stop()


# -- the database floor ------------------------------------------------------------------------

PG_SQL = {
    "create": (
        "WITH new_membership AS (INSERT INTO midonet_agent_memberships (id, ip_address) "
        "VALUES (%(id)s, %(ip_address)s) RETURNING id) "
        "INSERT INTO midonet_tasks (type, data_type, resource_id, data, tenant_id, "
        "transaction_id, created_at, requested_by, requested_from) SELECT 'CREATE', "
        "'AGENTMEMBERSHIP', new_membership.id, %(data)s, %(tenant_id)s, %(transaction_id)s, "
        "%(created_at)s, %(requested_by)s, %(requested_from)s FROM new_membership "
        "RETURNING midonet_tasks.id"),
    "show": "SELECT id, ip_address FROM midonet_agent_memberships WHERE id = %(id)s",
    "delete": (
        "WITH deleted_membership AS (DELETE FROM midonet_agent_memberships WHERE id = %(id)s "
        "RETURNING id, ip_address) "
        "INSERT INTO midonet_tasks (type, data_type, resource_id, data, tenant_id, "
        "transaction_id, created_at, requested_by, requested_from) SELECT 'DELETE', "
        "'AGENTMEMBERSHIP', deleted_membership.id, CAST(jsonb_build_object('id', "
        "deleted_membership.id, 'ip_address', deleted_membership.ip_address) AS TEXT), "
        "%(tenant_id)s, %(transaction_id)s, %(created_at)s, %(requested_by)s, "
        "%(requested_from)s FROM deleted_membership RETURNING midonet_tasks.id"),
    "list_first_page": ("SELECT id, ip_address FROM midonet_agent_memberships "
                        "ORDER BY id LIMIT 100"),
    "list_deep_page": ("SELECT id, ip_address FROM midonet_agent_memberships "
                       "WHERE id > %(marker)s ORDER BY id LIMIT 100"),
}

SQLITE_SQL = {
    # One statement each, in autocommit, as ours: an INSERT into a change view whose
    # trigger writes the change and its task (migration 0007).
    "create": ("INSERT INTO midonet_agent_membership_creations (id, ip_address, data, "
               "tenant_id, transaction_id, created_at, requested_by, requested_from) "
               "VALUES (?, ?, ?, 'admin', ?, ?, 'admin', '127.0.0.1')"),
    "show": "SELECT id, ip_address FROM midonet_agent_memberships WHERE id = ?",
    "delete": ("INSERT INTO midonet_agent_membership_deletions (id, tenant_id, "
               "transaction_id, created_at, requested_by, requested_from) "
               "VALUES (?, 'admin', ?, ?, 'admin', '127.0.0.1')"),
    # A page as ours reads it on SQLite (db/paging.py): one row, the page as a JSON array.
    "list_first_page": "SELECT json_group_array(json_object('id', id, 'ip_address', "
                       "ip_address)) FROM (SELECT id, ip_address FROM "
                       "midonet_agent_memberships ORDER BY id LIMIT 100)",
    "list_deep_page": "SELECT json_group_array(json_object('id', id, 'ip_address', "
                      "ip_address)) FROM (SELECT id, ip_address FROM "
                      "midonet_agent_memberships WHERE id > ? ORDER BY id LIMIT 100)",
}

# One database floor operation: (connection, item) -> None; an item is (id, ip) for
# create/show/delete and the marker for the lists.
DbOperation = Callable[[Any, Any], None]


def _created_at() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)


def _sqlite_created_at() -> str:
    """As SQLAlchemy stores a DateTime in SQLite."""
    return _created_at().strftime("%Y-%m-%d %H:%M:%S.%f")


class DatabaseFloor:
    """Connections and the operations' minimal SQL for one database URL."""

    def __init__(self, database_url: str) -> None:
        url = sa.make_url(database_url)
        self.backend = url.get_backend_name()
        if self.backend == "postgresql":
            self.conninfo = url.set(drivername="postgresql").render_as_string(False)
        elif self.backend == "sqlite":
            from midonet_membership.db.engine import SQLITE_PRAGMAS, Checkpointer

            self.path = url.database
            self.write_lock = threading.Lock()  # as db.engine's per-process SQLite lock
            # Set and checkpointed as a serving engine's: by a thread, not by the commits.
            self.pragmas = (*SQLITE_PRAGMAS, Checkpointer.PRAGMA)
            Checkpointer(self.path).start_for(self)
        else:
            raise ValueError(f"no database floor for {self.backend}")

    def setting(self) -> str:
        if self.backend == "postgresql":
            return ("psycopg 3's libpq, autocommit, each statement prepared once per "
                    "connection (PQexecPrepared, values and rows through psycopg's C "
                    "adapters, as ours), one connection per client thread; create/delete: "
                    "one statement (data-modifying CTE + task INSERT)")
        return ("sqlite3, WAL, synchronous=NORMAL, one connection per client thread; "
                "create/delete: one INSERT into a change view (its trigger writes the row and "
                "its task, migration 0007) in autocommit under a process lock; "
                "pages: one row, the page as a JSON array (as ours); the WAL checkpointed "
                "by a thread every 0.1 s, the commits' own checkpoint at 10,000 pages (as "
                "ours, db.engine's Checkpointer)")

    def connect(self) -> Any:
        if self.backend == "postgresql":
            return psycopg.connect(self.conninfo, autocommit=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=30)
        for pragma in self.pragmas:
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def operation(self, op: str) -> DbOperation:
        return (self._pg if self.backend == "postgresql" else self._sqlite)(op)

    @staticmethod
    def _pg(op: str) -> DbOperation:
        query, names = _numbered(PG_SQL[op])
        name = op.encode()

        def write(conn: Any, item: tuple[str, str]) -> None:
            id_, ip = item
            _run_prepared(conn, name, query, names, {
                "id": id_, "ip_address": ip, "tenant_id": "admin",
                "data": json.dumps({"id": id_, "ip_address": ip}, sort_keys=True),
                "transaction_id": f"req-{uuid.uuid4()}", "created_at": _created_at(),
                "requested_by": "admin", "requested_from": "127.0.0.1"})

        def show(conn: Any, item: tuple[str, str]) -> None:
            _run_prepared(conn, name, query, names, {"id": item[0]})

        def page(conn: Any, marker: str | None) -> None:
            _run_prepared(conn, name, query, names, {"marker": marker} if marker else {})
        return {"create": write, "delete": write, "show": show}.get(op, page)

    def _sqlite(self, op: str) -> DbOperation:
        sql = SQLITE_SQL[op]
        lock = self.write_lock

        def create(conn: sqlite3.Connection, item: tuple[str, str]) -> None:
            id_, ip = item
            data = json.dumps({"id": id_, "ip_address": ip}, sort_keys=True)
            values = (id_, ip, data, f"req-{uuid.uuid4()}", _sqlite_created_at())
            with lock:
                conn.execute(sql, values)

        def delete(conn: sqlite3.Connection, item: tuple[str, str]) -> None:
            values = (item[0], f"req-{uuid.uuid4()}", _sqlite_created_at())
            with lock:
                conn.execute(sql, values)

        def show(conn: sqlite3.Connection, item: tuple[str, str]) -> None:
            conn.execute(sql, (item[0],)).fetchall()

        def page(conn: sqlite3.Connection, marker: str | None) -> None:
            conn.execute(sql, (marker,) if marker else ()).fetchall()
        return {"create": create, "delete": delete, "show": show}.get(op, page)


def _numbered(sql: str) -> tuple[bytes, list[str]]:
    """``sql`` with libpq's ``$1, $2...`` for its ``%(name)s``, and the names in order."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"
    return re.sub(r"%\(([^)]+)\)s", number, sql).encode(), names


# Per open connection: its psycopg Transformer and the names of the statements it prepared
# (keyed by the connection itself: a closed one's id may come back with a new connection).
_statements: weakref.WeakKeyDictionary[Any, tuple[Any, set[bytes]]] = (
    weakref.WeakKeyDictionary())


def _run_prepared(conn: Any, name: bytes, query: bytes, names: list[str],
                  values: dict[str, Any]) -> list[tuple]:
    """Run ``query`` as ours runs a statement on PostgreSQL (db/engine.py,
    ``_LibpqStatements``): prepared once per connection, then libpq's ``PQexecPrepared``,
    the values dumped and the rows loaded by psycopg's C adapters, without psycopg's Python
    cursor around it. The values keep psycopg's types (ours' SQL casts them instead)."""
    if conn not in _statements:
        _statements[conn] = (Transformer(conn), set())
    transformer, prepared = _statements[conn]
    params = transformer.dump_sequence([values[n] for n in names], [PyFormat.AUTO] * len(names))
    if name not in prepared:
        result = conn.pgconn.prepare(name, query, transformer.types)
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise errors.error_from_result(result)
        prepared.add(name)
    result = conn.pgconn.exec_prepared(name, params, transformer.formats)
    if result.status == pq.ExecStatus.TUPLES_OK:
        transformer.set_pgresult(result)
        return transformer.load_rows(0, result.ntuples, tuple)
    if result.status != pq.ExecStatus.COMMAND_OK:
        raise errors.error_from_result(result)
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description="Serve the HTTP floor's trivial app.")
    parser.add_argument("--layout", required=True, choices=sorted(FLOOR_SERVING))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--responses", required=True,
                        help='JSON: {"create": [201, bytes], "show": [200, bytes], ...}')
    parser.add_argument("--backend", required=True,
                        help="the database ours runs on (sqlite, postgresql): the all-in-one's "
                             "active threads depend on it")
    parser.add_argument("--database", metavar="URL",
                        help="also run each operation's database floor SQL on URL")
    args = parser.parse_args()
    responses = {op: tuple(v) for op, v in json.loads(args.responses).items()}
    serve_floor(args.layout, args.port, responses, args.backend, args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
