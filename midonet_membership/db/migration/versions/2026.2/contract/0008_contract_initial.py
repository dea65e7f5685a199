"""Start of the contract branch (Neutron's rolling upgrades): no schema change.

A revision that removes or rewrites what servers of the previous release still use goes
here (``versions/<release>/contract``), run by ``neutron-db-manage upgrade --contract``
once every neutron-server is stopped; ``has_offline_migrations`` reports it pending.

Revision ID: 0008_contract_initial
Revises: 0007_sqlite_change_views
Create Date: 2026-12-08
"""

revision = "0008_contract_initial"
down_revision = "0007_sqlite_change_views"
branch_labels = ("contract",)  # neutron.db.migration.cli.CONTRACT_BRANCH
depends_on = None


def upgrade() -> None:
    pass
