"""Alembic migrations of the extension's tables, laid out as a Neutron subproject's.

The same directory serves ``midonet-db-manage upgrade`` and, through the
``neutron.db.alembic_migrations`` entry point, ``neutron-db-manage`` (with or without
``--subproject midonet-membership``). ``versions/`` holds the branchless history,
0001..0007; from 0007 two branches start, as Neutron's rolling upgrades want of every
subproject: ``versions/<release>/expand`` (additive changes, branch label ``expand``) and
``versions/<release>/contract`` (removals, ``contract``), whose heads ``EXPAND_HEAD`` and
``CONTRACT_HEAD`` name (``neutron-db-manage check_migration`` checks them). A database is
up to date at both heads: ``upgrade`` goes to ``heads`` by default, and the version table
has one row per branch.
"""

from __future__ import annotations

import glob
import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

VERSION_TABLE = "alembic_version_midonet_membership"
SCRIPT_LOCATION = os.path.dirname(__file__)
VERSIONS = os.path.join(SCRIPT_LOCATION, "versions")
BRANCHES = ("expand", "contract")  # neutron.db.migration.cli.MIGRATION_BRANCHES


def version_locations() -> list[str]:
    """``versions/`` and its ``<release>/expand`` and ``<release>/contract`` directories
    (what neutron-db-manage sets for a subproject)."""
    return [VERSIONS, *sorted(path for branch in BRANCHES
                              for path in glob.glob(os.path.join(VERSIONS, "*", branch)))]


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION.replace("%", "%%"))
    config.set_main_option("path_separator", "os")  # alembic >= 1.16
    config.set_main_option("version_path_separator", "os")  # older alembic
    config.set_main_option("version_locations",
                           os.pathsep.join(version_locations()).replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "heads") -> None:
    """Upgrade to ``revision``; ``head`` (one head, before the branches) means ``heads``,
    as in neutron-db-manage."""
    command.upgrade(alembic_config(url), "heads" if revision == "head" else revision)


def _joined(revisions) -> str | None:
    """Several revisions (one per branch) as one readable value, sorted; None for none."""
    return ", ".join(sorted(revisions)) or None


def current_revision(engine: Engine) -> str | None:
    """The database's revisions (one per branch head it is at), joined; None if unversioned."""
    with engine.connect() as conn:
        return _joined(MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}).get_current_heads())


def head_revision(url: str) -> str | None:
    """The heads of every branch, joined as ``current_revision`` joins a database's."""
    from alembic.script import ScriptDirectory
    return _joined(ScriptDirectory.from_config(alembic_config(url)).get_heads())
