"""Descriptions an admin gives MidoNet agents.

Revision ID: 0004_agent_descriptions
Revises: 0003_notify_trigger
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_agent_descriptions"
down_revision = "0003_notify_trigger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "midonet_agent_descriptions",
        sa.Column("id", sa.String(36)),
        sa.Column("description", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_midonet_agent_descriptions"),
    )
