"""Engines for the three supported backends and the transaction scopes every write uses.

``writer()`` is the one place a change commits: the membership row and its task go through the
same connection and commit together, or neither does (DESIGN invariant 1).
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

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
        raise DatabaseURLError(
            f"[database] connection {sa_url.drivername}://: its driver is not installed "
            f"({exc.name or exc}); {hint} (installed with midonet-membership)") from None


def create_engine(url: str, pool_size: int = 16) -> Engine:
    """An engine tuned for its backend: SQLite in WAL with immediate write locks."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(sa_url)
    if sa_url.get_backend_name() == "mysql" and "charset" not in sa_url.query:
        sa_url = sa_url.update_query_dict({"charset": "utf8mb4"})
    # No pre-ping (a round trip per request): a connection found dead is invalidated and
    # the whole operation retried by @retry_transient instead.
    return sa.create_engine(sa_url, pool_size=pool_size, max_overflow=pool_size,
                            pool_recycle=3600)


def _sqlite_engine(url: sa.URL) -> Engine:
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                              pool_size=16, max_overflow=16)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" event decide how each transaction starts.
        dbapi_conn.isolation_level = None
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
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


def on_task_commit(listener: Callable[[], None]) -> None:
    """Call ``listener`` after every commit that wrote a task (wakes an in-process importer)."""
    _commit_listeners.append(listener)


def remove_task_commit_listener(listener: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _commit_listeners.remove(listener)


@contextlib.contextmanager
def writer(engine: Engine, single_statement: bool = False) -> Iterator[Connection]:
    """One write transaction: commits on success, rolls back on any exception.

    ``single_statement``: the caller runs exactly one statement, atomic by itself, so it
    runs in autocommit and spares the BEGIN and COMMIT round trips.
    """
    with _sqlite_write_locks.get(engine, _NO_LOCK), engine.connect() as conn:
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


@contextlib.contextmanager
def reader(engine: Engine, single_statement: bool = False) -> Iterator[Connection]:
    """Reads without BEGIN/ROLLBACK round trips on server databases (autocommit).

    SQLite reads run in one transaction (one snapshot) unless ``single_statement``: the
    caller runs one statement, a snapshot by itself, and spares the BEGIN and COMMIT
    (a third of a SQLite show's database calls).
    """
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


def is_duplicate_error(exc: sa.exc.IntegrityError) -> bool:
    """True when the database refused a row because a unique key already holds it."""
    text = str(exc.orig).lower()
    return any(marker in text for marker in ("unique", "duplicate", "1062"))


_RETRYABLE = ("deadlock", "1213", "40p01", "40001", "could not serialize", "database is locked")


_ATTEMPTS = 20


def retry_transient(func):
    """Retry a whole transaction the database aborted or whose connection had died.

    Concurrent inserts racing for the same unique key can deadlock on MariaDB, and a pooled
    connection may have been closed by a database restart; in both cases nothing committed,
    so running the operation again is safe.
    """
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for attempt in range(_ATTEMPTS):
            try:
                return func(*args, **kwargs)
            except sa.exc.DBAPIError as exc:
                transient = exc.connection_invalidated or (
                    isinstance(exc, sa.exc.OperationalError)
                    and any(m in str(exc.orig).lower() for m in _RETRYABLE))
                if attempt == _ATTEMPTS - 1 or not transient:
                    raise
                # Exponential backoff with jitter: a burst of writers on one key (InnoDB
                # deadlocks INSERT against DELETE of it) needs the losers spread out.
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
    return wrapper
