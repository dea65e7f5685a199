"""The audit trail: who asked for each task, and from where.

``requested_by`` is the token's user id ("admin-token" for the all-in-one's generated
token), ``requested_from`` the address of the HTTP client; the project is the existing
``tenant_id`` and the time ``created_at``. Tasks written before this revision have NULL.

Revision ID: 0006_task_audit
Revises: 0005_task_resource_index
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_task_audit"
down_revision = "0005_task_resource_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("midonet_tasks", sa.Column("requested_by", sa.String(255), nullable=True))
    op.add_column("midonet_tasks", sa.Column("requested_from", sa.String(64), nullable=True))
