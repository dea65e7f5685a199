"""Agent memberships, the task journal and the task state.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "midonet_agent_memberships",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("ip_address", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_midonet_agent_memberships"),
        sa.UniqueConstraint("ip_address", name="uniq_midonet_agent_memberships0ip_address"),
    )
    op.create_table(
        "midonet_tasks",
        sa.Column("id", sa.Integer, autoincrement=True),
        sa.Column("type", sa.String(36), nullable=False),
        sa.Column("data_type", sa.String(255), nullable=False),
        sa.Column("data", sa.Text),
        sa.Column("resource_id", sa.String(36)),
        sa.Column("tenant_id", sa.String(255)),
        sa.Column("transaction_id", sa.String(255)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_midonet_tasks"),
        sqlite_autoincrement=True,
    )
    state = op.create_table(
        "midonet_task_state",
        sa.Column("id", sa.Integer, autoincrement=False),
        sa.Column("last_processed_id", sa.Integer),
        sa.Column("updated_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_midonet_task_state"),
    )
    op.bulk_insert(state, [{"id": 1, "last_processed_id": None, "updated_at": None}])
