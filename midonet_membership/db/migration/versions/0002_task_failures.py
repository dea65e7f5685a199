"""Tasks the importer skipped because they cannot be translated.

Revision ID: 0002_task_failures
Revises: 0001_initial
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_task_failures"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "midonet_task_failures",
        sa.Column("task_id", sa.Integer, autoincrement=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("failed_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_midonet_task_failures"),
    )
