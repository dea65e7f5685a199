"""Start of the expand branch (Neutron's rolling upgrades): no schema change.

From here on a revision that only adds (tables, columns, indexes: what running servers of
the previous release can live with) goes in the expand branch, and one that removes or
rewrites goes in the contract branch, so that ``neutron-db-manage upgrade --expand`` and
``--contract`` (and ``has_offline_migrations``) find both branches in every subproject.
New revisions of the 2026.2 cycle go beside this file (``versions/<release>/expand``).

Revision ID: 0008_expand_initial
Revises: 0007_sqlite_change_views
Create Date: 2026-12-08
"""

revision = "0008_expand_initial"
down_revision = "0007_sqlite_change_views"
branch_labels = ("expand",)  # neutron.db.migration.cli.EXPAND_BRANCH
depends_on = None


def upgrade() -> None:
    pass
