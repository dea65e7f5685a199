"""Alembic environment: our own version table, so we coexist with Neutron's migrations."""

import contextlib
import fcntl
from collections.abc import Iterator

from alembic import context
from sqlalchemy import Connection, create_engine, text

from midonet_membership.db import models
from midonet_membership.db.migration import VERSION_TABLE

#: The name of the lock every upgrade holds: `api`, `importer` and `all-in-one` each upgrade
#: the schema when they start, so two of them started together on a new database would
#: otherwise both create the version table and one would die on the other's.
LOCK_NAME = "midonet_membership_migrations"
LOCK_TIMEOUT_SECONDS = 300


def _url() -> str:
    neutron_config = getattr(context.config, "neutron_config", None)
    if neutron_config is not None:  # run by neutron-db-manage
        return neutron_config.database.connection
    return context.config.get_main_option("sqlalchemy.url")


@contextlib.contextmanager
def _migration_lock(connection: Connection) -> Iterator[None]:
    """Hold a database-wide lock so that one upgrade runs at a time; the next finds it done.

    PostgreSQL and MySQL lock in the server for the connection's session (released when it
    closes, even if the process dies); an SQLite file is locked through a file beside it.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": LOCK_NAME})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(hashtext(:name))"),
                               {"name": LOCK_NAME})
            connection.commit()
    elif dialect in ("mysql", "mariadb"):
        got = connection.execute(text("SELECT GET_LOCK(:name, :timeout)"),
                                 {"name": LOCK_NAME, "timeout": LOCK_TIMEOUT_SECONDS}).scalar()
        connection.commit()
        if got != 1:
            raise RuntimeError(f"another schema upgrade held the lock {LOCK_NAME} for "
                               f"{LOCK_TIMEOUT_SECONDS} s")
        try:
            yield
        finally:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": LOCK_NAME})
            connection.commit()
    elif dialect == "sqlite" and connection.engine.url.database not in (None, "", ":memory:"):
        with open(f"{connection.engine.url.database}.migration-lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield
    else:
        yield


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=models.Base.metadata,
                      version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection, _migration_lock(connection):
        context.configure(connection=connection, target_metadata=models.Base.metadata,
                          version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
