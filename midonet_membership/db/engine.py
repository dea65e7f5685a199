"""Engines for the three supported backends and the transaction scopes every write uses.

``writer()`` is the one place a change commits: the membership row and its task go through the
same connection and commit together, or neither does (DESIGN invariant 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import random
import re
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection, PoolResetState
from sqlalchemy.sql.compiler import SQLCompiler

from midonet_membership import exceptions

LOG = logging.getLogger(__name__)
_commit_listeners: list[Callable[[], None]] = []
# SQLite writers of one process queue on a lock instead of in SQLite's busy handler, which
# sleeps in growing steps (up to 100 ms) and turned 8 concurrent POSTs' p99 into 106 ms.
_sqlite_write_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = (
    weakref.WeakKeyDictionary())
_NO_LOCK = contextlib.nullcontext()
# SQLite: the connection's statements run in SQLite's own autocommit (no BEGIN). Not
# SQLAlchemy's AUTOCOMMIT isolation level: resetting that on every return to the pool
# re-enables pysqlite's implicit transactions and runs a PRAGMA.
_SQLITE_AUTOCOMMIT = "midonet_sqlite_autocommit"


class DatabaseURLError(Exception):
    """A ``[database] connection`` that cannot work, whatever the server does."""


# The drivers this project installs, per backend (pyproject.toml).
INSTALLED_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql",
                     "sqlite": "sqlite"}
# The drivers an extra of this project installs (pyproject.toml): MariaDB's C driver.
EXTRA_DRIVERS = {"mysql+mysqldb": "mysqlclient"}


def check_url(url: str) -> None:
    """Refuse, in one sentence, a URL that is malformed or names a driver not installed.

    ``postgresql+psycopg2://`` otherwise ends in a ModuleNotFoundError traceback at the
    first connection.
    """
    try:
        sa_url = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseURLError(f"[database] connection is not a database URL: {exc}") from None
    try:
        sa_url.get_dialect().import_dbapi()
    except sa.exc.NoSuchModuleError:
        raise DatabaseURLError(
            f"[database] connection {sa_url.drivername}://: no such database type; use one of "
            f"{', '.join(d + '://' for d in INSTALLED_DRIVERS.values())}") from None
    except ImportError as exc:
        backend = sa_url.get_backend_name()
        instead = INSTALLED_DRIVERS.get(backend)
        hint = f"use {instead}://..." if instead else "install it"
        extra = EXTRA_DRIVERS.get(sa_url.drivername)
        if extra:
            hint = f"install midonet-membership[{extra}] (tools/ensure-mysqlclient), or {hint}"
        raise DatabaseURLError(
            f"[database] connection {sa_url.drivername}://: its driver is not installed "
            f"({exc.name or exc}); {hint} (installed with midonet-membership)") from None


def create_engine(url: str, pool_size: int = 16, serving: bool = False) -> Engine:
    """An engine tuned for its backend: SQLite in WAL with immediate write locks.

    ``serving``: the engine of a process serving requests, whose SQLite file is then
    checkpointed by a thread of its own (:class:`Checkpointer`), not by its requests."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(sa_url, serving)
    if sa_url.get_backend_name() == "mysql" and "charset" not in sa_url.query:
        sa_url = sa_url.update_query_dict({"charset": "utf8mb4"})
    # No pre-ping (a round trip per request): a connection found dead is invalidated and
    # the whole operation retried by @retry_transient instead.
    engine = sa.create_engine(sa_url, pool_size=pool_size, max_overflow=pool_size,
                              pool_recycle=_RECYCLE_SECONDS, pool_reset_on_return=None)
    event.listen(engine.pool, "reset", _roll_back_unless_committed)
    event.listen(engine.pool, "checkin", _leave_autocommit)
    if sa_url.get_backend_name() == "mysql":
        event.listen(engine, "connect", _room_for_json_pages)
    return engine


def _room_for_json_pages(dbapi_conn: Any, _record: Any) -> None:
    """A MariaDB page written as JSON (db.paging) must not be cut: JSON_ARRAYAGG stops at
    the session's ``group_concat_max_len`` with a warning only, and a server configured
    below the 1 MiB default would otherwise send clients broken JSON."""
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("SET SESSION group_concat_max_len = 4194304")
    finally:
        cursor.close()


_COMMITTED = "midonet_committed"  # connection info: its last use ended with our COMMIT


def _roll_back_unless_committed(dbapi_conn: Any, record: Any, state: PoolResetState) -> None:
    """The reset on return to the pool: SQLAlchemy's ROLLBACK (``pool_reset_on_return`` is
    off), but not after :func:`_pooled`'s COMMIT, which left nothing open.

    Why: a MariaDB driver's ``rollback()`` (PyMySQL's, mysqlclient's) is a round trip even
    outside a transaction (psycopg's sends nothing then), and it was a MariaDB create's
    fourth, after its two INSERTs and the COMMIT (``Com_rollback`` counted one per
    create)."""
    committed = record is not None and record.info.pop(_COMMITTED, False)
    if state.asyncio_safe and not (state.transaction_was_reset or committed):
        dbapi_conn.rollback()


_RECYCLE_SECONDS = 3600


def _leave_autocommit(dbapi_conn: Any, _record: Any) -> None:
    """No connection goes back to the pool in the driver's autocommit, which SQLAlchemy
    does not know of: its transactions would commit statement by statement.
    :func:`_release` takes the flag off; this catches a kept connection
    (:func:`_kept_connection`) handed back by the garbage collector when its engine goes
    away."""
    if dbapi_conn is not None and _in_autocommit(dbapi_conn):
        _set_autocommit(dbapi_conn, False)


def _in_autocommit(driver_connection: Any) -> bool:
    """psycopg's flag is an attribute; the MariaDB drivers' a method, and its state a
    status flag the server sent last (no round trip)."""
    if callable(driver_connection.autocommit):
        return driver_connection.get_autocommit()
    return driver_connection.autocommit


def _set_autocommit(driver_connection: Any, on: bool) -> None:
    """psycopg sends nothing; the MariaDB drivers send ``SET AUTOCOMMIT`` (a round trip)."""
    if callable(driver_connection.autocommit):
        driver_connection.autocommit(on)
    else:
        driver_connection.autocommit = on


# Every SQLite connection's settings; a checkpointed file's take Checkpointer.PRAGMA too.
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000")


def _sqlite_engine(url: sa.URL, serving: bool) -> Engine:
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                              pool_size=16, max_overflow=16)
    pragmas = SQLITE_PRAGMAS
    if serving and url.database not in (None, "", ":memory:"):
        Checkpointer(url.database).start_for(engine)
        pragmas += (Checkpointer.PRAGMA,)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" event decide how each transaction starts.
        dbapi_conn.isolation_level = None
        for pragma in pragmas:
            dbapi_conn.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_SQLITE_AUTOCOMMIT):
            return  # one read statement: atomic by itself, no BEGIN/COMMIT round
        # A deferred transaction that later writes can deadlock against another writer;
        # writers take the lock up front instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("writer", False) else "BEGIN")

    _sqlite_write_locks[engine] = threading.Lock()
    return engine


class Checkpointer:
    """Copies a SQLite file's WAL back into the database from a thread of its own.

    Why: by default the commit that takes the WAL over 1,000 pages does it, inside the
    request that committed: every ~200th create of the all-in-one waited for a checkpoint
    and its fsyncs (the database floor's SQLite creates took 0.031 ms at the median and
    0.068 ms on average). Here it is a PASSIVE checkpoint every ``INTERVAL``, the GIL
    released while SQLite works, so on the machine's other core; readers and writers are
    never waited for (a frame a reader still needs is copied by a later one). The
    requests' own checkpoint stays as a safety net, at ``SAFETY_NET_PAGES`` (~40 MiB of
    WAL), should this thread ever fall behind.
    """

    INTERVAL = 0.1
    SAFETY_NET_PAGES = 10_000
    PRAGMA = f"wal_autocheckpoint={SAFETY_NET_PAGES}"  # for the file's other connections

    def __init__(self, path: str) -> None:
        self.path = path
        self.stop = threading.Event()

    def start_for(self, owner: object) -> None:
        """Run while ``owner`` (an engine) exists: it ends when that is garbage-collected."""
        weakref.finalize(owner, self.stop.set)
        threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True).start()

    def _run(self) -> None:
        conn = None
        while not self.stop.wait(self.INTERVAL):
            try:
                if conn is None:  # never creating the file (mode=rw): only the engine may
                    conn = sqlite3.connect(f"file:{urllib.parse.quote(self.path)}?mode=rw",
                                           uri=True, timeout=0, isolation_level=None,
                                           check_same_thread=False)
                    conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # a file replaced or locked: reopen next time
                LOG.debug("background checkpoint of %s failed: %s", self.path, exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def on_task_commit(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every commit that wrote a task (wakes an in-process importer)."""
    _commit_listeners.append(listener)


def remove_task_commit_listener(listener: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _commit_listeners.remove(listener)


@contextlib.contextmanager
def writer(engine: Engine, single_statement: bool = False,
           driver: bool = False) -> Iterator[Connection | DriverConnection]:
    """One write transaction: commits on success, rolls back on any exception.

    ``single_statement``: the caller runs exactly one statement, atomic by itself, so it
    runs in autocommit and spares the BEGIN and COMMIT round trips. ``driver``: the
    caller's statements need nothing of a ``Connection`` (:class:`DriverConnection`), so
    they run on the driver's own connection (:func:`_on_driver`).
    """
    with _sqlite_write_locks.get(engine, _NO_LOCK):
        if driver:
            with _on_driver(engine, writes=True, autocommit=single_statement) as conn:
                yield conn
            wrote_task = conn.info.pop("wrote_task", False)
        else:
            with engine.connect() as conn:
                if single_statement:
                    conn.execution_options(isolation_level="AUTOCOMMIT")
                    yield conn
                else:
                    conn.execution_options(writer=True)
                    with conn.begin():
                        yield conn
                wrote_task = conn.info.pop("wrote_task", False)
    if wrote_task:
        for listener in list(_commit_listeners):
            listener()


def reader(engine: Engine, single_statement: bool = False,
           driver: bool = False) -> AbstractContextManager[Connection | DriverConnection]:
    """Reads without BEGIN/ROLLBACK round trips on server databases (autocommit).

    SQLite reads run in one transaction (one snapshot) unless ``single_statement``: the
    caller runs statements each a snapshot by itself (one, or one after another that
    need not agree), and spares the BEGIN and COMMIT (a third of a SQLite show's database
    calls). ``driver``: as for :func:`writer`, each statement a snapshot by itself.

    A function returning the context manager that does the work, not one wrapping it: a
    driver read was three generator-based levels deep, and the two removed were 16 of a
    SQLite show's 185 Python calls (cProfile, bench/profile_app.py).
    """
    if driver:
        return _on_driver(engine, writes=False, autocommit=True)
    return _reading(engine, single_statement)


@contextlib.contextmanager
def _reading(engine: Engine, single_statement: bool) -> Iterator[Connection]:
    with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
        elif single_statement:
            conn.execution_options(**{_SQLITE_AUTOCOMMIT: True})
            yield conn
        else:
            with conn.begin():
                yield conn


# -- statements on the driver's connection --------------------------------------------------

class Rows(list):
    """A statement's rows as tuples, with the two ``Result`` methods the callers use."""

    def first(self) -> tuple | None:
        return self[0] if self else None

    def all(self) -> Rows:
        return self


class DriverConnection:
    """One pooled connection that runs SQLAlchemy statements on the driver itself.

    Why: SQLAlchemy's ``Connection`` cost ~140 µs per statement (checkout options, execution
    context, result objects), more than PostgreSQL took to answer a primary-key SELECT on
    this machine (bench/profile_app.py: a show's plugin call 268 µs, the driver's own
    SELECT 125 µs). The statements stay SQLAlchemy's, compiled once per dialect and set of
    parameter names, their values converted by SQLAlchemy's types; a driver error becomes
    SQLAlchemy's exception and a dead connection is invalidated, as ``Connection`` does, so
    :func:`retry_transient` and the duplicate checks see the same. What it lacks: result
    processing (rows are plain tuples; a statement whose columns need conversion is
    refused) and events.

    ``autocommit``: the connection is in psycopg's autocommit, so a statement can go to
    libpq directly (:class:`_LibpqStatements`): psycopg sends nothing else around it then.
    """

    def __init__(self, engine: Engine, pooled: PoolProxiedConnection,
                 autocommit: bool = False) -> None:
        self.dialect = engine.dialect
        self.info: dict = {}  # as Connection.info: what writer() reads after the statement
        self._pooled = pooled
        self._libpq = autocommit and self.dialect.name == "postgresql"

    @classmethod
    def of(cls, conn: Connection) -> DriverConnection:
        """``conn``'s own driver connection, in whatever session state ``conn`` set up."""
        pooled = conn.connection
        return cls(conn.engine, pooled, autocommit=conn.dialect.name == "postgresql"
                   and pooled.driver_connection.autocommit)

    def execute(self, statement: sa.Executable,
                params: dict[str, Any] | list[dict[str, Any]] | None = None) -> Rows:
        """Run ``statement`` once, or once per dict of a list (rows then: none)."""
        many = isinstance(params, list)
        first = (params[0] if many else params) or {}
        prepared = _prepared(statement, self.dialect, tuple(first))
        if self._libpq and not many and not prepared.expands:
            return self._on_libpq(prepared, first)
        sql, args = prepared.bind(first)
        cursor = None
        try:
            cursor = self._cursor()
            if many:
                cursor.executemany(sql, [args, *(prepared.bind(p)[1] for p in params[1:])])
                return Rows()
            cursor.execute(sql, args)
            return Rows(cursor.fetchall() if prepared.returns_rows else ())
        except self.dialect.loaded_dbapi.Error as exc:
            self._pooled.info.pop(_KEPT_CURSOR, None)
            raise self._translated(exc, sql, args, cursor) from exc
        finally:
            if cursor is not None and self.dialect.name != "postgresql":
                # mysqlclient's close() reads what the statement left on a dead connection,
                # and raises: the statement's own outcome is what counts.
                with contextlib.suppress(self.dialect.loaded_dbapi.Error):
                    cursor.close()

    def _on_libpq(self, prepared: _Prepared, params: dict[str, Any]) -> Rows:
        query, args = prepared.bind_numbered(params)
        try:
            statements = self._pooled.info.get(_LIBPQ_STATEMENTS)
            if statements is None:
                statements = self._pooled.info[_LIBPQ_STATEMENTS] = _LibpqStatements(
                    self._pooled.driver_connection)
            return Rows(statements.execute(query, args))
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._translated(exc, query.decode(), args) from exc

    @property
    def total_changes(self) -> int:
        """SQLite: the rows this connection's statements and their triggers have changed
        so far (an INSTEAD OF trigger's statement reports nothing else)."""
        return self._pooled.dbapi_connection.total_changes

    def commit(self) -> None:
        try:
            self._pooled.commit()
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._translated(exc, "COMMIT", ()) from exc

    def _cursor(self) -> Any:
        """On PostgreSQL one cursor per connection, kept with it: psycopg's cursor holds its
        last result client-side and nothing on the server, and creating one cost ~8 µs per
        statement (SQLAlchemy's cursor proxy, psycopg's adapters). Other drivers' cursors
        can hold a statement open on the database (SQLite's, a read snapshot), so each
        statement gets its own, closed after it."""
        if self.dialect.name != "postgresql":
            return self._pooled.dbapi_connection.cursor()
        cursor = self._pooled.info.get(_KEPT_CURSOR)
        if cursor is None:
            cursor = self._pooled.info[_KEPT_CURSOR] = self._pooled.driver_connection.cursor()
        return cursor

    def _translated(self, exc: Exception, sql: str | None, args: Any,
                    cursor: Any = None) -> sa.exc.DBAPIError:
        invalidated = self.dialect.is_disconnect(exc, self._pooled.dbapi_connection, cursor)
        if invalidated:
            self._pooled.invalidate(exc)
        return sa.exc.DBAPIError.instance(
            sql, args, exc, self.dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated, dialect=self.dialect)


_KEPT_CURSOR = "midonet_cursor"  # DriverConnection's cursor, in the pooled connection's info
_LIBPQ_STATEMENTS = "midonet_libpq"  # its _LibpqStatements, there too (gone on reconnect)


class _LibpqStatements:
    """One autocommit psycopg connection's statements, run through libpq itself, each
    prepared on the server at its first use.

    Why: psycopg's ``Cursor.execute`` is Python around libpq (the connection's lock, its
    generator protocol, the prepared-statement manager, the cursor's result handling): 38 µs
    of CPU for a primary-key SELECT on this machine, against 18 µs for libpq's
    ``PQexecPrepared`` (which lets go of the GIL while it waits) with the rows loaded by
    psycopg's own C ``Transformer`` (an ad-hoc loop, 2,000 SELECTs). The values are dumped
    and the rows loaded by the same adapters as through a cursor, and an error is psycopg's
    (``error_from_result``), so the callers and :meth:`DriverConnection._translated` see the
    same; a connection that broke is ``broken``, as psycopg's own path leaves it. Only for a
    connection in autocommit: in a transaction psycopg sends the BEGIN itself.

    Each connection prepares at most :attr:`MAX_PREPARED` statements (a page's limit is in
    its SQL, so a client choosing limits must not fill the server's memory); others run
    unprepared, in one round trip too. A backend that forgot them gets them prepared again,
    under names it never held: ``DISCARD ALL`` or ``DEALLOCATE`` run on the connection, and
    psycopg's own ``DEALLOCATE ALL`` after a ROLLBACK, when a transaction that took the
    connection from the pool had had psycopg prepare a statement of its own.
    """

    MAX_PREPARED = 128
    _UNKNOWN_STATEMENT = b"26000"  # invalid_sql_statement_name

    def __init__(self, driver_connection: Any) -> None:
        from psycopg import errors, pq
        from psycopg.adapt import PyFormat, Transformer

        self._pgconn = driver_connection.pgconn
        self._transformer = Transformer(driver_connection)
        self._text = PyFormat.TEXT
        self._rows, self._done = pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK
        self._sqlstate = pq.DiagnosticField.SQLSTATE
        self._error_of = errors.error_from_result
        self._names: dict[bytes, bytes] = {}
        self._numbers = itertools.count()  # a name is never used twice on a connection

    def execute(self, query: bytes, args: Sequence[Any]) -> list[tuple]:
        params = self._transformer.dump_sequence(args, [self._text] * len(args))
        result = self._run(query, params)
        if (result.status not in (self._rows, self._done) and query in self._names
                and result.error_field(self._sqlstate) == self._UNKNOWN_STATEMENT):
            self._names.clear()
            result = self._run(query, params)
        if result.status == self._rows:
            self._transformer.set_pgresult(result)
            return self._transformer.load_rows(0, result.ntuples, tuple)
        if result.status == self._done:
            return []
        raise self._error_of(result)

    def _run(self, query: bytes, params: Sequence[Any]) -> Any:
        name = self._names.get(query)
        if name is None and len(self._names) < self.MAX_PREPARED:
            name = b"midonet_%d" % next(self._numbers)
            prepared = self._pgconn.prepare(name, query)
            if prepared.status != self._done:
                raise self._error_of(prepared)
            self._names[query] = name
        if name is None:
            return self._pgconn.exec_params(query, params)
        return self._pgconn.exec_prepared(name, params)


# What the journal and the memberships write through: SQLAlchemy's (the Neutron plugin's
# session, the importer) or the driver's (the API's hot path).
AnyConnection = Connection | DriverConnection


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A statement compiled for one dialect, with what turns parameters into the driver's
    arguments: SQLAlchemy's bind processors (a DateTime on SQLite), the values of the
    statement's own literals and, for a positional driver, the parameters' order."""

    compiled: SQLCompiler
    processors: dict[str, Callable[[Any], Any]]
    literals: dict[str, Any]
    returns_rows: bool
    expands: bool  # IN lists (or escaped names): SQLAlchemy expands them per execution

    def bind(self, params: dict[str, Any]) -> tuple[str, Any]:
        """The SQL and the driver's arguments for one set of parameters."""
        if self.expands:
            expanded = self.compiled.construct_expanded_state(self._processed(params))
            return expanded.statement, (expanded.positional_parameters
                                        if self.compiled.positional else expanded.parameters)
        values = self._values(params)
        if self.compiled.positional:
            return self.compiled.string, tuple(values[name]
                                               for name in self.compiled.positiontup)
        return self.compiled.string, values

    @functools.cached_property
    def numbered(self) -> tuple[bytes, tuple[str, ...]]:
        """The SQL with libpq's ``$1, $2...`` for SQLAlchemy's ``%(name)s`` (``pyformat``,
        psycopg's), and the names in that order."""
        order: dict[str, int] = {}

        def number(match: re.Match) -> str:
            if match.group(0) == "%%":
                return "%"
            return f"${order.setdefault(match.group(1), len(order) + 1)}"
        query = re.sub(r"%%|%\(([^)]+)\)s", number, self.compiled.string)
        return query.encode(), tuple(order)

    def bind_numbered(self, params: dict[str, Any]) -> tuple[bytes, list[Any]]:
        """:meth:`bind` for :attr:`numbered`."""
        query, names = self.numbered
        values = self._values(params)
        return query, [values[name] for name in names]

    def _values(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the statement's own literals, through the bind processors."""
        return self._processed({**self.literals, **params} if self.literals else params)

    def _processed(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.processors:
            return params
        return {name: self.processors[name](value) if name in self.processors else value
                for name, value in params.items()}


@functools.lru_cache(maxsize=256)
def _prepared(statement: sa.Executable, dialect: sa.Dialect,
              names: tuple[str, ...]) -> _Prepared:
    """``statement`` compiled for ``dialect`` and the parameter ``names`` (an INSERT's
    columns), once: the callers' statements are built once too. One whose rows would need
    SQLAlchemy's result processing, or an expanding (IN) parameter its bind processing, is
    refused: it must run on a ``Connection``."""
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    binds = compiled.binds
    processors = {name: processor for name, bind in binds.items()
                  if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))}
    columns = getattr(statement, "exported_columns", ())
    refused = [name for name in processors if binds[name].expanding]
    refused += [column.name for column in columns
                if column.type.dialect_impl(dialect).result_processor(dialect, None)]
    if refused:
        raise TypeError(f"{', '.join(refused)} of this statement need SQLAlchemy's "
                        f"{dialect.name} type processing: run it on a Connection")
    return _Prepared(
        compiled, processors,
        literals={name: bind.effective_value for name, bind in binds.items()
                  if not bind.required},
        returns_rows=bool(columns),
        expands=bool(compiled.post_compile_params or compiled.literal_execute_params
                     or compiled.escaped_bind_names))


def _on_driver(engine: Engine, writes: bool,
               autocommit: bool) -> AbstractContextManager[DriverConnection]:
    """A DBAPI connection of the pool, for statements that need nothing of a ``Connection``.

    ``autocommit``: each statement is a transaction by itself, on a connection kept out of
    the pool between statements (:func:`_kept_connection`), in the driver's autocommit
    (pysqlite's ``isolation_level = None``, _sqlite_engine). PyMySQL's flag costs a round
    trip each way (SQLAlchemy's AUTOCOMMIT read was six round trips on MariaDB), paid once
    per kept connection; a MariaDB read in the transaction PyMySQL opens by itself cost
    the pool's ROLLBACK at its end, 80 µs of a 190 µs primary-key SELECT (ad hoc, this
    machine). Otherwise one transaction, committed at the end (SQLite's begun IMMEDIATE,
    as _sqlite_engine's writers, on a kept connection too: it holds nothing once
    committed, and the pool's checkout and check-in were 35 of a create's 379 Python
    calls). On any exception nothing commits: the pool rolls back.
    """
    backend = engine.dialect.name
    if autocommit:
        return _kept_connection(engine)
    if backend == "sqlite":
        return _kept_transaction(engine)
    return _pooled(engine, commit=writes)


@contextlib.contextmanager
def _kept_transaction(engine: Engine) -> Iterator[DriverConnection]:
    with _kept_connection(engine) as conn:
        conn.execute(_BEGIN_IMMEDIATE)
        yield conn
        conn.commit()


@contextlib.contextmanager
def _pooled(engine: Engine, commit: bool) -> Iterator[DriverConnection]:
    pooled = _checkout(engine)
    try:
        conn = DriverConnection(engine, pooled)
        yield conn
        if commit:
            conn.commit()
            pooled.info[_COMMITTED] = True
    finally:
        pooled.close()


_BEGIN_IMMEDIATE = sa.text("BEGIN IMMEDIATE")


def _checkout(engine: Engine) -> PoolProxiedConnection:
    try:
        return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(None, None, exc, engine.dialect.loaded_dbapi.Error,
                                         dialect=engine.dialect) from exc


# Per engine, the autocommit connections kept out of the pool between statements, the most
# recently used last.
_kept: weakref.WeakKeyDictionary[Engine, list[tuple[PoolProxiedConnection, float]]] = (
    weakref.WeakKeyDictionary())
# Per engine, the kept connections in use (list.append and list.remove: each atomic).
_in_flight: weakref.WeakKeyDictionary[Engine, list[DriverConnection]] = (
    weakref.WeakKeyDictionary())


@contextlib.contextmanager
def _kept_connection(engine: Engine) -> Iterator[DriverConnection]:
    """An autocommit connection to ``engine`` kept out of the pool, the most recently used.

    Why: the pool's checkout and check-in and psycopg's autocommit flag, set and reset around
    every statement, were a fifth of a PostgreSQL show's Python calls (63 of 315, cProfile
    in bench/profile_app.py) and as much CPU as the rest of the show's own code. An
    autocommit connection holds nothing between statements (no transaction, nothing to
    reset), so it can go back to a stack of its own: a list's ``pop`` and ``append``, each
    atomic. The most recently used one is taken first, so a server at low concurrency
    uses one connection (and one PostgreSQL backend) warm in its caches, whichever of its
    threads serves the request; there are never more than the server's concurrent
    requests. One whose statement raised goes back to the pool (which rolls it back, or
    discards it if it was found dead, and then the others with it, as the pool does), and
    the next use takes another; one older than the pool's recycle time goes back as the
    pool would recycle it. When the engine goes away, so do they, through the garbage
    collector and :func:`_leave_autocommit`.
    """
    flagged = engine.dialect.name != "sqlite"  # SQLite's connections all are
    kept = _kept.get(engine)
    if kept is None:
        kept = _kept.setdefault(engine, [])
    entry = None
    while entry is None:
        try:
            entry = kept.pop()
        except IndexError:
            pooled = _checkout(engine)
            if flagged:
                _enter_autocommit(engine, pooled)
            entry = (pooled, time.monotonic())
        else:
            if not entry[0].is_valid or time.monotonic() - entry[1] > _RECYCLE_SECONDS:
                _release(entry[0], flagged)
                entry = None
    conn = DriverConnection(engine, entry[0], autocommit=True)
    in_flight = _in_flight.get(engine)
    if in_flight is None:
        in_flight = _in_flight.setdefault(engine, [])
    in_flight.append(conn)
    try:
        yield conn
    except BaseException:
        dead = not entry[0].is_valid  # invalidated by the failure (asked before close())
        _release(entry[0], flagged)
        if dead:  # the database restarted, most likely, and the others died with it: the
            while kept:  # pool reconnects them all as one
                _release(kept.pop()[0], flagged)
        raise
    finally:
        in_flight.remove(conn)
    kept.append(entry)


def _enter_autocommit(engine: Engine, pooled: PoolProxiedConnection) -> None:
    """The driver's autocommit on, for a kept connection. The pool checks nothing out
    (no pre-ping), so this round trip is the first to meet a connection the database
    dropped while it was idle: its error is SQLAlchemy's, and the connection invalidated,
    as a statement's would be (:func:`retry_transient` then takes a new one)."""
    try:
        _set_autocommit(pooled.driver_connection, True)
    except engine.dialect.loaded_dbapi.Error as exc:
        error = DriverConnection(engine, pooled)._translated(exc, "SET AUTOCOMMIT", ())
        pooled.close()
        raise error from exc


def statements_in_flight(engine: Engine) -> int:
    """How many of this process's threads are running a statement on ``engine``'s kept
    autocommit connections now (the caller's included): whether the process is serving
    other requests beside the caller's."""
    return len(_in_flight.get(engine, ()))


def _release(pooled: PoolProxiedConnection, autocommit: bool) -> None:
    """A kept connection back to the pool, out of the driver's autocommit (a connection
    that cannot be reset is discarded); the pool rolls back what SQLite may have open."""
    if autocommit and pooled.is_valid:
        try:
            _set_autocommit(pooled.driver_connection, False)
        except Exception as exc:
            pooled.invalidate(exc)
    pooled.close()


def database_server(dialect: sa.Dialect) -> str:
    """The database's name, MariaDB told apart from MySQL (known once connected)."""
    return "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name


def is_duplicate_error(exc: sa.exc.IntegrityError) -> bool:
    """True when the database refused a row because a unique key already holds it."""
    text = str(exc.orig).lower()
    return any(marker in text for marker in ("unique", "duplicate", "1062"))


# An aborted transaction (a deadlock, a serialisation failure, SQLite's busy lock, InnoDB's
# lock wait timeout), or a database that cannot take it right now: it refuses connections,
# is starting up or shutting down, or is a Galera node outside the primary component
# (1047). Nothing committed in any of these.
_RETRYABLE = ("deadlock", "1213", "40p01", "40001", "could not serialize", "database is locked",
              "(1205,", "(1047,", "(2002,", "(2003,", "connection refused",
              "the database system is starting up", "the database system is shutting down")
_ATTEMPTS = 20
_RETRY_SECONDS = 5.0  # no new attempt after this long (each connect may wait for its timeout)


def retry_transient(func):
    """Retry a whole transaction the database aborted, whose connection had died, or that
    could not reach the database; when the database stays out of reach, answer 503.

    Concurrent inserts racing for the same unique key can deadlock on MariaDB, and a pooled
    connection may have been closed by a database restart; in both cases nothing committed,
    so running the operation again is safe. A restart or a failover that lasts longer than
    the retries is :class:`~midonet_membership.exceptions.ServiceUnavailable` (503, "retry
    later"), not an internal error.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        give_up = time.monotonic() + _RETRY_SECONDS
        for attempt in range(_ATTEMPTS):
            try:
                return func(*args, **kwargs)
            except sa.exc.DBAPIError as exc:
                if not _is_transient(exc):
                    raise
                if attempt == _ATTEMPTS - 1 or time.monotonic() > give_up:
                    LOG.warning("the Neutron DB is unavailable after %d attempts: %s",
                                attempt + 1, exc.orig)
                    raise exceptions.ServiceUnavailable(service="The Neutron DB") from exc
                # Exponential backoff with jitter: a burst of writers on one key (InnoDB
                # deadlocks INSERT against DELETE of it) needs the losers spread out.
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
    return wrapper


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    return exc.connection_invalidated or (
        isinstance(exc, sa.exc.OperationalError)
        and any(m in str(exc.orig).lower() for m in _RETRYABLE))
