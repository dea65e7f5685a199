"""Alembic migrations of the extension's tables (one branch, one head).

The same directory serves ``midonet-db-manage upgrade`` and, through the
``neutron.db.alembic_migrations`` entry point, ``neutron-db-manage --subproject``.
"""

from __future__ import annotations

import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

VERSION_TABLE = "alembic_version_midonet_membership"
SCRIPT_LOCATION = os.path.dirname(__file__)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision(url: str) -> str | None:
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()
