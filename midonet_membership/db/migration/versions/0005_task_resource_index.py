"""Index the journal by resource id.

``midonet-db-manage task-resource`` and the check that tells a retried request its own
earlier commit apart from someone else's both look tasks up by resource id; without the
index each is a scan of the whole journal.

Revision ID: 0005_task_resource_index
Revises: 0004_agent_descriptions
Create Date: 2026-11-25
"""

from alembic import op

revision = "0005_task_resource_index"
down_revision = "0004_agent_descriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_midonet_tasks_resource_id", "midonet_tasks", ["resource_id"])
