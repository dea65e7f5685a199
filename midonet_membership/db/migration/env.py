"""Alembic environment: our own version table, so we coexist with Neutron's migrations."""

from alembic import context
from sqlalchemy import create_engine

from midonet_membership.db import models
from midonet_membership.db.migration import VERSION_TABLE


def _url() -> str:
    neutron_config = getattr(context.config, "neutron_config", None)
    if neutron_config is not None:  # run by neutron-db-manage
        return neutron_config.database.connection
    return context.config.get_main_option("sqlalchemy.url")


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=models.Base.metadata,
                      version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=models.Base.metadata,
                          version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
